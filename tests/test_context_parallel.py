"""Context parallelism: ring attention on sequence shards against dense attention.

Runs on the 8 fake CPU devices conftest.py sets up. Inputs are fresh random
packed batches (documents straddle shard boundaries, trailing padding), in
natural order; they are put in the load-balanced layout exactly as the
trainer's batch placement does, and the outputs are read back in natural order.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.reference import attention_reference
from maxlm.model import attention as attention_lib
from maxlm.model import context_parallel
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.sharding.context_layout import from_layout, layout_indices, to_layout

RULES = (("batch", ("data", "fsdp")), ("length", "context"), ("heads", "tensor"),
         ("kv", "tensor"))


def _seed():
  return int(os.environ.get("MAXLM_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _packed_segments(rng, B, T):
  """Sorted segment ids 1..5 (so documents cross shard boundaries) and 0-padding at the end."""
  seg_bt = np.sort(rng.integers(1, 6, (B, T)), axis=1).astype(np.int32)
  for b in range(B):
    seg_bt[b, T - int(rng.integers(0, 5)):] = 0
  return seg_bt


def test_layout_golden():
  # T = 8 over C = 2: chunks of 2; device 0 holds chunks 0 and 3, device 1 chunks 1 and 2.
  np.testing.assert_array_equal(layout_indices(8, 2), [0, 1, 6, 7, 2, 3, 4, 5])
  np.testing.assert_array_equal(layout_indices(12, 3), [0, 1, 10, 11, 2, 3, 8, 9, 4, 5, 6, 7])
  x = np.arange(24).reshape(2, 12)
  np.testing.assert_array_equal(from_layout(to_layout(x, 3), 3), x)
  np.testing.assert_array_equal(to_layout(x, 3)[1], 12 + layout_indices(12, 3))


def test_layout_rejects_indivisible_length():
  with pytest.raises(ValueError, match="not divisible by 2 x mesh.context = 8"):
    layout_indices(20, 4)


def _mesh(data, context, tensor):
  return make_mesh(data=data, fsdp=1, tensor=tensor, context=context)


def _dense_and_ring(mesh, C, q, k, v, seg, causal=True, block_k=None, impl="xla"):
  """(dense value+grads, ring value+grads, ring output) of sum(sin(attention)), natural order.

  Dense: kernels/reference.py on one device. Ring: through the model's dispatch
  (block_k None, causal), else ring_attention_local directly with block_impl=impl.
  """
  def dense(q, k, v):
    return jnp.sum(jnp.sin(attention_reference(q, k, v, segment_ids=seg, causal=causal)))
  want = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2)))(q, k, v)

  seg_l = to_layout(seg, C)
  if block_k is None and causal:  # through the model's dispatch
    ring_out = lambda q, k, v: attention_lib.attention(q, k, v, seg_l, impl=impl)
  else:  # directly, to set block_k or causal=False (the model is always causal)
    spec = jax.sharding.PartitionSpec("data", "context", "tensor", None)
    local = lambda *a: context_parallel.ring_attention_local(
        *a, axis_name="context", axis_size=C, causal=causal, block_k=block_k or 512,
        block_impl=impl)
    seg_spec = jax.sharding.PartitionSpec("data", "context")
    ring_out = lambda q, k, v: jax.shard_map(  # check_vma off, as the dispatch runs it
        local, mesh=mesh, in_specs=(spec, spec, spec, seg_spec), out_specs=spec,
        check_vma=False)(q, k, v, seg_l)
  ring = lambda q, k, v: jnp.sum(jnp.sin(ring_out(q, k, v)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    val, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2)))(
        *(to_layout(x, C) for x in (q, k, v)))
    out = jax.jit(ring_out)(*(to_layout(x, C) for x in (q, k, v)))
  got = (val, tuple(from_layout(g, C) for g in grads))
  return want, got, from_layout(out, C)


def _check_ring(data, context, tensor, causal, block_k, impl, T_per_device=16,
                dtype=jnp.float32):
  seed = _seed()
  rng = np.random.default_rng(seed)
  B, T, N, K, H = 2 * data, T_per_device * context, 4, 2, 8  # GQA: two query heads per kv head
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)
  q, k, v = normal(B, T, N, H), normal(B, T, K, H), normal(B, T, K, H)
  seg = jnp.asarray(_packed_segments(rng, B, T))
  mesh = _mesh(data, context, tensor)
  (want_val, want_g), (got_val, got_g), out = _dense_and_ring(mesh, context, q, k, v, seg, causal,
                                                              block_k, impl)
  f32 = lambda x: np.asarray(x, np.float32)
  # float32: reassociation only. bfloat16: both sides round p and the outputs to 8 bits,
  # in different places (per ring block vs once), so a few bf16 ulps of the scale.
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  want_out = attention_reference(q, k, v, segment_ids=seg, causal=causal)
  # Outputs are convex combinations of v: their scale is max |v|, never 0.
  np.testing.assert_allclose(f32(out), f32(want_out), atol=tol * np.abs(f32(v)).max(), rtol=tol,
                             err_msg=f"seed={seed}")
  # A sum over ~B*T*N*H outputs: float32 reassociation reaches ~1e-6 of its scale.
  np.testing.assert_allclose(f32(got_val), f32(want_val), rtol=tol, atol=tol * B * T,
                             err_msg=f"seed={seed}")
  # Gradient terms are products of q, k, v and cos(out) (|.| <= 1): their scale, not the
  # gradient's own (which can cancel), bounds the rounding error.
  scale = H ** -0.5 * np.abs(f32(q)).max() * np.abs(f32(k)).max() * np.abs(f32(v)).max()
  for name, g, w in zip("qkv", got_g, want_g):
    np.testing.assert_allclose(f32(g), f32(w), atol=2 * tol * max(np.abs(f32(w)).max(), scale),
                               rtol=1e-4 if dtype == jnp.float32 else 0,
                               err_msg=f"d{name} seed={seed}")


@pytest.mark.parametrize("data,context,tensor,causal,block_k",
                         [(2, 4, 1, True, None), (1, 8, 1, True, 4), (1, 4, 2, True, None),
                          (2, 2, 2, True, 8), (2, 4, 1, False, 4)],
                         ids=["data2-ctx4", "ctx8-blockk4", "ctx4-tensor2", "data2-ctx2-tensor2-blockk8",
                              "noncausal-ctx4-blockk4"])
def test_ring_matches_dense_values_and_grads(data, context, tensor, causal, block_k):
  _check_ring(data, context, tensor, causal, block_k, "xla")


@pytest.mark.parametrize("data,context,tensor,causal",
                         [(2, 4, 1, True), (1, 8, 1, True), (1, 4, 2, True), (2, 4, 1, False)],
                         ids=["data2-ctx4", "ctx8", "ctx4-tensor2", "noncausal-ctx4"])
def test_ring_with_kernel_per_block_matches_dense(data, context, tensor, causal):
  """block_impl='pallas' (the kernel, interpreted): packed documents straddle shards, GQA."""
  _check_ring(data, context, tensor, causal, None, "pallas", T_per_device=8)


def test_ring_with_kernel_per_block_bfloat16():
  """The model's compute dtype: bfloat16 inputs, float32 merge, against the float32 reference
  on the same rounded inputs."""
  _check_ring(2, 4, 1, True, None, "pallas", T_per_device=8, dtype=jnp.bfloat16)


def test_straddling_document_sees_only_itself():
  """A document spanning every shard: its output ignores the documents around it."""
  rng = np.random.default_rng(_seed())
  B, T, C = 2, 32, 4
  seg = np.ones((B, T), np.int32)
  seg[:, 3:29] = 2  # document 2 covers parts of all 8 chunks
  seg[:, 29:] = 3
  q, k, v = (jnp.asarray(rng.standard_normal((B, T, 2, 8)), jnp.float32) for _ in range(3))
  mesh = _mesh(2, C, 1)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    out = from_layout(jax.jit(attention_lib.attention)(
        *(to_layout(x, C) for x in (q, k, v, jnp.asarray(seg)))), C)
  # Document 2 alone, attended densely from its own first token.
  alone = attention_lib.dense_attention(q[:, 3:29], k[:, 3:29], v[:, 3:29],
                                        jnp.ones((B, 26), jnp.int32))
  np.testing.assert_allclose(out[:, 3:29], alone, atol=1e-5, rtol=1e-5)


def test_attention_rejects_indivisible_sequence():
  mesh = _mesh(2, 4, 1)
  q = jnp.zeros((2, 20, 2, 8))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    with pytest.raises(ValueError, match="sequence length 20 is not divisible by 2 x mesh.context"):
      jax.jit(lambda q: attention_lib.attention(q, q, q, None))(q)


@pytest.mark.parametrize("impl,block_impl", [("xla", "xla"), ("pallas", "pallas")])
def test_ring_runs_on_sequence_shards(monkeypatch, impl, block_impl):
  """Each device's ring step sees B/data rows and T/context tokens, never the whole sequence;
  model.attention_impl='pallas' runs the kernel per ring block."""
  seen = []
  real = context_parallel.ring_attention_local
  monkeypatch.setattr(context_parallel, "ring_attention_local",
                      lambda q, k, v, s, **kw: (seen.append((q.shape, kw)), real(q, k, v, s, **kw))[1])
  mesh = _mesh(2, 4, 1)
  q = jnp.zeros((4, 32, 2, 8))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    jax.jit(lambda q: attention_lib.attention(q, q, q, None, impl=impl))(q)
  assert seen == [((2, 8, 2, 8), dict(axis_name="context", axis_size=4, block_impl=block_impl))]


def test_kernel_ring_calls_the_kernel_per_visible_pair(monkeypatch):
  """C = 4: one causal call on the local block, then two c x c non-causal calls per step."""
  calls = []
  real = context_parallel.flash_attention_with_lse
  monkeypatch.setattr(context_parallel, "flash_attention_with_lse",
                      lambda q, k, v, **kw: (calls.append((q.shape[1], k.shape[1], kw["causal"])),
                                             real(q, k, v, **kw))[1])
  mesh = _mesh(2, 4, 1)
  q = jnp.zeros((4, 32, 2, 8))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    jax.jit(lambda q: attention_lib.attention(q, q, q, None, impl="pallas"))(q)
  assert calls == [(8, 8, True)] + [(4, 4, False)] * 6


def test_batch_placement_applies_the_layout():
  mesh = _mesh(2, 4, 1)
  sh = batch_sharding(mesh, RULES)
  assert tuple(sh.spec) == (("data", "fsdp"), "context")
  x = np.arange(2 * 16).reshape(2, 16).astype(np.int32)
  placed = host_batch_to_global(dict(inputs=x, targets=x + 100), sh)
  np.testing.assert_array_equal(jax.device_get(placed["inputs"]), to_layout(x, 4))
  np.testing.assert_array_equal(jax.device_get(placed["targets"]), to_layout(x + 100, 4))
  # Device 1 of the context axis holds chunks 1 and 6 (of 8) of row 0.
  shard = next(s for s in placed["inputs"].addressable_shards
               if s.index[0] == slice(0, 1) and s.index[1] == slice(4, 8))
  np.testing.assert_array_equal(np.asarray(shard.data)[0], [2, 3, 12, 13])
