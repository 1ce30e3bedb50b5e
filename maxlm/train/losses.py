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

from maxlm.model import ModelConfig, objective


def domain_sums(per_token_bt, mask_bt, domain_ids_bt, num_domains: int):
  """(sum per domain [num_domains], count per domain) of a masked per-token quantity."""
  domain_b_t = domain_ids_bt.reshape(-1)
  return (jax.ops.segment_sum((per_token_bt * mask_bt).reshape(-1), domain_b_t, num_domains),
          jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains))


def loss_sums(params, batch, *, model_config: ModelConfig, num_domains: int, z_loss=None,
              dropout_rng=None, with_mtp: bool = True):
  """(objective sum over masked tokens, aux sums) of the next-token loss for one (micro)batch.

  The model side (maxlm/model/objective.py) computes it: the trunk's cross
  entropy through the LM head (in chunks of model.loss_chunk tokens when > 0,
  so [B, T, V] logits never exist), plus z_loss * log(Z)^2 per token when
  z_loss > 0 (None: the deprecated `model_config.z_loss`), plus the
  multi-token-prediction term when model.mtp_depth > 0 and `with_mtp`.
  aux["nll_sum"] is the trunk's cross entropy alone. `dropout_rng` turns dropout on.
  """
  cfg = ModelConfig.from_any(model_config)
  z = cfg.z_loss if z_loss is None else float(z_loss)
  return objective.next_token_sums(params, batch, model_config=cfg, num_domains=num_domains,
                                   z_loss=z, dropout_rng=dropout_rng, with_mtp=with_mtp)


def next_token_loss(model_config: ModelConfig, num_domains: int, *, z_loss=None,
                    with_mtp: bool = True):
  """The default `loss_fn(params, batch, rng)`: next-token cross entropy (+ z-loss, + MTP).

  Held-out evaluation passes with_mtp=False: it scores the trunk alone.
  """
  cfg = ModelConfig.from_any(model_config)

  def loss_fn(params, batch, rng):
    return loss_sums(params, batch, model_config=cfg, num_domains=num_domains, z_loss=z_loss,
                     dropout_rng=rng, with_mtp=with_mtp)
  return loss_fn
