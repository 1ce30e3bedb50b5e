"""Distillation's student side in chunks of positions (model.loss_chunk > 0).

The chunked objective (maxlm/distill/step.py, through maxlm.model.loss.token_chunk_map)
against the dense one (full [B, T, V] logits, loss_chunk = 0): values, every aux sum
and the gradients of every parameter, for each loss, online and offline, with T not
a multiple of the chunk. A NumPy reference for the KL objective and its gradient with
respect to the LM head; and the compiled backward holds no [B, T, V] buffer.
Fresh random inputs each run; tolerances relative to the reference's scale.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.distill import distill_sums, losses
from maxlm.model import forward, init_params, lm_head_weights

CFG = maxlm.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
TEACHER = dataclasses.replace(CFG, d_model=48)
B, T, K = 3, 13, 6


def _batch(rng):
  seg = np.ones((B, T), np.int32)
  seg[1, 7:] = 2  # a packed row: two documents
  pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
  pos[1, 7:] -= 7
  return dict(inputs=rng.integers(0, 64, (B, T)).astype(np.int32),
              targets=rng.integers(0, 64, (B, T)).astype(np.int32),
              segment_ids=seg, positions=pos,
              loss_mask=(rng.random((B, T)) > 0.2).astype(np.float32),
              domain_ids=rng.integers(0, 2, (B, T)).astype(np.int32))


def _models(rng):
  seeds = rng.integers(0, 2**31, 2)
  # Larger init than the default 0.02 so the logits are far from uniform (real KL, real gradient).
  s_params = init_params(dataclasses.replace(CFG, init_std=0.3), jax.random.PRNGKey(seeds[0]))
  t_params = init_params(dataclasses.replace(TEACHER, init_std=0.3), jax.random.PRNGKey(seeds[1]))
  return s_params, t_params


def _close(got, want, rel=2e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = max(np.abs(want).max(), 1e-30)
  np.testing.assert_allclose(got, want, atol=rel * scale, rtol=0)


def _objective(chunk, loss, teacher_params, temperature=2.0):
  cfg = dataclasses.replace(CFG, loss_chunk=chunk)

  def f(params, batch):
    return distill_sums(params, batch, teacher_params, model_config=cfg,
                        teacher_config=None if teacher_params is None else TEACHER,
                        num_domains=2, loss=loss, temperature=temperature, top_k=K,
                        afm_teacher_weight=0.9, alpha=0.7)
  return f


@pytest.mark.parametrize("loss,offline", [("kl", False), ("topk", False), ("afm", False),
                                          ("topk", True)])
def test_chunked_equals_dense_values_aux_and_grads(loss, offline, chunk=4):
  rng = np.random.default_rng()
  s_params, t_params = _models(rng)
  batch = _batch(rng)
  if offline:  # the stored top-k, as distill/precompute.py writes it
    ids, lps = losses.teacher_topk(forward(TEACHER, t_params, batch["inputs"],
                                           batch["segment_ids"], batch["positions"]), K)
    batch = dict(batch, teacher_ids=np.asarray(ids), teacher_logprobs=np.asarray(lps))
    t_params = None
  both = jax.jit(lambda p, b: [jax.value_and_grad(_objective(c, loss, t_params), has_aux=True)(p, b)
                               for c in (0, chunk)])  # one compile for both
  ((v0, aux0), g0), ((v1, aux1), g1) = both(s_params, batch)
  _close(v1, v0)
  assert set(aux1) == set(aux0)
  for k in aux0:
    _close(aux1[k], aux0[k])
  assert float(aux0["distill_sum"]) > 1e-3  # a real divergence, not a fixed point
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
    assert np.abs(np.asarray(b)).max() > 0, path
    _close(a, b, rel=1e-4)


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_chunked_kl_objective_and_head_gradient_match_numpy():
  """(1 - a) CE + a tau^2 KL(p_t^tau || p_s^tau), and d/dW_head = h^T dlogits, in NumPy."""
  rng = np.random.default_rng()
  s_params, t_params = _models(rng)
  batch = _batch(rng)
  a, tau = 0.7, 2.0
  seq = (batch["inputs"], batch["segment_ids"], batch["positions"])
  h = np.asarray(forward(CFG, s_params, *seq, return_hidden=True), np.float64)
  w = np.asarray(lm_head_weights(CFG, s_params), np.float64)
  s = h @ w
  t = np.asarray(forward(TEACHER, t_params, *seq), np.float64)
  mask, y = batch["loss_mask"].astype(np.float64), batch["targets"]
  p_s, onehot = _np_softmax(s), np.eye(64)[y]
  ce = -np.log(np.take_along_axis(p_s, y[..., None], -1)[..., 0])
  ps_tau, pt_tau = _np_softmax(s / tau), _np_softmax(t / tau)
  kl = tau ** 2 * (pt_tau * (np.log(pt_tau) - np.log(ps_tau))).sum(-1)
  want = (mask * ((1 - a) * ce + a * kl)).sum()
  # d/ds of tau^2 KL at temperature tau is tau (p_s^tau - p_t^tau); of CE, p_s - onehot.
  dlogits = mask[..., None] * ((1 - a) * (p_s - onehot) + a * tau * (ps_tau - pt_tau))
  want_dw = np.einsum("btd,btv->dv", h, dlogits)

  (got, aux), g = jax.jit(jax.value_and_grad(_objective(5, "kl", t_params, tau), has_aux=True))(
      s_params, batch)
  _close(got, want, rel=1e-5)
  _close(aux["distill_sum"], (mask * kl).sum(), rel=1e-5)
  _close(aux["nll_sum"], (mask * ce).sum(), rel=1e-5)
  _close(g["lm_head_dv"], want_dw, rel=1e-4)


def test_chunked_backward_holds_no_full_logits():
  """Compiled gradient of the online KL objective: temporaries below one [B, T, V] f32 array."""
  cfg = maxlm.ModelConfig(vocab_size=4096, d_model=16, n_layers=1, n_heads=1, n_kv_heads=1,
                          head_dim=8, d_ff=32)
  teacher = dataclasses.replace(cfg, d_model=24)
  b, t = 8, 128
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  t_params = jax.eval_shape(lambda: init_params(teacher, jax.random.PRNGKey(1)))
  ints = jax.ShapeDtypeStruct((b, t), jnp.int32)
  batch = dict(inputs=ints, targets=ints, segment_ids=ints, positions=ints, domain_ids=ints,
               loss_mask=jax.ShapeDtypeStruct((b, t), jnp.float32))

  def temp_bytes(chunk):
    c = dataclasses.replace(cfg, loss_chunk=chunk)
    f = lambda p, bt, tp: distill_sums(p, bt, tp, model_config=c, teacher_config=teacher,
                                       num_domains=1, loss="kl", temperature=1.0, top_k=4,
                                       afm_teacher_weight=0.9, alpha=0.5)[0]
    return jax.jit(jax.grad(f)).lower(params, batch, t_params).compile() \
        .memory_analysis().temp_size_in_bytes

  full = b * t * cfg.vocab_size * 4
  assert temp_bytes(0) >= 2 * full  # dense: the student's and the teacher's logits at least
  # What remains is parameter-sized (the heads and their gradient, V x D) and a few
  # [B, chunk, V] chunks (student and teacher logits, softmaxes, the logits' cotangent).
  assert temp_bytes(4) < full / 3
