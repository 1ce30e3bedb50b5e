"""Typed `config.optim`: AdamW's hyperparameters and the learning-rate schedule.

Defaults are those of `make_optimizer` / `make_schedule`, so a config that
leaves a field out trains as it did when the dict was splatted into them.
"""

from __future__ import annotations

import dataclasses

from maxlm.config_types import typed


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  name: str  # cosine | wsd | constant
  warmup_steps: int = 0
  min_lr_ratio: float = 0.1  # floor of the decay, as a fraction of peak_lr
  decay_fraction: float = 0.2  # wsd: share of steps spent decaying
  decay_shape: str = "linear"  # wsd decay: linear | cosine | 1-sqrt
  init_lr: float = 0.0  # where warmup starts


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  peak_lr: float
  schedule: ScheduleConfig
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1  # decoupled (AdamW); norms and biases excluded
  clip_norm: float = 1.0  # global-norm clipping

  @classmethod
  def from_any(cls, cfg) -> "OptimConfig":
    return typed(cls, cfg, "optim")

  def kwargs(self) -> dict:
    """Keyword arguments of maxlm.optim.make_optimizer (all but total_steps)."""
    return dataclasses.asdict(self)
