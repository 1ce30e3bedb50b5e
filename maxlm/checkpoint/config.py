"""Typed `config.ckpt`: how often the run saves, what it keeps, which changes a resume accepts."""

from __future__ import annotations

import dataclasses

from maxlm.config_types import typed


@dataclasses.dataclass(frozen=True)
class CkptConfig:
  every: int  # steps between saves
  keep: int = 3  # newest checkpoints kept
  async_save: bool = True  # write in the background while training goes on
  export_params: bool = True  # params-only export at the end
  allow_changes: str = ""  # dotted prefixes a resume may change (maxlm/checkpoint/runconfig.py)

  @classmethod
  def from_any(cls, cfg) -> "CkptConfig":
    return typed(cls, cfg, "ckpt")
