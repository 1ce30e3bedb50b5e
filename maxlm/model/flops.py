"""Analytic training FLOPs per token, for MFU.

Follows PaLM (Chowdhery et al. 2022, appendix B): 6 FLOPs per matmul parameter
per token (forward 2, backward 4) plus attention's score and value matmuls,
12 * L * N * H * T per token. The attention term counts the full T x T square
(no causal halving), as PaLM and MaxText's reported MFU do, so figures compare.
"""
from maxlm.model.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  c = cfg.param_counts()
  # The input embedding is a gather, not a matmul; the LM head is a matmul
  # (tied or not), so count V*D once.
  matmul_params = c["non_embedding"] + cfg.vocab_size * cfg.d_model
  # Each multi-token-prediction depth adds a block, its projection and one more LM head.
  matmul_params += c.get("mtp", 0) + cfg.mtp_depth * cfg.vocab_size * cfg.d_model
  attention = 12 * (cfg.n_layers + cfg.mtp_depth) * cfg.n_heads * cfg.head_dim * seq_len
  return 6.0 * matmul_params + attention
