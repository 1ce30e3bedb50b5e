"""AdamW with global-norm clipping (the Llama / Chinchilla recipe).

Weight decay skips norm scales and biases: decaying a norm's gain towards zero
only fights the next layer's weights (as in GPT-3, Llama and OLMo).
"""

from __future__ import annotations

import jax
import optax

from maxlm.optim.guarded import clipped_adamw
from maxlm.optim.schedules import make_schedule


def weight_decay_mask(params):
  """True for leaves that get weight decay: every weight but norm scales and biases."""
  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return not (name.startswith("scale") or name.startswith("bias"))
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(*, peak_lr: float, schedule, total_steps: int, b1: float = 0.9,
                   b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
                   clip_norm: float = 1.0):
  """Returns (optax transformation, schedule). `schedule` is the config.optim.schedule dict.

  The transformation is optax.chain(clip_by_global_norm, adamw) in values and
  state; its update also takes `apply_if` (maxlm/optim/guarded.py), so a
  skipped step keeps the donated state in place instead of copying it.
  """
  sched = make_schedule(peak_lr=peak_lr, total_steps=total_steps, **dict(schedule))
  tx = clipped_adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     clip_norm=clip_norm, mask=weight_decay_mask)
  return tx, sched
