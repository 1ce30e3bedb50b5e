"""Downstream evaluation during training: lm-evaluation-harness tasks on the live params.

`config.eval.harness` names tasks (lm-eval registry names, or local task
directories / YAML files, added to lm-eval's include path), a `limit` of
documents per task and `num_fewshot`; every `every` steps the composition root
calls `HarnessEvaluator(step, state)` as a loop hook. The model is the
registered "maxlm" LM class (maxlm/eval/lm_eval_model.py) built around the
params in memory, so nothing is exported. Results become
`harness/<task>/<metric>` (lm-eval's filter suffix kept when not "none"),
which the loop writes to metrics.jsonl and TensorBoard; `harness.png` in the
workdir plots them over steps. The loop keeps hook time out of throughput.

Multi-host: the params are a global array, so every jitted forward is one
SPMD program all processes enter. lm-eval runs whole on every process (same
requests, same order); the scorer (maxlm.eval.scoring.score_continuations)
cuts the sorted requests into global batches of `batch_size` rows per
process, each process's devices run their slice, and the results are
all-gathered, so every process gets the full list and lm-eval's metrics are
the same everywhere; only process 0 writes and plots them.
(tests/test_eval_multihost.py: two processes equal one, each ran half.)
`generate_until` tasks are not split (each process decodes all in lockstep).

`progress` prints '[k/n] requests; elapsed, ETA' lines on stderr (process 0).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re

from maxlm.eval.lm_eval_model import MaxlmLM
from maxlm.monitor.plots import plot_prefix

log = logging.getLogger(__name__)


def resolve_tasks(tasks) -> tuple[list[str], list[str]]:
  """(task names, include paths): a directory adds all its YAML tasks, a .yaml file its own."""
  names, include = [], []
  for t in tasks:
    t = str(t)
    if os.path.isdir(t) or t.endswith((".yaml", ".yml")):
      if not os.path.exists(t):
        raise ValueError(f"eval.harness.tasks: {t} does not exist")
      files = ([t] if os.path.isfile(t)
               else sorted(glob.glob(os.path.join(t, "*.yaml")) + glob.glob(os.path.join(t, "*.yml"))))
      found = [m.group(1) for f in files
               for m in [re.search(r"^task:\s*([^\s#]+)", open(f).read(), re.M)] if m]
      if not found:
        raise ValueError(f"eval.harness.tasks: {t} holds no YAML file with a 'task:' name")
      names += found
      include.append(os.path.dirname(os.path.abspath(t)) if os.path.isfile(t) else os.path.abspath(t))
    else:
      names.append(t)
  return names, include


def harness_metrics(results: dict) -> dict:
  """lm-eval's results dict -> {'harness/<task>/<metric>': float}, stderr and aliases left out."""
  out = {}
  for task, r in results.get("results", {}).items():
    for key, v in r.items():
      metric, comma, filt = key.partition(",")
      # Metrics are "<metric>,<filter>"; bare keys (alias, sample_len) are bookkeeping.
      if not comma or metric.endswith("_stderr") or not isinstance(v, (int, float)):
        continue
      if isinstance(v, float) and not math.isfinite(v):
        continue
      name = metric if filt in ("", "none") else f"{metric}_{filt}"
      out[f"harness/{task}/{name}"] = float(v)
  return out


class HarnessEvaluator:
  """`fn(step, state) -> metrics` for the loop's Hook."""

  def __init__(self, harness_cfg, *, model_config, tokenizer, max_length: int,
               workdir: str | None = None, plot: bool = True, progress: bool = False):
    from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
    self.tasks, include = resolve_tasks(harness_cfg.get("tasks", ()))
    if not self.tasks:
      raise ValueError("eval.harness.tasks is empty")
    # Built once: lm-eval indexes every task YAML it knows, which takes seconds.
    self.task_manager = TaskManager(include_path=include or None)
    unknown = [t for t in self.tasks if t not in self.task_manager.all_tasks]
    if unknown:
      raise ValueError(f"eval.harness.tasks: lm-eval knows no task {unknown}")
    self.cfg = harness_cfg
    self.model_config, self.tokenizer, self.max_length = model_config, tokenizer, max_length
    self.plot_path = os.path.join(workdir, "harness.png") if (workdir and plot) else None
    self.history: list[dict] = []
    self.progress = progress
    self.last_stats: dict = {}  # rows / calls this process scored in the last call

  def __call__(self, step: int, state) -> dict:
    import lm_eval  # pylint: disable=g-import-not-at-top
    lm = MaxlmLM(model=(self.model_config, state["params"], self.tokenizer),
                 batch_size=int(self.cfg.get("batch_size", 8)), max_length=self.max_length,
                 progress=self.progress, progress_lines=4)
    limit = self.cfg.get("limit")
    res = lm_eval.simple_evaluate(
        model=lm, tasks=list(self.tasks), task_manager=self.task_manager,
        num_fewshot=None if self.cfg.get("num_fewshot", -1) < 0 else int(self.cfg.num_fewshot),
        limit=limit if limit else None,
        bootstrap_iters=0,  # no stderr: a training curve needs the value, not a bootstrap
        log_samples=False, random_seed=0, numpy_random_seed=0, fewshot_random_seed=0)
    self.last_stats = dict(lm.stats)
    metrics = harness_metrics(res or {})
    self.history.append(dict(step=int(step), **metrics))
    if self.plot_path:
      plot_prefix(self.history, "harness/", self.plot_path, title="downstream evals",
                  ylabel="metric")
    return metrics
