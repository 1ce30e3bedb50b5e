"""The default training objective: next-token cross entropy + z-loss + multi-token prediction.

`next_token_sums(params, batch, ...) -> (objective sum, aux sums)` is the
model-side loss the training step's default `loss_fn` calls (and evaluation,
with `with_mtp=False`): the trunk's final-normed hidden states go through the
LM head in chunks (maxlm/model/loss.py, `model.loss_chunk`), and with
`model.mtp_depth` > 0 the MTP modules (maxlm/model/mtp.py) add their term.
"""

from __future__ import annotations

from maxlm.model import loss as loss_lib
from maxlm.model import mtp as mtp_lib
from maxlm.model import transformer
from maxlm.model.config import ModelConfig


def next_token_sums(params, batch, *, model_config, num_domains: int, z_loss=None,
                    dropout_rng=None, with_mtp: bool = True):
  """The default training objective on one (micro)batch: (objective sum, aux sums).

  Cross entropy of the trunk (dense or chunked per model.loss_chunk) plus the
  z-loss when z_loss (default model.z_loss) > 0, plus model.mtp_weight x the mean of the
  multi-token-prediction modules' cross entropies when model.mtp_depth > 0
  (maxlm/model/mtp.py; aux["mtp_sum"], aux["mtp_<k>_sum"]). aux["nll_sum"] is
  the trunk's cross entropy alone. `dropout_rng` turns dropout on; `with_mtp=False`
  (evaluation) scores the trunk alone.
  """
  cfg = ModelConfig.from_any(model_config)
  with_mtp = with_mtp and cfg.mtp_depth > 0
  out = transformer.forward_outputs(cfg, params, batch["inputs"], batch["segment_ids"],
                                    batch["positions"], dropout_rng=dropout_rng,
                                    output="both" if with_mtp else "hidden")
  resid_btd, hidden_btd = out if with_mtp else (None, out)
  w_dv = transformer.lm_head_weights(cfg, params)
  total, aux = loss_lib.cross_entropy_sums(
      hidden_btd, w_dv, batch["targets"], batch["loss_mask"], batch["domain_ids"],
      num_domains=num_domains, z_loss=cfg.z_loss if z_loss is None else z_loss,
      chunk=cfg.loss_chunk)
  if with_mtp:
    mtp_total, mtp_aux = mtp_lib.mtp_sums(cfg, params, resid_btd, batch, w_dv,
                                          dropout_rng=dropout_rng)
    total = total + mtp_total
    aux.update(mtp_aux)
  return total, aux
