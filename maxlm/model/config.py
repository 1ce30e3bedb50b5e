"""ModelConfig: the shape and numerics of a Llama-family decoder.

Dimension alphabet used across maxlm (stated once, used in every name):
  B batch, T query length, S key length, N query heads, K kv heads,
  H head dim, D model dim, F MLP dim, V vocab, L layers.

`config.model` in a stage config is splatted into this dataclass
(`ModelConfig(**config.model)`); layers receive only this object's fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "pallas", "splash", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int  # V, already padded to a multiple the mesh and hardware want
  d_model: int  # D
  n_layers: int  # L
  n_heads: int  # N
  n_kv_heads: int  # K, divides N (GQA; K == N is MHA, K == 1 is MQA)
  head_dim: int  # H, independent of D (Gemma-style shapes allowed)
  d_ff: int  # F, SwiGLU hidden size
  rope_theta: float = 10000.0
  rope_scaling: Mapping[str, Any] | None = None  # HF-style dict; None = default RoPE
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  compute_dtype: str = "float32"  # activations / matmul inputs; params stay float32
  param_dtype: str = "float32"
  remat: str = "none"  # one of REMAT_POLICIES
  attention_impl: str = "xla"  # one of ATTENTION_IMPLS
  scan_layers: bool = True  # lax.scan over layers: one compiled block, fast compile
  init_std: float = 0.02
  # Stability options of recent model families; the defaults are the plain Llama block.
  z_loss: float = 0.0  # PaLM: adds z_loss * log(Z)^2 per token; keeps the softmax normaliser near 1
  qk_norm: bool = False  # OLMo 2 / Gemma 3: RMSNorm over H on q and k before RoPE (bounds attn logits)
  dropout: float = 0.0  # on the attention and MLP outputs, training only (nanoGPT's resid_dropout)
  # Loss (maxlm/model/loss.py): sequence positions per chunk of the LM head + cross entropy.
  # 0 = dense [B, T, V] float32 logits; > 0 = chunked (custom VJP), so only [B, chunk, V]
  # logits exist at a time: what makes a 128k vocabulary affordable (same loss and grads).
  loss_chunk: int = 0
  # Multi-token prediction (DeepSeek-V3, maxlm/model/mtp.py): D extra sequential modules,
  # module k predicting the token k + 1 further than the trunk; 0 = off (no params, no ops).
  mtp_depth: int = 0
  mtp_weight: float = 0.3  # objective += mtp_weight * mean over modules of their CE (DeepSeek-V3: 0.3, then 0.1)
  # Imported families (maxlm.interop.hf): Mistral's sliding window W (a query sees itself
  # and the W-1 keys before it, of its own document; None = full causal) and Qwen2's
  # biases on the q, k and v projections (not o). Defaults: the plain Llama block.
  sliding_window: int | None = None
  qkv_bias: bool = False
  o_bias: bool = False  # a bias on the attention output projection (Llama attention_bias=True)

  def __post_init__(self):
    # Frozen dataclass: convert a mutable dict once so the config is hashable
    # (it is a static argument of jitted functions).
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, tuple):
      object.__setattr__(self, "rope_scaling", tuple(sorted(dict(self.rope_scaling).items())))

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @classmethod
  def from_any(cls, cfg) -> "ModelConfig":
    """Accepts a ModelConfig, a dict or an ml_collections ConfigDict."""
    if isinstance(cfg, ModelConfig):
      return cfg
    if hasattr(cfg, "to_dict"):
      cfg = cfg.to_dict()
    return cls(**dict(cfg))

  def validate(self) -> None:
    """Raises ValueError naming the offending `model.<field>`."""
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}:"
          " grouped-query attention needs K to divide N")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r} is not one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.loss_chunk < 0:
      raise ValueError(f"model.loss_chunk={self.loss_chunk} must be >= 0 (0 = dense logits)")
    if self.mtp_depth < 0:
      raise ValueError(f"model.mtp_depth={self.mtp_depth} must be >= 0 (0 = no multi-token prediction)")
    if self.mtp_weight < 0:
      raise ValueError(f"model.mtp_weight={self.mtp_weight} must be >= 0")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"model.sliding_window={self.sliding_window} must be >= 1 (or None)")
    if self.sliding_window is not None and self.attention_impl not in ("xla", "pallas"):
      raise ValueError(f"model.sliding_window={self.sliding_window} needs model.attention_impl"
                       f" 'xla' or 'pallas' (the implementations with a window), not"
                       f" {self.attention_impl!r}")
    if self.z_loss < 0:
      raise ValueError(f"model.z_loss={self.z_loss} must be >= 0")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")

  def param_counts(self) -> dict:
    """Parameter counts: total, embedding, and non-embedding (Kaplan's N)."""
    D, F, V, L = self.d_model, self.d_ff, self.vocab_size, self.n_layers
    attn = D * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    attn += self.head_dim * (self.n_heads + 2 * self.n_kv_heads) if self.qkv_bias else 0
    attn += D if self.o_bias else 0
    mlp = 3 * D * F
    per_layer = attn + mlp + 2 * D + (2 * self.head_dim if self.qk_norm else 0)
    embed = V * D * (1 if self.tie_embeddings else 2)
    non_embed = L * per_layer + D
    # Multi-token prediction: per depth two input norms, the [2D, D] projection, one
    # block and a final norm (embedding and head shared). Not in Kaplan's N: the trunk's.
    mtp = self.mtp_depth * (per_layer + 2 * D * D + 3 * D)
    return dict(total=non_embed + embed + mtp, embedding=embed, non_embedding=non_embed, mtp=mtp)
