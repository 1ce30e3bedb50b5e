"""Context (sequence) parallelism: ring attention over a `context` mesh axis.

Ring attention (Liu, Zaharia & Abbeel 2023, arXiv:2310.01889): every device of
the context axis holds T/C tokens of each sequence (queries, keys, values).
For C steps a device attends its queries to the key/value block it holds, then
passes that block to the next device with `ppermute`; the partial results are
merged with the online softmax of FlashAttention (running max m, running sum
l, unnormalised accumulator). After C steps every query has seen every key, and
no device ever holds more than two K/V blocks or any [T, T] matrix.

Load-balanced ("zigzag") layout. With causal attention a contiguous split
leaves device 0 with almost nothing to do and device C-1 with the most. So the
sequence is cut into 2C chunks of c = T / (2C) tokens and device i holds chunk
i (front) and chunk 2C-1-i (back) (Brandon et al. 2023, "Striped attention";
the zigzag of Megatron-CP and llama3's context parallel). Then for any source
device j != i exactly half of the 2x2 chunk pairs are visible:
  q_back  x kv_front(j)   always (chunk j < C <= 2C-1-i)
  q_front x kv_front(j)   iff j < i
  q_back  x kv_back(j)    iff j > i
  q_front x kv_back(j)    never
so each off-diagonal step computes two c x c blocks instead of four, the same
on every device. The diagonal step (the local block) is computed whole.

The layout is a property of the batch as placed on the mesh: a batch whose
length dim is sharded over the context axis holds its tokens in layout order
(`to_layout`; maxlm.sharding.host_batch_to_global applies it to every [B, T]
field: inputs, targets, positions, segment ids, masks, domain ids alike).
Per-token computations (embedding, MLP, norms, RoPE from positions, the loss
sum) do not care about the order; attention does, and recovers each token's
index in the natural sequence from the device index and the layout. A
per-token output that must be read in natural order goes through `from_layout`.

Masks are exact: key j is visible to query i iff both have the same segment
id and j <= i in the natural order, so packed documents that straddle shards
still attend only within themselves, and padding (segment 0) sees padding.

Per-block compute, `block_impl`:
  xla     einsums with float32 logits, keys taken `block_k` at a time with the
          same online softmax (so no [T/C, T/C] matrix either), each sub-block
          under jax.checkpoint so the backward recomputes its probabilities
          instead of keeping them; the running state is (max, sum, accumulator).
  pallas  the flash kernel (kernels/flash_attention.py) once per visible chunk
          pair, through `flash_attention_with_lse`: each call returns its
          normalised output and log-sum-exp, and blocks merge by the
          log-sum-exp rule (`_merge_lse`). The zigzag layout needs no mask at a
          query/key offset: the local block in layout order [front, back] is
          plain causal attention (front < back in the natural order too), and
          every off-diagonal pair is fully visible or skipped, so the kernel's
          causal=True / causal=False with a pair of segment ids covers all.
          The kernel's backward takes the lse cotangent the merge produces.
The dispatch (maxlm/model/attention.py) picks pallas for
model.attention_impl='pallas' and xla otherwise. Backward is autodiff through
the ring (ppermute transposes to the reverse ppermute).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.flash_attention import flash_attention_with_lse
from maxlm.sharding.context_layout import from_layout, layout_indices, to_layout  # noqa: F401  (re-exported)

# Finite "minus infinity" for masked logits: exp(NEG - m) is 0 for any real m,
# and a row that has seen only masked keys so far is wiped by the next
# correction factor exp(NEG - m_new) = 0, so no NaN can appear.
_NEG = float(jnp.finfo(jnp.float32).min)


def _natural_index(device, local_len: int, C: int):
  """int [local_len]: natural indices of the tokens device `device` (traced) holds."""
  c = local_len // 2
  j = jnp.arange(local_len)
  return jnp.where(j < c, device * c + j, (2 * C - 1 - device) * c + (j - c))


# ---------------------------------------------------------------------------
# Online-softmax merge of one key/value block into a query block's running state.

def _merge_block(carry, q_btkgh, k_bskh, v_bskh, mask_bts, scale):
  """carry = (m [B,K,G,T], l [B,K,G,T], acc [B,K,G,T,H]), all float32."""
  m_bkgt, l_bkgt, acc_bkgth = carry
  s_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                       preferred_element_type=jnp.float32) * scale
  s_bkgts = jnp.where(mask_bts[:, None, None], s_bkgts, _NEG)
  m_new = jnp.maximum(m_bkgt, s_bkgts.max(-1))
  p_bkgts = jnp.exp(s_bkgts - m_new[..., None])
  corr_bkgt = jnp.exp(m_bkgt - m_new)
  l_new = l_bkgt * corr_bkgt + p_bkgts.sum(-1)
  pv_bkgth = jnp.einsum("bkgts,bskh->bkgth", p_bkgts.astype(v_bskh.dtype), v_bskh,
                        preferred_element_type=jnp.float32)
  return m_new, l_new, acc_bkgth * corr_bkgt[..., None] + pv_bkgth


def _mask(q_seg_bt, kv_seg_bs, q_idx_t, kv_idx_s, causal: bool):
  mask_bts = q_seg_bt[:, :, None] == kv_seg_bs[:, None, :]
  if causal:
    mask_bts &= (kv_idx_s[None, :] <= q_idx_t[:, None])[None]
  return mask_bts


def _attend(carry, q, kv, *, causal: bool, scale: float, block_k: int):
  """Merges the key/value block kv = (k, v, kv_seg, kv_idx) into the queries q = (q, seg, idx).

  Keys are taken block_k at a time (a scan) so no more than [T, block_k]
  logits exist at once, and each sub-block is under jax.checkpoint: the
  backward recomputes its probabilities from the inputs instead of keeping
  them, so residuals stay O(T * H) per ring step.
  """
  q_btkgh, q_seg_bt, q_idx_t = q
  k_bskh, v_bskh, kv_seg_bs, kv_idx_s = kv

  @jax.checkpoint
  def one(carry, k_bskh, v_bskh, kv_seg_bs, kv_idx_s):
    mask_bts = _mask(q_seg_bt, kv_seg_bs, q_idx_t, kv_idx_s, causal)
    return _merge_block(carry, q_btkgh, k_bskh, v_bskh, mask_bts, scale)

  S = k_bskh.shape[1]
  if S <= block_k or S % block_k:
    return one(carry, k_bskh, v_bskh, kv_seg_bs, kv_idx_s)
  n = S // block_k
  split = lambda x, axis: jnp.moveaxis(
      x.reshape(*x.shape[:axis], n, block_k, *x.shape[axis + 1:]), axis, 0)
  xs = (split(k_bskh, 1), split(v_bskh, 1), split(kv_seg_bs, 1), split(kv_idx_s, 0))
  carry, _ = jax.lax.scan(lambda c, x: (one(c, *x), None), carry, xs)
  return carry


def _select(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _halves(x, axis):
  c = x.shape[axis] // 2
  return jax.lax.slice_in_dim(x, 0, c, axis=axis), jax.lax.slice_in_dim(x, c, 2 * c, axis=axis)


def ring_attention_local(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, axis_name: str,
                         axis_size: int, causal: bool = True, softmax_scale: float | None = None,
                         block_k: int = 512, block_impl: str = "xla",
                         interpret: bool | None = None):
  """Ring attention on one device's shard (call inside shard_map over `axis_name`).

  q [B, T/C, N, H], k and v [B, T/C, K, H], segment ids [B, T/C], all in the
  load-balanced layout (module docstring). Returns [B, T/C, N, H] in q's dtype.
  `block_impl`: per-block compute, 'xla' or 'pallas' (module docstring).
  `block_k`: keys per sub-block of the xla per-block compute (bounds its logits).
  `interpret`: run the Pallas kernel in the interpreter; default: on CPU.
  """
  if block_impl not in ("xla", "pallas"):
    raise ValueError(f"ring attention block_impl={block_impl!r} is not one of xla, pallas")
  if block_impl == "pallas":
    return _ring_kernel(q_btnh, k_bskh, v_bskh, segment_ids_bt, axis_name=axis_name,
                        axis_size=axis_size, causal=causal, softmax_scale=softmax_scale,
                        interpret=jax.default_backend() == "cpu" if interpret is None
                        else interpret)
  C = axis_size
  B, Tl, N, H = q_btnh.shape
  K = k_bskh.shape[2]
  G = N // K
  if Tl % 2:
    raise ValueError(f"context shard length {Tl} must be even (two chunks per device)")
  scale = softmax_scale if softmax_scale is not None else H ** -0.5
  me = jax.lax.axis_index(axis_name)
  q_btkgh = q_btnh.reshape(B, Tl, K, G, H)
  q_idx_t = _natural_index(me, Tl, C)
  zeros = lambda n: (jnp.full((B, K, G, n), _NEG, jnp.float32), jnp.zeros((B, K, G, n), jnp.float32),
                     jnp.zeros((B, K, G, n, H), jnp.float32))

  # Step 0: the local block, whole (the diagonal chunks need the causal mask).
  attend = functools.partial(_attend, causal=causal, scale=scale, block_k=block_k)
  state = attend(zeros(Tl), (q_btkgh, segment_ids_bt, q_idx_t),
                 (k_bskh, v_bskh, segment_ids_bt, q_idx_t))
  kv = (k_bskh, v_bskh, segment_ids_bt)
  ring = [(j, (j + 1) % C) for j in range(C)]
  if not causal:  # every block pair may be visible: the plain ring over whole blocks
    for step in range(1, C):
      kv = jax.lax.ppermute(kv, axis_name, ring)
      kv_idx = _natural_index((me - step) % C, Tl, C)
      state = attend(state, (q_btkgh, segment_ids_bt, q_idx_t), (*kv, kv_idx))
    return _finish(state, q_btnh)

  # Later steps work on the front / back query chunks separately (zigzag).
  front, back = zip(*(_halves(x, 3) for x in state))
  q_f, q_b = _halves(q_btkgh, 1)
  seg_f, seg_b = _halves(segment_ids_bt, 1)
  idx_f, idx_b = _halves(q_idx_t, 0)
  for step in range(1, C):
    kv = jax.lax.ppermute(kv, axis_name, ring)  # now holding device (me - step)'s block
    src = (me - step) % C
    k_blk, v_blk, kseg_blk = kv
    (k_f, k_b), (v_f, v_b) = _halves(k_blk, 1), _halves(v_blk, 1)
    (kseg_f, kseg_b), (kidx_f, kidx_b) = _halves(kseg_blk, 1), _halves(_natural_index(src, Tl, C), 0)
    # q_back x kv_front: always visible.
    back = attend(back, (q_b, seg_b, idx_b), (k_f, v_f, kseg_f, kidx_f))
    # One more c x c pair: q_front x kv_front if src < me, else q_back x kv_back.
    lower = src < me
    q_s, qseg_s, qidx_s = _select(lower, (q_f, seg_f, idx_f), (q_b, seg_b, idx_b))
    k_s, v_s, kseg_s, kidx_s = _select(lower, (k_f, v_f, kseg_f, kidx_f), (k_b, v_b, kseg_b, kidx_b))
    merged = attend(_select(lower, front, back), (q_s, qseg_s, qidx_s), (k_s, v_s, kseg_s, kidx_s))
    front, back = _select(lower, merged, front), _select(lower, back, merged)
  return _finish(tuple(jnp.concatenate([f, b], axis=3) for f, b in zip(front, back)), q_btnh)


def _finish(state, q_btnh):
  """Normalises the accumulator: [B, T, N, H] in q's dtype."""
  _, l_bkgt, acc_bkgth = state
  # Every query sees at least itself (same segment, j == i), so l >= 1 here.
  out_btkgh = jnp.einsum("bkgth->btkgh", acc_bkgth / l_bkgt[..., None])
  return out_btkgh.reshape(q_btnh.shape).astype(q_btnh.dtype)


# ---------------------------------------------------------------------------
# Per-block compute with the Pallas kernel: (out, lse) per chunk pair, merged.

def _merge_lse(a, b):
  """Merges two partial attentions (out [B,T,N,H] float32, lse [B,T,N]) over disjoint keys.

  out = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b), shifted by the
  larger lse. The shift cancels exactly, so it carries no gradient; a block
  whose row saw no key (lse -inf) gets weight 0, and its lse gets gradient 0.
  """
  out_a, lse_a = a
  out_b, lse_b = b
  m = jax.lax.stop_gradient(jnp.maximum(lse_a, lse_b))
  m = jnp.where(jnp.isfinite(m), m, 0.0)  # both empty: weights 0, kept finite
  w_a, w_b = jnp.exp(lse_a - m), jnp.exp(lse_b - m)
  total = w_a + w_b
  safe = jnp.where(total > 0, total, 1.0)
  out = (w_a[..., None] * out_a + w_b[..., None] * out_b) / safe[..., None]
  return out, jnp.where(total > 0, m + jnp.log(safe), -jnp.inf)


def _ring_kernel(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, axis_name: str, axis_size: int,
                 causal: bool, softmax_scale: float | None, interpret: bool):
  C = axis_size
  Tl = q_btnh.shape[1]
  if Tl % 2:
    raise ValueError(f"context shard length {Tl} must be even (two chunks per device)")
  me = jax.lax.axis_index(axis_name)
  attend = functools.partial(flash_attention_with_lse, softmax_scale=softmax_scale,
                             interpret=interpret)

  def block(q, k, v, q_seg, kv_seg, causal_block):
    out, lse = attend(q, k, v, segment_ids=(q_seg, kv_seg), causal=causal_block)
    return out.astype(jnp.float32), lse

  # Step 0, the local block: in layout order [front, back] causal attention is
  # exactly the zigzag diagonal (front x front and back x back causal, back x
  # front all visible, front x back hidden).
  state = block(q_btnh, k_bskh, v_bskh, segment_ids_bt, segment_ids_bt, causal)
  kv = (k_bskh, v_bskh, segment_ids_bt)
  ring = [(j, (j + 1) % C) for j in range(C)]
  if not causal:
    for _ in range(1, C):
      kv = jax.lax.ppermute(kv, axis_name, ring)
      state = _merge_lse(state, block(q_btnh, *kv[:2], segment_ids_bt, kv[2], False))
    return state[0].astype(q_btnh.dtype)

  front, back = zip(*(_halves(x, 1) for x in state))
  q_f, q_b = _halves(q_btnh, 1)
  seg_f, seg_b = _halves(segment_ids_bt, 1)
  for step in range(1, C):
    kv = jax.lax.ppermute(kv, axis_name, ring)  # now holding device (me - step)'s block
    src = (me - step) % C
    (k_f, k_b), (v_f, v_b), (kseg_f, kseg_b) = (_halves(x, 1) for x in kv)
    # q_back x kv_front: always visible, no causal mask within the pair.
    back = _merge_lse(back, block(q_b, k_f, v_f, seg_b, kseg_f, False))
    # One more pair, also fully visible: q_front x kv_front if src < me, else q_back x kv_back.
    lower = src < me
    q_s, qseg_s = _select(lower, (q_f, seg_f), (q_b, seg_b))
    k_s, v_s, kseg_s = _select(lower, (k_f, v_f, kseg_f), (k_b, v_b, kseg_b))
    merged = _merge_lse(_select(lower, front, back), block(q_s, k_s, v_s, qseg_s, kseg_s, False))
    front, back = _select(lower, merged, front), _select(lower, back, merged)
  return jnp.concatenate([front[0], back[0]], axis=1).astype(q_btnh.dtype)
