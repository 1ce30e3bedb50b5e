"""Digests of a train state's array data, recorded at save and checked at restore.

Orbax and TensorStore do not checksum array data: the zarr3 layout checksums
only its shard index (crc32c), zarr2 (the default) nothing, and eight bytes
overwritten inside an OCDBT data file restore as different numbers without
any error (checked with orbax-checkpoint 0.12.8 / tensorstore 0.1.86). So
every save records a digest of each leaf and every restore recomputes it.

The digest is a function of the global array's bits and element positions
only, never of its sharding: each leaf is reduced on its devices by one
jitted computation (no gather to one host), so a checkpoint written on one
topology verifies on another. Per leaf, two 32-bit sums modulo 2**32 over
its 32-bit words w at linear position i:
    h1 = sum(w * (2i + 1))            any single changed word changes h1 (odd factor)
    h2 = sum(fmix32(w + i * phi))     murmur3's finaliser: reordered or multiply-
                                      changed words are caught with p ~ 2**-32
Integer addition is associative, so the reduction order (and the device
count) cannot change the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_PHI = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive positions


def _fmix32(x):
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _words(x):
  """The array's bits as uint32 (64-bit leaves gain a trailing axis of 2 words)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  if size == 8:
    return lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"no digest for dtype {x.dtype}")


def _linear_index(shape):
  """Row-major element positions (mod 2**32) built from iotas, without a reshape
  (a reshape of a sharded array would move data between devices)."""
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    idx = idx + lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  return idx


def _leaf_digest(x):
  w = _words(jnp.asarray(x))
  i = _linear_index(w.shape)
  h1 = jnp.sum(w * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
  h2 = jnp.sum(_fmix32(w + i * jnp.uint32(_PHI)), dtype=jnp.uint32)
  return jnp.stack([h1, h2])


_tree_digest = jax.jit(lambda tree: jax.tree.map(_leaf_digest, tree))


def digest(tree) -> dict[str, str]:
  """{leaf path: 16 hex digits} for every array leaf of `tree` (sharded or not)."""
  sums = _tree_digest(tree)
  out = {}
  for path, s in jax.tree_util.tree_flatten_with_path(sums)[0]:
    # The sums are replicated: any addressable copy is the whole value, on every host.
    h1, h2 = (int(v) for v in np.asarray(s.addressable_data(0)))
    out[jax.tree_util.keystr(path)] = f"{h1:08x}{h2:08x}"
  return out


def mismatches(tree, recorded: dict[str, str]) -> list[str]:
  """Leaf paths whose data no longer matches `recorded` (missing or extra leaves too)."""
  got = digest(tree)
  return sorted(k for k in set(got) | set(recorded) if got.get(k) != recorded.get(k))
