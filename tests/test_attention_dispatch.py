"""The model's attention dispatch: attention_impl='pallas' against 'xla'.

The Pallas kernel runs in interpret mode on CPU; the sharded tests use the 8
fake devices conftest.py sets up, with the mesh and logical rules the
trainer uses (batch over data x fsdp, heads and kv heads over tensor).
"""

import dataclasses
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.model import attention as attention_lib

CFG = maxlm.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, d_ff=64, attention_impl="xla")
RULES = (("batch", ("data", "fsdp")), ("heads", "tensor"), ("kv", "tensor"),
         ("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"))


def _packed_batch(rng, B=4, T=40):
  """Tokens, segment ids (documents 1.., trailing padding 0) and per-document positions."""
  tokens_bt = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  seg_bt = np.zeros((B, T), np.int32)
  pos_bt = np.zeros((B, T), np.int32)
  for b in range(B):
    used = T - int(rng.integers(0, 6))
    cuts = np.sort(rng.choice(np.arange(1, used), size=2, replace=False))
    seg_bt[b, :used] = np.searchsorted(cuts, np.arange(used), side="right") + 1
    starts = np.concatenate([[0], cuts])[seg_bt[b, :used] - 1]
    pos_bt[b, :used] = np.arange(used) - starts
  return jnp.asarray(tokens_bt), jnp.asarray(seg_bt), jnp.asarray(pos_bt)


def _loss(cfg, params, tokens_bt, seg_bt, pos_bt):
  logits_btv = maxlm.forward(cfg, params, tokens_bt, seg_bt, pos_bt)
  # Next-token loss within each document (padding and document ends excluded).
  logp_btv = jax.nn.log_softmax(logits_btv[:, :-1])
  nll_bt = -jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
  keep_bt = (seg_bt[:, 1:] == seg_bt[:, :-1]) & (seg_bt[:, 1:] > 0)
  return jnp.sum(nll_bt * keep_bt) / jnp.sum(keep_bt), logits_btv


def _loss_grads(cfg, params, batch):
  fn = jax.jit(jax.value_and_grad(lambda p, *b: _loss(cfg, p, *b), has_aux=True))
  (loss, logits), grads = fn(params, *batch)
  return loss, logits, grads


def _assert_tree_close(got, want, tol, seed):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-6)
    assert err <= tol, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} (seed={seed})"


@pytest.fixture(scope="module")
def setup():
  """Params, a packed batch and the unsharded xla (loss, logits, grads), computed once."""
  seed = int(os.environ.get("MAXLM_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
  rng = np.random.default_rng(seed)
  params = maxlm.init_params(CFG, jax.random.key(int(rng.integers(2**31))))
  batch = _packed_batch(rng)
  return seed, params, batch, _loss_grads(CFG, params, batch)


def test_pallas_model_matches_xla_on_packed_batch(setup):
  seed, params, batch, want = setup
  got = _loss_grads(dataclasses.replace(CFG, attention_impl="pallas"), params, batch)
  _assert_tree_close(got, want, 1e-5, seed)


def test_pallas_model_sharded_on_8_devices(setup):
  seed, params, batch, want = setup
  # Auto axes: the model's logical constraints place replicated inputs themselves
  # (with Explicit axes they act as asserts and the inputs would need resharding).
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    got = _loss_grads(dataclasses.replace(CFG, attention_impl="pallas"), params, batch)
  _assert_tree_close(got, want, 1e-5, seed)


# Explicit axes exist only under jax.set_mesh, so the legacy context is paired with Auto alone.
@pytest.mark.parametrize("legacy_mesh_context,axis_type",
                         [(False, "Auto"), (False, "Explicit"), (True, "Auto")],
                         ids=["set_mesh-Auto", "set_mesh-Explicit", "with_mesh-Auto"])
def test_pallas_attention_under_a_mesh(legacy_mesh_context, axis_type):
  """attention(impl='pallas') under jax.set_mesh or the legacy `with mesh:`: values and grads."""
  rng = np.random.default_rng()
  q = jnp.asarray(rng.standard_normal((4, 24, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((4, 24, 2, 16)), jnp.float32)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, (4, 24)), axis=1), jnp.int32)
  loss = lambda impl: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(jnp.sin(attention_lib.attention(q, k, v, seg, impl=impl))),
      argnums=(0, 1, 2)))
  want = loss("xla")(q, k, k)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(getattr(jax.sharding.AxisType, axis_type),) * 3)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # `with mesh:` is deprecated upstream
    with (mesh if legacy_mesh_context else jax.set_mesh(mesh)), nn.logical_axis_rules(RULES):
      got = loss("pallas")(q, k, k)
  # The value is a sum over 6k outputs: float32 reassociation alone reaches ~1e-5 of it.
  _assert_tree_close(got, want, 1e-4, "n/a")


def test_sharded_specs_follow_the_rules(monkeypatch):
  """The kernel sees batch/4 and heads/2 per shard under the trainer's rules."""
  seen = []
  monkeypatch.setattr(attention_lib, "_pallas_local",
                      lambda q, k, v, seg: (seen.append((q.shape, k.shape, seg.shape)), q)[1])
  q = jnp.zeros((8, 16, 4, 8))
  k = jnp.zeros((8, 16, 2, 8))
  seg = jnp.ones((8, 16), jnp.int32)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    jax.jit(lambda q, k, seg: attention_lib.attention(q, k, k, seg, impl="pallas"))(q, k, seg)
  assert seen == [((2, 16, 2, 8), (2, 16, 1, 8), (2, 16))]


def test_pallas_without_segment_ids_matches_xla():
  rng = np.random.default_rng()
  q = jnp.asarray(rng.standard_normal((2, 20, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 20, 1, 16)), jnp.float32)
  got = attention_lib.attention(q, k, k, None, impl="pallas")
  want = attention_lib.attention(q, k, k, None, impl="xla")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl,match", [("cudnn", "needs an NVIDIA GPU"), ("splash", "only on TPU"),
                                        ("flash", "not one of")])
def test_unavailable_impls_fail_loudly(impl, match):
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match=match):
    attention_lib.attention(q, q, q, jnp.ones((1, 8), jnp.int32), impl=impl)


@pytest.mark.parametrize("T,window", [(1, None), (37, None), (37, 5), (520, None), (520, 50)])
def test_cpu_blocked_attention_matches_dense(T, window):
  """The 'xla' path on CPU (query blocks against the keys they can see) equals dense_attention
  (itself checked against NumPy in test_model.py): packed documents, padding, GQA, windows,
  T not a multiple of the block (520 takes blocks of 33) and the gradient."""
  rng = np.random.default_rng(T)
  B, N, K, H = 2, 4, 2, 8
  q, k, v = (jnp.asarray(rng.standard_normal((B, T, n, H)), jnp.float32) for n in (N, K, K))
  seg_bt = np.sort(rng.integers(1, 4, (B, T)), axis=1).astype(np.int32)
  seg_bt[:, T - T // 5:] = 0  # trailing padding
  seg_bt = jnp.asarray(seg_bt)
  blocked = lambda q, k, v: attention_lib.causal_blocked_attention(q, k, v, seg_bt, window=window)
  dense = lambda q, k, v: attention_lib.dense_attention(q, k, v, seg_bt, window=window)
  np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), atol=1e-5, rtol=1e-5)
  g_blocked = jax.grad(lambda *a: jnp.sum(jnp.sin(blocked(*a))), argnums=(0, 1, 2))(q, k, v)
  g_dense = jax.grad(lambda *a: jnp.sum(jnp.sin(dense(*a))), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_blocked, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  with jax.default_device(jax.devices("cpu")[0]):  # the dispatch takes this path on CPU
    np.testing.assert_allclose(attention_lib.attention(q, k, v, seg_bt, window=window),
                               dense(q, k, v), atol=1e-5, rtol=1e-5)
