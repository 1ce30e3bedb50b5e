"""kernels.flash_attention_with_lse: the (out, lse) entry point ring attention merges with.

lse against a NumPy log-sum-exp of the dense logits; gradients through lse alone
and through (out, lse) together against jax.grad of a dense reference; rows with
no visible key. Pallas interpreter on CPU, tiny shapes, fresh random inputs
(MAXLM_TEST_SEED=<seed> replays a failure).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.flash_attention import flash_attention, flash_attention_with_lse
from kernels.reference import attention_mask, attention_reference


def _seed():
  return int(os.environ.get("MAXLM_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _packed(rng, B, T):
  """Sorted ids 1..3 with trailing padding 0: documents of random lengths."""
  seg_bt = np.sort(rng.integers(1, 4, (B, T)), axis=1).astype(np.int32)
  seg_bt[:, T - int(rng.integers(1, 4)):] = 0
  return jnp.asarray(seg_bt)


def _case(name, rng, B, T, S):
  """(kernel kwargs, segment ids) of a named case."""
  if name == "causal_packed":
    return dict(causal=True), _packed(rng, B, T)
  if name == "noncausal_pair_empty_rows":
    # Query id 4 never occurs among the keys: those rows see nothing.
    return dict(causal=False), (jnp.asarray(rng.integers(1, 5, (B, T)), jnp.int32),
                                jnp.asarray(rng.integers(1, 4, (B, S)), jnp.int32))
  if name == "window_softcap":
    return dict(causal=True, window=5, logits_soft_cap=2.0, softmax_scale=0.6), None
  raise KeyError(name)


def _logits_np(q, k, seg, B, T, S, N, K, H, causal=True, window=None, logits_soft_cap=None,
               softmax_scale=None):
  """NumPy float64 masked logits [B, T, N, S] (-inf where masked)."""
  G = N // K
  scale = H ** -0.5 if softmax_scale is None else softmax_scale
  q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
  s = np.einsum("btkgh,bskh->btkgs", q64.reshape(B, T, K, G, H), k64).reshape(B, T, N, S) * scale
  if logits_soft_cap is not None:
    s = logits_soft_cap * np.tanh(s / logits_soft_cap)
  q_seg, kv_seg = (seg if isinstance(seg, tuple) else (seg, seg)) if seg is not None else (
      jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32))
  mask_bts = np.asarray(attention_mask(q_seg, kv_seg, causal=causal, window=window))
  return np.where(mask_bts[:, :, None, :], s, -np.inf), mask_bts


def _reference_lse(q, k, seg, causal=True, window=None, logits_soft_cap=None, softmax_scale=None):
  """Dense jnp lse [B, T, N], 0 on empty rows, with finite gradients (for jax.grad)."""
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  scale = H ** -0.5 if softmax_scale is None else softmax_scale
  s = jnp.einsum("btkgh,bskh->btkgs", q.reshape(B, T, K, N // K, H), k).reshape(B, T, N, S) * scale
  if logits_soft_cap is not None:
    s = logits_soft_cap * jnp.tanh(s / logits_soft_cap)
  q_seg, kv_seg = (seg if isinstance(seg, tuple) else (seg, seg)) if seg is not None else (
      jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32))
  mask = attention_mask(q_seg, kv_seg, causal=causal, window=window)[:, :, None, :]
  s = jnp.where(mask, s, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(s, -1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  total = jnp.sum(jnp.exp(s - m), -1, keepdims=True)
  return jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), 0.0)[..., 0]


CASES = ["causal_packed", "noncausal_pair_empty_rows", "window_softcap"]


def _inputs(rng, B, T, S, N, K, H):
  n = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return n(B, T, N, H), n(B, S, K, H), n(B, S, K, H)


def _shape(name):  # B, T, S, N, K, H: GQA, several 16-row blocks, a partial block
  return (2, 33, 40, 4, 2, 16) if name.startswith("noncausal") else (2, 37, 37, 4, 2, 16)


@pytest.mark.parametrize("name", CASES)
def test_lse_matches_numpy_logsumexp(name):
  seed = _seed()
  rng = np.random.default_rng(seed)
  B, T, S, N, K, H = _shape(name)
  q, k, v = _inputs(rng, B, T, S, N, K, H)
  kwargs, seg = _case(name, rng, B, T, S)
  out, lse = flash_attention_with_lse(q, k, v, segment_ids=seg, block_q=16, block_k=16,
                                      interpret=True, **kwargs)
  logits, mask_bts = _logits_np(q, k, seg, B, T, S, N, K, H, **kwargs)
  with np.errstate(invalid="ignore"):  # empty rows: logaddexp of -infs is -inf, as wanted
    want = np.logaddexp.reduce(logits, axis=-1)
  assert lse.shape == (B, T, N) and lse.dtype == jnp.float32
  empty = np.isneginf(want)
  np.testing.assert_array_equal(np.isneginf(np.asarray(lse)), empty, err_msg=f"seed={seed}")
  # lse ~ max logit + log(#keys): the logits' scale bounds float32 rounding.
  tol = 1e-5 * max(1.0, np.abs(logits[np.isfinite(logits)]).max())
  np.testing.assert_allclose(np.asarray(lse)[~empty], want[~empty], rtol=0, atol=tol,
                             err_msg=f"seed={seed}")
  # out is flash_attention's, bit for bit (same forward kernel).
  same = flash_attention(q, k, v, segment_ids=seg, block_q=16, block_k=16, interpret=True,
                         **kwargs)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(same))
  if name.startswith("noncausal_pair"):
    assert empty.any() and np.all(np.asarray(out)[empty.any(-1)] == 0)


def _grads(fn, q, k, v):
  return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v)


def _assert_grads(got, want, scale, seed, what):
  for name, g, w in zip("qkv", got, want):
    g, w = np.asarray(g), np.asarray(w)
    assert np.all(np.isfinite(g)), f"{what} d{name}: non-finite (seed={seed})"
    # Relative to the inputs' scale: dv through lse alone is exactly 0.
    err = np.abs(g - w).max() / max(np.abs(w).max(), scale)
    assert err <= 2e-5, f"{what} d{name}: relative error {err:.2e} (seed={seed})"


@pytest.mark.parametrize("name", CASES)
def test_gradient_through_lse_alone(name):
  seed = _seed()
  rng = np.random.default_rng(seed)
  B, T, S, N, K, H = _shape(name)
  q, k, v = _inputs(rng, B, T, S, N, K, H)
  kwargs, seg = _case(name, rng, B, T, S)
  w_btn = jnp.asarray(rng.standard_normal((B, T, N)), jnp.float32)

  def kernel(q, k, v):
    _, lse = flash_attention_with_lse(q, k, v, segment_ids=seg, block_q=16, block_k=16,
                                      interpret=True, **kwargs)
    # Empty rows' lse is -inf; where() drops them (and their cotangent) as the reference's 0.
    return jnp.sum(w_btn * jnp.where(jnp.isfinite(lse), lse, 0.0))

  def reference(q, k, v):
    return jnp.sum(w_btn * _reference_lse(q, k, seg, **kwargs))

  got, want = _grads(kernel, q, k, v), _grads(reference, q, k, v)
  assert np.abs(np.asarray(got[2])).max() == 0, "lse does not depend on v"
  scale = float(np.abs(w_btn).max() * np.abs(q).max() * np.abs(k).max())
  _assert_grads(got, want, scale, seed, "lse")


@pytest.mark.parametrize("name", CASES)
def test_gradient_through_out_and_lse_together(name):
  seed = _seed()
  rng = np.random.default_rng(seed)
  B, T, S, N, K, H = _shape(name)
  q, k, v = _inputs(rng, B, T, S, N, K, H)
  kwargs, seg = _case(name, rng, B, T, S)
  w_btn = jnp.asarray(rng.standard_normal((B, T, N)), jnp.float32)

  def kernel(q, k, v):
    out, lse = flash_attention_with_lse(q, k, v, segment_ids=seg, block_q=16, block_k=16,
                                        interpret=True, **kwargs)
    return jnp.sum(jnp.sin(out)) + jnp.sum(w_btn * jnp.where(jnp.isfinite(lse), lse, 0.0))

  def reference(q, k, v):
    out = attention_reference(q, k, v, segment_ids=seg, **kwargs)
    return jnp.sum(jnp.sin(out)) + jnp.sum(w_btn * _reference_lse(q, k, seg, **kwargs))

  got, want = _grads(kernel, q, k, v), _grads(reference, q, k, v)
  scale = float(max(np.abs(w_btn).max(), 1.0) * np.abs(q).max() * np.abs(k).max()
                * np.abs(v).max())
  _assert_grads(got, want, scale, seed, "out+lse")


def test_empty_rows_give_no_nan_even_with_a_non_finite_cotangent():
  """exp(lse - lse) on a row with no key is NaN; the kernel's gradients stay finite (zero there)."""
  rng = np.random.default_rng(_seed())
  B, T, S, N, K, H = 1, 16, 16, 2, 1, 16
  q, k, v = _inputs(rng, B, T, S, N, K, H)
  seg = (jnp.asarray(np.r_[np.ones(8), np.full(8, 2)][None], jnp.int32),
         jnp.ones((B, S), jnp.int32))  # queries 8.. have no visible key

  def f(q, k, v):
    out, lse = flash_attention_with_lse(q, k, v, segment_ids=seg, causal=False, interpret=True)
    return jnp.sum(out) + jnp.sum(jnp.exp(lse - jax.lax.stop_gradient(lse)))

  dq, dk, dv = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  for g in (dq, dk, dv):
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(dq)[0, 8:] == 0)
