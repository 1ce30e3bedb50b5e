"""The load-balanced ("zigzag") token layout of a context-sharded sequence.

With causal attention a contiguous split of the sequence over C devices gives
device 0 almost no work and device C-1 the most. So the sequence is cut into
2C chunks of T / (2C) tokens and device i holds chunk i then chunk 2C-1-i;
every device then has the same share of the causal triangle (see
maxlm/model/context_parallel.py for how ring attention uses it). One home for
the permutation: the batch placement (mesh.host_batch_to_global) and the
attention both read it from here.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def layout_indices(T: int, C: int) -> np.ndarray:
  """int [T]: the natural index of the token at each layout position.

  Device i's shard is layout positions [i*T/C, (i+1)*T/C): chunk i then chunk 2C-1-i.
  """
  if C == 1:
    return np.arange(T)
  if T % (2 * C):
    raise ValueError(f"sequence length {T} is not divisible by 2 x mesh.context = {2 * C}:"
                     " the load-balanced layout needs 2*context equal chunks; change data.seq_len")
  c = T // (2 * C)
  chunks = [np.concatenate([np.arange(i * c, (i + 1) * c),
                            np.arange((2 * C - 1 - i) * c, (2 * C - i) * c)]) for i in range(C)]
  return np.concatenate(chunks)


def to_layout(x, C: int, axis: int = 1):
  """Natural order -> layout order along `axis` (numpy or jax arrays)."""
  if C == 1:
    return x
  idx = layout_indices(x.shape[axis], C)
  return np.take(x, idx, axis=axis) if isinstance(x, np.ndarray) else jnp.take(x, idx, axis=axis)


def from_layout(x, C: int, axis: int = 1):
  """Layout order -> natural order along `axis` (the inverse of to_layout)."""
  if C == 1:
    return x
  inv = np.argsort(layout_indices(x.shape[axis], C))
  return np.take(x, inv, axis=axis) if isinstance(x, np.ndarray) else jnp.take(x, inv, axis=axis)
