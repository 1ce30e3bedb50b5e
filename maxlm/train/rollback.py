"""Acting on loss spikes in the driver: log, roll back past the bad data, or stop.

The detector and the policy are pure host code in maxlm.monitor.spikes; this
module does what only the driver can: restore a checkpoint (state and data
iterator) and move the data iterator past the window that caused the spike,
recording which domains and documents were skipped in events.jsonl.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from maxlm.monitor.spikes import Decision, SpikeConfig, SpikeMonitor

log = logging.getLogger(__name__)

# "skip" is decided inside the jitted step (maxlm/train/step.py) against the band
# the driver passes in, refreshed from the monitor at each log boundary.
DRIVER_ACTIONS = ("log", "skip", "rollback", "stop")


def make_monitor(spikes_config) -> SpikeMonitor | None:
  """A SpikeMonitor from `config.monitor.spikes`, or None when it is absent or disabled."""
  if spikes_config is None or not spikes_config.get("enabled", True):
    return None
  kwargs = {k: v for k, v in dict(spikes_config).items() if k != "enabled"}
  cfg = SpikeConfig(**kwargs)
  if cfg.action not in DRIVER_ACTIONS:
    raise ValueError(f"monitor.spikes.action={cfg.action!r}: the driver supports {DRIVER_ACTIONS}")
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
