"""The distillation loss: a `loss_fn` for `maxlm.train.step.train_step`.

The objective per token is (1 - alpha) * CE(label) + alpha * D(teacher,
student), D one of losses.LOSSES; alpha may follow a linear schedule over the
run (the composition root evaluates it at the step and builds the loss with
it). Online, the teacher's forward runs inside the same jitted step under
stop_gradient, with its own ModelConfig and shardings, so it may be larger and
sharded differently from the student. Offline (teacher_params None), the
batch carries the teacher's precomputed top-k as 'teacher_ids' and
'teacher_logprobs' [B, T, K] (maxlm.distill.offline) and the loss is 'topk'. With model.loss_chunk > 0 the student's LM head (and the
online teacher's) runs over chunks of positions, so no [B, T, V] logits exist.

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
from maxlm.model import ModelConfig, forward, lm_head_weights
from maxlm.model import loss as loss_lib


def _check_offline(loss):
  if loss != "topk":
    raise ValueError(f"offline distillation stores the teacher's top-k: distill.loss={loss!r}"
                     " must be 'topk'")


def _divergence(logits_btv, teacher, targets_bt, *, loss, temperature, top_k,
                afm_teacher_weight):
  """D(teacher, student) per token [B, T] (or [B, C] for a chunk of positions).

  teacher: ("logits", teacher logits [B, T, V]) online, or ("topk", (ids, logprobs))
  offline (the stored top-k, distill/offline.py).
  """
  kind, value = teacher
  if kind == "topk":
    ids_btk, logprobs_btk = value
    return losses.topk_kl(logits_btv, ids_btk, logprobs_btk.astype(jnp.float32), temperature)
  teacher_btv = jax.lax.stop_gradient(value)
  if loss == "kl":
    return losses.forward_kl(logits_btv, teacher_btv, temperature)
  if loss == "topk":
    ids_btk, logprobs_btk = losses.teacher_topk(teacher_btv, top_k)
    return losses.topk_kl(logits_btv, ids_btk, logprobs_btk, temperature)
  if loss == "afm":
    return losses.afm_ce(logits_btv, targets_bt, teacher_btv, afm_teacher_weight)
  raise ValueError(f"distill.loss={loss!r} is not one of {losses.LOSSES}")


def _token_terms(logits_btv, teacher, targets_bt, **div_kw):
  """(cross entropy, divergence, max |logit| (no gradient)) per token from the student's logits."""
  nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt)
  d_bt = _divergence(logits_btv, teacher, targets_bt, **div_kw)
  return nll_bt, d_bt, jax.lax.stop_gradient(jnp.abs(logits_btv)).max(-1)


def _dense_terms(cfg, params, batch, teacher_params, teacher_config, **div_kw):
  """The per-token terms from full [B, T, V] logits (model.loss_chunk = 0)."""
  logits_btv = forward(cfg, params, batch["inputs"], batch["segment_ids"], batch["positions"])
  if teacher_params is None:
    teacher = ("topk", (batch["teacher_ids"], batch["teacher_logprobs"]))
  else:
    teacher = ("logits", jax.lax.stop_gradient(forward(
        teacher_config, teacher_params, batch["inputs"], batch["segment_ids"],
        batch["positions"])))
  return _token_terms(logits_btv, teacher, batch["targets"], **div_kw)


def _chunked_terms(cfg, params, batch, teacher_params, teacher_config, **div_kw):
  """The same terms, model.loss_chunk positions at a time (maxlm.model.loss.token_chunk_map).

  The student's and (online) the teacher's final-normed hidden states go
  through their LM heads per chunk, so neither model's [B, T, V] logits nor the
  student's logit gradient exist at once; the offline top-k is chunked
  alongside. The backward recomputes each chunk's logits (teacher's included).
  """
  seq = (batch["inputs"], batch["segment_ids"], batch["positions"])
  per_token = dict(hidden=forward(cfg, params, *seq, return_hidden=True),
                   targets=batch["targets"])
  consts = dict(w=lm_head_weights(cfg, params))
  if teacher_params is None:
    per_token.update(ids=batch["teacher_ids"], logprobs=batch["teacher_logprobs"])
  else:
    per_token["teacher_hidden"] = jax.lax.stop_gradient(
        forward(teacher_config, teacher_params, *seq, return_hidden=True))
    consts["teacher_w"] = jax.lax.stop_gradient(
        lm_head_weights(teacher_config, teacher_params))

  def chunk_terms(consts, tok):
    logits_bcv = loss_lib.head_logits(tok["hidden"], consts["w"])
    if "ids" in tok:
      teacher = ("topk", (tok["ids"], tok["logprobs"]))
    else:
      teacher = ("logits", loss_lib.head_logits(tok["teacher_hidden"], consts["teacher_w"]))
    return _token_terms(logits_bcv, teacher, tok["targets"], **div_kw)

  return loss_lib.token_chunk_map(chunk_terms, consts, per_token, chunk=cfg.loss_chunk)


def distill_sums(params, batch, teacher_params, *, model_config: ModelConfig,
                 teacher_config: ModelConfig | None, num_domains: int, loss: str,
                 temperature: float, top_k: int, afm_teacher_weight: float, alpha):
  """(sum of masked per-token objectives, aux sums) for one (micro)batch.

  The student's LM head is applied in chunks of model_config.loss_chunk positions
  when > 0 (as the pretraining loss), over full logits when 0.
  """
  cfg = ModelConfig.from_any(model_config)
  if teacher_params is None:
    _check_offline(loss)
  else:
    teacher_config = ModelConfig.from_any(teacher_config)
    if teacher_config.vocab_size != cfg.vocab_size:
      raise ValueError(f"distillation: the teacher's vocab_size={teacher_config.vocab_size}"
                       f" differs from the student's model.vocab_size={cfg.vocab_size}")
  terms = _chunked_terms if cfg.loss_chunk > 0 else _dense_terms
  nll_bt, d_bt, max_abs_bt = terms(cfg, params, batch, teacher_params, teacher_config,
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
      max_abs_logit=jnp.max(max_abs_bt * mask_bt),
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
