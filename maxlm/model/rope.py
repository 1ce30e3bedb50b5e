"""Rotary position embeddings (Su et al. 2021, arXiv:2104.09864).

Uses Hugging Face's "rotate half" layout: the head dim is split in two halves
(x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin), so weights imported
from a Llama checkpoint need no permutation.

`inv_frequencies` is the one place where RoPE variants (linear interpolation,
NTK, YaRN, Llama 3) change the frequencies; the long-context issue extends it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
  """Inverse frequencies [H/2] for `head_dim`, `theta` and an HF-style `rope_scaling` dict."""
  inv_freq_h = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    return inv_freq_h.astype(np.float32)
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return inv_freq_h.astype(np.float32)
  if rope_type == "linear":
    return (inv_freq_h / scaling["factor"]).astype(np.float32)
  raise NotImplementedError(f"rope_scaling type {rope_type!r} is not implemented yet")


def apply_rope(x_btnh: jnp.ndarray, positions_bt: jnp.ndarray, inv_freq_h: np.ndarray) -> jnp.ndarray:
  """Rotates x by its per-token position; computed in float32, returned in x's dtype."""
  # angles in float32: bfloat16 positions lose integer precision past 256.
  angles_bth = positions_bt[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_h)  # [B, T, H/2]
  sin_bt1h = jnp.sin(angles_bth)[:, :, None, :]
  cos_bt1h = jnp.cos(angles_bth)[:, :, None, :]
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)  # [B, T, N, H/2] each
  out = jnp.concatenate([x1 * cos_bt1h - x2 * sin_bt1h, x2 * cos_bt1h + x1 * sin_bt1h], axis=-1)
  return out.astype(x_btnh.dtype)
