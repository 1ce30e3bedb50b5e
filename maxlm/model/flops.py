"""Analytic training FLOPs per token, for MFU.

Follows PaLM (Chowdhery et al. 2022, appendix B): 6 FLOPs per matmul parameter
per token (forward 2, backward 4) plus attention's score and value matmuls.
Per token and layer the query meets S keys in each of the N heads: the scores
(q . k) and the weighted values (p . v) are 2 * N * H * S FLOPs each forward,
so 3 x (2 + 2) * N * H * S = 12 * N * H * S with the backward.

S, the keys counted per query: the full T x T square (S = T, no causal
halving), as PaLM and MaxText's reported MFU do, so figures compare. With a
sliding window W (model.sliding_window, Mistral) a query sees at most W keys
(itself and the W - 1 before it), so S = min(T, W): the same square convention
(the first W - 1 queries of a sequence, which see fewer, are not discounted,
as the upper triangle is not discounted without a window). So at T = 8192 and
W = 4096 attention counts half of the full-causal figure, not all of it.
"""
from maxlm.model.config import ModelConfig


def attention_keys_per_query(cfg: ModelConfig, seq_len: int) -> int:
  """S above: seq_len, or the sliding window when it is shorter."""
  if cfg.sliding_window is None:
    return seq_len
  return min(seq_len, cfg.sliding_window)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  c = cfg.param_counts()
  # The input embedding is a gather, not a matmul; the LM head is a matmul
  # (tied or not), so count V*D once.
  matmul_params = c["non_embedding"] + cfg.vocab_size * cfg.d_model
  # Each multi-token-prediction depth adds a block, its projection and one more LM head.
  matmul_params += c.get("mtp", 0) + cfg.mtp_depth * cfg.vocab_size * cfg.d_model
  S = attention_keys_per_query(cfg, seq_len)
  attention = 12 * (cfg.n_layers + cfg.mtp_depth) * cfg.n_heads * cfg.head_dim * S
  return 6.0 * matmul_params + attention
