"""One tokenizer interface over three forms, checked against transformers and SentencePiece.

Fixtures are built here, from the tiny data config's own text (no hub):
- a SentencePiece BPE model with the Llama-2 layout (<unk>=0 <s>=1 </s>=2, no pad,
  dummy prefix, byte fallback), as Llama 2 / Mistral v0.1 ship tokenizer.model;
- a byte-level BPE tokenizer.json trained with `tokenizers`, BOS/EOS added after
  training so they sit at the top of the vocabulary (the Llama 3 / Qwen2 layout),
  bare and as an HF directory (tokenizer_config.json written by transformers).
The references: transformers' AutoTokenizer on the same files, SentencePiece's
own ids, and the documents re-encoded on their own for the pipeline rows.
"""
import io
import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from maxlm import data
from maxlm.data import pipeline
from maxlm.data import tokenizer as tokenizer_lib
from maxlm.interop import tokenizer_json

pytestmark = pytest.mark.torch  # transformers is the reference (3.11 stack only)

BOS_TEXT, EOS_TEXT = "<|begin_of_text|>", "<|end_of_text|>"
PROBES = ["hello world", " leading space", "mid-word\n\tand tabs  ", "naïve café 数字 ☃ 3.14",
          "x  y   z\n\n", "To be, or not to be:"]


def tiny_config(tok_path=""):
  c = data.default_data_config()
  c.sources.shakespeare.max_docs = 30
  c.sources.stdlib.max_docs = 30
  c.sources.shakespeare.max_doc_chars = 400  # documents shorter than a row: whole in one
  c.sources.stdlib.max_doc_chars = 400
  c.tokenizer.train_chars = 60_000
  c.tokenizer.path = tok_path
  c.heldout_fraction = 0.05
  c.read_threads = 1
  return c


@pytest.fixture(scope="module")
def sample():
  return tokenizer_lib.training_sample(tiny_config())


@pytest.fixture(scope="module")
def llama2_sp(tmp_path_factory, sample):
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sample), model_writer=proto, model_type="bpe", vocab_size=400,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, add_dummy_prefix=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
      allow_whitespace_only_pieces=True, max_sentence_length=1 << 16, minloglevel=2)
  path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
  path.write_bytes(proto.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory, sample):
  """(bare tokenizer.json path, HF dir) of a byte-level BPE with BOS/EOS at the top."""
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(sample, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tk.add_special_tokens([BOS_TEXT, EOS_TEXT])
  bos = tk.token_to_id(BOS_TEXT)
  tk.post_processor = processors.TemplateProcessing(single=f"{BOS_TEXT} $A",
                                                    special_tokens=[(BOS_TEXT, bos)])
  root = tmp_path_factory.mktemp("bpe")
  tk.save(str(root / "tokenizer.json"))
  hf_dir = root / "hf"
  transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(root / "tokenizer.json"), bos_token=BOS_TEXT,
      eos_token=EOS_TEXT).save_pretrained(str(hf_dir))
  return str(root / "tokenizer.json"), str(hf_dir)


def test_special_ids_of_every_form(llama2_sp, bpe_json):
  assert tokenizer_lib.special_ids(llama2_sp) == (1, 2)
  tok = tokenizer_lib.load(llama2_sp)
  assert tok.vocab_size == 400 and tok.add_bos
  bare, hf_dir = bpe_json
  V = tokenizer_lib.load(bare).vocab_size
  # BOS from the post-processor, EOS by its name; the directory's from tokenizer_config.json.
  assert tokenizer_lib.special_ids(bare) == (V - 2, V - 1)
  assert tokenizer_lib.special_ids(hf_dir) == (V - 2, V - 1)
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert (hf.bos_token_id, hf.eos_token_id) == (V - 2, V - 1)


def test_qwen_style_directory_has_no_bos(bpe_json, tmp_path):
  # Qwen2 writes bos_token null: no BOS, whatever config.json's bos_token_id says.
  _, hf_dir = bpe_json
  d = tmp_path / "qwen"
  shutil.copytree(hf_dir, d)
  cfg = json.loads((d / "tokenizer_config.json").read_text())
  cfg.update(bos_token=None, add_bos_token=False)
  (d / "tokenizer_config.json").write_text(json.dumps(cfg))
  (d / "config.json").write_text(json.dumps({"bos_token_id": 5, "eos_token_id": 7}))
  tok = tokenizer_lib.load(str(d))
  assert (tok.bos_id, tok.eos_id, tok.add_bos) == (None, tokenizer_lib.load(hf_dir).eos_id, False)
  assert tokenizer_lib.tokenizer_hash(str(d)) != tokenizer_lib.tokenizer_hash(hf_dir)


def test_bpe_ids_equal_transformers(bpe_json):
  _, hf_dir = bpe_json
  tok, hf = tokenizer_lib.load(hf_dir), transformers.AutoTokenizer.from_pretrained(hf_dir)
  for s in PROBES:
    assert tok.encode(s) == hf.encode(s, add_special_tokens=False), s
    assert [tok.bos_id] + tok.encode(s) == hf.encode(s), s  # hf adds BOS by default
    assert tok.decode(tok.encode(s)) == s
  assert tok.encode_batch(PROBES) == [hf.encode(s, add_special_tokens=False) for s in PROBES]


def test_sentencepiece_ids_equal_its_tokenizer_json_under_transformers(llama2_sp, tmp_path, sample):
  # transformers reads a tokenizer.model through protobuf; maxlm's converter gives
  # the tokenizer.json it would load instead: ids must be SentencePiece's own.
  sp = spm.SentencePieceProcessor(model_file=llama2_sp)
  tokenizer_json.write_hf_tokenizer(llama2_sp, str(tmp_path), bos=1, eos=2, pad=None)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  tok = tokenizer_lib.load(llama2_sp)
  for s in PROBES + [t[:300] for t in sample[:20]]:
    assert tok.encode(s) == sp.encode(s) == hf.encode(s, add_special_tokens=False), s
    assert hf.encode(s) == [1] + sp.encode(s)
    assert hf.decode(hf.encode(s, add_special_tokens=False)) == sp.decode(sp.encode(s))


def test_byte_level_token_bytes_are_exact(bpe_json):
  tok = tokenizer_lib.load(bpe_json[1])
  table = np.asarray(tok.token_bytes())
  assert table[tok.bos_id] == table[tok.eos_id] == 0
  for s in PROBES:
    assert table[tok.encode(s)].sum() == len(s.encode("utf-8")), s


def _documents_in_rows(tok_path, c):
  """Checks every packed segment against its document framed by the tokenizer's ids.

  Returns (segments, segments starting a document, segments ending one)."""
  tok = tokenizer_lib.load(tok_path)
  texts = {d: t for p in pipeline.plan_sources(c) for t, d in p.train}
  it = data.make_train_iterator(c, tokenizer_path=tok_path, seq_len=128, global_batch=4, seed=0,
                                keep_doc_ids=True)
  n = starts = ends = 0
  for _ in range(4):
    b = next(it)
    for r in range(4):
      seg = b["segment_ids"][r]
      for s in np.unique(seg[seg > 0]):
        cols = np.nonzero(seg == s)[0]
        doc = [tok.bos_id] + tok.encode(texts[b["doc_ids"][r, cols[0]]]) + [tok.eos_id]
        row = list(b["inputs"][r, cols]) + [b["targets"][r, cols[-1]]]
        k = next(k for k in range(len(doc)) if doc[k:k + len(row)] == row)  # StopIteration: no slice
        n, starts, ends = n + 1, starts + (k == 0), ends + (k + len(row) == len(doc))
  return n, starts, ends


@pytest.mark.parametrize("form", ["sentencepiece", "tokenizer.json", "hf_dir"])
def test_pipeline_frames_documents_with_the_tokenizers_ids(form, llama2_sp, bpe_json):
  path = {"sentencepiece": llama2_sp, "tokenizer.json": bpe_json[0], "hf_dir": bpe_json[1]}[form]
  bos, eos = tokenizer_lib.special_ids(path)
  assert (bos, eos) != (tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID)  # not maxlm's layout
  n, starts, ends = _documents_in_rows(path, tiny_config(path))
  assert n > 10 and starts > 5 and ends > 5
