"""Perplexity and bits per byte against a direct numpy computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.eval import perplexity
from maxlm.model import ModelConfig, forward, init_params


class ByteTokenizer:
  """UTF-8 bytes as ids 4..259: every byte is a token, so bytes are known exactly."""
  bos_id, eos_id, vocab_size = 2, 3, 260

  def encode(self, text):
    return [4 + b for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(i - 4 for i in ids if i >= 4).decode("utf-8", "replace")

  def token_bytes(self):
    return [0] * 4 + [1] * 256


def _model():
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
  return cfg, jax.tree.map(lambda w: w * 5 if w.ndim >= 2 else w, params)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_score_texts_matches_numpy():
  cfg, params = _model()
  tok = ByteTokenizer()
  texts = ["héllo wörld\n", "中文测试。", "def f(x):\n    return x\n" * 2]
  max_len = 20  # the last text (48 bytes) spans three windows, the last one short
  got = perplexity.score_texts(cfg, params, tok, texts, max_len=max_len, batch_size=4)
  nats, n_tok = 0.0, 0
  for t in texts:
    ids = tok.encode(t)
    for start in range(0, len(ids), max_len):
      # Later windows: as much context as fills max_len + 1 tokens.
      seq = [tok.bos_id] + ids[:max_len] if start == 0 else ids[:start + max_len][-max_len - 1:]
      # Right-padded to one length (one compile); padding is in the causal future.
      buf = np.zeros((1, 32), np.int32)
      buf[0, :len(seq) - 1] = seq[:-1]
      logits = np.asarray(forward(cfg, params, jnp.asarray(buf)), np.float64)[0]
      lp = _log_softmax(logits)
      c = len(ids[start:start + max_len])  # scored tokens; the rest of seq is context
      nats -= sum(lp[i, seq[i + 1]] for i in range(len(seq) - 1 - c, len(seq) - 1))
      n_tok += c
  n_bytes = sum(len(t.encode()) for t in texts)
  assert got["tokens"] == n_tok == n_bytes and got["bytes"] == n_bytes
  np.testing.assert_allclose(got["nats"], nats, rtol=1e-5)
  np.testing.assert_allclose(got["bpb"], nats / (math.log(2) * n_bytes), rtol=1e-5)
  np.testing.assert_allclose(got["ppl"], math.exp(nats / n_tok), rtol=1e-4)


def test_heldout_bytes_and_metrics_by_hand():
  table = np.array([0, 0, 0, 0, 1, 2, 3])  # ids 4..6 stand for 1, 2, 3 bytes
  batches = {"web": [dict(targets=np.array([[4, 5, 6, 3]]), loss_mask=np.array([[1, 1, 0, 1]]))],
             "code": [dict(targets=np.array([[6, 6], [0, 0]]), loss_mask=np.array([[1, 1], [0, 0]]))]}
  n_bytes = perplexity.heldout_bytes(batches, table)
  assert n_bytes == {"web": 1 + 2 + 0, "code": 6}
  m = perplexity.heldout_metrics({"web": 6.0, "code": 3.0}, {"web": 3, "code": 2}, n_bytes)
  assert math.isclose(m["eval/web/loss"], 2.0) and math.isclose(m["eval/web/ppl"], math.exp(2))
  assert math.isclose(m["eval/web/bpb"], 6.0 / (math.log(2) * 3))
  assert math.isclose(m["eval/code/bpb"], 3.0 / (math.log(2) * 6))


def test_sentencepiece_byte_table_counts_every_byte(tmp_path):
  from maxlm.data import tokenizer as tok_lib
  text = ("The quick brown fox jumps over the lazy dog.\n    indented code = 1\n"
          "数字 3.14 and émigré ☃\n") * 20
  path = tok_lib.train_tokenizer([text], str(tmp_path / "t.model"),
                                 {"vocab_size": 384, "pad_to_multiple": 128})
  sp = tok_lib.load(path)
  table = perplexity.token_byte_lengths(path, vocab_size=512)
  assert table.shape == (512,) and table[:4].sum() == 0
  for probe in (text, "unseen ✓ 𝔘nicode\ttab", "  x\n\n"):
    ids = sp.encode(probe)
    assert table[ids].sum() == len(probe.encode("utf-8")), probe
