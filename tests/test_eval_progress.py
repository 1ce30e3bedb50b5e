"""Evaluation progress (issue 18): '[k/n] <unit>; elapsed, ETA' lines on stderr whose final
count is the real number of requests / windows / cells, quiet unless asked, summary last."""

import re

import numpy as np
import pytest

from lm_eval.api.instance import Instance

from maxlm.eval import lm_eval_model, needle, perplexity, scoring
from maxlm.eval.lm_eval_model import MaxlmLM
from maxlm.eval.progress import EvalProgress
from test_eval_perplexity import ByteTokenizer, _model
from test_eval_probes import CharTokenizer, bigram_model

_LINE = re.compile(r"^(?P<desc>.+) \[(?P<k>\d+)/(?P<n>\d+)\] (?P<unit>\w+); \S+ elapsed, (?P<left>.+)$")


def _lines(text, desc):
  out = [m.groupdict() for m in map(_LINE.match, text.splitlines()) if m and m["desc"] == desc]
  return [(int(d["k"]), int(d["n"]), d["unit"], d["left"]) for d in out]


def _req(kind, *args):
  return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_counts_are_monotone_about_ten_lines_and_the_last_is_the_total(capsys):
  p = EvalProgress(37, desc="x", unit="requests")
  rng = np.random.default_rng()
  done = 0
  while done < 37:
    n = int(min(37 - done, rng.integers(1, 4)))
    p.update(n=n)
    done += n
  lines = _lines(capsys.readouterr().err, "x")
  ks = [k for k, *_ in lines]
  assert ks == sorted(ks) and ks[-1] == 37 and all(n == 37 for _, n, *_ in lines)
  # A line at each tenth (every 4) and at the end; steps of 1-3 never skip a mark, but the
  # last step may cross 36 and reach 37 at once (one line for both).
  assert 9 <= len(lines) <= 10
  assert lines[-1][3] == "done" and all(left.startswith("ETA") for *_, left in lines[:-1])


def test_harness_requests_and_windows_are_counted(capsys):
  cfg, params, _ = bigram_model(1)
  lm = MaxlmLM(model=(cfg, params, CharTokenizer()), batch_size=4, max_length=8, progress=True)
  rng = np.random.default_rng()
  letters = list("abcde .")
  n_req = int(rng.integers(9, 30))
  pairs = [("".join(rng.choice(letters, int(rng.integers(1, 6)))),
            "".join(rng.choice(letters, int(rng.integers(1, 4))))) for _ in range(n_req)]
  lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
  texts = ["".join(rng.choice(letters, int(rng.integers(1, 30)))) for _ in range(5)]
  lm.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])
  lm.generate_until([_req("generate_until", "ab", dict(until=[], max_gen_toks=2))] * 3)
  err = capsys.readouterr().err
  ll = _lines(err, "harness loglikelihood")
  assert ll[-1] == (n_req, n_req, "requests", "done")
  n_windows = sum(len(scoring.rolling_windows(lm.tok.encode(t), 8, lm.tok.bos_id)) for t in texts)
  assert _lines(err, "harness loglikelihood_rolling")[-1] == (n_windows, n_windows, "windows", "done")
  assert _lines(err, "harness generate_until")[-1] == (3, 3, "requests", "done")
  assert lm.stats["rows"] == n_req + n_windows  # one process ran every row


def test_quiet_by_default_in_the_library_and_on_in_the_cli(capsys, monkeypatch):
  cfg, params, _ = bigram_model(1)
  lm = MaxlmLM(model=(cfg, params, CharTokenizer()), batch_size=4, max_length=8)
  lm.loglikelihood([_req("loglikelihood", "ab", "c")])
  assert capsys.readouterr().err == ""
  # The CLI turns the default on before lm-eval builds the model from --model_args.
  import lm_eval.__main__ as lm_main
  from maxlm.eval import harness
  seen = []
  monkeypatch.setattr(lm_main, "cli_evaluate", lambda: seen.append(lm_eval_model.PROGRESS_DEFAULT))
  monkeypatch.setattr(lm_eval_model, "PROGRESS_DEFAULT", False)
  monkeypatch.setattr("sys.argv", ["harness", "--compilation_cache=off", "--tasks", "x"])
  harness.main()
  import sys
  assert sys.argv == ["harness", "--tasks", "x"]  # lm-eval's argparse never sees our flag
  assert seen == [True]
  assert MaxlmLM(model=(cfg, params, CharTokenizer()), progress="False").progress is False


def test_perplexity_counts_windows(capsys):
  cfg, params = _model()
  tok = ByteTokenizer()
  texts = ["héllo wörld\n", "def f(x):\n    return x\n" * 3, "a"]
  got = perplexity.score_texts(cfg, params, tok, texts, max_len=16, batch_size=2, progress=True)
  n_windows = sum(-(-len(t.encode()) // 16) for t in texts)
  lines = _lines(capsys.readouterr().err, "perplexity")
  assert lines[-1] == (n_windows, n_windows, "windows", "done")
  assert got["tokens"] == sum(len(t.encode()) for t in texts)


def test_needle_counts_cells_and_the_summary_comes_last(capsys):
  V = 16
  uniform = lambda toks: np.zeros((*toks.shape, V), np.float32)
  res = needle.evaluate(uniform, filler_ids=[10, 11], needle_fn=lambda a: ([5, 6], [7]),
                        question_ids=[8], lengths=[12, 16], depths=[0.0, 0.5, 1.0], progress=True)
  lines = _lines(capsys.readouterr().err, "needle")
  assert len(res) == 6 and lines[-1] == (6, 6, "cells", "done")
  needle.evaluate(uniform, filler_ids=[10, 11], needle_fn=lambda a: ([5, 6], [7]),
                  question_ids=[8], lengths=[12], depths=[0.0])
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("total", [1, 3, 10, 11])
def test_small_totals_print_every_item_and_end_done(capsys, total):
  p = EvalProgress(total, desc="y", unit="cells")
  for _ in range(total):
    p.update()
  lines = _lines(capsys.readouterr().err, "y")
  assert [k for k, *_ in lines][-1] == total and lines[-1][3] == "done"
  step = -(-total // 10)  # a line each tenth, rounded up to whole items
  assert len(lines) == -(-total // step)
