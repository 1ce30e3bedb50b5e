"""The default loss: next-token cross entropy over masked tokens, plus an optional z-loss.

Every loss plugged into `train_step` has the signature

  loss_fn(params, batch, rng) -> (objective_sum, aux)

`objective_sum` is a *sum* over the (micro)batch's scored tokens (the step
divides by the token count after accumulating microbatches, so accumulation
gives one big batch's gradient); `aux` holds at least

  count            scored tokens (the loss mask's sum)
  nll_sum          cross entropy summed over them (logged as `loss` unless `loss_sum` is given)
  domain_loss_sum  [num_domains] cross entropy per domain
  domain_count     [num_domains] scored tokens per domain

and may add scalar `<name>_sum` terms (logged as `<name>`, divided by count:
`z_loss_sum` -> `z_loss`), `loss_sum` (the quantity logged as `loss` and
guarded by the spike band, e.g. a distillation objective) and `max_<name>`
maxima (combined across microbatches with max, not sum). `rng` is the step's
dropout key (None at evaluation).

z-loss: z * log(Z)^2 per token (PaLM, Chowdhery et al. 2022, sec. 5) keeps
the softmax normaliser near 1; it is a training objective, so it is read from
`config.train.z_loss` (`config.model.z_loss`, where it used to live, is still
accepted as a deprecated alias by the composition root and by `loss_sums`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from maxlm.model import ModelConfig, forward


def domain_sums(per_token_bt, mask_bt, domain_ids_bt, num_domains: int):
  """(sum per domain [num_domains], count per domain) of a masked per-token quantity."""
  domain_b_t = domain_ids_bt.reshape(-1)
  return (jax.ops.segment_sum((per_token_bt * mask_bt).reshape(-1), domain_b_t, num_domains),
          jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains))


def loss_sums(params, batch, *, model_config: ModelConfig, num_domains: int, z_loss=None,
              dropout_rng=None):
  """(objective sum over masked tokens, aux sums) of the next-token loss for one (micro)batch.

  The objective is the cross entropy plus z_loss * log(Z)^2 per token when
  z_loss > 0 (None: the deprecated `model_config.z_loss`); aux["nll_sum"] is
  the cross entropy alone. `dropout_rng` turns dropout on.
  """
  cfg = ModelConfig.from_any(model_config)
  z = cfg.z_loss if z_loss is None else float(z_loss)
  logits_btv = forward(cfg, params, batch["inputs"], batch["segment_ids"], batch["positions"],
                       dropout_rng=dropout_rng)
  nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch["targets"])
  mask_bt = batch["loss_mask"].astype(jnp.float32)
  nll_bt = nll_bt * mask_bt
  # Per-domain ("channel") sums: one segment_sum per step, negligible next to the model.
  d_loss, d_count = domain_sums(nll_bt, mask_bt, batch["domain_ids"], num_domains)
  aux = dict(
      count=mask_bt.sum(),
      nll_sum=nll_bt.sum(),
      domain_loss_sum=d_loss,
      domain_count=d_count,
      # Largest |logit| over scored tokens: the quantity z-loss and logit soft-capping keep
      # in check. A max, not a sum: microbatches combine it with jnp.maximum.
      max_abs_logit=jnp.max(jax.lax.stop_gradient(jnp.abs(logits_btv)).max(-1) * mask_bt),
  )
  total = aux["nll_sum"]
  if z > 0:
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)  # [B, T]
    aux["z_loss_sum"] = (z * jnp.square(log_z_bt) * mask_bt).sum()
    total = total + aux["z_loss_sum"]
  return total, aux


def next_token_loss(model_config: ModelConfig, num_domains: int, *, z_loss=None):
  """The default `loss_fn(params, batch, rng)`: next-token cross entropy (+ z-loss)."""
  cfg = ModelConfig.from_any(model_config)

  def loss_fn(params, batch, rng):
    return loss_sums(params, batch, model_config=cfg, num_domains=num_domains, z_loss=z_loss,
                     dropout_rng=rng)
  return loss_fn
