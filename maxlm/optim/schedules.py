"""Learning-rate schedules built from optax pieces.

- cosine: linear warmup then cosine decay to `min_lr_ratio * peak_lr`
  (Loshchilov & Hutter 2017; the Chinchilla/Llama recipe).
- wsd: warmup, stable at peak, then a decay over the last `decay_fraction` of
  the steps (Hu et al. 2024, MiniCPM; Hägele et al. 2024), decay shape
  `linear`, `cosine` or `1-sqrt`.
- constant: warmup then flat.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def _decay(shape: str, init: float, end: float, steps: int) -> optax.Schedule:
  steps = max(int(steps), 1)
  if shape == "linear":
    return optax.linear_schedule(init, end, steps)
  if shape == "cosine":
    return optax.cosine_decay_schedule(init, steps, alpha=end / init if init else 0.0)
  if shape == "1-sqrt":
    # optax has no 1-sqrt shape: lr = end + (init - end) * (1 - sqrt(t / steps)).
    return lambda t: end + (init - end) * (1.0 - jnp.sqrt(jnp.clip(t / steps, 0.0, 1.0)))
  raise ValueError(f"optim.schedule.decay_shape={shape!r} is not one of {DECAY_SHAPES}")


def make_schedule(*, name: str, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2,
                  decay_shape: str = "linear", init_lr: float = 0.0) -> optax.Schedule:
  """Returns step -> learning rate. `init_lr` is where warmup starts."""
  end_lr = peak_lr * min_lr_ratio
  warmup = optax.linear_schedule(init_lr, peak_lr, max(warmup_steps, 1))
  if name == "constant":
    return optax.join_schedules([warmup, optax.constant_schedule(peak_lr)], [warmup_steps])
  if name == "cosine":
    decay = _decay("cosine", peak_lr, end_lr, total_steps - warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])
  if name == "wsd":
    decay_steps = int(round(decay_fraction * total_steps))
    stable_end = total_steps - decay_steps
    if stable_end < warmup_steps:
      raise ValueError(f"optim.schedule: warmup_steps={warmup_steps} overlaps the decay"
                       f" (decay starts at step {stable_end})")
    return optax.join_schedules(
        [warmup, optax.constant_schedule(peak_lr), _decay(decay_shape, peak_lr, end_lr, decay_steps)],
        [warmup_steps, stable_end])
  raise ValueError(f"optim.schedule.name={name!r} is not one of {SCHEDULES}")
