"""Device meshes with axes (data, fsdp, context, tensor) and logical-axis placement.

Layers name logical axes (maxlm.model); one rules table, `config.mesh.rules`,
maps them to these mesh axes. `data` and `fsdp` both split the batch; `fsdp`
also splits weights (ZeRO-3 style), `tensor` splits heads and the MLP
(Megatron style), `context` splits the sequence of every activation (logical
'length'; ring attention in maxlm/model/context_parallel.py). `context` sits
next to `tensor`, inside the batch axes, so its ring runs over neighbouring
devices of the topology.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maxlm.sharding.context_layout import to_layout

MESH_AXES = ("data", "fsdp", "context", "tensor")


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int,
                       context: int = 1) -> tuple[int, int, int]:
  """Fills in the one axis given as -1 with the devices left; validates the product.

  Returns (data, fsdp, tensor); `context` (never -1) counts in the product.
  """
  if context < 1:
    raise ValueError(f"mesh.context={context} must be a positive axis size")
  sizes = dict(data=data, fsdp=fsdp, context=context, tensor=tensor)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
  for k, v in sizes.items():
    if v != -1 and v <= 0:
      raise ValueError(f"mesh.{k}={v} must be positive or -1")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if fixed > n_devices:
    raise ValueError(f"mesh {sizes} needs {fixed} devices but only {n_devices} are available")
  if free:
    if n_devices % fixed:
      raise ValueError(f"mesh {sizes}: {n_devices} devices are not divisible by {fixed}")
    sizes[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    raise ValueError(f"mesh {sizes} uses {fixed} devices but {n_devices} are available;"
                     " set one axis to -1 to use the rest")
  return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None,
              context: int = 1, **unused) -> Mesh:
  """Builds the (data, fsdp, context, tensor) mesh; `devices` defaults to all devices."""
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp, tensor = resolve_mesh_shape(data, fsdp, tensor, len(devices), context)
  shape = (data, fsdp, context, tensor)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if len(devices) == len(jax.devices()):
    # jax.make_mesh orders devices for the physical topology (ICI rings on TPU).
    # Auto axes: placement comes from jit in/out shardings and the logical
    # constraints at block boundaries; XLA's partitioner does the rest.
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_shardings(logical_specs, mesh: Mesh, rules):
  """Maps a pytree of logical PartitionSpecs to NamedShardings under `rules`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(map(tuple, rules)))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a [B, T] batch array: B over the axes 'batch' maps to."""
  spec = nn.logical_to_mesh_axes(("batch", "length"), tuple(map(tuple, rules)))
  return NamedSharding(mesh, spec)


def context_size(sharding: NamedSharding) -> int:
  """How many shards the [B, T] batch's length dim is split into (mesh.context, or 1)."""
  axes = sharding.spec[1] if len(sharding.spec) > 1 else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(sharding.mesh.shape[a] for a in axes)


def host_batch_to_global(host_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each host's rows into global jax.Arrays (multi-host safe).

  When the sharding splits the length dim (context parallelism), every [B, T]
  field is put in the load-balanced layout first (context_parallel.to_layout),
  the same permutation for inputs, targets, positions, segment ids and masks,
  which is what ring attention expects. Loss sums do not depend on the order.
  """
  C = context_size(sharding)
  out = {}
  for k, v in host_batch.items():
    v = np.asarray(v)
    if C > 1 and v.ndim >= 2:
      v = to_layout(v, C, axis=1)
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out
