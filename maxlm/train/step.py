"""The pure training step: loss, gradients (with microbatch accumulation), update.

`train_step(state, batch) -> (state, metrics)` is a pure function of pytrees;
the driver jits it once with donated state and explicit shardings.

The loss is the mean next-token cross entropy over tokens whose loss_mask is
1, so padding and cross-document targets never count. With microbatches the
per-microbatch *sums* are accumulated and divided by the total token count at
the end, so accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from maxlm.model import ModelConfig, forward


def loss_sums(params, batch, *, model_config: ModelConfig, num_domains: int):
  """Returns (sum of masked token losses, aux dict of sums) for one (micro)batch."""
  logits_btv = forward(model_config, params, batch["inputs"], batch["segment_ids"],
                       batch["positions"])
  nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
  mask_bt = batch["loss_mask"].astype(jnp.float32)
  nll_bt = nll_bt * mask_bt
  # Per-domain ("channel") sums: one segment_sum per step, negligible next to the model.
  domain_b_t = batch["domain_ids"].reshape(-1)
  aux = dict(
      count=mask_bt.sum(),
      domain_loss_sum=jax.ops.segment_sum(nll_bt.reshape(-1), domain_b_t, num_domains),
      domain_count=jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains),
  )
  return nll_bt.sum(), aux


def _grads_and_sums(params, batch, microbatches: int, sums_fn):
  grad_fn = jax.value_and_grad(sums_fn, has_aux=True)
  if microbatches == 1:
    return grad_fn(params, batch)
  # [B, ...] -> [M, B/M, ...]; a scan keeps one microbatch's activations live.
  micro = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)

  def body(carry, mb):
    (loss_sum, aux), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, carry, ((loss_sum, aux), grads)), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro)))
  out, _ = jax.lax.scan(body, zeros, micro)
  return out


def train_step(state, batch, *, model_config: ModelConfig, tx, schedule, microbatches: int,
               num_domains: int, rules=()):
  """One optimizer update. `state` = dict(params, opt_state, step, rng)."""
  sums_fn = functools.partial(loss_sums, model_config=model_config, num_domains=num_domains)
  with nn.logical_axis_rules(rules):
    (loss_sum, aux), grads = _grads_and_sums(state["params"], batch, microbatches, sums_fn)
  count = jnp.maximum(aux["count"], 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new_state = dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
                   step=state["step"] + 1, rng=state["rng"])
  metrics = dict(loss=loss_sum / count, grad_norm=optax.global_norm(grads),
                 lr=schedule(state["step"]), tokens=aux["count"],
                 domain_loss_sum=aux["domain_loss_sum"], domain_count=aux["domain_count"])
  return new_state, metrics


def eval_step(params, batch, *, model_config: ModelConfig, num_domains: int, rules=()):
  """Loss sums on a held-out batch (no update)."""
  with nn.logical_axis_rules(rules):
    _, aux = loss_sums(params, batch, model_config=model_config, num_domains=num_domains)
  return aux
