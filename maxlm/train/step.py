"""The pure training step: loss, gradients (with microbatch accumulation), update.

`train_step(state, batch, limits) -> (state, metrics)` is a pure function of
pytrees; the driver jits it once with donated state and explicit shardings.

The loss is the mean next-token cross entropy over tokens whose loss_mask is
1, so padding and cross-document targets never count. With microbatches the
per-microbatch *sums* are accumulated and divided by the total token count at
the end, so accumulation gives the same gradient as one big batch. With
`model.z_loss` > 0 the objective adds z_loss * log(Z)^2 per token (PaLM,
Chowdhery et al. 2022, sec. 5); the logged `loss` stays the cross entropy.

Skipping an update happens here, not on the host: when the loss leaves the
band in `limits` (the spike monitor's, refreshed by the driver at each log
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
from maxlm.model import objective

# Layer groups for per-group gradient norms, matched against a param's path in
# this order ("attn_norm" is a norm, not attention).
GRAD_GROUPS = (("norms", "norm"), ("embedding", "embedding"), ("lm_head", "lm_head"),
               ("attention", "attn"), ("mlp", "mlp"))
# Keys of `limits`; a missing one is unbounded.
LIMIT_KEYS = ("loss_lo", "loss_hi", "grad_norm_hi")


def loss_sums(params, batch, *, model_config: ModelConfig, num_domains: int, dropout_rng=None,
              with_mtp: bool = True):
  """Returns (objective sum over masked tokens, aux dict of sums) for one (micro)batch.

  maxlm.model.objective.next_token_sums: cross entropy (chunked per model.loss_chunk),
  z-loss, multi-token prediction; aux["nll_sum"] is the cross entropy alone.
  """
  return objective.next_token_sums(params, batch, model_config=model_config,
                                   num_domains=num_domains, dropout_rng=dropout_rng,
                                   with_mtp=with_mtp)


def _combine(a, b):
  """Accumulates two microbatches' ((total, aux), grads): sums, but maxima for max_* keys."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x, y: jnp.maximum(x, y) if "max_" in jax.tree_util.keystr(p) else x + y, a, b)


def _grads_and_sums(params, batch, microbatches: int, sums_fn, rng):
  grad_fn = jax.value_and_grad(sums_fn, has_aux=True)
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


def train_step(state, batch, limits=None, *, model_config: ModelConfig, tx, schedule,
               microbatches: int, num_domains: int, rules=()):
  """One optimizer update. `state` = dict(params, opt_state, step, rng).

  `limits`: optional dict of float scalars (LIMIT_KEYS); outside them, or on a
  non-finite loss or gradient norm, the update is skipped (see the module doc).
  """
  def sums_fn(params, batch, dropout_rng):
    return loss_sums(params, batch, model_config=model_config, num_domains=num_domains,
                     dropout_rng=dropout_rng)

  # Fold the step in, so each step's dropout masks differ and resume replays them exactly.
  rng = jax.random.fold_in(state["rng"], state["step"])
  with nn.logical_axis_rules(rules):
    (_, aux), grads = _grads_and_sums(state["params"], batch, microbatches, sums_fn, rng)
  count = jnp.maximum(aux["count"], 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  loss, grad_norm = aux["nll_sum"] / count, optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  ok = _update_ok(loss, grad_norm, limits or {})
  # A select per leaf keeps the old bits exactly (no arithmetic on NaNs).
  keep = lambda new, old: jnp.where(ok, new, old)
  new_state = dict(params=jax.tree.map(keep, params, state["params"]),
                   opt_state=jax.tree.map(keep, opt_state, state["opt_state"]),
                   step=state["step"] + 1, rng=state["rng"])
  metrics = dict(loss=loss, grad_norm=grad_norm,
                 lr=schedule(state["step"]), tokens=aux["count"],
                 domain_loss_sum=aux["domain_loss_sum"], domain_count=aux["domain_count"],
                 max_abs_logit=aux["max_abs_logit"],
                 # RMS(update) / RMS(params) over the whole model: ~lr in steady state.
                 update_rms_ratio=optax.global_norm(updates) / optax.global_norm(state["params"]),
                 skipped=1 - ok.astype(jnp.int32),
                 **group_grad_norms(grads))
  for key in aux:  # extra sums (z_loss_sum, mtp_sum, ...) are logged per scored token
    if key.endswith("_sum") and key not in ("nll_sum", "domain_loss_sum"):
      metrics[key[:-len("_sum")]] = aux[key] / count
  return new_state, metrics


def eval_step(params, batch, *, model_config: ModelConfig, num_domains: int, rules=()):
  """Loss sums on a held-out batch (no update)."""
  with nn.logical_axis_rules(rules):
    _, aux = loss_sums(params, batch, model_config=model_config, num_domains=num_domains,
                       with_mtp=False)  # evaluation scores the trunk alone
  return aux
