"""Loss-spike detection and the rollback policy, as host-side functions the driver calls.

Practitioners' rule: a loss spike is most often bad data. A window of garbage
(random bytes, a broken shard) sends the loss far up; a window of trivially
predictable text (newlines, repeated boilerplate) sends it far down. Both are
windows of data, so the remedy is to restore the last good checkpoint and move
the data past the window; only if the data is clean look at gradients and the
optimizer (PaLM, Chowdhery et al. 2022, sec. 5.1, restarted ~100 steps before
a spike and skipped 200-500 batches).

Detector: a step is a spike when a watched value leaves a robust running band
over the last `window` accepted steps:
  mad:  median +- k * 1.4826 * MAD   (1.4826 MAD = sigma for Gaussian noise)
  ema:  EMA mean +- k * EMA sigma
The loss is watched on both sides (k_high, k_low), the gradient norm on the
high side only and in log space (it varies multiplicatively). A non-finite
value is always a spike. The band is armed after `warmup` accepted steps; spike
values never enter the history, so a spike cannot widen its own band.

Policy (`SpikeMonitor.observe`, once per step): ok / skip / rollback / stop.
A checkpoint is *good* only once `good_after` steps after it passed without a
spike; rollback restores the newest good checkpoint and skips the data batches
from that checkpoint up to the spike plus `margin_steps`. Past `max_rollbacks`
the run stops.

Steps: `step` is the number of updates completed (the step the driver logs);
the batch that produced update `step` is batch index `step - 1`, and a
checkpoint at step c resumes with batch index c. Data windows are half-open
ranges [a, b) of batch indices.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Mapping

import numpy as np

ACTIONS = ("log", "skip", "rollback", "stop")
_MAD_TO_SIGMA = 1.4826


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
  """`config.monitor.spikes`, splatted: SpikeConfig(**config.monitor.spikes)."""
  method: str = "mad"  # mad (median/MAD) | ema (EMA mean/sigma)
  window: int = 100  # accepted steps in the band's history
  warmup: int = 50  # accepted steps before the detector arms (early loss falls fast)
  k_high: float = 6.0  # band half-width above, in robust sigmas
  k_low: float = 6.0  # below (loss only; 0 = off)
  k_grad: float = 6.0  # gradient norm, log space, above only (0 = off)
  min_sigma: float = 1e-3  # floor on sigma: a flat curve must not fire on rounding noise
  ema_decay: float = 0.98  # ema method: weight of the past
  action: str = "rollback"  # log | skip | rollback | stop
  good_after: int = 50  # spike-free steps after a checkpoint before it counts as good
  margin_steps: int = 10  # batches skipped past the spike
  max_rollbacks: int = 3  # past this many, the run stops

  def validate(self) -> None:
    if self.method not in ("mad", "ema"):
      raise ValueError(f"monitor.spikes.method={self.method!r} is not one of ('mad', 'ema')")
    if self.action not in ACTIONS:
      raise ValueError(f"monitor.spikes.action={self.action!r} is not one of {ACTIONS}")
    if self.window < 3:
      raise ValueError(f"monitor.spikes.window={self.window} must be >= 3")


# ----------------------------------------------------------------- the band

def robust_band(history, k_high: float, k_low: float, *, method: str = "mad",
                min_sigma: float = 1e-3, ema_decay: float = 0.98) -> tuple[float, float, float]:
  """(center, low threshold, high threshold) of a 1-D history; pure."""
  x = np.asarray(history, np.float64)
  if method == "mad":
    center = float(np.median(x))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(x - center)))
  else:
    w = ema_decay ** np.arange(len(x))[::-1]  # newest weighs most
    center = float(np.sum(w * x) / np.sum(w))
    sigma = math.sqrt(float(np.sum(w * (x - center) ** 2) / np.sum(w)))
  sigma = max(sigma, min_sigma)
  lo = center - k_low * sigma if k_low > 0 else -math.inf
  return center, lo, center + k_high * sigma


@dataclasses.dataclass
class Verdict:
  """Whether one step's values are a spike, and why."""
  spike: bool
  reasons: list[str]
  values: dict
  thresholds: dict  # name -> (low, high)


def check(values: Mapping[str, float], histories: Mapping[str, "collections.deque"],
          cfg: SpikeConfig, armed: bool) -> Verdict:
  """Tests one step's {loss, grad_norm} against the bands of their histories; pure."""
  reasons, thresholds = [], {}
  for name, v in values.items():
    if v is None:
      continue
    v = float(v)
    if not math.isfinite(v):
      reasons.append(f"{name} is {v}")
      continue
    if not armed or name not in histories:
      continue
    if name == "grad_norm":
      if cfg.k_grad <= 0 or v <= 0:
        continue
      _, lo, hi = robust_band(np.log(np.maximum(histories[name], 1e-30)), cfg.k_grad, 0,
                              method=cfg.method, min_sigma=cfg.min_sigma,
                              ema_decay=cfg.ema_decay)
      lo, hi, x = 0.0, math.exp(hi), v
    else:
      _, lo, hi = robust_band(histories[name], cfg.k_high, cfg.k_low, method=cfg.method,
                              min_sigma=cfg.min_sigma, ema_decay=cfg.ema_decay)
      x = v
    thresholds[name] = (lo, hi)
    if x > hi:
      reasons.append(f"{name} {v:.4g} above {hi:.4g}")
    elif x < lo:
      reasons.append(f"{name} {v:.4g} below {lo:.4g}")
  return Verdict(bool(reasons), reasons, {k: (None if v is None else float(v))
                                          for k, v in values.items()}, thresholds)


def good_checkpoint(saved_steps, spike_steps, current_step: int, good_after: int) -> int | None:
  """Newest checkpoint step c with `good_after` spike-free steps after it; pure.

  A checkpoint saved at c covers updates up to c; the window (c, c + good_after]
  must be fully observed (c + good_after <= current_step) and hold no spike.
  """
  for c in sorted(saved_steps, reverse=True):
    if c + good_after > current_step:
      continue
    if not any(c < s <= c + good_after for s in spike_steps):
      return c
  return None


def skip_window(restore_step: int, spike_step: int, margin_steps: int) -> tuple[int, int]:
  """Batch indices [a, b) to skip after restoring `restore_step` for a spike at `spike_step`."""
  # Batch index spike_step - 1 produced the spike; everything from the
  # checkpoint's next batch through it, plus a margin, is set aside.
  return restore_step, spike_step + margin_steps


# ----------------------------------------------------------------- the policy

@dataclasses.dataclass
class Decision:
  action: str  # ok | log | skip | rollback | stop
  step: int
  reasons: list[str] = dataclasses.field(default_factory=list)
  values: dict = dataclasses.field(default_factory=dict)
  thresholds: dict = dataclasses.field(default_factory=dict)
  restore_step: int | None = None  # rollback: the checkpoint to restore
  skip: tuple[int, int] | None = None  # rollback: batch indices [a, b) to skip
  message: str = ""

  def event(self) -> dict:
    """The JSON-ready row for events.jsonl (the driver adds the skipped rows' doc ids)."""
    return dict(step=self.step, action=self.action, reasons=self.reasons, values=self.values,
                thresholds={k: list(v) for k, v in self.thresholds.items()},
                restore_step=self.restore_step,
                skip_batches=None if self.skip is None else list(self.skip),
                message=self.message)


class SpikeMonitor:
  """Host-side state of the detector and the good-checkpoint bookkeeping.

  The driver calls `observe(step, loss, grad_norm)` after every update and
  `saved(step)` after every checkpoint save; on "rollback" it restores
  `decision.restore_step`, skips the batches in `decision.skip` and calls
  `rolled_back(decision)`.
  """

  def __init__(self, cfg: SpikeConfig):
    cfg.validate()
    self.cfg = cfg
    self.histories = {"loss": collections.deque(maxlen=cfg.window),
                      "grad_norm": collections.deque(maxlen=cfg.window)}
    self.accepted_steps = collections.deque(maxlen=cfg.window)
    self.n_accepted = 0
    self.saved_steps: list[int] = []
    self.spike_steps: list[int] = []
    self.rollbacks = 0
    self.skipped: list[tuple[int, int]] = []  # every skipped batch window, in order

  @property
  def armed(self) -> bool:
    return self.n_accepted >= self.cfg.warmup

  def band(self) -> dict:
    """Current {name: (low, high)}; the jitted step may use the loss band to skip in place."""
    if not self.armed:
      return {}
    return check({k: float(np.median(h)) for k, h in self.histories.items() if h},
                 self.histories, self.cfg, True).thresholds

  def saved(self, step: int) -> None:
    if step not in self.saved_steps:
      self.saved_steps.append(step)

  def good_checkpoint(self, step: int) -> int | None:
    """Newest good checkpoint before `step`: one saved at or after a spike holds its update
    (the driver may observe a few steps late, after such a save)."""
    return good_checkpoint([c for c in self.saved_steps if c < step], self.spike_steps, step,
                           self.cfg.good_after)

  def observe(self, step: int, loss: float, grad_norm: float | None = None) -> Decision:
    """One step's verdict and action. Accepted (non-spike) values join the history."""
    v = check({"loss": loss, "grad_norm": grad_norm}, self.histories, self.cfg, self.armed)
    if not v.spike:
      for name, x in v.values.items():
        if x is not None:
          self.histories[name].append(x)
      self.accepted_steps.append(step)
      self.n_accepted += 1
      return Decision("ok", step, values=v.values, thresholds=v.thresholds)
    self.spike_steps.append(step)
    d = Decision(self.cfg.action, step, v.reasons, v.values, v.thresholds)
    if d.action == "rollback":
      good = self.good_checkpoint(step)
      if self.rollbacks >= self.cfg.max_rollbacks:
        d.action = "stop"
        d.message = (f"spike at step {step} ({'; '.join(v.reasons)}) after"
                     f" {self.rollbacks} rollbacks (monitor.spikes.max_rollbacks="
                     f"{self.cfg.max_rollbacks}): stopping; see events.jsonl")
      elif good is None:
        d.action = "stop"
        d.message = (f"spike at step {step} ({'; '.join(v.reasons)}) and no good checkpoint"
                     f" to roll back to (saved: {self.saved_steps}): stopping")
      else:
        d.restore_step = good
        d.skip = skip_window(good, step, self.cfg.margin_steps)
        d.message = (f"spike at step {step}: rolling back to step {good} and skipping batches"
                     f" [{d.skip[0]}, {d.skip[1]})")
    elif d.action == "stop":
      d.message = f"spike at step {step} ({'; '.join(v.reasons)}): stopping as configured"
    elif d.action == "skip":
      d.message = f"spike at step {step}: update skipped"
    return d

  def rolled_back(self, d: Decision) -> None:
    """Forget what came after the restored step: those steps are replayed on other data."""
    self.rollbacks += 1
    self.skipped.append(d.skip)
    self.saved_steps = [c for c in self.saved_steps if c <= d.restore_step]
    self.spike_steps = [s for s in self.spike_steps if s <= d.restore_step]
    keep = [i for i, s in enumerate(self.accepted_steps) if s <= d.restore_step]
    for name, h in self.histories.items():
      vals = list(h)
      if len(vals) == len(self.accepted_steps):
        h.clear()
        h.extend(vals[i] for i in keep)
    self.n_accepted -= len(self.accepted_steps) - len(keep)
    kept_steps = [self.accepted_steps[i] for i in keep]
    self.accepted_steps.clear()
    self.accepted_steps.extend(kept_steps)
