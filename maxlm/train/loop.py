"""The training loop: step, log, hooks, save. It receives its pieces; it builds none.

The composition root (maxlm/run/) builds a `Run`: the jitted step, a batch
source, the checkpoint saver, the spike guard and the hooks (held-out
evaluation, probes, harness evals, online mixing...), and calls `train(run)`.
A hook is `Hook(every, fn, name)`: `fn(step, state) -> dict | None` runs
after every `every`-th step (and, with `at_end`, once more when the run
finishes); what it returns goes to metrics.jsonl and its time is kept out of
the throughput figures (Levanter's `trainer.add_hook(fn, every=N)`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax

from maxlm.train.preemption import Preemption


@dataclasses.dataclass(frozen=True)
class Hook:
  every: int  # steps between calls; 0 = only at the end (with at_end)
  fn: Callable  # (step, state) -> dict of metrics | None
  name: str = ""
  at_end: bool = True  # also called once when the run reaches its last step


@dataclasses.dataclass
class Run:
  """Everything the loop touches, built by the composition root."""
  state: object  # dict(params, opt_state, step, rng), sharded
  start_step: int
  steps: int  # the run ends when `steps` updates are done
  step_fn: Callable  # (state, batch, limits) -> (state, metrics), jitted
  next_batch: Callable  # (step) -> the device batch for update step + 1
  save: Callable  # (step, state, force) -> whether it saved
  summarise: Callable  # (host metrics of an interval, step, elapsed_s) -> dict
  writer: object  # .write(step, metrics)
  console: object  # .interval / .line / .advance / .moved
  guard: object  # .limits, .check(step, host metrics) -> Verdict | None, .saved(step)
  mesh: object
  log_every: int = 10
  hooks: Sequence[Hook] = ()


@dataclasses.dataclass
class Outcome:
  state: object
  step: int
  finished: bool  # reached run.steps
  last: dict  # the last interval's summary, plus the final hooks' metrics
  skipped_steps: int  # updates the step refused (non-finite, or outside the spike band)
  stopped: str | None = None  # why the spike guard stopped the run, if it did


def _call(hook: Hook, step: int, state, writer) -> tuple[dict, float]:
  t0 = time.time()
  metrics = hook.fn(step, state) or {}
  if metrics:
    writer.write(step, metrics)
  return metrics, time.time() - t0


def train(run: Run) -> Outcome:
  """Runs `run` from run.start_step to run.steps (or a preemption / a stop)."""
  state, step = run.state, run.start_step
  pending, last, n_skipped, stopped = [], {}, 0, None
  t_interval = time.time()
  with jax.set_mesh(run.mesh), Preemption() as preempt:
    while step < run.steps:
      state, metrics = run.step_fn(state, run.next_batch(step), run.guard.limits)
      pending.append(metrics)
      step += 1
      if step % run.log_every == 0 or step == run.steps or preempt.requested:
        # One device_get for the interval; it waits for the last step, so the
        # elapsed time below covers the compute, not just the async dispatch.
        host = jax.device_get(pending)
        n_skipped += sum(int(m.get("skipped", 0)) for m in host)
        verdict = run.guard.check(step, host)
        if verdict is not None and verdict.action == "rollback":
          state, step, pending, t_interval = verdict.state, verdict.step, [], time.time()
          run.console.moved(step)
          continue
        if verdict is not None and verdict.action == "stop":
          preempt.requested, stopped = True, verdict.message  # saves this step, then exits
        last = run.summarise(host, step, time.time() - t_interval)
        run.writer.write(step, last)
        pending, t_interval = [], time.time()
        run.console.interval(step, last)
      run.console.advance()
      for hook in run.hooks:
        if hook.every and step % hook.every == 0 and step < run.steps:
          _, spent = _call(hook, step, state, run.writer)
          t_interval += spent  # hook time is not training throughput
      if run.save(step, state, preempt.requested):
        run.guard.saved(step)
      if preempt.requested:
        break

    finished = step >= run.steps
    if finished:
      for hook in run.hooks:
        if hook.at_end:
          last.update(_call(hook, step, state, run.writer)[0])
      run.save(step, state, True)
  return Outcome(state, step, finished, last, n_skipped, stopped)
