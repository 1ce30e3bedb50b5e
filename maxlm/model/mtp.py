"""Multi-token prediction (DeepSeek-AI 2024, DeepSeek-V3 technical report, sec. 2.2).

`model.mtp_depth = D` sequential modules after the trunk. Module k (1..D) at
position i combines the previous depth's hidden state h^{k-1}_i (the trunk's
residual stream for k = 1) with the embedding of token t_{i+k}:

    h'^k_i = W_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)]      W_k: [2D, D]
    h^k    = Block_k(h'^k)                                          one transformer block
    logits = LMHead(RMSNorm_k(h^k_i))  -> predicts t_{i+k+1}

sharing the trunk's embedding and LM head, so the chain stays causal: the
prediction of t_{i+k+1} sees tokens up to t_{i+k}. The loss adds
`mtp_weight / D * sum_k CE_k`, each CE_k summed over scored positions and, like
the trunk's, divided by the trunk's token count (DeepSeek-V3 eq. 24-25 divide
by T too). A position counts at depth k only when t_{i+k+1} is a real target
of the same packed document (loss_mask at i + k and the same segment id at
i and i + k), so no module ever predicts across a document boundary.

The module (transformer.MTPModule) params live under params["mtp"]["depth_<k>"],
created by init_params with an rng of their own: with D = 0 the params tree, the forward and the loss are exactly
the trunk's. Evaluation, generation and HF export read the trunk keys only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from maxlm.model import loss as loss_lib
from maxlm.model import transformer
from maxlm.model.config import ModelConfig

# Folded into the dropout rng so the modules' masks never reuse the trunk's.
_RNG_SALT = 0x4D5450  # "MTP"


def shift_left(a_bt, k: int, fill=0):
  """a[:, i + k] at position i; `fill` past the end of the row."""
  pad = [(0, 0), (0, k)] + [(0, 0)] * (a_bt.ndim - 2)
  return jnp.pad(a_bt[:, k:], pad, constant_values=fill)


def depth_mask(loss_mask_bt, segment_ids_bt, k: int):
  """1 where depth k's target t_{i+k+1} is a scored target of position i's document."""
  same_doc_bt = (shift_left(segment_ids_bt, k) == segment_ids_bt) & (segment_ids_bt > 0)
  return shift_left(loss_mask_bt, k).astype(jnp.float32) * same_doc_bt


def mtp_sums(cfg: ModelConfig, params, resid_btd, batch, w_dv, *, dropout_rng=None):
  """(mtp_weight x mean over depths of the CE sums, aux) for one (micro)batch.

  resid_btd: the trunk's residual stream before its final norm; w_dv: the
  shared LM head. aux["mtp_sum"] is the unweighted mean over depths of the CE
  sums, aux["mtp_<k>_sum"] depth k's, so each logs as a per-token loss.
  """
  deterministic = dropout_rng is None or cfg.dropout == 0.0
  module = transformer.MTPModule(cfg, deterministic)
  dt = jnp.dtype(cfg.compute_dtype)
  tokens_bt, seg_bt, pos_bt = batch["inputs"], batch["segment_ids"], batch["positions"]
  emb_vd = nn.with_logical_constraint(params["embedding_vd"], ("vocab", None))
  h_btd, aux, ce_sums = resid_btd, {}, []
  for k in range(1, cfg.mtp_depth + 1):
    emb_btd = jnp.take(emb_vd, shift_left(tokens_bt, k), axis=0).astype(dt)
    rngs = {} if deterministic else {"dropout": jax.random.fold_in(dropout_rng, _RNG_SALT + k)}
    h_btd, hidden_btd = module.apply({"params": params["mtp"][f"depth_{k}"]}, h_btd, emb_btd,
                                     seg_bt, pos_bt, rngs=rngs)
    nll_bt = loss_lib.masked_nll(hidden_btd, w_dv, shift_left(batch["targets"], k),
                                 depth_mask(batch["loss_mask"], seg_bt, k), chunk=cfg.loss_chunk)
    ce_sums.append(nll_bt.sum())
    aux[f"mtp_{k}_sum"] = ce_sums[-1]
  aux["mtp_sum"] = sum(ce_sums) / cfg.mtp_depth
  return cfg.mtp_weight * aux["mtp_sum"], aux
