"""What the training commands share: flags, quiet library logging, and honest exit codes.

Errors in flags, configs and input files are reported by maxlm/cli.py (one line,
exit 2 or 1); this module adds what only a training run can fail at. A run that did not do what was asked exits non-zero with one line saying why:
stopped by its spike guard, over its data error budget, or ending with a
non-finite loss. A preempted run (SIGTERM) exits 0: it saved and resumes.
"""

from __future__ import annotations

import math
import sys

from absl import flags
from ml_collections import config_flags

from maxlm import cli as maxlm_cli
from maxlm.data import DataErrorBudgetExceeded
from maxlm.errors import RunError


def failure(summaries: list[dict]) -> str | None:
  """Why the runs in `summaries` failed, in one line, or None when they did not."""
  for s in summaries:
    if s.get("stopped"):
      return f"stopped at step {s['step']}: {s['stopped']}"
    loss = s.get("final_loss")
    if not s.get("preempted") and loss is not None and not math.isfinite(loss):
      return (f"the training loss is {loss} at step {s['step']}: the run diverged (check"
              " data vs model.vocab_size, optim.peak_lr, monitor.spikes)")
  return None


def run(fn, name: str) -> None:
  """Defines --config / --workdir and runs `fn(config, workdir) -> summary | [summaries]`."""
  config = config_flags.DEFINE_config_file("config", None, "Stage config file[:arg].",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, plots.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    try:
      out = fn(config.value, workdir.value)
    except DataErrorBudgetExceeded as e:
      sys.exit(f"{name}: stopped: {e}")
    except RunError as e:  # the message is the whole story (refused resume, lock, full disk)
      sys.exit(f"error: {e}")
    why = failure(out if isinstance(out, list) else [out])
    if why:
      sys.exit(f"{name}: {why}")

  # maxlm/cli.py: bad flags, configs and input files in one line, library INFO logs quiet.
  maxlm_cli.run(main)
