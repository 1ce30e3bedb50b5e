"""Chunked cross entropy (maxlm/model/loss.py) against optax's dense cross entropy.

Values and gradients with respect to the hidden states and the head weights,
fresh random inputs each run, tolerances relative to the reference's scale.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxlm.model import loss as loss_lib


def _inputs(B=2, T=13, D=16, V=96, K=1, scale=3.0, seed=None):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((B, T, D)).astype(np.float32)
  w = (scale * rng.standard_normal((D, V)) / np.sqrt(D)).astype(np.float32)
  ids = rng.integers(0, V, (B, T, K)).astype(np.int32)
  mask = (rng.random((B, T)) < 0.8).astype(np.float32)
  dom = rng.integers(0, 3, (B, T)).astype(np.int32)
  return x, w, ids, mask, dom


def _optax_objective(x, w, targets, mask, z_coef, a, b):
  """The same weighted objective from dense logits and optax."""
  logits = jnp.einsum("btd,dv->btv", x, w)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  lse = jax.nn.logsumexp(logits, -1)
  return jnp.sum(mask * (a * nll + z_coef * b * lse ** 2))


def _close(got, want, rel=2e-5):
  got, want = np.asarray(got), np.asarray(want)
  scale = max(np.abs(want).max(), 1e-30)
  np.testing.assert_allclose(got, want, atol=rel * scale, rtol=0)


@pytest.mark.parametrize("chunk", [0, 1, 4, 5, 13, 64])
def test_values_and_grads_match_optax(chunk):
  x, w, ids, mask, _ = _inputs()
  targets = ids[..., 0]
  rng = np.random.default_rng()
  # Random per-token weights on nll and (log Z)^2: every cotangent path is exercised.
  a = rng.random(targets.shape).astype(np.float32)
  b = rng.random(targets.shape).astype(np.float32)

  def ours(x, w):
    lse, picked, _ = loss_lib.logit_stats(x, w, targets[..., None], chunk=chunk)
    nll = lse - picked[..., 0]
    return jnp.sum(mask * (a * nll + 0.1 * b * lse ** 2))

  v1, g1 = jax.value_and_grad(ours, argnums=(0, 1))(x, w)
  v0, g0 = jax.value_and_grad(_optax_objective, argnums=(0, 1))(x, w, targets, mask, 0.1, a, b)
  _close(v1, v0)
  _close(g1[0], g0[0])
  _close(g1[1], g0[1])


def test_cross_entropy_sums_match_dense_reference():
  x, w, ids, mask, dom = _inputs(T=10)
  targets = ids[..., 0]
  logits = np.einsum("btd,dv->btv", x, w)
  nll = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets)) * mask
  lse = np.asarray(jax.nn.logsumexp(logits, -1))
  for chunk in (0, 3):
    total, aux = loss_lib.cross_entropy_sums(x, w, targets, mask, dom, num_domains=3,
                                             z_loss=1e-2, chunk=chunk)
    _close(aux["nll_sum"], nll.sum())
    _close(aux["z_loss_sum"], 1e-2 * (lse ** 2 * mask).sum())
    _close(total, nll.sum() + 1e-2 * (lse ** 2 * mask).sum())
    want_dom = np.array([nll[dom == d].sum() for d in range(3)])
    _close(aux["domain_loss_sum"], want_dom)
    np.testing.assert_array_equal(np.asarray(aux["domain_count"]),
                                  [mask[dom == d].sum() for d in range(3)])
    assert float(aux["count"]) == mask.sum()
    _close(aux["max_abs_logit"], (np.abs(logits).max(-1) * mask).max())


def test_no_z_loss_term_when_off():
  x, w, ids, mask, dom = _inputs(T=6)
  total, aux = loss_lib.cross_entropy_sums(x, w, ids[..., 0], mask, dom, num_domains=3, chunk=2)
  assert "z_loss_sum" not in aux and float(total) == float(aux["nll_sum"])


def test_topk_picks_and_their_grads_match_dense():
  """K > 1 ids (top-k distillation's student log-probs) take the scatter path."""
  x, w, ids, _, _ = _inputs(T=9, K=5)
  c = np.random.default_rng().standard_normal(ids.shape).astype(np.float32)

  def objective(chunk):
    def f(x, w):
      lse, picked, _ = loss_lib.logit_stats(x, w, ids, chunk=chunk)
      return jnp.sum(c * (picked - lse[..., None]))
    return f

  def dense(x, w):
    logp = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", x, w), -1)
    return jnp.sum(c * jnp.take_along_axis(logp, ids, -1))

  v0, g0 = jax.value_and_grad(dense, argnums=(0, 1))(x, w)
  v1, g1 = jax.value_and_grad(objective(4), argnums=(0, 1))(x, w)
  _close(v1, v0)
  for a, b in zip(g1, g0):
    _close(a, b)


def test_bfloat16_hidden_stays_close_and_grads_keep_dtypes():
  x, w, ids, mask, dom = _inputs(T=8)
  x16 = jnp.asarray(x, jnp.bfloat16)
  f = lambda chunk: lambda x, w: loss_lib.cross_entropy_sums(
      x, w, ids[..., 0], mask, dom, num_domains=3, chunk=chunk)[0]
  v0, (gx0, gw0) = jax.value_and_grad(f(0), argnums=(0, 1))(x16, w)
  v1, (gx1, gw1) = jax.value_and_grad(f(3), argnums=(0, 1))(x16, w)
  assert gx1.dtype == jnp.bfloat16 and gw1.dtype == jnp.float32
  _close(v1, v0, rel=1e-3)
  _close(gx1.astype(jnp.float32), gx0.astype(jnp.float32), rel=2e-2)
  _close(gw1, gw0, rel=2e-2)


def test_chunked_grads_under_jit_have_no_full_logits():
  """The chunked backward's largest f32 buffer is a [B, chunk, V] chunk, not [B, T, V]."""
  B, T, D, V, chunk = 2, 64, 8, 512, 8
  x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
  w = jax.ShapeDtypeStruct((D, V), jnp.float32)
  t = jax.ShapeDtypeStruct((B, T), jnp.int32)
  m = jax.ShapeDtypeStruct((B, T), jnp.float32)

  def temp_bytes(c):
    f = lambda x, w, t, m: loss_lib.cross_entropy_sums(x, w, t, m, t * 0, num_domains=1,
                                                      chunk=c)[0]
    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, w, t, m).compile() \
        .memory_analysis().temp_size_in_bytes

  full = B * T * V * 4
  assert temp_bytes(0) >= full  # the dense path holds at least one [B, T, V] f32 array
  assert temp_bytes(chunk) < full / 2
