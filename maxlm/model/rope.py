"""Rotary position embeddings (Su et al. 2021, arXiv:2104.09864) and their long-context variants.

Uses Hugging Face's "rotate half" layout: the head dim is split in two halves
(x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin), so weights imported
from a Llama checkpoint need no permutation.

`inv_frequencies` is the one place where RoPE variants change the
frequencies. The `rope_scaling` dict is Hugging Face's (`rope_parameters` in
transformers 5.x, `rope_scaling` in 4.x), and every variant reproduces
transformers' `ROPE_INIT_FUNCTIONS` (modeling_rope_utils.py) exactly:

- default: theta only; a context extension may simply raise theta
  (Xiong et al. 2023, "Effective Long-Context Scaling", ABF).
- linear: position interpolation, positions / factor (Chen et al. 2023).
- dynamic: "NTK-aware" scaling (bloc97 / emozilla, 2023): theta grows with the
  sequence length once it passes `max_position_embeddings`.
- yarn: NTK-by-parts interpolation plus an attention temperature
  (Peng et al. 2023, arXiv:2309.00071); HF multiplies cos and sin by the
  attention factor, so q.k scales by its square.
- llama3: Llama 3.1's frequency-dependent scaling (Meta 2024): high
  frequencies kept, low ones divided by `factor`, a smooth ramp between.

HF reads two lengths from the model config rather than from the scaling dict
(`max_position_embeddings`, and `original_max_position_embeddings` when a 4.x
file omits it). maxlm keeps them inside the `rope_scaling` dict, so the model
config stays the single source of the RoPE definition.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


class Frequencies(np.ndarray):
  """Inverse frequencies [H/2] that also carry what apply_rope needs beyond them.

  A numpy subclass so existing callers (`inv_freq_h = inv_frequencies(...)`,
  then `apply_rope(x, pos, inv_freq_h)`) keep working unchanged:
  - attention_factor: YaRN's temperature, multiplied into cos and sin (1 elsewhere).
  - dynamic: (theta, factor, max_position_embeddings, head_dim) for dynamic NTK,
    whose frequencies depend on the sequence length and are recomputed in apply_rope.
  """
  attention_factor: float = 1.0
  dynamic: tuple | None = None

  def __array_finalize__(self, obj):
    self.attention_factor = getattr(obj, "attention_factor", 1.0)
    self.dynamic = getattr(obj, "dynamic", None)


def _frequencies(inv_freq_h, attention_factor=1.0, dynamic=None) -> Frequencies:
  out = np.asarray(inv_freq_h, np.float32).view(Frequencies)
  out.attention_factor = float(attention_factor)
  out.dynamic = dynamic
  return out


def _base(head_dim: int, theta) -> np.ndarray:
  # float32 like transformers (arange / dim in float32, then a float32 power).
  exponent_h = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  return (1.0 / (np.float32(theta) ** exponent_h)).astype(np.float32)


def _require(scaling: dict, key: str, rope_type: str):
  if scaling.get(key) is None:
    raise ValueError(f"rope_scaling type {rope_type!r} needs {key!r} inside the rope_scaling dict"
                     f" (HF may keep it at the top of config.json); got {scaling}")
  return scaling[key]


def yarn_attention_factor(scaling: dict) -> float:
  """YaRN's attention temperature sqrt(1/t) = 0.1 ln(s) + 1 (Peng et al. 2023, eq. 22)."""
  if scaling.get("attention_factor") is not None:
    return float(scaling["attention_factor"])
  factor = _yarn_factor(scaling)

  def mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  # DeepSeek-style configs give mscale / mscale_all_dim and take their ratio.
  if scaling.get("mscale") and scaling.get("mscale_all_dim"):
    return float(mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"]))
  return float(mscale(factor))


def _yarn_factor(scaling: dict) -> float:
  if scaling.get("factor") is not None:
    return float(scaling["factor"])
  # HF: a missing factor is the ratio of the new to the original context length.
  return (_require(scaling, "max_position_embeddings", "yarn")
          / _require(scaling, "original_max_position_embeddings", "yarn"))


def _yarn(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
  """NTK-by-parts: dims that rotate fewer than beta_slow times over the original
  context are interpolated (/ factor), those rotating more than beta_fast times
  kept, a linear ramp in between (Peng et al. 2023, section 3.2)."""
  factor = _yarn_factor(scaling)
  original = _require(scaling, "original_max_position_embeddings", "yarn")
  beta_fast = scaling.get("beta_fast") or 32
  beta_slow = scaling.get("beta_slow") or 1

  def correction_dim(rotations):  # the dim index that rotates `rotations` times over `original`
    return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if scaling.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001  # HF's guard against a zero-width ramp
  ramp_h = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation_h = (1 - ramp_h).astype(np.float32)  # 1 = keep the original frequency
  pos_freqs_h = np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32)
                                      / np.float32(head_dim))
  inv_extra_h = 1.0 / pos_freqs_h
  inv_inter_h = 1.0 / (np.float32(factor) * pos_freqs_h)
  return inv_inter_h * (1 - extrapolation_h) + inv_extra_h * extrapolation_h


def _llama3(inv_freq_h: np.ndarray, scaling: dict) -> np.ndarray:
  """Wavelengths shorter than original/high_freq_factor are kept, longer than
  original/low_freq_factor divided by factor, and smoothly blended between."""
  factor = scaling["factor"]
  low_ff, high_ff = scaling["low_freq_factor"], scaling["high_freq_factor"]
  original = _require(scaling, "original_max_position_embeddings", "llama3")
  low_freq_wavelen, high_freq_wavelen = original / low_ff, original / high_ff
  wavelen_h = 2 * math.pi / inv_freq_h
  out_h = np.where(wavelen_h > low_freq_wavelen, inv_freq_h / factor, inv_freq_h)
  smooth_h = (original / wavelen_h - low_ff) / (high_ff - low_ff)
  smoothed_h = (1 - smooth_h) * out_h / factor + smooth_h * out_h
  medium_h = ~(wavelen_h < high_freq_wavelen) & ~(wavelen_h > low_freq_wavelen)
  return np.where(medium_h, smoothed_h, out_h).astype(np.float32)


def _dynamic_theta(theta, factor, max_pos, head_dim, seq_len):
  """HF's dynamic NTK base: theta * (factor * L / L_max - (factor - 1)) ** (H / (H - 2)), L >= L_max."""
  seq_len = jnp.maximum(seq_len, max_pos) if isinstance(seq_len, jnp.ndarray) else max(seq_len, max_pos)
  return theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None = None,
                    seq_len: int | None = None) -> Frequencies:
  """Inverse frequencies [H/2] for `head_dim`, `theta` and an HF-style `rope_scaling` dict.

  `seq_len` only matters to 'dynamic' (HF's default: max_position_embeddings,
  where dynamic equals default RoPE); inside the model apply_rope recomputes
  dynamic frequencies from the positions it sees.
  """
  scaling = dict(scaling or {})
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return _frequencies(_base(head_dim, theta))
  if rope_type == "linear":
    return _frequencies(_base(head_dim, theta) / np.float32(scaling["factor"]))
  if rope_type == "dynamic":
    factor = float(_require(scaling, "factor", rope_type))
    max_pos = int(_require(scaling, "max_position_embeddings", rope_type))
    new_theta = _dynamic_theta(theta, factor, max_pos, head_dim, seq_len or max_pos)
    return _frequencies(_base(head_dim, new_theta), dynamic=(theta, factor, max_pos, head_dim))
  if rope_type == "yarn":
    return _frequencies(_yarn(head_dim, theta, scaling), yarn_attention_factor(scaling))
  if rope_type == "llama3":
    return _frequencies(_llama3(_base(head_dim, theta), scaling))
  raise NotImplementedError(f"rope_scaling type {rope_type!r} is not one of {ROPE_TYPES}")


def cos_sin(positions_bt: jnp.ndarray, inv_freq_h) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos and sin tables [B, T, H/2], scaled by the attention factor (HF's cos/sin halves)."""
  dynamic = getattr(inv_freq_h, "dynamic", None)
  scale = getattr(inv_freq_h, "attention_factor", 1.0)
  if dynamic is not None:
    # Dynamic NTK: HF recomputes theta from max(position_ids) + 1 of the batch at
    # hand (a stateless version of its cache; packed rows count their longest
    # document). Traced, so one compiled step serves every length.
    theta, factor, max_pos, head_dim = dynamic
    seq_len = jnp.max(positions_bt).astype(jnp.float32) + 1.0
    new_theta = _dynamic_theta(theta, factor, max_pos, head_dim, seq_len)
    exponent_h = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq_h = 1.0 / (new_theta ** exponent_h)
  else:
    inv_freq_h = jnp.asarray(np.asarray(inv_freq_h, np.float32))
  # angles in float32: bfloat16 positions lose integer precision past 256.
  angles_bth = positions_bt[..., None].astype(jnp.float32) * inv_freq_h  # [B, T, H/2]
  if scale == 1.0:
    return jnp.cos(angles_bth), jnp.sin(angles_bth)
  return jnp.cos(angles_bth) * scale, jnp.sin(angles_bth) * scale


def apply_rope(x_btnh: jnp.ndarray, positions_bt: jnp.ndarray, inv_freq_h) -> jnp.ndarray:
  """Rotates x by its per-token position; computed in float32, returned in x's dtype.

  YaRN's attention factor multiplies cos and sin as in HF, so it applies to
  both q and k and the logits q.k scale by its square.
  """
  cos_bth, sin_bth = cos_sin(positions_bt, inv_freq_h)
  cos_bt1h, sin_bt1h = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)  # [B, T, N, H/2] each
  out = jnp.concatenate([x1 * cos_bt1h - x2 * sin_bt1h, x2 * cos_bt1h + x1 * sin_bt1h], axis=-1)
  return out.astype(x_btnh.dtype)
