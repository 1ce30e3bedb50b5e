"""Config checks that run before anything compiles.

Each failure names the field (`model.n_heads`, `train.global_batch`, ...) and
the value, so a mistake costs seconds instead of a compile and a stack trace.
"""

from __future__ import annotations

import math
import os

import flax.linen as nn

from maxlm.cli import UsageError

from maxlm.data import config as data_config_lib
from maxlm.model import ModelConfig
from maxlm.optim.schedules import DECAY_SHAPES, SCHEDULES
from maxlm.sharding import resolve_mesh_shape


class ConfigError(UsageError):
  """A config value that cannot work, named by its dotted field path."""
  label = "config error"


# Every numeric field with a range: (dotted field, kind, low, high, why). kind "int" also
# rejects floats and bools (an interval of 2.5 steps is a typo, not a value). low/high are
# inclusive unless written as ("open", x). A field a stage's config does not have is skipped.
_OPEN = "open"
RANGES = (
    ("data.seq_len", "int", 2, None, "tokens per packed row; next-token loss needs >= 2"),
    ("data.eval_batches", "int", 0, None, "held-out batches per evaluation"),
    ("data.num_packing_bins", "int", 1, None, "open rows the packer fills at once"),
    ("data.prefetch_batches", "int", 0, None, "batches read ahead"),
    ("data.read_threads", "int", 1, None, "reader threads"),
    ("data.error_budget", "int", 0, None, "bad records tolerated before the run stops"),
    ("data.tokenizer.vocab_size", "int", 1, None, "pieces of the trained tokenizer"),
    ("data.tokenizer.train_chars", "int", 1, None, "characters sampled to train it"),
    ("data.tokenizer.reserved_tokens", "int", 0, None, "ids kept free for special tokens"),
    ("data.tokenizer.pad_to_multiple", "int", 1, None, "vocabulary padding multiple"),
    ("data.tokenizer.character_coverage", "float", (_OPEN, 0.0), 1.0, "SentencePiece coverage"),
    ("train.steps", "int", 1, None, "optimizer steps"),
    ("train.global_batch", "int", 1, None, "rows per optimizer step"),
    ("train.microbatches", "int", 1, None, "gradient-accumulation slices"),
    ("train.log_every", "int", 1, None, "steps between metric lines"),
    ("train.eval_every", "int", 0, None, "steps between evaluations (0 = only at the end)"),
    ("train.tokens_per_step", "int", 1, None, "tokens per optimizer step"),
    ("ckpt.every", "int", 1, None, "steps between checkpoints"),
    ("ckpt.keep", "int", 1, None, "checkpoints kept (0 would keep none: nothing to resume)"),
    ("optim.peak_lr", "float", (_OPEN, 0.0), None, "learning rate at the end of warmup"),
    ("optim.b1", "float", 0.0, (_OPEN, 1.0), "Adam first-moment decay"),
    ("optim.b2", "float", 0.0, (_OPEN, 1.0), "Adam second-moment decay"),
    ("optim.eps", "float", (_OPEN, 0.0), None, "Adam denominator floor"),
    ("optim.weight_decay", "float", 0.0, None, "decoupled weight decay"),
    ("optim.clip_norm", "float", (_OPEN, 0.0), None, "global-norm clipping threshold"),
    ("optim.schedule.warmup_steps", "int", 0, None, "linear warmup length"),
    ("optim.schedule.min_lr_ratio", "float", 0.0, 1.0, "decay floor as a fraction of peak"),
    ("optim.schedule.decay_fraction", "float", 0.0, 1.0, "share of steps spent decaying (wsd)"),
    ("optim.schedule.init_lr", "float", 0.0, None, "learning rate warmup starts from"),
    ("model.init_std", "float", (_OPEN, 0.0), None, "initialiser standard deviation"),
    ("model.norm_eps", "float", (_OPEN, 0.0), None, "RMSNorm epsilon"),
    ("model.rope_theta", "float", (_OPEN, 0.0), None, "RoPE base"),
    ("monitor.spikes.window", "int", 1, None, "steps in the spike detector's band"),
    ("monitor.spikes.warmup", "int", 0, None, "steps before spikes are judged"),
    ("monitor.spikes.good_after", "int", 0, None, "clean steps that make a checkpoint good"),
    ("monitor.spikes.margin_steps", "int", 0, None, "steps skipped past a spike"),
    ("monitor.spikes.max_rollbacks", "int", 0, None, "rollbacks before the run stops"),
    ("monitor.spikes.k_high", "float", (_OPEN, 0.0), None, "band width above, in sigmas"),
    ("monitor.spikes.k_low", "float", (_OPEN, 0.0), None, "band width below, in sigmas"),
    ("monitor.spikes.k_grad", "float", 0.0, None, "grad-norm band (0 = off)"),
    ("monitor.spikes.ema_decay", "float", 0.0, (_OPEN, 1.0), "EMA decay of the band"),
    ("monitor.spikes.min_sigma", "float", 0.0, None, "floor of the band's sigma"),
    ("eval.probe_every", "int", 0, None, "steps between probes (0 = off)"),
    ("distill.temperature", "float", (_OPEN, 0.0), None, "softmax temperature"),
    ("distill.top_k", "int", 0, None, "teacher logits kept (0 = all)"),
    ("distill.alpha", "float", 0.0, 1.0, "weight of the distillation term"),
    ("init.lr_scale", "float", (_OPEN, 0.0), None, "multiplier on the parent's LR"),
)


_MISSING = object()


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return _MISSING
  return node


def _bound_ok(value, bound, is_low: bool) -> bool:
  if bound is None:
    return True
  strict = isinstance(bound, tuple)
  b = bound[1] if strict else bound
  if is_low:
    return value > b if strict else value >= b
  return value < b if strict else value <= b


def _range_text(low, high) -> str:
  lo = "" if low is None else (f"> {low[1]}" if isinstance(low, tuple) else f">= {low}")
  hi = "" if high is None else (f"< {high[1]}" if isinstance(high, tuple) else f"<= {high}")
  return " and ".join(t for t in (lo, hi) if t)


def check_ranges(config) -> None:
  """Raises ConfigError naming the first field of RANGES outside its range."""
  for field, kind, low, high, why in RANGES:
    value = _get(config, field)
    if value is _MISSING or value is None:
      continue
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = is_int or (isinstance(value, float) and math.isfinite(value))
    if (kind == "int" and not is_int) or not is_num:
      raise ConfigError(f"{field}={value!r} must be {'an integer' if kind == 'int' else 'a finite number'}"
                        f" {_range_text(low, high)} ({why})")
    if not (_bound_ok(value, low, True) and _bound_ok(value, high, False)):
      raise ConfigError(f"{field}={value!r} must be {_range_text(low, high)} ({why})")


def check_tokenizer_vocab(config, model_vocab_size: int) -> None:
  """A tokenizer file with more ids than the embedding gives NaN at step 1; name the fix."""
  path = config.data.tokenizer.get("path", "") if "tokenizer" in config.data else ""
  if not path or not os.path.isfile(path):
    return  # a missing file is reported by the tokenizer loader, naming the field
  from maxlm.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  n = tokenizer_lib.load(path).vocab_size
  n = n() if callable(n) else n  # SentencePieceProcessor.vocab_size is a method
  if n > model_vocab_size:
    raise ConfigError(
        f"data.tokenizer.path={path!r} has {n} ids but model.vocab_size={model_vocab_size}:"
        f" token ids past the embedding give NaN; pass --config.model.vocab_size={_round_up(n)}"
        f" (or train the tokenizer with vocab_size <= {model_vocab_size})")


def _round_up(n: int, multiple: int = 128) -> int:
  return -(-n // multiple) * multiple


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
  for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
    value = _get(config, f"model.{name}")  # before the divisibility checks that divide by them
    if value is not _MISSING and not (isinstance(value, int) and value >= 1):
      raise ConfigError(f"model.{name}={value!r} must be an integer >= 1")
  check_ranges(config)
  try:
    model = ModelConfig.from_any(config.model)
    model.validate()
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None

  m = config.mesh
  try:
    data, fsdp, tensor = resolve_mesh_shape(m.data, m.fsdp, m.tensor, n_devices)
  except ValueError as e:
    raise ConfigError(f"mesh (data={m.data}, fsdp={m.fsdp}, tensor={m.tensor}): {e}") from None
  sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
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
  check_tokenizer_vocab(config, model.vocab_size)
  try:
    data_config_lib.validate(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return data, fsdp, tensor
