"""Distillation losses on next-token distributions, per token [B, T].

- forward_kl: KL(p_teacher^tau || p_student^tau) on full logits, times tau^2
  so the gradient scale does not shrink with the temperature (Hinton et al.
  2015). Forward KL is what Gemma 2 used for its 2B/9B students (Gemma Team
  2024); MiniLLM (Gu et al. 2024) argues for reverse KL in generation tasks.
- topk_kl: the same KL with the teacher restricted to its top-k tokens,
  renormalised: what offline distillation stores per token (k ids and
  log-probs) instead of V logits.
- afm_ce: Apple's AFM target (Gunter et al. 2024): a convex combination of
  the one-hot label and the teacher's top-1 token, teacher weight 0.9;
  weight 0 is plain cross entropy.

All take float32 logits and return per-token values; the step masks and sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("kl", "topk", "afm")


def forward_kl(student_logits_btv, teacher_logits_btv, temperature: float = 1.0):
  """tau^2 * sum_v p_t(v) (log p_t(v) - log p_s(v)) at temperature tau: [B, T]."""
  log_ps_btv = jax.nn.log_softmax(student_logits_btv / temperature, axis=-1)
  log_pt_btv = jax.nn.log_softmax(teacher_logits_btv / temperature, axis=-1)
  # exp(log p) * (..) is 0 * finite where p_t underflows, never 0 * inf.
  kl_bt = jnp.sum(jnp.exp(log_pt_btv) * (log_pt_btv - log_ps_btv), axis=-1)
  return kl_bt * temperature ** 2


def teacher_topk(teacher_logits_btv, k: int):
  """The teacher's k most probable ids [B, T, K] and their log-probs (tau = 1)."""
  log_pt_btv = jax.nn.log_softmax(teacher_logits_btv, axis=-1)
  logprobs_btk, ids_btk = jax.lax.top_k(log_pt_btv, k)
  return ids_btk.astype(jnp.int32), logprobs_btk


def topk_kl(student_logits_btv, teacher_ids_btk, teacher_logprobs_btk, temperature: float = 1.0):
  """KL from the teacher's top-k (renormalised at tau) to the student at tau: [B, T].

  Stored log-probs are logits minus a per-token constant, so dividing by tau
  and renormalising over the k entries is exactly softmax(top-k logits / tau).
  With k = V this equals forward_kl.
  """
  log_q_btk = jax.nn.log_softmax(teacher_logprobs_btk / temperature, axis=-1)
  log_ps_btv = jax.nn.log_softmax(student_logits_btv / temperature, axis=-1)
  log_ps_btk = jnp.take_along_axis(log_ps_btv, teacher_ids_btk, axis=-1)
  kl_bt = jnp.sum(jnp.exp(log_q_btk) * (log_q_btk - log_ps_btk), axis=-1)
  return kl_bt * temperature ** 2


def afm_ce(student_logits_btv, labels_bt, teacher_logits_btv, teacher_weight: float = 0.9):
  """Cross entropy to (1 - w) onehot(label) + w onehot(teacher argmax): [B, T]."""
  log_ps_btv = jax.nn.log_softmax(student_logits_btv, axis=-1)
  top1_bt = jnp.argmax(teacher_logits_btv, axis=-1)
  nll_label_bt = -jnp.take_along_axis(log_ps_btv, labels_bt[..., None], axis=-1)[..., 0]
  nll_top1_bt = -jnp.take_along_axis(log_ps_btv, top1_bt[..., None], axis=-1)[..., 0]
  return (1.0 - teacher_weight) * nll_label_bt + teacher_weight * nll_top1_bt


def alpha_at(step, alpha: float, alpha_end: float, total_steps: int):
  """Weight of the distillation term: constant, or linear from alpha to alpha_end."""
  if alpha_end < 0:
    return jnp.asarray(alpha, jnp.float32)
  frac = jnp.clip(step / max(total_steps - 1, 1), 0.0, 1.0)
  return (1.0 - frac) * alpha + frac * alpha_end
