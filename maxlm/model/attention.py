"""Attention dispatch: the one place that picks an attention implementation.

Every implementation has the same semantics, tested against `dense_attention`:
causal, and a query sees only keys of its own packed document (segment id).
Segment id 0 marks padding; padding tokens see only other padding, so no row
of the softmax is ever empty and no NaN can appear.

Implementations (`model.attention_impl`):
  xla     dense reference written in jnp; XLA fuses it. Always available.
  pallas  maxlm's flash-attention kernel (kernels/flash_attention.py).
  splash  jax's TPU splash attention (TPU only; raises elsewhere).
  cudnn   jax.nn.dot_product_attention(implementation="cudnn") (GPU only). It
          never ignores segment ids: with ids it passes them as a dense mask
          (correct, slow); only segment_ids=None takes the fast causal path.

Kernels (pallas, splash, cudnn) run inside shard_map over the mesh in context,
batch sharded as the logical rules shard 'batch', heads as 'heads'/'kv'.

Context parallelism: when the rules map the activations' 'length' axis to a
mesh axis of size C > 1 (mesh.context), the sequence is sharded and every
implementation goes through ring attention (maxlm/model/context_parallel.py).
Its per-block compute is maxlm's Pallas kernel for impl 'pallas' and the XLA
path otherwise; cudnn and splash then log a warning once (they return no
log-sum-exp to merge blocks with). The batch must
then be in the load-balanced layout (maxlm.sharding.host_batch_to_global
applies it).
"""

from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.interpreters import pxla
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from kernels.flash_attention import flash_attention
from maxlm.model import context_parallel

log = logging.getLogger(__name__)


def dense_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, causal: bool = True,
                    softmax_scale: float | None = None, window: int | None = None):
  """Reference attention with GQA: kv head k serves query heads k*N/K..(k+1)*N/K-1."""
  B, T, N, H = q_btnh.shape
  K = k_bskh.shape[2]
  G = N // K  # query heads per kv head
  scale = softmax_scale if softmax_scale is not None else H ** -0.5
  q_btkgh = q_btnh.reshape(B, T, K, G, H)
  # Logits and softmax in float32 whatever the compute dtype.
  logits_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                            preferred_element_type=jnp.float32) * scale
  mask_bts = make_attention_mask(segment_ids_bt, segment_ids_bt, causal=causal, window=window)
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return out_btkgh.reshape(B, T, N, H)


def causal_blocked_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *,
                             softmax_scale: float | None = None, window: int | None = None):
  """dense_attention (causal, T == S) by query blocks, each against only the keys it can see.

  The 'xla' path on CPU. XLA's CPU dot emitter runs dense_attention's
  "btkgh,bskh->bkgts" einsum several times slower than the same product laid
  out as [B, K, G*T, H] x [B, K, H, S], and a [B, N, T, T] float32 block falls
  out of cache at T ~ 256 (7x slower at 256 than at 128 on the tiny model).
  Query block [s0, e) attends to keys [lo, e): the keys after e are masked by
  causality (and those before lo by the window), so dropping them changes no
  probability; every row keeps its own key, so none is empty. Same float32
  logits and softmax as dense_attention; ~4-7x faster on CPU at T = 128-256.
  """
  B, T, N, H = q_btnh.shape
  K = k_bskh.shape[2]
  G = N // K
  scale = softmax_scale if softmax_scale is not None else H ** -0.5
  # Blocks of 32 queries up to T = 512, then T / 16: the loop (unrolled at trace
  # time) stays at most 16 blocks, so long sequences do not bloat the program.
  bq = max(32, -(-T // 16))
  q_bkgth = q_btnh.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
  k_bkhs = k_bskh.transpose(0, 2, 3, 1)
  v_bksh = v_bskh.transpose(0, 2, 1, 3)
  outs = []
  for s0 in range(0, T, bq):
    e = min(s0 + bq, T)
    lo = 0 if window is None else max(0, s0 - window + 1)
    q_bkmh = q_bkgth[:, :, :, s0:e].reshape(B, K, G * (e - s0), H)
    logits_bkgts = jnp.matmul(q_bkmh, k_bkhs[..., lo:e], preferred_element_type=jnp.float32
                              ).reshape(B, K, G, e - s0, e - lo) * scale
    q_pos, k_pos = jnp.arange(s0, e)[:, None], jnp.arange(lo, e)[None, :]
    mask_bts = (segment_ids_bt[:, s0:e, None] == segment_ids_bt[:, None, lo:e]) & (q_pos >= k_pos)
    if window is not None:
      mask_bts &= q_pos - k_pos < window
    logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkms = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype).reshape(
        B, K, G * (e - s0), e - lo)
    outs.append(jnp.matmul(probs_bkms, v_bksh[:, :, lo:e]).reshape(B, K, G, e - s0, H))
  out_bkgth = jnp.concatenate(outs, axis=3)
  return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def make_attention_mask(q_segment_ids_bt, kv_segment_ids_bs, *, causal: bool = True,
                        window: int | None = None):
  """Boolean [B, T, S]: same segment and (if causal) key position <= query position.

  A sliding `window` W (Mistral; transformers' `kv_idx > q_idx - W`) also needs
  |query - key| < W: itself and the W-1 keys before it. Row offsets stand for
  position offsets because a packed document's tokens are contiguous in its row,
  and the segment test still keeps documents apart.
  """
  mask_bts = q_segment_ids_bt[:, :, None] == kv_segment_ids_bs[:, None, :]
  T, S = q_segment_ids_bt.shape[1], kv_segment_ids_bs.shape[1]
  if causal:
    mask_bts &= jnp.arange(T)[:, None] >= jnp.arange(S)[None, :]
  if window is not None:
    mask_bts &= jnp.abs(jnp.arange(T)[:, None] - jnp.arange(S)[None, :]) < window
  return mask_bts


def attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, impl: str = "xla",
              window: int | None = None):
  """Causal, segment-masked GQA attention through the implementation `impl`.

  segment_ids_bt may be None (one document per row); the model always passes
  ids. Kernels run inside shard_map over the mesh in context (see _sharded).
  `window` W (model.sliding_window): a query sees itself and the W-1 keys
  before it, still only of its own document. Only xla and pallas implement it;
  the others, and ring attention, refuse rather than attend past the window.
  """
  if impl not in ("xla", "pallas", "cudnn", "splash"):
    raise ValueError(f"model.attention_impl={impl!r} is not one of xla, pallas, splash, cudnn")
  if window is not None and impl not in ("xla", "pallas"):
    raise ValueError(f"model.sliding_window={window} is implemented by attention_impl 'xla'"
                     f" and 'pallas', not {impl!r}")
  mesh = _current_mesh()
  context = None if mesh is None else _context_axis(mesh, q_btnh.shape[1])
  if context is not None and window is not None:
    raise ValueError(f"model.sliding_window={window} is not supported under context"
                     " parallelism (mesh.context > 1): ring attention has no window")
  if context is not None:
    # The Pallas kernel runs per ring block; cudnn and splash have no lse output: xla blocks.
    block_impl = "pallas" if impl == "pallas" else "xla"
    if impl not in ("xla", "pallas"):
      _warn_ring_per_block(impl)
    if segment_ids_bt is None:
      segment_ids_bt = jnp.ones(q_btnh.shape[:2], jnp.int32)
    ring = functools.partial(context_parallel.ring_attention_local, axis_name=context,
                             axis_size=mesh.shape[context], block_impl=block_impl)
    return _sharded(ring, q_btnh, k_bskh, v_bskh, segment_ids_bt, length_axes=(context,))
  if impl == "xla":
    if segment_ids_bt is None:
      segment_ids_bt = jnp.ones(q_btnh.shape[:2], jnp.int32)
    if jax.default_backend() == "cpu" and q_btnh.shape[1] == k_bskh.shape[1]:
      return causal_blocked_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, window=window)
    return dense_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, window=window)
  if impl == "pallas":
    # The kernel's window w counts the keys before the query (w + 1 in all).
    local = _pallas_local if window is None else functools.partial(_pallas_local,
                                                                   window=window - 1)
    return _sharded(local, q_btnh, k_bskh, v_bskh, segment_ids_bt)
  if impl == "cudnn":
    return _sharded(_cudnn_local, q_btnh, k_bskh, v_bskh, segment_ids_bt)
  return _sharded(_splash_local, q_btnh, k_bskh, v_bskh, segment_ids_bt)


def _pallas_local(q_btnh, k_bskh, v_bskh, segment_ids_bt, window=None):
  # The interpreter is the only way a Pallas kernel runs on CPU (tests, laptops).
  return flash_attention(q_btnh, k_bskh, v_bskh, segment_ids=segment_ids_bt, causal=True,
                         window=window, interpret=jax.default_backend() == "cpu")


def _cudnn_local(q_btnh, k_bskh, v_bskh, segment_ids_bt):
  """cuDNN flash attention. Rule: it never ignores segment ids.

  Without ids (segment_ids_bt=None) it runs the fast causal-only kernel. With
  ids, whether a row holds one document is not known at trace time, so the
  segment mask goes to cuDNN as a dense [B, 1, T, S] boolean mask (correct,
  but it materialises T x S per row and is much slower: use 'pallas' for
  packed batches).
  """
  if jax.default_backend() != "gpu":
    raise ValueError(f"model.attention_impl='cudnn' needs an NVIDIA GPU; the backend is "
                     f"{jax.default_backend()!r}. Use 'pallas' or 'xla'.")
  mask_b1ts = None
  if segment_ids_bt is not None:
    mask_b1ts = make_attention_mask(segment_ids_bt, segment_ids_bt, causal=False)[:, None]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_b1ts, is_causal=True,
                                      implementation="cudnn")


def _splash_local(q_btnh, k_bskh, v_bskh, segment_ids_bt):
  """jax's TPU splash attention (causal mask, segment ids). Untested: no TPU in CI."""
  if jax.default_backend() != "tpu":
    raise ValueError(f"model.attention_impl='splash' runs only on TPU; the backend is "
                     f"{jax.default_backend()!r}. Use 'pallas' (same semantics) or 'xla'.")
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  B, T, N, H = q_btnh.shape
  if segment_ids_bt is None:
    segment_ids_bt = jnp.ones((B, T), jnp.int32)
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((T, T))] * N)
  kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
  # Splash does not scale the logits; it wants [heads, length, H] per example.
  q_bnth = jnp.swapaxes(q_btnh * H ** -0.5, 1, 2)
  k_bksh, v_bksh = jnp.swapaxes(k_bskh, 1, 2), jnp.swapaxes(v_bskh, 1, 2)
  one = lambda q, k, v, seg: kernel(q, k, v, segment_ids=splash.SegmentIds(seg, seg))
  return jnp.swapaxes(jax.vmap(one)(q_bnth, k_bksh, v_bksh, segment_ids_bt), 1, 2)


def _current_mesh():
  """The mesh in context: jax.set_mesh(...), else the legacy `with mesh:`; None if neither."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh
  legacy = pxla.thread_resources.env.physical_mesh
  return None if legacy.empty else legacy


def _mesh_axes(mesh, logical: str, dim: int) -> tuple[str, ...] | None:
  """Mesh axes the logical-axis rules give `logical`, or None if they do not divide dim."""
  (axes,) = nn.logical_to_mesh_axes((logical,))
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  axes = tuple(a for a in axes if a in mesh.axis_names)
  size = math.prod(mesh.shape[a] for a in axes)
  return axes if axes and dim % size == 0 else None


@functools.lru_cache(maxsize=None)
def _warn_ring_per_block(impl: str) -> None:
  log.warning("model.attention_impl=%r under context parallelism: ring attention runs the XLA"
              " per-block path (only the 'pallas' kernel returns the log-sum-exp that merges"
              " blocks)", impl)


def _context_axis(mesh, T: int) -> str | None:
  """The mesh axis the rules shard 'length' over when its size is > 1, else None.

  Raises when the sequence cannot take the load-balanced layout: a silent
  fallback to replicated attention would read a layout-ordered batch as if it
  were in natural order.
  """
  (axes,) = nn.logical_to_mesh_axes(("length",))
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
  if not axes:
    return None
  if len(axes) > 1:
    raise ValueError(f"mesh.rules map 'length' to {axes}; context parallelism rings over one axis")
  C = mesh.shape[axes[0]]
  if T % (2 * C):
    raise ValueError(f"sequence length {T} is not divisible by 2 x mesh.context = {2 * C}"
                     " (the load-balanced layout's chunks); change data.seq_len or mesh.context")
  return axes[0]


def _sharded(local_fn, q_btnh, k_bskh, v_bskh, segment_ids_bt, length_axes=None):
  """Runs local_fn inside shard_map: batch over the 'batch' axes, heads over 'heads'/'kv'.

  Each shard gets whole sequences of N/t query heads and the K/t kv heads that
  serve them, so no collective is needed. Heads are sharded only when 'heads'
  and 'kv' map to the same mesh axes and both N and K divide by their size
  (otherwise the local GQA grouping would be wrong); else they are replicated,
  correct but redundant. A batch the 'batch' axes do not divide is replicated.
  `length_axes` shards the sequence too (context parallelism; local_fn then
  runs collectives over those axes).
  """
  mesh = _current_mesh()
  if mesh is None:
    return local_fn(q_btnh, k_bskh, v_bskh, segment_ids_bt)
  B, _, N, _ = q_btnh.shape
  K = k_bskh.shape[2]
  batch = _mesh_axes(mesh, "batch", B)
  heads, kv = _mesh_axes(mesh, "heads", N), _mesh_axes(mesh, "kv", K)
  heads = heads if heads == kv else None
  qkv_spec = P(batch, length_axes, heads, None)
  seg_spec = P(batch, length_axes)
  args = [q_btnh, k_bskh, v_bskh]
  specs = [qkv_spec] * 3
  if segment_ids_bt is not None:
    args.append(segment_ids_bt)
    specs.append(seg_spec)
  if any(t == AxisType.Explicit for t in mesh.axis_types):
    # Explicit axes: shard_map checks, not converts, the inputs' shardings.
    args = [jax.sharding.reshard(x, spec) for x, spec in zip(args, specs)]
  fn = local_fn if segment_ids_bt is not None else (lambda q, k, v: local_fn(q, k, v, None))
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                       check_vma=False)(*args)
