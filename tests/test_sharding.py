"""The same step on 1 device and on 8 fake devices under several meshes."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import maxlm
from maxlm.optim import make_optimizer
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.train.state import create_state, state_shardings
from maxlm.train.step import loss_sums, train_step
from configs.pretrain import RULES

CFG = maxlm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
B, T = 8, 16


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  seg = np.sort(rng.integers(1, 4, (B, T)), axis=1).astype(np.int32)
  pos = np.zeros_like(seg)
  for b in range(B):
    for t in range(1, T):
      pos[b, t] = pos[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
  return dict(inputs=rng.integers(0, 128, (B, T)).astype(np.int32),
              targets=rng.integers(0, 128, (B, T)).astype(np.int32), segment_ids=seg,
              positions=pos, loss_mask=(rng.random((B, T)) > 0.1).astype(np.float32),
              domain_ids=rng.integers(0, 2, (B, T)).astype(np.int32))


def _one_step(mesh_shape, devices, batch, microbatches=1, context=1):
  tx, sched = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                             total_steps=10)
  mesh = make_mesh(*mesh_shape, devices=devices, context=context)
  sh = state_shardings(CFG, tx, mesh, RULES)
  state = create_state(CFG, tx, 0, sh)
  bsh = batch_sharding(mesh, RULES)
  traces = []

  def counted(*a, **k):
    traces.append(1)  # runs at trace time only
    return train_step(*a, **k)

  step = jax.jit(functools.partial(counted, model_config=CFG, tx=tx, schedule=sched,
                                   microbatches=microbatches, num_domains=2, rules=RULES),
                 in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
  def mean_loss(params, b):
    with nn.logical_axis_rules(RULES):
      total, aux = loss_sums(params, b, model_config=CFG, num_domains=2)
    return total / aux["count"]

  grad_fn = jax.jit(jax.grad(mean_loss), in_shardings=(sh["params"], bsh))
  with jax.set_mesh(mesh):
    grads = jax.device_get(grad_fn(state["params"], host_batch_to_global(batch, bsh)))
    state, m1 = step(state, host_batch_to_global(batch, bsh))
    state, m2 = step(state, host_batch_to_global(_batch(1), bsh))
  return dict(loss=float(m1["loss"]), loss2=float(m2["loss"]), grad_norm=float(m1["grad_norm"]),
              grads=grads, traces=len(traces),
              spec=state["params"]["layers"]["block"]["mlp"]["w_up_df"].sharding.spec)


def _assert_grads_close(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    # float32 sums in a different order: relative to the leaf's scale.
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max(), rtol=1e-4)


@pytest.fixture(scope="module")
def reference():
  return _one_step((1, 1, 1), jax.devices()[:1], _batch())


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_mesh_matches_single_device(reference, mesh_shape):
  assert len(jax.devices()) == 8
  got = _one_step(mesh_shape, None, _batch())
  np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["loss2"], reference["loss2"], rtol=1e-5)
  np.testing.assert_allclose(got["grad_norm"], reference["grad_norm"], rtol=1e-5)
  _assert_grads_close(got["grads"], reference["grads"])
  assert got["traces"] == 1, "the train step must trace once"
  if mesh_shape[1] > 1:  # weights really are split: embed over fsdp, mlp over tensor
    assert tuple(got["spec"])[1:] == ("fsdp", "tensor")


@pytest.mark.parametrize("mesh_shape,context", [((2, 1, 1), 4), ((1, 1, 2), 4), ((1, 2, 1), 4)])
def test_context_parallel_matches_single_device(reference, mesh_shape, context):
  """Sequence sharded 4 ways (ring attention, load-balanced layout): same losses and grads."""
  got = _one_step(mesh_shape, None, _batch(), context=context)
  np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["loss2"], reference["loss2"], rtol=1e-5)
  np.testing.assert_allclose(got["grad_norm"], reference["grad_norm"], rtol=1e-5)
  _assert_grads_close(got["grads"], reference["grads"])
  assert got["traces"] == 1, "the train step must trace once"


def test_microbatching_matches_full_batch(reference):
  got = _one_step((1, 1, 1), jax.devices()[:1], _batch(), microbatches=4)
  np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["loss2"], reference["loss2"], rtol=1e-5)


def test_model_forward_is_retraced_under_other_axis_rules():
  """flax reads the logical-axis rules from a context manager at trace time, which jax's jit
  cache does not see: the model's inner jit must key on them, or a second trace of the same
  config under other rules silently keeps the first rules' sharding constraints."""
  cfg = maxlm.ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                          head_dim=16, d_ff=64)
  mesh = make_mesh(1, 2, 1, devices=jax.devices()[:2])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(maxlm.init_params(cfg, jax.random.PRNGKey(0)), replicated)
  tokens = jax.device_put(np.zeros((2, 16), np.int32), replicated)

  def lowered(rules):
    # A new outer function each time, so only the model's own jit cache could carry a trace over.
    f = lambda p, t: maxlm.forward(cfg, p, t)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jax.jit(f).lower(params, tokens).as_text()

  batch_over_fsdp = tuple((n, "fsdp") if n == "batch" else (n, a) for n, a in RULES)
  batch_replicated = tuple((n, None) if n == "batch" else (n, a) for n, a in RULES)
  first, second = lowered(batch_over_fsdp), lowered(batch_replicated)
  assert first != second
  assert lowered(batch_over_fsdp) == first  # same rules: the same program
