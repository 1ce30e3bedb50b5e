"""Distillation losses against numpy references, and their fixed points.

Teacher equal to student: KL and its gradient are zero. AFM with teacher
weight 0 is plain cross entropy. Top-k with k = V equals the full KL, and the
sparse loss from precomputed (offline) top-k equals the one computed online.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxlm.distill import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logits(seed, shape=(2, 5, 11), scale=3.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_forward_kl_matches_numpy(temperature):
  s, t = _logits(0), _logits(1)
  log_ps = _np_log_softmax(s.astype(np.float64) / temperature)
  log_pt = _np_log_softmax(t.astype(np.float64) / temperature)
  want = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1) * temperature ** 2
  np.testing.assert_allclose(losses.forward_kl(s, t, temperature), want, rtol=1e-5, atol=1e-6)


def test_teacher_equal_to_student_gives_zero_kl_and_zero_gradient():
  s = jnp.asarray(_logits(2))
  kl = losses.forward_kl(s, s, 2.0)
  np.testing.assert_allclose(kl, 0.0, atol=1e-6)
  grad = jax.grad(lambda x: losses.forward_kl(x, s, 2.0).sum())(s)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  ids, lps = losses.teacher_topk(s, 4)
  grad_k = jax.grad(lambda x: losses.topk_kl(x, ids, lps).sum())(s)
  assert np.isfinite(np.asarray(grad_k)).all()


def test_afm_with_teacher_weight_zero_is_cross_entropy():
  s, t = _logits(3), _logits(4)
  labels = np.random.default_rng(5).integers(0, 11, (2, 5))
  np.testing.assert_allclose(losses.afm_ce(s, labels, t, 0.0),
                             optax.softmax_cross_entropy_with_integer_labels(s, labels),
                             rtol=1e-5, atol=1e-6)
  # Weight 1: cross entropy to the teacher's argmax.
  np.testing.assert_allclose(losses.afm_ce(s, labels, t, 1.0),
                             optax.softmax_cross_entropy_with_integer_labels(s, t.argmax(-1)),
                             rtol=1e-5, atol=1e-6)


def test_topk_with_full_vocab_equals_full_kl_and_offline_equals_online():
  s, t = _logits(6), _logits(7)
  ids, lps = losses.teacher_topk(t, 11)
  np.testing.assert_allclose(losses.topk_kl(s, ids, lps, 2.0), losses.forward_kl(s, t, 2.0),
                             rtol=1e-5, atol=1e-6)
  # Offline: the top-k stored as numpy (what a precompute would write) gives the same loss.
  ids4, lps4 = losses.teacher_topk(t, 4)
  stored_ids, stored_lps = np.asarray(ids4), np.asarray(lps4, np.float32)
  np.testing.assert_allclose(losses.topk_kl(s, stored_ids, stored_lps),
                             losses.topk_kl(s, ids4, lps4), rtol=1e-6)
  # numpy reference for the sparse form: teacher renormalised over its top 4.
  log_q = _np_log_softmax(np.take_along_axis(_np_log_softmax(t.astype(np.float64)), stored_ids, -1))
  log_ps = np.take_along_axis(_np_log_softmax(s.astype(np.float64)), stored_ids, -1)
  np.testing.assert_allclose(losses.topk_kl(s, stored_ids, stored_lps),
                             (np.exp(log_q) * (log_q - log_ps)).sum(-1), rtol=1e-5, atol=1e-6)


def test_alpha_schedule():
  assert float(losses.alpha_at(3, 0.5, -1.0, 10)) == 0.5
  np.testing.assert_allclose([float(losses.alpha_at(s, 0.0, 1.0, 11)) for s in (0, 5, 10)],
                             [0.0, 0.5, 1.0])
