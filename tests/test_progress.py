"""Feedback on long work (issue 18.4): [k/n] with a cost-weighted ETA, summaries last, quiet library logs."""
import io
import logging
import os
import re
import shlex
import sys

from maxlm.monitor.logs import quiet_library_logs
from maxlm.monitor.progress import Progress, duration
from maxlm.scaling import cli, runs
from test_scaling_sweep import CONFIG, FAKE_TRAIN


def test_eta_is_time_per_unit_cost_times_cost_left():
  ticks = iter([0.0, 10.0, 40.0, 100.0])
  out = io.StringIO()
  p = Progress(3, desc="sweep", total_cost=100.0, out=out, clock=lambda: next(ticks))
  p.update("small", cost=10.0)  # 10 s for 10 units: 90 units left -> 90 s
  p.update("middle", cost=30.0)  # 40 s for 40 units: 60 left -> 60 s
  p.update("big", cost=60.0)
  assert out.getvalue().splitlines() == [
      "sweep [1/3] small; 10s elapsed, ETA 1m30s",
      "sweep [2/3] middle; 40s elapsed, ETA 1m00s",
      "sweep [3/3] big; 1m40s elapsed, done"]
  assert duration(3725) == "1h02m"


def test_sweep_run_prints_count_eta_and_a_summary_last(tmp_path):
  fake = tmp_path / "fake_train.py"
  fake.write_text(FAKE_TRAIN)
  root = tmp_path / "sweep"
  template = f"{shlex.quote(sys.executable)} {shlex.quote(str(fake))} --workdir={{workdir}} {{overrides}}"
  cli.main(["sweep", f"--config={CONFIG}:tiny", f"--root={root}", "--set", "budgets=[1e12, 3e12]",
            "--set", f"launch.command={template!r}"])
  points = runs.read_points(str(root))
  os.makedirs(points[0]["workdir"])
  open(os.path.join(points[0]["workdir"], runs.DONE), "w").write('{"final_loss": 1.0}')
  logged, progress = [], io.StringIO()
  runs.run(str(root), log=logged.append, progress_out=progress)
  lines = progress.getvalue().splitlines()
  n = len(points) - 1
  assert len(lines) == n
  for k, line in enumerate(lines, 1):
    assert re.fullmatch(rf"sweep \[{k}/{n}\] \S+: ok in [\d.]+s; \S+ elapsed, "
                        + ("done" if k == n else r"ETA \S+"), line), line
  assert logged[-1].startswith(f"sweep: ran {n} of {n} point(s) in ")
  assert logged[-1].endswith(f"{n} ok; 1 were already done")


def test_library_info_is_quiet_unless_verbosity_is_given():
  quiet_library_logs(None)
  assert not logging.getLogger("orbax").isEnabledFor(logging.INFO)
  assert not logging.getLogger("apache_beam").isEnabledFor(logging.INFO)
  assert logging.getLogger("maxlm.train").isEnabledFor(logging.INFO)
  quiet_library_logs(0)
  assert logging.getLogger("absl").isEnabledFor(logging.INFO)
  quiet_library_logs(None)


def test_fit_reports_each_batch_of_starts_and_each_resample():
  import numpy as np
  from maxlm.scaling import chinchilla
  n = np.array([1e6, 3e6, 1e7, 3e7, 1e6, 1e7]); d = np.array([2e7, 6e7, 2e8, 6e8, 2e8, 2e7])
  loss = 1.7 + 400 / n ** 0.34 + 410 / d ** 0.28
  grid = chinchilla.coarse_grid()
  out = io.StringIO()
  chinchilla.fit(n, d, loss, grid=grid, n_boot=2, progress=Progress(len(grid) + 2, desc="fit", out=out))
  lines = out.getvalue().splitlines()
  total = len(grid) + 2
  assert [re.match(r"fit \[(\d+)/", l).group(1) for l in lines][-3:] == [str(len(grid)), str(total - 1), str(total)]
  assert f"starts {len(grid)}/{len(grid)}, best objective" in lines[-3]
  assert lines[-1].startswith(f"fit [{total}/{total}] bootstrap 2/2;") and lines[-1].endswith("done")
