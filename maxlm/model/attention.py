"""Attention dispatch: the one place that picks an attention implementation.

Every implementation has the same semantics, tested against `dense_attention`:
causal, and a query sees only keys of its own packed document (segment id).
Segment id 0 marks padding; padding tokens see only other padding, so no row
of the softmax is ever empty and no NaN can appear.

Implementations (`model.attention_impl`):
  xla     dense reference written in jnp; XLA fuses it. Always available.
  pallas  maxlm's flash-attention kernel (kernels/flash_attention.py).
  splash  TPU splash attention.
  cudnn   jax.nn.dot_product_attention(implementation="cudnn"); refuses packed
          batches it cannot mask rather than silently ignoring segment ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, causal: bool = True,
                    softmax_scale: float | None = None):
  """Reference attention with GQA: kv head k serves query heads k*N/K..(k+1)*N/K-1."""
  B, T, N, H = q_btnh.shape
  K = k_bskh.shape[2]
  G = N // K  # query heads per kv head
  scale = softmax_scale if softmax_scale is not None else H ** -0.5
  q_btkgh = q_btnh.reshape(B, T, K, G, H)
  # Logits and softmax in float32 whatever the compute dtype.
  logits_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                            preferred_element_type=jnp.float32) * scale
  mask_bts = make_attention_mask(segment_ids_bt, segment_ids_bt, causal=causal)
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return out_btkgh.reshape(B, T, N, H)


def make_attention_mask(q_segment_ids_bt, kv_segment_ids_bs, *, causal: bool = True):
  """Boolean [B, T, S]: same segment and (if causal) key position <= query position."""
  mask_bts = q_segment_ids_bt[:, :, None] == kv_segment_ids_bs[:, None, :]
  if causal:
    T, S = q_segment_ids_bt.shape[1], kv_segment_ids_bs.shape[1]
    mask_bts &= jnp.arange(T)[:, None] >= jnp.arange(S)[None, :]
  return mask_bts


def attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, impl: str = "xla"):
  """Causal, segment-masked GQA attention through the implementation `impl`."""
  if impl == "xla":
    return dense_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt)
  raise NotImplementedError(
      f"model.attention_impl={impl!r} is not available yet; use 'xla'")
