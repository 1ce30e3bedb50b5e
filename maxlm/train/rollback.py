"""Acting on loss spikes in the loop: skip in the step, log, roll back past the bad data, or stop.

The detector and the policy are pure host code in maxlm.monitor.spikes; this
module does what only the training run can: restore a checkpoint (state and
data iterator) and move the data iterator past the window that caused the
spike, recording which domains and documents were skipped in events.jsonl.
`SpikeGuard` bundles it for the loop: one `check` per logging interval.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from maxlm.monitor.spikes import Decision, SpikeConfig, SpikeMonitor

log = logging.getLogger(__name__)

# "skip" is decided inside the jitted step (maxlm/train/step.py) against the band
# the loop passes in, refreshed from the monitor at each log boundary.
DRIVER_ACTIONS = ("log", "skip", "rollback", "stop")


def make_monitor(spikes_config) -> SpikeMonitor | None:
  """A SpikeMonitor from `config.monitor.spikes`, or None when it is absent or disabled."""
  if spikes_config is None or not spikes_config.get("enabled", True):
    return None
  kwargs = {k: v for k, v in dict(spikes_config).items() if k != "enabled"}
  cfg = SpikeConfig(**kwargs)
  if cfg.action not in DRIVER_ACTIONS:
    raise ValueError(f"monitor.spikes.action={cfg.action!r}: the training loop supports {DRIVER_ACTIONS}")
  return SpikeMonitor(cfg)


def first_alarm(monitor: SpikeMonitor, host_metrics: list[dict], last_step: int) -> Decision | None:
  """Observes each step of a logging interval in order; returns the first non-ok decision."""
  first_step = last_step - len(host_metrics) + 1
  for i, m in enumerate(host_metrics):
    d = monitor.observe(first_step + i, float(m["loss"]), float(m["grad_norm"]))
    if d.action != "ok":
      return d
  return None


def step_limits(monitor: SpikeMonitor | None) -> dict:
  """The jitted step's `limits` from the monitor's current loss band (unbounded before it arms).

  Always the same pytree of float32 scalars, so a new band never retraces the step.
  """
  band = monitor.band() if monitor is not None else {}
  lo, hi = band.get("loss", (-np.inf, np.inf))
  grad_hi = band.get("grad_norm", (0.0, np.inf))[1]
  # Host scalars (uncommitted): jit places them replicated; 12 bytes a step.
  return dict(loss_lo=np.float32(lo), loss_hi=np.float32(hi), grad_norm_hi=np.float32(grad_hi))


def skip_events(monitor: SpikeMonitor, host_metrics: list[dict], last_step: int,
                limits: dict) -> list[dict]:
  """events.jsonl rows for the steps the jitted step skipped in one logging interval.

  Applied steps feed the monitor's history (a host-side alarm on one of them is
  only logged: its update is already in); skipped ones are recorded as spikes
  and never enter the band.
  """
  first_step, events = last_step - len(host_metrics) + 1, []
  band = [float(limits["loss_lo"]), float(limits["loss_hi"])]
  for i, m in enumerate(host_metrics):
    step, loss, gn = first_step + i, float(m["loss"]), float(m["grad_norm"])
    if int(m.get("skipped", 0)):
      monitor.spike_steps.append(step)
      events.append(dict(step=step, action="skip", values=dict(loss=loss, grad_norm=gn),
                         thresholds=dict(loss=band,
                                         grad_norm=[0.0, float(limits["grad_norm_hi"])]),
                         message=f"spike at step {step} (loss {loss:.4g}, grad norm {gn:.4g},"
                                 f" loss band {band}): update skipped in the step"))
      continue
    d = monitor.observe(step, loss, gn)
    if d.action != "ok":
      e = d.event()
      e.update(action="log", message=f"spike at step {step} seen on the host after its update"
                                      f" (the in-step band was older): {d.reasons}")
      events.append(e)
  return events


def roll_back(decision: Decision, *, ckpt, abstract_state, train_iter, domains) -> tuple:
  """Restores `decision.restore_step` and consumes the batches in `decision.skip`.

  Returns (state, event extras: skipped domains / token counts / document ids).
  """
  ckpt.wait()
  state = ckpt.restore(decision.restore_step, abstract_state, train_iter)
  ckpt.delete_after(decision.restore_step)
  a, b = decision.skip
  tokens = np.zeros(len(domains), np.int64)
  doc_ids = set()
  for _ in range(b - a):
    rows = next(train_iter)
    mask = rows["loss_mask"] > 0
    tokens += np.bincount(rows["domain_ids"][mask], minlength=len(domains))
    if "doc_ids" in rows:
      doc_ids.update(int(x) for x in np.unique(rows["doc_ids"][mask]) if x >= 0)
  return state, dict(skipped_tokens={d: int(n) for d, n in zip(domains, tokens) if n},
                     skipped_doc_ids=sorted(doc_ids)[:10_000])


def write_event(workdir: str, event: dict) -> None:
  with open(os.path.join(workdir, "events.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps(event) + "\n")


@dataclasses.dataclass
class Verdict:
  """What the loop must do after an interval: 'rollback' to (state, step), or 'stop'."""
  action: str
  message: str = ""
  state: object = None
  step: int | None = None


class SpikeGuard:
  """The spike policy of one run, called by the loop at each logging interval.

  `limits` is the band the jitted step skips outside of (unbounded unless
  action=skip); `check` records skipped steps, or acts on the first alarm of
  the interval (log it, roll back, or stop); `saved` feeds the good-checkpoint
  bookkeeping. With `monitor` None it only passes unbounded limits.
  """

  def __init__(self, monitor: SpikeMonitor | None, *, ckpt=None, abstract_state=None,
               train_iter=None, domains=(), workdir: str = "", is_main: bool = True):
    self.monitor = monitor
    self.skip_in_step = monitor is not None and monitor.cfg.action == "skip"
    self.limits = step_limits(monitor if self.skip_in_step else None)
    self._ckpt, self._abstract, self._iter = ckpt, abstract_state, train_iter
    self._domains, self._workdir, self._is_main = domains, workdir, is_main

  def _record(self, event: dict) -> None:
    if self._is_main:
      write_event(self._workdir, event)

  def check(self, step: int, host_metrics: list[dict]) -> Verdict | None:
    """After the interval ending at `step`: None to go on, or a Verdict."""
    if self.monitor is None:
      return None
    if self.skip_in_step:
      # The step already refused the bad updates; record them and move the band.
      for event in skip_events(self.monitor, host_metrics, last_step=step, limits=self.limits):
        log.warning(event["message"])
        self._record(event)
      self.limits = step_limits(self.monitor)
      return None
    alarm = first_alarm(self.monitor, host_metrics, last_step=step)
    if alarm is None:
      return None
    event = alarm.event()
    log.warning(alarm.message or f"loss spike at step {alarm.step}: {alarm.reasons}")
    verdict = None
    if alarm.action == "rollback":
      state, skipped = roll_back(alarm, ckpt=self._ckpt, abstract_state=self._abstract,
                                 train_iter=self._iter, domains=self._domains)
      event.update(skipped)
      self.monitor.rolled_back(alarm)
      verdict = Verdict("rollback", alarm.message, state, alarm.restore_step)
    elif alarm.action == "stop":
      verdict = Verdict("stop", alarm.message or f"loss spike at step {alarm.step}: stopping")
    self._record(event)
    return verdict

  def saved(self, step: int) -> None:
    if self.monitor is not None:
      self.monitor.saved(step)
