"""The pure training step: gradients of a loss (with microbatch accumulation), update.

`train_step(state, batch, limits, *, loss_fn, tx, schedule, microbatches, rules)
-> (state, metrics)` is a pure function of pytrees; the composition root
(maxlm/run/) jits it once with donated state and explicit shardings.

The loss is a seam: `loss_fn(params, batch, rng) -> (objective_sum, aux)`
(maxlm/train/losses.py documents the contract). The default is the next-token
loss; distillation (maxlm/distill/step.py) supplies its own, and so gets the
same accumulation, skip guard and step metrics. With microbatches the
per-microbatch *sums* are accumulated and divided by the total token count at
the end, so accumulation gives the same gradient as one big batch.

Skipping an update happens here, not on the host: when the loss leaves the
band in `limits` (the spike monitor's, refreshed by the loop at each log
boundary) or the loss or gradient norm is not finite, every param and
optimizer leaf keeps its old value bit for bit (`jnp.where`), the step counter
still advances, and `skipped` is 1. So a NaN gradient never reaches the
params, and no step waits on a host round-trip.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from maxlm.model import ModelConfig
from maxlm.optim import update_unless_skipped
from maxlm.train.losses import loss_sums, next_token_loss

# Layer groups for per-group gradient norms, matched against a param's path in
# this order ("attn_norm" is a norm, not attention).
GRAD_GROUPS = (("norms", "norm"), ("embedding", "embedding"), ("lm_head", "lm_head"),
               ("attention", "attn"), ("mlp", "mlp"))
# Keys of `limits`; a missing one is unbounded.
LIMIT_KEYS = ("loss_lo", "loss_hi", "grad_norm_hi")


def _combine(a, b):
  """Accumulates two microbatches' ((total, aux), grads): sums, but maxima for max_* keys."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x, y: jnp.maximum(x, y) if "max_" in jax.tree_util.keystr(p) else x + y, a, b)


def accumulate(params, batch, microbatches: int, loss_fn, rng):
  """((objective_sum, aux), grads) summed over `microbatches` slices of `batch`."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    return grad_fn(params, batch, rng)
  # [B, ...] -> [M, B/M, ...]; a scan keeps one microbatch's activations live.
  micro = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)

  def body(carry, xs):
    mb, i = xs
    out = grad_fn(params, mb, jax.random.fold_in(rng, i))  # a fresh dropout mask per microbatch
    return _combine(carry, out), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng))
  out, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(microbatches)))
  return out


def group_grad_norms(grads) -> dict:
  """{'grad_norm/<group>': global norm of that group's gradients} for GRAD_GROUPS."""
  sq = {name: [] for name, _ in GRAD_GROUPS}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    key = jax.tree_util.keystr(path)
    group = next((name for name, pat in GRAD_GROUPS if pat in key), None)
    if group is not None:
      sq[group].append(jnp.sum(jnp.square(g.astype(jnp.float32))))
  return {f"grad_norm/{k}": jnp.sqrt(sum(v)) for k, v in sq.items() if v}


def _update_ok(loss, grad_norm, limits):
  """True when the update may be applied: finite values inside the band."""
  lim = {k: jnp.asarray(limits.get(k, jnp.inf if k.endswith("hi") else -jnp.inf), jnp.float32)
         for k in LIMIT_KEYS}
  return (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (loss >= lim["loss_lo"])
          & (loss <= lim["loss_hi"]) & (grad_norm <= lim["grad_norm_hi"]))


# Aux keys the step reports itself rather than as `<name>` = sum / count.
_OWN_KEYS = ("count", "nll_sum", "loss_sum", "domain_loss_sum", "domain_count")


def _default_loss(loss_fn, model_config, num_domains):
  """`loss_fn`, or the next-token loss when a caller gives model_config/num_domains instead."""
  if loss_fn is not None:
    return loss_fn
  if model_config is None or num_domains is None:
    raise TypeError("train_step needs loss_fn (or model_config and num_domains for the default"
                    " next-token loss)")
  return next_token_loss(model_config, num_domains)


def train_step(state, batch, limits=None, *, loss_fn=None, tx, schedule, microbatches: int = 1,
               rules=(), model_config: ModelConfig | None = None, num_domains: int | None = None):
  """One optimizer update. `state` = dict(params, opt_state, step, rng).

  `loss_fn(params, batch, rng) -> (objective_sum, aux)`; `model_config` and
  `num_domains` without a loss_fn are shorthand for the next-token loss.
  `limits`: optional dict of float scalars (LIMIT_KEYS); outside them, or on a
  non-finite loss or gradient norm, the update is skipped (see the module doc).
  """
  loss_fn = _default_loss(loss_fn, model_config, num_domains)
  # Fold the step in, so each step's dropout masks differ and resume replays them exactly.
  rng = jax.random.fold_in(state["rng"], state["step"])
  with nn.logical_axis_rules(rules):
    (_, aux), grads = accumulate(state["params"], batch, microbatches, loss_fn, rng)
  count = jnp.maximum(aux["count"], 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  # `loss` is what the spike band guards and the curves show: the cross entropy, unless the
  # loss names another quantity (a distillation objective) as `loss_sum`.
  loss, grad_norm = aux.get("loss_sum", aux["nll_sum"]) / count, optax.global_norm(grads)
  ok = _update_ok(loss, grad_norm, limits or {})
  # A select per leaf keeps the old bits exactly (no arithmetic on NaNs); maxlm's AdamW
  # selects its moments before deriving the update from them, so XLA updates the donated
  # state in place rather than copying it (maxlm/optim/guarded.py).
  params, opt_state, updates = update_unless_skipped(tx, grads, state["opt_state"],
                                                     state["params"], ok)
  new_state = dict(params=params, opt_state=opt_state, step=state["step"] + 1, rng=state["rng"])
  metrics = dict(loss=loss, grad_norm=grad_norm,
                 lr=schedule(state["step"]), tokens=aux["count"],
                 domain_loss_sum=aux["domain_loss_sum"], domain_count=aux["domain_count"],
                 # RMS(update) / RMS(params) over the whole model: ~lr in steady state;
                 # 0 on a skipped step (no update was applied).
                 update_rms_ratio=jnp.where(
                     ok, optax.global_norm(updates) / optax.global_norm(state["params"]), 0.0),
                 skipped=1 - ok.astype(jnp.int32),
                 **group_grad_norms(grads))
  for k, v in aux.items():  # the loss's own terms: z_loss_sum -> z_loss, max_abs_logit as is
    if k not in _OWN_KEYS and jnp.ndim(v) == 0:
      metrics[k[:-len("_sum")] if k.endswith("_sum") else k] = (
          v / count if k.endswith("_sum") else v)
  return new_state, metrics


def eval_step(params, batch, *, loss_fn=None, model_config: ModelConfig | None = None,
              num_domains: int | None = None, rules=()):
  """The loss's aux sums on a held-out batch (no update, no dropout)."""
  loss_fn = _default_loss(loss_fn, model_config, num_domains)
  with nn.logical_axis_rules(rules):
    _, aux = loss_fn(params, batch, None)
  return aux
