"""Probability probes on a model whose probabilities are known: a bigram table as params."""

import json
import math
import os

import jax
import numpy as np
import pytest

from maxlm.eval import probes as probes_lib
from maxlm.model import ModelConfig, init_params

ALPHABET = "abcde .\n"  # ids 4.. ; 0 pad, 1 unk, 2 BOS, 3 EOS


class CharTokenizer:
  """One id per character of ALPHABET: tests know every token exactly."""
  bos_id, eos_id, vocab_size = 2, 3, 4 + len(ALPHABET)

  def encode(self, text):
    return [4 + ALPHABET.index(c) for c in text]

  def decode(self, ids):
    return "".join(ALPHABET[i - 4] for i in ids if i >= 4)

  def token_bytes(self):
    return [0] * 4 + [len(c.encode()) for c in ALPHABET]


def bigram_model(seed=0, V=16):
  """(cfg, params, log P[V, V]): a transformer that computes log P(next | current) exactly.

  Attention and MLP outputs are zeroed, so the final state is the current
  token's embedding e_i = one-hot; RMSNorm makes it sqrt(D) e_i, and
  lm_head = logP / sqrt(D) gives logits logP[i], already normalised.
  """
  # norm_eps ~0 so RMSNorm scales the one-hot by exactly sqrt(D).
  cfg = ModelConfig(vocab_size=V, d_model=V, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
                    d_ff=16, norm_eps=1e-12)
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))  # no eager init
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  for norm in (params["final_norm"], params["layers"]["block"]["attn_norm"],
               params["layers"]["block"]["mlp_norm"]):
    norm["scale_d"] = np.ones_like(norm["scale_d"])
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.ones(V) * 0.5, size=V)
  logp = np.log(p).astype(np.float32)
  params["embedding_vd"] = np.eye(V, dtype=np.float32)
  params["lm_head_dv"] = (logp / math.sqrt(V)).astype(np.float32)
  return cfg, params, logp.astype(np.float64)


def seq_logprob(logp, ids):
  return sum(logp[a, b] for a, b in zip(ids[:-1], ids[1:]))


def _write(tmp_path, lines, name="p.jsonl"):
  path = os.path.join(tmp_path, name)
  with open(path, "w") as f:
    f.write("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return path


def test_contrastive_and_completion_against_the_table(tmp_path):
  cfg, params, logp = bigram_model()
  tok = CharTokenizer()
  path = _write(tmp_path, [
      dict(id="c1", type="contrastive", prompt="a", texts=["bc", "cb", "dd"], score="sum"),
      dict(id="c2", type="contrastive", texts=["abe", "ed"], score="mean"),
      dict(id="t1", type="completion", prompt="ab", target="cde"),
  ])
  res = probes_lib.run_probes(cfg, params, tok, probes_lib.load_probes(path))
  bos = tok.bos_id
  # c1: totals of log p(text | BOS a).
  ctx = [bos] + tok.encode("a")
  want = [seq_logprob(logp, ctx + tok.encode(t)) - seq_logprob(logp, ctx) for t in ("bc", "cb", "dd")]
  np.testing.assert_allclose(res[0]["scores"], want, atol=1e-4)
  assert res[0]["passed"] == (want[0] > max(want[1:]))
  assert math.isclose(res[0]["margin"], want[0] - max(want[1:]), abs_tol=1e-4)
  # c2: per-token means given BOS only.
  want = [seq_logprob(logp, [bos] + tok.encode(t)) / len(t) for t in ("abe", "ed")]
  np.testing.assert_allclose(res[1]["scores"], want, atol=1e-4)
  assert res[1]["passed"] == (want[0] > want[1])
  # t1: per-token log-probs and ranks from the table rows.
  ids = [bos] + tok.encode("abcde")
  tl = [logp[a, b] for a, b in zip(ids[2:-1], ids[3:])]
  np.testing.assert_allclose(res[2]["token_logprobs"], tl, atol=1e-4)
  ranks = [1 + int(np.sum(logp[a] > logp[a, b])) for a, b in zip(ids[2:-1], ids[3:])]
  assert res[2]["ranks"] == ranks and res[2]["tokens"] == ["c", "d", "e"]
  assert math.isclose(res[2]["logprob"], sum(tl), abs_tol=1e-4)


def test_forced_pass_and_fail():
  cfg, params, logp = bigram_model()
  tok = CharTokenizer()
  a, b = tok.encode("a")[0], tok.encode("b")[0]
  logp[a, :] = np.log(np.full(16, 0.01))
  logp[a, b] = np.log(0.85)
  params["lm_head_dv"] = (logp / 4.0).astype(np.float32)
  good = probes_lib.Probe("x", "contrastive", "a", texts=("b", "c"), score="sum")
  bad = probes_lib.Probe("y", "contrastive", "a", texts=("c", "b"), score="sum")
  r = probes_lib.run_probes(cfg, params, tok, [good, bad])
  assert r[0]["passed"] and not r[1]["passed"]
  np.testing.assert_allclose([r[0]["margin"], r[1]["margin"]],
                             [math.log(85), -math.log(85)], atol=1e-4)


def test_history_report_and_plot(tmp_path):
  tok = CharTokenizer()
  probes = [probes_lib.Probe("p", "contrastive", "a", texts=("b", "c"), score="sum"),
            probes_lib.Probe("q", "completion", "a", target="bc")]
  history = []
  for seed in range(3):
    cfg, params, _ = bigram_model(seed)
    history.append((f"run@{seed}", probes_lib.run_probes(cfg, params, tok, probes)))
  rows = probes_lib.compare(history, tol=0.0)
  assert [len(r["values"]) for r in rows] == [3, 3]
  for r in rows:
    assert r["status"].split()[0] == ("improved" if r["delta"] > 0 else "regressed")
  report = probes_lib.format_report(history, rows)
  assert "run@0" in report and "| p | contrastive |" in report and "contrastive passed" in report
  png = probes_lib.plot_history(rows, [h[0] for h in history], str(tmp_path / "p.png"))
  assert os.path.getsize(png) > 1000


@pytest.mark.parametrize("line,msg", [
    ("{not json", r"p.jsonl:2: not valid JSON"),
    (json.dumps(dict(id="z", type="completion", prompt="a", target="")), r":2: field 'target' is empty"),
    (json.dumps(dict(id="z", type="cloze", prompt="a")), r":2: field 'type' is 'cloze'"),
    (json.dumps(dict(id="z", type="contrastive", texts=["a"])), r":2: field 'texts' needs two"),
    (json.dumps(dict(id="z", type="completion", target="a", colour=1)), r":2: unknown field"),
    (json.dumps(dict(type="completion", target="a")), r":2: field 'id' is missing"),
])
def test_bad_probe_files_name_line_and_field(tmp_path, line, msg):
  ok = dict(id="ok", type="completion", prompt="a", target="b")
  with pytest.raises(ValueError, match=msg):
    probes_lib.load_probes(_write(tmp_path, [ok, line]))


def test_prompt_longer_than_context_is_an_error():
  cfg, params, _ = bigram_model()
  p = probes_lib.Probe("long", "completion", "abcde" * 4, target="ab")
  with pytest.raises(ValueError, match="probe 'long'.*longer than the model's context of 8"):
    probes_lib.run_probes(cfg, params, CharTokenizer(), [p], max_len=8)


def test_example_probe_set_parses():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  ps = probes_lib.load_probes(os.path.join(root, "configs", "probes", "example.jsonl"))
  tags = {t for p in ps for t in p.tags}
  assert {"facts", "arithmetic", "code", "chinese"} <= tags
  assert any(p.id.startswith("cmp_9.9") for p in ps)
