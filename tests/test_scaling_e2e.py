"""The scaling loop end to end through the CLI and the real trainer (slow).

sweep -> run (`python -m maxlm.train`, configs/pretrain.py:tiny) -> collect -> fit
-> plot, on a cut-down `tiny` sweep: 2 budgets x 3 sizes of a few dozen steps.
Each run costs ~20-60 s of start-up on a shared 2-core machine whatever its
size, so 2 x 3 runs (the least Approach 2 can use) do not fit in the test's
4-minute budget; 4 runs exercise every step of the loop and the Approach 3 fit
on real workdirs. The full miniature (3 budgets x 4 sizes, interior minima) is
the README example in docs/scaling.md.

  .venv/bin/pytest -q -m slow tests/test_scaling_e2e.py
"""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from maxlm.scaling import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=1800):
  out = subprocess.run([sys.executable, "-m", "maxlm.scaling", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out.stdout


@pytest.mark.slow
def test_sweep_run_collect_fit_plot(tmp_path):
  root = tmp_path / "sweep"
  # A few steps per run: the tiny variant's 20 warmup steps would exceed them.
  extra = list(cli.load_config(os.path.join(ROOT, "configs/scaling_sweep.py:tiny")).launch.extra_overrides)
  extra.append("--config.optim.schedule.warmup_steps=2")
  _cli("sweep", "--config=configs/scaling_sweep.py:tiny", f"--root={root}", "--set", "budgets=[1e10,3e10]",
       "--set", "n_per_budget=3", "--set", "tokens_per_param=20.0", "--set", f"launch.extra_overrides={extra!r}",
       "--run")
  with open(root / "points.jsonl") as f:
    points = [json.loads(line) for line in f]
  assert len(points) == 6  # approach 3 fits 5 parameters: at least 5 points
  for p in points:
    assert os.path.exists(os.path.join(p["workdir"], "done.json")), open(os.path.join(p["workdir"], "run.log")).read()
  # Finished points are skipped on a second run.
  assert _cli("run", str(root)).count("skip") == 6
  _cli("collect", str(root), f"--out={root / 'results.csv'}")
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6
  by_name = {p["name"]: p for p in points}
  for r in rows:
    p = by_name[r["name"]]
    assert int(r["tokens"]) == p["steps"] * p["global_batch"] * p["seq_len"]  # trained what was planned
    assert float(r["flops"]) == pytest.approx(p["budget"], rel=0.25)  # whole steps round D
    for k in ("final_loss", "eval_loss", "eval/code/loss", "eval/prose/loss"):
      assert 0 < float(r[k]) < math.log(512) + 0.5, (k, r)  # trained below a uniform guess (+ margin)
    assert float(r["tokens_per_s"]) > 0
  fit = json.loads(_cli("fit", str(root / "results.csv"), "--loss-col=eval_loss", "--method=approach3",
                        "--grid=coarse", "--predict-flops", "1e12", f"--plot-dir={root / 'plots'}", "--json"))
  for k in ("E", "A", "B", "alpha", "beta", "objective"):
    assert math.isfinite(fit[k]), fit
  assert fit["n_points"] == 6 and fit["compute_optimal"][0]["n_opt"] > 0
  for name in ("isoflop.png", "frontier.png", "residuals.png"):
    path = root / "plots" / name
    assert path.exists() and path.stat().st_size > 1000
