"""distill_step: train_step's semantics with a frozen teacher inside the same jit.

The objective per token is (1 - alpha) * CE(label) + alpha * D(teacher,
student), D one of losses.LOSSES; alpha may follow a linear schedule. The
teacher's forward runs in the jitted step (online distillation) under
stop_gradient, with its own ModelConfig and shardings, so it may be larger
and sharded differently from the student. Offline (teacher_params None), the
batch carries the teacher's precomputed top-k as 'teacher_ids' and
'teacher_logprobs' [B, T, K] (maxlm.distill.offline) and the loss is 'topk'. Masked-sum accumulation over
microbatches is train_step's (maxlm.train.step), so the gradient equals one
big batch's.

Metrics: `loss` is the objective being minimised; the per-domain sums stay
plain cross entropy, comparable with pretraining curves and evaluation.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from maxlm.distill import losses
from maxlm.model import ModelConfig, forward
from maxlm.train.step import _grads_and_sums  # the accumulation train_step uses


def distill_sums(params, batch, teacher_params, *, model_config: ModelConfig,
                 teacher_config: ModelConfig, num_domains: int, loss: str, temperature: float,
                 top_k: int, afm_teacher_weight: float, alpha):
  """(sum of masked per-token objectives, aux sums) for one (micro)batch."""
  logits_btv = forward(model_config, params, batch["inputs"], batch["segment_ids"],
                       batch["positions"])
  nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
  if teacher_params is None:  # offline: the batch carries the stored top-k (distill/offline.py)
    if loss != "topk":
      raise ValueError(f"offline distillation stores the teacher's top-k: distill.loss={loss!r}"
                       " must be 'topk'")
    d_bt = losses.topk_kl(logits_btv, batch["teacher_ids"],
                          batch["teacher_logprobs"].astype(jnp.float32), temperature)
  else:
    teacher_btv = jax.lax.stop_gradient(forward(
        teacher_config, teacher_params, batch["inputs"], batch["segment_ids"],
        batch["positions"]))
    if loss == "kl":
      d_bt = losses.forward_kl(logits_btv, teacher_btv, temperature)
    elif loss == "topk":
      ids_btk, logprobs_btk = losses.teacher_topk(teacher_btv, top_k)
      d_bt = losses.topk_kl(logits_btv, ids_btk, logprobs_btk, temperature)
    elif loss == "afm":
      d_bt = losses.afm_ce(logits_btv, batch["targets"], teacher_btv, afm_teacher_weight)
    else:
      raise ValueError(f"distill.loss={loss!r} is not one of {losses.LOSSES}")
  mask_bt = batch["loss_mask"].astype(jnp.float32)
  obj_bt = ((1.0 - alpha) * nll_bt + alpha * d_bt) * mask_bt
  domain_b_t = batch["domain_ids"].reshape(-1)
  aux = dict(
      count=mask_bt.sum(),
      distill_sum=(d_bt * mask_bt).sum(),
      domain_loss_sum=jax.ops.segment_sum((nll_bt * mask_bt).reshape(-1), domain_b_t, num_domains),
      domain_count=jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains),
  )
  return obj_bt.sum(), aux


def distill_step(state, batch, teacher_params, *, model_config: ModelConfig,
                 teacher_config: ModelConfig, tx, schedule, microbatches: int, num_domains: int,
                 total_steps: int, loss: str = "kl", temperature: float = 1.0, top_k: int = 64,
                 afm_teacher_weight: float = 0.9, alpha: float = 0.5, alpha_end: float = -1.0,
                 rules=()):
  """One student update. `state` = dict(params, opt_state, step, rng); teacher_params frozen."""
  a = losses.alpha_at(state["step"], alpha, alpha_end, total_steps)
  sums_fn = functools.partial(
      distill_sums, teacher_params=teacher_params, model_config=model_config,
      teacher_config=teacher_config, num_domains=num_domains, loss=loss,
      temperature=temperature, top_k=top_k, afm_teacher_weight=afm_teacher_weight, alpha=a)
  if model_config.dropout:
    raise ValueError("distillation does not apply student dropout yet: set model.dropout=0")
  # The student runs deterministically, so the dropout rng the accumulator threads is unused.
  no_rng_sums = lambda params, b, rng: sums_fn(params, b)
  with nn.logical_axis_rules(rules):
    (obj_sum, aux), grads = _grads_and_sums(state["params"], batch, microbatches, no_rng_sums,
                                            state["rng"])
  count = jnp.maximum(aux["count"], 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new_state = dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
                   step=state["step"] + 1, rng=state["rng"])
  metrics = dict(loss=obj_sum / count, distill=aux["distill_sum"] / count, alpha=a,
                 grad_norm=optax.global_norm(grads), lr=schedule(state["step"]),
                 tokens=aux["count"], domain_loss_sum=aux["domain_loss_sum"],
                 domain_count=aux["domain_count"])
  return new_state, metrics
