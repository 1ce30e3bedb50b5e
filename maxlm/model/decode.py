"""The KV cache for autoregressive decoding, and attention through it.

A cache holds, for every layer, the keys (after RoPE) and values of every
token seen so far, in S slots. All rows of a batch write at the same slot
(`index`): prompts of different lengths are LEFT-padded, pad tokens carry
segment id 0 and real tokens segment id 1, so the mask of
attention.make_attention_mask (same segment) keeps pads and text apart
exactly as in training, and positions (RoPE) count from each row's first
real token. Slots not yet written hold segment id 0 and lie in the future of
every query, so the causal slot test hides them.

Prefill (`fresh`: the cache is empty and the prompt fills slots 0..T-1)
attends over the prompt alone through attention.attention, so it runs with
whichever implementation the model is configured for (xla, pallas, splash,
cudnn). Decode steps (T new tokens after `index` filled slots) use
`attend_to_cache` below: dense attention of a few queries over S cached keys,
memory-bound, where a flash kernel gains nothing. It has the semantics of
attention.dense_attention with the causal test done on cache slots instead
of row positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from maxlm.model import attention as attention_lib


class Cache(NamedTuple):
  """All layers' KV cache: a pytree, passed to and returned by Transformer."""
  k_lbskh: jax.Array  # [L, B, S, K, H] keys after RoPE
  v_lbskh: jax.Array  # [L, B, S, K, H]
  segment_ids_bs: jax.Array  # [B, S] int32; 0 = padding or not yet written
  index: jax.Array  # int32 scalar: slots filled so far (same for every row)


class LayerCache(NamedTuple):
  """One layer's view of the cache, as Attention sees it."""
  k_bskh: jax.Array
  v_bskh: jax.Array
  segment_ids_bs: jax.Array  # already holds the new tokens' ids (write_segment_ids)
  index: jax.Array  # slot of the first new token
  fresh: bool  # static: empty cache, new tokens start at slot 0


def init_cache(model_config, batch: int, max_len: int, dtype=None) -> Cache:
  """An empty cache of `max_len` slots; `dtype` defaults to the compute dtype."""
  cfg = model_config
  dtype = jnp.dtype(dtype or cfg.compute_dtype)
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))


def write_segment_ids(cache: Cache, segment_ids_bt) -> jax.Array:
  """The cache's segment ids with the T new tokens' ids written at cache.index."""
  return jax.lax.dynamic_update_slice(cache.segment_ids_bs,
                                      segment_ids_bt.astype(jnp.int32), (0, cache.index))


def cached_attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, kv: LayerCache, *, impl: str,
                     window: int | None = None):
  """Writes the new keys/values into the layer cache, then attends. Returns (out, kv)."""
  start = (0, kv.index, 0, 0)
  k_bskh = jax.lax.dynamic_update_slice(kv.k_bskh, k_btkh.astype(kv.k_bskh.dtype), start)
  v_bskh = jax.lax.dynamic_update_slice(kv.v_bskh, v_btkh.astype(kv.v_bskh.dtype), start)
  if kv.fresh:
    # Nothing before the prompt: attention over the prompt alone is exact, and
    # it goes through the configured implementation (flash kernels included).
    out_btnh = attention_lib.attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, impl=impl,
                                       window=window)
  else:
    out_btnh = attend_to_cache(q_btnh, k_bskh, v_bskh, segment_ids_bt, kv.segment_ids_bs,
                               kv.index, window=window)
  return out_btnh, kv._replace(k_bskh=k_bskh, v_bskh=v_bskh)


def attend_to_cache(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs, index,
                    window: int | None = None):
  """GQA attention of T new queries (slots index..index+T-1) over all S cache slots.

  With a sliding `window` W, slot distance stands for position distance: pads
  sit only at the left of a row, so a row's real tokens occupy consecutive slots.
  """
  B, T, N, H = q_btnh.shape
  S, K = k_bskh.shape[1], k_bskh.shape[2]
  q_btkgh = q_btnh.reshape(B, T, K, N // K, H)
  logits_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh.astype(q_btnh.dtype),
                            preferred_element_type=jnp.float32) * H ** -0.5
  mask_bts = attention_lib.make_attention_mask(q_segment_ids_bt, kv_segment_ids_bs, causal=False)
  slot_t1 = index + jnp.arange(T)[:, None]  # [T, 1] the cache slot of each query
  mask_bts &= (jnp.arange(S)[None, :] <= slot_t1)[None]
  if window is not None:
    mask_bts &= (slot_t1 - jnp.arange(S)[None, :] < window)[None]
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return out_btkgh.reshape(B, T, N, H).astype(q_btnh.dtype)
