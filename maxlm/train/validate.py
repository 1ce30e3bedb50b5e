"""Config checks that run before anything compiles.

Each failure names the field (`model.n_heads`, `train.global_batch`, ...) and
the value, so a mistake costs seconds instead of a compile and a stack trace.
"""

from __future__ import annotations

import flax.linen as nn

from maxlm.data import config as data_config_lib
from maxlm.model import ModelConfig
from maxlm.optim.schedules import DECAY_SHAPES, SCHEDULES
from maxlm.sharding import resolve_mesh_shape


class ConfigError(ValueError):
  """A config value that cannot work, named by its dotted field path."""


def _mesh_axis_size(logical: str, rules, sizes: dict) -> int:
  axes = nn.logical_to_mesh_axes((logical,), rules)[0]
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  out = 1
  for a in axes:
    out *= sizes[a]
  return out


def validate_config(config, n_devices: int) -> tuple[int, int, int]:
  """Raises ConfigError on the first problem; returns the resolved mesh shape."""
  try:
    model = ModelConfig.from_any(config.model)
    model.validate()
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None

  m = config.mesh
  context = m.get("context", 1)
  try:
    data, fsdp, tensor = resolve_mesh_shape(m.data, m.fsdp, m.tensor, n_devices, context)
  except ValueError as e:
    raise ConfigError(f"mesh (data={m.data}, fsdp={m.fsdp}, context={context}, tensor={m.tensor}):"
                      f" {e}") from None
  sizes = dict(data=data, fsdp=fsdp, context=context, tensor=tensor)
  rules = tuple(map(tuple, m.rules))

  # Every weight dimension must divide evenly over the mesh axes its logical name maps to.
  dims = dict(vocab=("vocab_size", model.vocab_size), embed=("d_model", model.d_model),
              heads=("n_heads", model.n_heads), kv=("n_kv_heads", model.n_kv_heads),
              mlp=("d_ff", model.d_ff))
  for logical, (field, value) in dims.items():
    n = _mesh_axis_size(logical, rules, sizes)
    if value % n:
      raise ConfigError(
          f"model.{field}={value} is not divisible by {n}, the mesh size it is sharded over"
          f" (logical axis '{logical}' under mesh {sizes}); pad it or change mesh.rules")

  t = config.train
  dp = _mesh_axis_size("batch", rules, sizes)
  if t.global_batch % dp:
    raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by the data-parallel"
                      f" size {dp} (mesh {sizes})")
  if t.microbatches < 1 or t.global_batch % (t.microbatches * dp):
    raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by"
                      f" train.microbatches={t.microbatches} x data-parallel size {dp}")
  if t.steps < 1:
    raise ConfigError(f"train.steps={t.steps} must be >= 1")
  cp = _mesh_axis_size("length", rules, sizes)
  if cp > 1 and config.data.seq_len % (2 * cp):
    raise ConfigError(f"data.seq_len={config.data.seq_len} is not divisible by 2 x {cp}, the"
                      f" context-parallel size (mesh.context): the load-balanced layout needs"
                      f" 2*context equal chunks")

  s = config.optim.schedule
  if s.name not in SCHEDULES:
    raise ConfigError(f"optim.schedule.name={s.name!r} is not one of {SCHEDULES}")
  if s.decay_shape not in DECAY_SHAPES:
    raise ConfigError(f"optim.schedule.decay_shape={s.decay_shape!r} is not one of {DECAY_SHAPES}")
  if s.warmup_steps > t.steps:
    raise ConfigError(f"optim.schedule.warmup_steps={s.warmup_steps} exceeds train.steps={t.steps}")

  if config.data.tokenizer.vocab_size > model.vocab_size:
    raise ConfigError(f"data.tokenizer.vocab_size={config.data.tokenizer.vocab_size} exceeds"
                      f" model.vocab_size={model.vocab_size}")
  try:
    data_config_lib.validate(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return data, fsdp, tensor
