"""A tiny model's training loss and gradients with context parallelism and the Pallas kernel per
ring block (attention_impl='pallas', interpreted on CPU) against the same model on one device
with dense attention (attention_impl='xla'). 8 fake CPU devices (conftest.py)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import maxlm
from configs.long_context import context_rules
from configs.pretrain import RULES
from maxlm.optim import make_optimizer
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.train.state import create_state, state_shardings
from maxlm.train.step import loss_sums, train_step

CFG = maxlm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
B, T = 4, 32


def _batch(seed):
  """Packed rows: sorted document ids (documents straddle the 8 chunks of a row), positions
  restarting per document, a random loss mask."""
  rng = np.random.default_rng(seed)
  seg = np.sort(rng.integers(1, 5, (B, T)), axis=1).astype(np.int32)
  pos = np.zeros_like(seg)
  for b in range(B):
    for t in range(1, T):
      pos[b, t] = pos[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
  return dict(inputs=rng.integers(0, 128, (B, T)).astype(np.int32),
              targets=rng.integers(0, 128, (B, T)).astype(np.int32), segment_ids=seg,
              positions=pos, loss_mask=(rng.random((B, T)) > 0.1).astype(np.float32),
              domain_ids=rng.integers(0, 2, (B, T)).astype(np.int32))


def _run(cfg, mesh_shape, context, devices=None, rules=RULES):
  """(loss, grads) of the mean loss, and the losses of two train steps."""
  tx, sched = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                             total_steps=10)
  mesh = make_mesh(*mesh_shape, devices=devices, context=context)
  sh = state_shardings(cfg, tx, mesh, rules)
  state = create_state(cfg, tx, 0, sh)
  bsh = batch_sharding(mesh, rules)

  def mean_loss(params, b):
    with nn.logical_axis_rules(rules):
      total, aux = loss_sums(params, b, model_config=cfg, num_domains=2)
    return total / aux["count"]

  step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                   microbatches=1, num_domains=2, rules=rules),
                 in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
  with jax.set_mesh(mesh):
    loss, grads = jax.jit(jax.value_and_grad(mean_loss), in_shardings=(sh["params"], bsh))(
        state["params"], host_batch_to_global(_batch(0), bsh))
    grads = jax.device_get(grads)
    state, m1 = step(state, host_batch_to_global(_batch(0), bsh))
    state, m2 = step(state, host_batch_to_global(_batch(1), bsh))
  return float(loss), grads, float(m1["loss"]), float(m2["loss"])


@pytest.fixture(scope="module")
def single_device():
  return _run(CFG, (1, 1, 1), 1, devices=jax.devices()[:1])


@pytest.mark.slow  # ~50 s on 2 cores: 3 programs with 2 layers of interpreted kernels
def test_kernel_ring_training_matches_single_device(single_device):
  """data=2 x context=4 (the 8-way ring with the kernel is covered at the attention level)."""
  cfg = dataclasses.replace(CFG, attention_impl="pallas")
  loss, grads, loss1, loss2 = _run(cfg, (2, 1, 1), 4)
  want_loss, want_grads, want1, want2 = single_device
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(loss1, want1, rtol=1e-5)
  np.testing.assert_allclose(loss2, want2, rtol=1e-5)  # after one update: gradients agreed
  assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    # float32 sums in another order: relative to the leaf's scale.
    np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max(), rtol=1e-4)


# The long-context stage's rules (configs/long_context.py): the vocabulary table split by
# 'vocab' over context, every other weight's 'embed' over fsdp x context.
STAGE_RULES = context_rules(RULES)


def test_stage_rules_split_the_table_by_vocab_over_context():
  tied = dataclasses.replace(CFG, tie_embeddings=True)
  tx, _ = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                         total_steps=10)
  mesh = make_mesh(1, 2, 1, context=4)
  sh = state_shardings(tied, tx, mesh, STAGE_RULES)["params"]
  assert sh["embedding_vd"].spec == jax.sharding.PartitionSpec(("tensor", "context"), "fsdp")
  w_up = sh["layers"]["block"]["mlp"]["w_up_df"].spec
  assert w_up == jax.sharding.PartitionSpec(None, ("fsdp", "context"), "tensor")
  # The loss's logits chunks: vocab over context, so 'length' (also context) is left whole.
  assert nn.logical_to_mesh_axes(("batch", "length", "vocab"), STAGE_RULES) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, ("tensor", "context"))
  # The earlier split stays available (bench/context_memory.py --table=embed).
  old = state_shardings(tied, tx, mesh, context_rules(RULES, "embed"))["params"]
  assert old["embedding_vd"].spec == jax.sharding.PartitionSpec("tensor", ("fsdp", "context"))
  with pytest.raises(ValueError, match="table='rows'"):
    context_rules(RULES, "rows")


@pytest.mark.slow  # ~50 s on 2 cores: a tiny model's value-and-grad and two steps, twice
def test_vocab_sharded_table_training_matches_single_device():
  """The stage's rules with a tied table (the lookup and the head on one vocab-split weight, as
  the `1b` preset) and the chunked loss (4 chunks of 8 positions, vocab-parallel logits) on
  data=2 x context=4 against the dense loss and attention on one device."""
  ref_cfg = dataclasses.replace(CFG, tie_embeddings=True)
  want_loss, want_grads, want1, want2 = _run(ref_cfg, (1, 1, 1), 1, devices=jax.devices()[:1])
  cfg = dataclasses.replace(ref_cfg, loss_chunk=8)
  loss, grads, loss1, loss2 = _run(cfg, (2, 1, 1), 4, rules=STAGE_RULES)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(loss1, want1, rtol=1e-5)
  np.testing.assert_allclose(loss2, want2, rtol=1e-5)
  assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max(), rtol=1e-4)
