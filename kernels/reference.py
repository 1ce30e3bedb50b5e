"""Dense attention reference with the exact semantics of kernels.flash_attention.

Materialises the [B, N, T, S] logits in float32 and applies the same masks
(segments, causal, window, key/query padding) and soft cap as the kernel. It is
the oracle the kernel tests differentiate through, so it is written for clarity
and for finite gradients, not for speed: masked logits become -inf *before* the
exponential, so a fully masked row gives p = 0 everywhere (output zeros) and
no NaN reaches the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_segment_ids(segment_ids, B, T, S):
  """Returns (q_segment_ids [B, T], kv_segment_ids [B, S]) from None, one array or a pair."""
  if segment_ids is None:
    return jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)
  if isinstance(segment_ids, (tuple, list)):
    q_seg_bt, kv_seg_bs = segment_ids
  else:
    if T != S:
      raise ValueError(f"one segment_ids array needs T == S (self-attention); got T={T}, S={S}:"
                       " pass a pair (q_segment_ids, kv_segment_ids)")
    q_seg_bt = kv_seg_bs = segment_ids
  if q_seg_bt.shape != (B, T) or kv_seg_bs.shape != (B, S):
    raise ValueError(f"segment ids of shapes {q_seg_bt.shape}, {kv_seg_bs.shape};"
                     f" expected ({B}, {T}) and ({B}, {S})")
  return q_seg_bt.astype(jnp.int32), kv_seg_bs.astype(jnp.int32)


def attention_mask(q_seg_bt, kv_seg_bs, *, causal=True, window=None):
  """Boolean [B, T, S]; positions are aligned at 0 for both queries and keys.

  causal: key j visible to query i only if j <= i. window w: additionally
  i - j <= w (and, when not causal, j - i <= w: a symmetric local window).
  """
  T, S = q_seg_bt.shape[1], kv_seg_bs.shape[1]
  i_ts = jnp.arange(T)[:, None]
  j_ts = jnp.arange(S)[None, :]
  mask_bts = q_seg_bt[:, :, None] == kv_seg_bs[:, None, :]
  visible_ts = jnp.ones((T, S), bool)
  if causal:
    visible_ts &= j_ts <= i_ts
  if window is not None:
    visible_ts &= i_ts - j_ts <= window
    if not causal:
      visible_ts &= j_ts - i_ts <= window
  return mask_bts & visible_ts[None]


def attention_reference(q_btnh, k_bskh, v_bskh, *, segment_ids=None, causal=True, window=None,
                        softmax_scale=None, logits_soft_cap=None):
  """Dense GQA attention: kv head j serves query heads j*G .. (j+1)*G-1, G = N // K."""
  B, T, N, H = q_btnh.shape
  S, K = k_bskh.shape[1], k_bskh.shape[2]
  G = N // K
  scale = H ** -0.5 if softmax_scale is None else softmax_scale
  q_seg_bt, kv_seg_bs = split_segment_ids(segment_ids, B, T, S)
  q_btkgh = q_btnh.reshape(B, T, K, G, H)
  s_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                       preferred_element_type=jnp.float32) * scale
  if logits_soft_cap is not None:
    s_bkgts = logits_soft_cap * jnp.tanh(s_bkgts / logits_soft_cap)
  mask_bts = attention_mask(q_seg_bt, kv_seg_bs, causal=causal, window=window)
  s_bkgts = jnp.where(mask_bts[:, None, None], s_bkgts, -jnp.inf)
  m_bkgt = jnp.max(s_bkgts, axis=-1, keepdims=True)
  m_bkgt = jnp.where(jnp.isfinite(m_bkgt), m_bkgt, 0.0)  # empty row: keep exp() finite
  p_bkgts = jnp.exp(s_bkgts - m_bkgt)
  l_bkgt = jnp.sum(p_bkgts, axis=-1, keepdims=True)
  p_bkgts = p_bkgts / jnp.where(l_bkgt == 0, 1.0, l_bkgt)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", p_bkgts, v_bskh.astype(jnp.float32))
  return out_btkgh.reshape(B, T, N, H).astype(q_btnh.dtype)
