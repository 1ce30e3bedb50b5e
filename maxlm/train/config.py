"""Typed `config.train` and `config.init`: what the composition root and the lineage read."""

from __future__ import annotations

import dataclasses

from maxlm.config_types import typed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int  # optimizer updates in the run
  global_batch: int  # rows per update, all hosts
  microbatches: int = 1  # gradient accumulation: global_batch split into this many
  seed: int = 0
  log_every: int = 10  # steps between metric lines
  eval_every: int = 0  # steps between held-out evaluations (0 = only at the end)
  z_loss: float = 0.0  # PaLM z-loss weight (0 = off)
  tokens_per_step: int = 0  # long-context stages: kept constant across lengths

  @classmethod
  def from_any(cls, cfg) -> "TrainConfig":
    return typed(cls, cfg, "train")


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where a stage starts (maxlm/train/lineage.py documents each field); all default: a root run."""
  from_checkpoint: str = ""  # '' = from scratch
  carry: str = "params"  # params | full
  lr_from_parent: str = ""  # '' | final | peak
  lr_scale: float = 1.0

  @classmethod
  def from_any(cls, cfg) -> "InitConfig":
    return typed(cls, cfg, "init")
