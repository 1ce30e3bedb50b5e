"""Typed `config.mesh`: axis sizes (-1 = the devices left) and the logical-axis rules."""

from __future__ import annotations

import dataclasses

from maxlm.config_types import typed


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  context: int = 1  # sequence shards (ring attention, maxlm/model/context_parallel.py)
  rules: tuple = ()  # ((logical axis, mesh axis | (mesh axes) | None), ...)

  def __post_init__(self):
    # Pairs as tuples, whether they came from a ConfigDict or a config.json's lists:
    # the form flax's logical-axis rules want, and hashable for jit.
    object.__setattr__(self, "rules", tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in self.rules))

  @classmethod
  def from_any(cls, cfg) -> "MeshConfig":
    return typed(cls, cfg, "mesh")
