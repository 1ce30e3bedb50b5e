"""Model FLOPs utilisation against a per-device peak table.

Peaks are dense bf16 matmul FLOP/s per chip from vendor datasheets (no
sparsity): TPU v4 275T, v5e 197T, v5p 459T, v6e (Trillium) 918T; A100 312T,
H100 SXM 989T, H200 989T (same compute as H100, more HBM).
"""

from __future__ import annotations

import jax

_PEAK_BF16 = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e reports itself as "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
}


def peak_flops_per_device(device=None) -> float | None:
  """Peak bf16 FLOP/s of `device` (default: the first), or None when unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  # Longest key first so "tpu v5 lite" wins over "tpu v5".
  for key in sorted(_PEAK_BF16, key=len, reverse=True):
    if key in kind:
      return _PEAK_BF16[key]
  return None


def mfu(tokens_per_s: float, flops_per_token: float, n_devices: int, device=None) -> float | None:
  peak = peak_flops_per_device(device)
  if peak is None:
    return None
  return tokens_per_s * flops_per_token / (peak * n_devices)
