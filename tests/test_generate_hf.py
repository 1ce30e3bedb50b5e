"""Greedy generation from an HF directory equals transformers' own `generate`.

The directory is what `LlamaForCausalLM.save_pretrained` writes (float32
safetensors) plus a tokenizer.json, so `maxlm.generate.load_model` reads it the
way a user's Llama checkpoint is read. The tokenizer is character-level (a BPE
with no merges): both libraries then split text identically by construction,
and the tests compare models, not tokenizers.
"""
import string

import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra, requirements-reference.txt)
import transformers  # noqa: E402

from hf_fixtures import randomize  # noqa: E402

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)
from tokenizers import Tokenizer, decoders, models  # noqa: E402

from maxlm.generate import generate_ids, load_model  # noqa: E402

CHARS = string.ascii_lowercase + " .,\n"
VOCAB = 64  # > the 33 tokenizer ids: unused rows, as in real padded vocabularies
BOS, EOS = 1, 2


def save_tiny_llama(path, seed=0, max_position_embeddings=128):
  """Writes a random-weight float32 Llama and a char-level tokenizer to `path`."""
  vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS, **{c: i + 3 for i, c in enumerate(CHARS)}}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tk.decoder = decoders.Fuse()  # pieces are characters: decode by concatenation
  transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>").save_pretrained(path)
  config = transformers.LlamaConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=max_position_embeddings,
      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
  model = randomize(transformers.LlamaForCausalLM(config), seed)
  model.save_pretrained(path, safe_serialization=True)
  return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_llama")
  return str(path), save_tiny_llama(path)


def _cut_at_eos(ids):
  return ids[:ids.index(EOS)] if EOS in ids else ids


def test_load_model_reads_hf_dir(hf_dir):
  path, _ = hf_dir
  cfg, _, tok = load_model(path)
  assert (cfg.vocab_size, cfg.n_layers, cfg.n_kv_heads) == (VOCAB, 2, 2)
  assert (tok.bos_id, tok.eos_id) == (BOS, EOS)  # from config.json
  hf_tok = transformers.AutoTokenizer.from_pretrained(path)
  text = "the cat, sat.\n"
  assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
  assert tok.decode(tok.encode(text)) == text


def test_special_ids_from_tokenizer_config(tmp_path):
  # maxlm's own exports write no token ids into config.json: the ids then come
  # from the token strings in tokenizer_config.json.
  import json
  save_tiny_llama(tmp_path)
  hf = json.loads((tmp_path / "config.json").read_text())
  for k in ("bos_token_id", "eos_token_id"):
    hf.pop(k, None)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  _, _, tok = load_model(str(tmp_path))
  assert (tok.bos_id, tok.eos_id) == (BOS, EOS)


def test_greedy_matches_transformers_generate(hf_dir):
  path, model = hf_dir
  cfg, params, tok = load_model(path)
  texts = ["the quick brown fox", "a", "jumps over the lazy dog."]  # different lengths
  prompts = [[BOS] + tok.encode(t) for t in texts]
  n_new = 10
  got = generate_ids(cfg, params, prompts, max_new_tokens=n_new, eos_id=EOS, bucket=16)

  # transformers, the whole batch left-padded (its generate derives positions
  # from the attention mask, as maxlm's left_pad does).
  width = max(map(len, prompts))
  ids = torch.zeros((len(prompts), width), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for b, p in enumerate(prompts):
    ids[b, width - len(p):] = torch.as_tensor(p)
    mask[b, width - len(p):] = 1
  with torch.no_grad():
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new,
                         eos_token_id=EOS, pad_token_id=0)
  want = [_cut_at_eos(row[width:].tolist()) for row in out]
  # Each row alone too: left padding must change nothing on the HF side either.
  for b, p in enumerate(prompts):
    with torch.no_grad():
      alone = model.generate(torch.as_tensor([p]), do_sample=False, max_new_tokens=n_new,
                             eos_token_id=EOS, pad_token_id=0)
    assert _cut_at_eos(alone[0, len(p):].tolist()) == want[b]
  assert got == want
  assert len({tuple(w) for w in want}) > 1 and max(len(set(w)) for w in want) > 2  # not degenerate
