"""The "maxlm" lm-evaluation-harness model: its log-likelihoods against direct computation."""

import json
import math
import os

import numpy as np
import pytest

import lm_eval  # noqa: E402,F401  (a core requirement)
from lm_eval.api.instance import Instance  # noqa: E402

from maxlm.eval.lm_eval_model import MaxlmLM  # noqa: E402
from test_eval_probes import CharTokenizer, bigram_model, seq_logprob  # noqa: E402


def _req(kind, *args):
  return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def bigram():
  cfg, params, logp = bigram_model(3)
  return MaxlmLM(model=(cfg, params, CharTokenizer()), batch_size=4, max_length=8), logp


def test_loglikelihood_matches_table(bigram):
  lm, logp = bigram
  tok = lm.tok
  pairs = [("ab", "c"), ("a b", " de"), ("abc ", "d."), ("", "ab"), ("e" * 12, "ab")]
  got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
  for (ctx, cont), (lp, greedy) in zip(pairs, got):
    # Trailing space of the context moves into the continuation.
    n = len(ctx) - len(ctx.rstrip())
    ctx, cont = ctx[:len(ctx) - n], ctx[len(ctx) - n:] + cont
    ids = [tok.bos_id] + tok.encode(ctx + cont)
    c = len(cont)
    want = seq_logprob(logp, ids[-c - 1:])
    assert math.isclose(lp, want, abs_tol=1e-4), (ctx, cont)
    want_greedy = all(logp[a].argmax() == b for a, b in zip(ids[-c - 1:-1], ids[-c:]))
    assert greedy == want_greedy


def test_loglikelihood_rolling_matches_table(bigram):
  lm, logp = bigram
  texts = ["abcde. abcde.\n", "a", "dd cc bb aa ee ."]  # longer than max_length=8: windows
  got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])
  for t, lp in zip(texts, got):
    # A bigram model sees only the previous token, so windows lose nothing.
    assert math.isclose(lp, seq_logprob(logp, [2] + lm.tok.encode(t)), abs_tol=1e-4)


def test_generate_until_is_greedy_and_stops(bigram):
  lm, logp = bigram
  tok = lm.tok
  out = lm.generate_until([_req("generate_until", "ab", dict(until=[], max_gen_toks=5)),
                           _req("generate_until", "c", dict(until=["."], max_gen_toks=6))])
  for text, (prompt, n) in zip(out, [("ab", 5), ("c", 6)]):
    ids = [tok.bos_id] + tok.encode(prompt)
    want = []
    for _ in range(n):
      nxt = int(logp[ids[-1]].argmax())
      if nxt == tok.eos_id:
        break
      ids.append(nxt)
      want.append(nxt)
    want = tok.decode(want)
    if prompt == "c":
      want = want.split(".")[0]
    assert text == want


def test_local_tasks_through_simple_evaluate(bigram, tmp_path):
  """A multiple-choice and a rolling-perplexity task from local JSONL through lm-eval itself."""
  import lm_eval
  from lm_eval.tasks import TaskManager
  lm, logp = bigram
  tok = lm.tok
  mc = [dict(q="ab", choices=["c", "d", "e"], answer=0), dict(q="ca", choices=["b", "e"], answer=1)]
  docs = [dict(text="abc de."), dict(text="ed cba.")]
  for name, rows in (("mc", mc), ("roll", docs)):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "tiny_mc.yaml").write_text(f"""
task: maxlm_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
""")
  (tmp_path / "tiny_roll.yaml").write_text(f"""
task: maxlm_tiny_roll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'roll.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
  tm = TaskManager(include_path=str(tmp_path))
  res = lm_eval.simple_evaluate(model=lm, tasks=["maxlm_tiny_mc", "maxlm_tiny_roll"],
                                task_manager=tm, log_samples=True)
  for s in res["samples"]["maxlm_tiny_mc"]:
    d = s["doc"]
    got = [r[0][0] for r in s["resps"]]
    ctx = [2] + tok.encode(d["q"])
    want = [seq_logprob(logp, ctx + tok.encode(c)) - seq_logprob(logp, ctx) for c in d["choices"]]
    np.testing.assert_allclose(got, want, atol=1e-4)
  for s in res["samples"]["maxlm_tiny_roll"]:
    want = seq_logprob(logp, [2] + tok.encode(s["doc"]["text"]))
    assert math.isclose(s["resps"][0][0], want, abs_tol=1e-4)
  n_bytes = sum(len(d["text"]) for d in docs)
  total = sum(seq_logprob(logp, [2] + tok.encode(d["text"])) for d in docs)
  assert math.isclose(res["results"]["maxlm_tiny_roll"]["bits_per_byte,none"],
                      -total / (math.log(2) * n_bytes), rel_tol=1e-4)
