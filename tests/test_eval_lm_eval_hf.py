"""lm-eval parity: the `maxlm` model and lm-eval's own `hf` model on one HF directory.

Both read the same tiny Llama (tests/test_generate_hf.py) and its char-level
tokenizer, run the same local tasks through `lm_eval.simple_evaluate`, and
must give the same per-request log-likelihoods (1e-4 nats).

BOS. maxlm puts BOS before every context and conditions a rolling text's first
window on BOS without scoring a BOS of its own. lm-eval's hf model does the
first when asked (`add_bos_token=True`), but then its tokenizer also adds BOS to
rolling texts and the first window scores log p(BOS | BOS) as a text token. So
the rolling task runs hf with the tokenizer's default (no BOS added; the window
prefix is still BOS, lm-eval's `prefix_token_id`), which is maxlm's convention.
"""
import json

import numpy as np
import pytest

import lm_eval  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402  (needs accelerate: test requirement)
from lm_eval.tasks import TaskManager  # noqa: E402

from maxlm.eval import scoring  # noqa: E402
from maxlm.eval.lm_eval_model import MaxlmLM  # noqa: E402
from test_generate_hf import save_tiny_llama  # noqa: E402

pytestmark = pytest.mark.torch  # lm-eval's hf model is the reference (3.11 stack only)

MAX_LEN = 16  # short windows, so the rolling texts below span several


def write_tasks(dirname):
  """A multiple-choice and a rolling-perplexity task over local JSONL; returns their names."""
  mc = [dict(q="the cat sat on the", choices=["mat", "dog", "hat."], answer=0),
        dict(q="a b c d e f g h i j k l m n o p", choices=["q", "q r s"], answer=0),  # truncated
        dict(q="dogs", choices=["bark.", "run, jump"], answer=1)]
  docs = [dict(text="the quick brown fox jumps over the lazy dog.\n" * 2),
          dict(text="a"), dict(text="hello, world.")]
  for name, rows in (("mc", mc), ("roll", docs)):
    with open(dirname / f"{name}.jsonl", "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))
  common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: "
  (dirname / "parity_mc.yaml").write_text(f"""task: parity_mc
{common}{dirname / 'mc.jsonl'}
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
""")
  (dirname / "parity_roll.yaml").write_text(f"""task: parity_roll
{common}{dirname / 'roll.jsonl'}
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""")
  return "parity_mc", "parity_roll"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("parity")
  save_tiny_llama(root / "model", max_position_embeddings=MAX_LEN)
  tasks = write_tasks(root)
  return str(root / "model"), TaskManager(include_path=str(root)), tasks


@pytest.mark.parametrize("n", [1, 5, 16, 17, 40, 48])
def test_rolling_windows_are_lm_evals(n):
  from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
  ids = list(range(100, 100 + n))
  want = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, 7, MAX_LEN, 1)]
  assert scoring.rolling_windows(ids, MAX_LEN, 7) == want


def per_request(lm, task, tm):
  """Log-likelihoods of every request of `task`, in (doc, choice) order."""
  res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=True)
  samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
  # A loglikelihood response is (logp, is_greedy); a rolling one is logp alone.
  return np.array([np.ravel(r[0])[0] for s in samples for r in s["resps"]], np.float64)


def hf_lm(path, **kw):
  return HFLM(pretrained=path, backend="causal", device="cpu", dtype="float32", batch_size=4,
              max_length=MAX_LEN, **kw)


def test_multiple_choice_matches_hf(setup):
  path, tm, (mc, _) = setup
  got = per_request(MaxlmLM(pretrained=path, batch_size=4, max_length=MAX_LEN), mc, tm)
  want = per_request(hf_lm(path, add_bos_token=True), mc, tm)
  assert got.shape == (7,) and np.all(got < 0)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_rolling_matches_hf(setup):
  path, tm, (_, roll) = setup
  got = per_request(MaxlmLM(pretrained=path, batch_size=4, max_length=MAX_LEN), roll, tm)
  want = per_request(hf_lm(path), roll, tm)
  assert got.shape == (3,) and np.all(got < 0)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------- a real subword tokenizer
# The char-level tokenizer above splits text the same way whatever the boundary.
# A Llama-2-style tokenizer (SentencePiece BPE with the dummy prefix, here as the
# tokenizer.json transformers would load) does not: "cat" alone is "\u2581cat",
# after "the ca" it is "t", so encoding the continuation alone (maxlm before
# issue 14) gave other ids and other log-likelihoods than lm-eval's hf model.

SP_TEXT = ("the cat sat on the mat. the dog ran in the park, and the cat ran after it.\n"
           "hello world. a quick brown fox jumps over the lazy dog.\n") * 40


@pytest.fixture(scope="module")
def sp_model_dir(tmp_path_factory):
  import io

  import sentencepiece as spm
  import torch
  import transformers

  from maxlm.interop import tokenizer_json
  root = tmp_path_factory.mktemp("sp_llama")
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SP_TEXT.splitlines(keepends=True)), model_writer=proto,
      model_type="bpe", vocab_size=340, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      byte_fallback=True, add_dummy_prefix=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, hard_vocab_limit=False, minloglevel=2)
  (root / "tokenizer.model").write_bytes(proto.getvalue())
  tokenizer_json.write_hf_tokenizer(str(root / "tokenizer.model"), str(root / "model"), bos=1,
                                    eos=2, pad=None)
  torch.manual_seed(1)
  config = transformers.LlamaConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, vocab_size=384, max_position_embeddings=MAX_LEN, bos_token_id=1,
      eos_token_id=2)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.2 * torch.randn_like(p)) if name.endswith("norm.weight") else p.normal_(0, 0.2)
  model.save_pretrained(str(root / "model"), safe_serialization=True)
  return str(root / "model")


def _requests(kind, args):
  from lm_eval.api.instance import Instance
  return [Instance(kind, {}, a, idx=0) for a in args]


PAIRS = [("the ca", "t sat"),  # mid-word
         ("the cat sat", "\non the mat."),  # a newline
         ("the cat", " sat on"),  # a space
         ("the cat ", "ran"),  # trailing space moves into the continuation
         ("hello", "world"),  # no space: one word, split mid-word
         ("", "the dog"),  # empty context: conditioned on BOS alone
         ("the dog ran in the park, and the cat ran after", " it.")]  # truncated on the left


def test_pairs_are_encoded_as_hf_does(sp_model_dir):
  lm = MaxlmLM(pretrained=sp_model_dir, batch_size=4, max_length=MAX_LEN)
  hf = hf_lm(sp_model_dir, add_bos_token=True)
  for ctx, cont in PAIRS[:-2]:  # non-empty contexts: lm-eval's _encode_pair
    want = hf._encode_pair(ctx, cont)  # pylint: disable=protected-access
    assert lm.encode_pair(ctx, cont) == (list(want[0]), list(want[1])), (ctx, cont)
  # Mid-word the continuation starts without the word-initial U+2581 it has alone.
  _, cont_ids = lm.encode_pair("the ca", "t sat")
  assert lm.tok.id_to_piece(lm.tok.encode("t sat")[0]).startswith("\u2581")
  assert not lm.tok.id_to_piece(cont_ids[0]).startswith("\u2581")


def test_loglikelihood_matches_hf_on_word_boundaries(sp_model_dir):
  reqs = _requests("loglikelihood", PAIRS)
  got = MaxlmLM(pretrained=sp_model_dir, batch_size=4, max_length=MAX_LEN).loglikelihood(reqs)
  want = hf_lm(sp_model_dir, add_bos_token=True).loglikelihood(reqs)
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], atol=1e-4, rtol=0)
  assert [g[1] for g in got] == [w[1] for w in want]
  assert all(g[0] < 0 for g in got)


def test_rolling_longer_than_the_context_matches_hf(sp_model_dir):
  texts = [SP_TEXT[:300], "the cat", SP_TEXT[50:140] + "\n"]
  reqs = _requests("loglikelihood_rolling", [(t,) for t in texts])
  lm = MaxlmLM(pretrained=sp_model_dir, batch_size=4, max_length=MAX_LEN)
  assert len(lm.tok.encode(texts[0])) > 4 * MAX_LEN  # several windows
  got = lm.loglikelihood_rolling(reqs)
  # hf with add_bos_token=False: its tokenizer then adds no BOS to the text, and the
  # first window is conditioned on BOS (prefix_token_id), as maxlm's (module docstring).
  want = hf_lm(sp_model_dir, add_bos_token=False).loglikelihood_rolling(reqs)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
