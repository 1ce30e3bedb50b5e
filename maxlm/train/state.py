"""The train state, created directly sharded.

Shapes come from `jax.eval_shape` (no memory used); logical axes from the
model's partitioning metadata; shardings from the rules table. The state is
then materialised by a jitted init whose out_shardings place every leaf on
its devices, so a model larger than one device's memory never exists
unsharded anywhere.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maxlm.model import ModelConfig, init_params
from maxlm.sharding import logical_shardings


def state_shardings(model_config: ModelConfig, tx, mesh, rules):
  """NamedShardings for dict(params, opt_state, step, rng)."""
  rng = jax.random.PRNGKey(0)
  boxed = jax.eval_shape(lambda r: init_params(model_config, r, boxed=True), rng)
  param_shardings = logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, nn.meta.unbox(boxed))
  replicated = NamedSharding(mesh, P())
  # Moments mirror the params they belong to; counters and the like are replicated.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated)
  return dict(params=param_shardings, opt_state=opt_shardings, step=replicated, rng=replicated)


def _init_fn(model_config: ModelConfig, tx):
  def init(rng):
    params = init_params(model_config, jax.random.fold_in(rng, 0))
    return dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32), rng=rng)
  return init


def create_state(model_config: ModelConfig, tx, seed: int, shardings):
  """Initialises params and optimizer state directly into `shardings`."""
  return jax.jit(_init_fn(model_config, tx), out_shardings=shardings)(jax.random.PRNGKey(seed))


def abstract_state(model_config: ModelConfig, tx, seed: int, shardings):
  """ShapeDtypeStructs carrying shardings: the target of a checkpoint restore."""
  shapes = jax.eval_shape(_init_fn(model_config, tx), jax.random.PRNGKey(seed))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
