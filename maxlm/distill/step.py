"""The distillation loss: a `loss_fn` for `maxlm.train.step.train_step`.

The objective per token is (1 - alpha) * CE(label) + alpha * D(teacher,
student), D one of losses.LOSSES; alpha may follow a linear schedule over the
run (the composition root evaluates it at the step and builds the loss with
it). Online, the teacher's forward runs inside the same jitted step under
stop_gradient, with its own ModelConfig and shardings, so it may be larger and
sharded differently from the student. Offline (teacher_params None), the
batch carries the teacher's precomputed top-k as 'teacher_ids' and
'teacher_logprobs' [B, T, K] (maxlm.distill.offline) and the loss is 'topk'.

There is no distillation step: `train_step` accumulates microbatches, skips
non-finite or out-of-band updates and reports the per-group metrics for this
loss exactly as for pretraining.

Metrics: `loss` is the objective being minimised (aux `loss_sum`); the
per-domain sums stay plain cross entropy, comparable with pretraining curves
and evaluation; `distill` is D alone and `alpha` its weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from maxlm.distill import losses
from maxlm.model import ModelConfig, forward


def _divergence_bt(logits_btv, batch, teacher_params, *, teacher_config, loss, temperature,
                   top_k, afm_teacher_weight):
  """D(teacher, student) per token [B, T]."""
  if teacher_params is None:  # offline: the batch carries the stored top-k (distill/offline.py)
    if loss != "topk":
      raise ValueError(f"offline distillation stores the teacher's top-k: distill.loss={loss!r}"
                       " must be 'topk'")
    return losses.topk_kl(logits_btv, batch["teacher_ids"],
                          batch["teacher_logprobs"].astype(jnp.float32), temperature)
  teacher_btv = jax.lax.stop_gradient(forward(
      teacher_config, teacher_params, batch["inputs"], batch["segment_ids"], batch["positions"]))
  if loss == "kl":
    return losses.forward_kl(logits_btv, teacher_btv, temperature)
  if loss == "topk":
    ids_btk, logprobs_btk = losses.teacher_topk(teacher_btv, top_k)
    return losses.topk_kl(logits_btv, ids_btk, logprobs_btk, temperature)
  if loss == "afm":
    return losses.afm_ce(logits_btv, batch["targets"], teacher_btv, afm_teacher_weight)
  raise ValueError(f"distill.loss={loss!r} is not one of {losses.LOSSES}")


def distill_sums(params, batch, teacher_params, *, model_config: ModelConfig,
                 teacher_config: ModelConfig | None, num_domains: int, loss: str,
                 temperature: float, top_k: int, afm_teacher_weight: float, alpha):
  """(sum of masked per-token objectives, aux sums) for one (micro)batch."""
  logits_btv = forward(model_config, params, batch["inputs"], batch["segment_ids"],
                       batch["positions"])
  nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
  d_bt = _divergence_bt(logits_btv, batch, teacher_params, teacher_config=teacher_config,
                        loss=loss, temperature=temperature, top_k=top_k,
                        afm_teacher_weight=afm_teacher_weight)
  mask_bt = batch["loss_mask"].astype(jnp.float32)
  obj_bt = ((1.0 - alpha) * nll_bt + alpha * d_bt) * mask_bt
  domain_b_t = batch["domain_ids"].reshape(-1)
  count = mask_bt.sum()
  aux = dict(
      count=count,
      loss_sum=obj_bt.sum(),  # logged as `loss` and guarded by the spike band
      nll_sum=(nll_bt * mask_bt).sum(),
      distill_sum=(d_bt * mask_bt).sum(),
      alpha_sum=alpha * count,  # / count = alpha, also after microbatch accumulation
      domain_loss_sum=jax.ops.segment_sum((nll_bt * mask_bt).reshape(-1), domain_b_t, num_domains),
      domain_count=jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains),
      max_abs_logit=jnp.max(jax.lax.stop_gradient(jnp.abs(logits_btv)).max(-1) * mask_bt),
  )
  return aux["loss_sum"], aux


def distill_loss(teacher_params, *, model_config: ModelConfig,
                 teacher_config: ModelConfig | None, num_domains: int, loss: str = "kl",
                 temperature: float = 1.0, top_k: int = 64, afm_teacher_weight: float = 0.9,
                 alpha=0.5):
  """`loss_fn(params, batch, rng)` for train_step; teacher_params None = offline top-k."""
  if model_config.dropout:
    raise ValueError("distillation does not apply student dropout yet: set model.dropout=0")

  def loss_fn(params, batch, rng):
    del rng  # the student runs deterministically (no dropout, checked above)
    return distill_sums(params, batch, teacher_params, model_config=model_config,
                        teacher_config=teacher_config, num_domains=num_domains, loss=loss,
                        temperature=temperature, top_k=top_k,
                        afm_teacher_weight=afm_teacher_weight, alpha=alpha)
  return loss_fn
