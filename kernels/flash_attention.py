"""Flash attention in Pallas: FlashAttention-2 (Dao 2023, arXiv:2307.08691).

One kernel body for packed documents (segment ids), GQA/MQA, causal and
sliding-window masks, logit soft-capping and odd lengths, forward and backward.

Algorithm (FlashAttention-2, sections 3.1 and 3.2):
  forward   grid (B, N, T/bq); each program holds one query block in registers
            and streams key/value blocks, keeping a running max m, a running
            sum l and an unnormalised float32 accumulator (online softmax).
            It writes the output and the log-sum-exp lse = m + log(l).
  backward  recomputes the probabilities from q, k and lse (never stores the
            [T, S] matrix), with delta = rowsum(dO * O) precomputed by XLA, in
            two kernels so that no program writes what another one reads:
              dq   grid (B, N, T/bq), loops over key blocks;
              dk/dv grid (B, K, S/bk), loops over the G = N/K query heads that
                   share the kv head and over query blocks, so GQA gradients
                   are summed in float32 inside the kernel, without atomics.
  Blocks that every mask hides (above the causal diagonal, outside the window)
  are skipped by the loop bounds; segment masks are applied elementwise.
  lse output  flash_attention_with_lse also returns lse (ring attention merges
            blocks with it). lse_i = log sum_j exp(s_ij) gives d lse_i / d s_ij
            = P_ij, so with an lse cotangent g the score gradient is
            dS = P * (dP - delta) + P * g = P * (dP - (delta - g)): the same two
            backward kernels, with delta - g in place of delta.

Conventions:
  layout    q [B, T, N, H], k and v [B, S, K, H]; kv head j serves query heads
            j*G .. (j+1)*G-1. The kernel transposes to [B, N, T, H] so that every
            block's last two dims are (rows, H), the shape TPU tiles want.
  positions queries and keys both count from 0 (top-left aligned when T != S).
  causal    key j visible to query i iff j <= i.
  window w  query i sees keys i-w .. i (w+1 keys) when causal; when not causal
            the window is symmetric, i-w .. i+w.
  segments  query sees a key only if their segment ids are equal. Rows with no
            visible key (possible with pairs of segment ids) return zeros; their
            lse is stored as +inf so the backward recomputes p = 0, not NaN.
  soft cap  logits s = scale * q.k become c * tanh(s / c) before masking.
  padding   T and S are padded up to the block sizes inside; padded keys and
            queries are masked out, so any length works.

Backends:
  interpret=True  runs anywhere (CPU CI); this is what the tests exercise.
  GPU  Pallas Triton. Chosen over Mosaic GPU because the same block-level body
       (ref slices, dots, fori_loop) lowers through Triton on every NVIDIA GPU
       jax supports (Ampere, Hopper, Blackwell), while a Mosaic GPU kernel is a
       different program (warpgroup MMAs, explicit TMA pipelines, warp
       specialisation) that only targets Hopper and newer. Triton is deprecated
       upstream from jax 0.11; maxlm pins jax 0.10, and the Mosaic GPU port is
       the follow-up once the Triton path is removed. Triton needs power-of-two
       block sizes and head dims >= 16. NOT YET RUN ON A GPU.
  TPU  Mosaic (pallas.tpu) with every grid axis "parallel"; keys and values of
       one (batch, head) sit in VMEM whole, which bounds S at roughly 8-16k for
       H=128 in bfloat16. NOT YET RUN ON A TPU; on TPU the dispatch should prefer
       jax's splash attention anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.reference import split_segment_ids


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on; hashable, so it is a nondiff argument."""
  causal: bool
  window: int | None
  scale: float
  soft_cap: float | None
  bq: int  # query block rows
  bk: int  # key block rows
  T: int  # true (unpadded) lengths: rows / cols at or past them are masked
  S: int
  interpret: bool


def _round_up(x, m):
  return (x + m - 1) // m * m


def _block_size(requested: int, length: int) -> int:
  # Never pad a short sequence up to a large block; powers of two >= 16 keep
  # the Triton dot happy.
  return min(requested, max(16, 1 << max(length - 1, 1).bit_length()))


# ---------------------------------------------------------------------------
# Shared pieces of the kernel bodies.

def _logits(st: _Static, q_qh, k_kh):
  """Float32 scaled (and soft-capped) logits [bq, bk]; also tanh for the cap's derivative."""
  s_qk = jax.lax.dot_general(q_qh, k_kh, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32) * st.scale
  if st.soft_cap is None:
    return s_qk, None
  t_qk = jnp.tanh(s_qk / st.soft_cap)
  return st.soft_cap * t_qk, t_qk


def _mask(st: _Static, row0, col0, q_seg_q, kv_seg_k):
  """Boolean [bq, bk] for the query rows row0.. and key cols col0.. of one block pair."""
  rows_qk = row0 + jax.lax.broadcasted_iota(jnp.int32, (st.bq, st.bk), 0)
  cols_qk = col0 + jax.lax.broadcasted_iota(jnp.int32, (st.bq, st.bk), 1)
  mask_qk = (q_seg_q[:, None] == kv_seg_k[None, :]) & (rows_qk < st.T) & (cols_qk < st.S)
  if st.causal:
    mask_qk &= cols_qk <= rows_qk
  if st.window is not None:
    mask_qk &= rows_qk - cols_qk <= st.window
    if not st.causal:
      mask_qk &= cols_qk - rows_qk <= st.window
  return mask_qk


def _kv_block_range(st: _Static, row0, n_kv_blocks):
  """Key blocks [lo, hi) that can hold a visible key for query rows row0 .. row0+bq-1."""
  last_row = row0 + st.bq - 1
  lo, hi = 0, n_kv_blocks
  if st.causal:
    hi = jnp.minimum(hi, last_row // st.bk + 1)
  elif st.window is not None:
    hi = jnp.minimum(hi, (last_row + st.window) // st.bk + 1)
  if st.window is not None:
    lo = jnp.maximum(row0 - st.window, 0) // st.bk
  return lo, hi


def _q_block_range(st: _Static, col0, n_q_blocks):
  """Query blocks [lo, hi) that can see a key among cols col0 .. col0+bk-1."""
  last_col = col0 + st.bk - 1
  lo, hi = 0, n_q_blocks
  if st.causal:
    lo = col0 // st.bq
  elif st.window is not None:
    lo = jnp.maximum(col0 - st.window, 0) // st.bq
  if st.window is not None:
    hi = jnp.minimum(hi, (last_col + st.window) // st.bq + 1)
  return lo, hi


def _dot_f32(a, b, contract):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------
# Kernels. Refs arrive with batch and head squeezed out by the BlockSpecs.

def _fwd_kernel(q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, st: _Static):
  row0 = pl.program_id(2) * st.bq
  q_qh = q_ref[...]
  q_seg_q = q_seg_ref[...]
  H = q_qh.shape[-1]

  def body(j, carry):
    m_q, l_q, acc_qh = carry
    col0 = j * st.bk
    k_kh = k_ref[pl.ds(col0, st.bk), :]
    v_kh = v_ref[pl.ds(col0, st.bk), :]
    s_qk, _ = _logits(st, q_qh, k_kh)
    mask_qk = _mask(st, row0, col0, q_seg_q, kv_seg_ref[pl.ds(col0, st.bk)])
    s_qk = jnp.where(mask_qk, s_qk, -jnp.inf)
    m_new_q = jnp.maximum(m_q, jnp.max(s_qk, axis=1))
    # While a row has seen no visible key its max is -inf; shifting by 0
    # instead keeps exp(-inf - (-inf)) = NaN out of p and alpha.
    m_safe_q = jnp.where(m_new_q == -jnp.inf, 0.0, m_new_q)
    alpha_q = jnp.exp(m_q - m_safe_q)
    p_qk = jnp.exp(s_qk - m_safe_q[:, None])
    l_q = alpha_q * l_q + jnp.sum(p_qk, axis=1)
    # p in the input dtype for the second matmul, as FlashAttention-2 does.
    acc_qh = alpha_q[:, None] * acc_qh + _dot_f32(p_qk.astype(v_kh.dtype), v_kh, ((1,), (0,)))
    return m_new_q, l_q, acc_qh

  lo, hi = _kv_block_range(st, row0, k_ref.shape[0] // st.bk)
  init = (jnp.full((st.bq,), -jnp.inf, jnp.float32), jnp.zeros((st.bq,), jnp.float32),
          jnp.zeros((st.bq, H), jnp.float32))
  m_q, l_q, acc_qh = jax.lax.fori_loop(lo, hi, body, init)
  empty_q = l_q == 0.0
  l_safe_q = jnp.where(empty_q, 1.0, l_q)
  o_ref[...] = (acc_qh / l_safe_q[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty_q, jnp.inf, m_q + jnp.log(l_safe_q))


def _ds(st: _Static, p_qk, dp_qk, delta_q, t_qk):
  """dL/d(q.k) up to the softmax scale: softmax backward, then the cap's tanh'."""
  ds_qk = p_qk * (dp_qk - delta_q[:, None])
  if t_qk is not None:
    ds_qk = ds_qk * (1.0 - t_qk * t_qk)
  return ds_qk


def _dq_kernel(q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
               *, st: _Static):
  row0 = pl.program_id(2) * st.bq
  q_qh, do_qh = q_ref[...], do_ref[...]
  lse_q, delta_q, q_seg_q = lse_ref[...], delta_ref[...], q_seg_ref[...]

  def body(j, dq_qh):
    col0 = j * st.bk
    k_kh = k_ref[pl.ds(col0, st.bk), :]
    v_kh = v_ref[pl.ds(col0, st.bk), :]
    s_qk, t_qk = _logits(st, q_qh, k_kh)
    mask_qk = _mask(st, row0, col0, q_seg_q, kv_seg_ref[pl.ds(col0, st.bk)])
    p_qk = jnp.exp(jnp.where(mask_qk, s_qk, -jnp.inf) - lse_q[:, None])
    dp_qk = _dot_f32(do_qh, v_kh, ((1,), (1,)))
    ds_qk = _ds(st, p_qk, dp_qk, delta_q, t_qk)
    return dq_qh + _dot_f32(ds_qk.astype(k_kh.dtype), k_kh, ((1,), (0,)))

  lo, hi = _kv_block_range(st, row0, k_ref.shape[0] // st.bk)
  dq_qh = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q_qh.shape, jnp.float32))
  dq_ref[...] = (dq_qh * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, *, st: _Static):
  col0 = pl.program_id(2) * st.bk
  k_kh, v_kh, kv_seg_k = k_ref[...], v_ref[...], kv_seg_ref[...]
  G = q_ref.shape[0]  # query heads sharing this kv head

  def body(step, carry):
    dk_kh, dv_kh = carry
    g, i = step // n_i, lo + step % n_i
    row0 = i * st.bq
    rows = pl.ds(row0, st.bq)
    q_qh, do_qh = q_ref[g, rows, :], do_ref[g, rows, :]
    lse_q, delta_q = lse_ref[g, rows], delta_ref[g, rows]
    s_qk, t_qk = _logits(st, q_qh, k_kh)
    mask_qk = _mask(st, row0, col0, q_seg_ref[rows], kv_seg_k)
    p_qk = jnp.exp(jnp.where(mask_qk, s_qk, -jnp.inf) - lse_q[:, None])
    dv_kh = dv_kh + _dot_f32(p_qk.astype(do_qh.dtype), do_qh, ((0,), (0,)))
    dp_qk = _dot_f32(do_qh, v_kh, ((1,), (1,)))
    ds_qk = _ds(st, p_qk, dp_qk, delta_q, t_qk)
    dk_kh = dk_kh + _dot_f32(ds_qk.astype(q_qh.dtype), q_qh, ((0,), (0,)))
    return dk_kh, dv_kh

  lo, hi = _q_block_range(st, col0, q_ref.shape[1] // st.bq)
  n_i = jnp.maximum(hi - lo, 0)
  # One flat loop over (head in group, query block): a single dynamic bound.
  zeros_kh = jnp.zeros(k_kh.shape, jnp.float32)
  dk_kh, dv_kh = jax.lax.fori_loop(0, G * n_i, body, (zeros_kh, zeros_kh))
  dk_ref[...] = (dk_kh * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_kh.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------
# pallas_call wrappers, on the padded [B, N, T, H] layout.

def _compiler_params(st: _Static):
  if st.interpret:
    return None
  backend = jax.default_backend()
  if backend == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
  if backend == "gpu":
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=4 if st.bq * st.bk <= 64 * 64 else 8, num_stages=2)
  return None


def _pallas(st: _Static, kernel, grid, in_specs, out_specs, out_shape, name):
  return pl.pallas_call(functools.partial(kernel, st=st), grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, interpret=st.interpret,
                        compiler_params=_compiler_params(st), name=name)


def _fwd_call(st: _Static, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs):
  B, N, Tp, H = q_bnth.shape
  K, Sp = k_bksh.shape[1], k_bksh.shape[2]
  G = N // K
  q_spec = pl.BlockSpec((None, None, st.bq, H), lambda b, n, i: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, Sp, H), lambda b, n, i: (b, n // G, 0, 0))
  row_spec = pl.BlockSpec((None, None, st.bq), lambda b, n, i: (b, n, i))
  return _pallas(
      st, _fwd_kernel, (B, N, Tp // st.bq),
      in_specs=[pl.BlockSpec((None, st.bq), lambda b, n, i: (b, i)),
                pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
                q_spec, kv_spec, kv_spec],
      out_specs=[q_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct(q_bnth.shape, q_bnth.dtype),
                 jax.ShapeDtypeStruct((B, N, Tp), jnp.float32)],
      name="flash_attention_fwd")(q_seg_bt, kv_seg_bs, q_bnth, k_bksh, v_bksh)


def _bwd_call(st: _Static, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt, do_bnth,
              dlse_bnt=None):
  B, N, Tp, H = q_bnth.shape
  K, Sp = k_bksh.shape[1], k_bksh.shape[2]
  G = N // K
  # delta_i = sum_h dO_ih O_ih: the softmax-backward row term, cheap in XLA.
  delta_bnt = jnp.einsum("bnth,bnth->bnt", o_bnth.astype(jnp.float32),
                         do_bnth.astype(jnp.float32))
  if dlse_bnt is not None:
    # d lse_i / d s_ij = P_ij, so an lse cotangent g adds P * g to dS = P * (dP - delta):
    # dS = P * (dP - (delta - g)), the same kernels with delta shifted. Rows with no
    # visible key (stored lse +inf) have P = 0; zeroing g there keeps a non-finite
    # cotangent (e.g. from exp(lse - lse) downstream) from turning 0 * g into NaN.
    delta_bnt = delta_bnt - jnp.where(jnp.isfinite(lse_bnt), dlse_bnt, 0.0)

  q_spec = pl.BlockSpec((None, None, st.bq, H), lambda b, n, i: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, Sp, H), lambda b, n, i: (b, n // G, 0, 0))
  row_spec = pl.BlockSpec((None, None, st.bq), lambda b, n, i: (b, n, i))
  dq_bnth = _pallas(
      st, _dq_kernel, (B, N, Tp // st.bq),
      in_specs=[pl.BlockSpec((None, st.bq), lambda b, n, i: (b, i)),
                pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
                q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec],
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q_bnth.shape, q_bnth.dtype),
      name="flash_attention_dq")(q_seg_bt, kv_seg_bs, q_bnth, k_bksh, v_bksh, do_bnth,
                                 lse_bnt, delta_bnt)

  # Block n of size G along the head axis holds exactly the query heads of kv head n.
  group_spec = pl.BlockSpec((None, G, Tp, H), lambda b, n, j: (b, n, 0, 0))
  group_row_spec = pl.BlockSpec((None, G, Tp), lambda b, n, j: (b, n, 0))
  kblock_spec = pl.BlockSpec((None, None, st.bk, H), lambda b, n, j: (b, n, j, 0))
  dk_bksh, dv_bksh = _pallas(
      st, _dkv_kernel, (B, K, Sp // st.bk),
      in_specs=[pl.BlockSpec((None, Tp), lambda b, n, j: (b, 0)),
                pl.BlockSpec((None, st.bk), lambda b, n, j: (b, j)),
                group_spec, kblock_spec, kblock_spec, group_spec, group_row_spec, group_row_spec],
      out_specs=[kblock_spec, kblock_spec],
      out_shape=[jax.ShapeDtypeStruct(k_bksh.shape, k_bksh.dtype),
                 jax.ShapeDtypeStruct(v_bksh.shape, v_bksh.dtype)],
      name="flash_attention_dkv")(q_seg_bt, kv_seg_bs, q_bnth, k_bksh, v_bksh, do_bnth,
                                  lse_bnt, delta_bnt)
  return dq_bnth, dk_bksh, dv_bksh


# ---------------------------------------------------------------------------
# custom_vjp on the padded, transposed layout.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs):
  return _fwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs)[0]


def _flash_fwd(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs):
  o_bnth, lse_bnt = _fwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs)
  return o_bnth, (q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt)


def _flash_bwd(st, res, do_bnth):
  q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt = res
  dq, dk, dv = _bwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt, do_bnth)
  return dq, dk, dv, None, None  # segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_lse(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs):
  """(out, lse) with lse as the kernel stores it (+inf on rows with no visible key)."""
  return tuple(_fwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs))


def _flash_lse_fwd(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs):
  o_bnth, lse_bnt = _fwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs)
  return (o_bnth, lse_bnt), (q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt)


def _flash_lse_bwd(st, res, cotangents):
  do_bnth, dlse_bnt = cotangents
  q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt = res
  dq, dk, dv = _bwd_call(st, q_bnth, k_bksh, v_bksh, q_seg_bt, kv_seg_bs, o_bnth, lse_bnt,
                         do_bnth, dlse_bnt)
  return dq, dk, dv, None, None


_flash_lse.defvjp(_flash_lse_fwd, _flash_lse_bwd)


def _prepare(q, k, v, segment_ids, causal, window, softmax_scale, logits_soft_cap, block_q,
             block_k, interpret):
  """Checks the arguments; returns (static, kernel-layout q, k, v, q_seg, kv_seg)."""
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  if k.shape != (B, S, K, H) or v.shape != k.shape:
    raise ValueError(f"k {k.shape} and v {v.shape} must both be [B, S, K, H] with q {q.shape}")
  if N % K:
    raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
  if window is not None and window < 0:
    raise ValueError(f"window={window} must be >= 0")
  if logits_soft_cap is not None and logits_soft_cap <= 0:
    raise ValueError(f"logits_soft_cap={logits_soft_cap} must be positive")
  q_seg_bt, kv_seg_bs = split_segment_ids(segment_ids, B, T, S)
  bq, bk = _block_size(block_q, T), _block_size(block_k, S)
  Tp, Sp = _round_up(T, bq), _round_up(S, bk)
  st = _Static(causal=bool(causal), window=None if window is None else int(window),
               scale=float(H ** -0.5 if softmax_scale is None else softmax_scale),
               soft_cap=None if logits_soft_cap is None else float(logits_soft_cap),
               bq=bq, bk=bk, T=T, S=S, interpret=bool(interpret))

  def to_kernel_layout(x_blnh, Lp):  # [B, L, heads, H] -> [B, heads, Lp, H]
    x_bnlh = jnp.swapaxes(x_blnh, 1, 2)
    return jnp.pad(x_bnlh, ((0, 0), (0, 0), (0, Lp - x_bnlh.shape[2]), (0, 0)))

  return (st, to_kernel_layout(q, Tp), to_kernel_layout(k, Sp), to_kernel_layout(v, Sp),
          jnp.pad(q_seg_bt, ((0, 0), (0, Tp - T))), jnp.pad(kv_seg_bs, ((0, 0), (0, Sp - S))))


def flash_attention(q, k, v, *, segment_ids=None, causal=True, window=None, softmax_scale=None,
                    logits_soft_cap=None, block_q=128, block_k=128, interpret=False):
  """Memory-efficient exact attention; see the module docstring for every convention.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H] with K dividing N. float32 or bfloat16.
    segment_ids: None, int [B, T] (self-attention, T == S), or a pair
      (q_segment_ids [B, T], kv_segment_ids [B, S]).
    causal: key j visible to query i only if j <= i.
    window: None or int w >= 0: query i sees keys i-w .. i.
    softmax_scale: defaults to 1 / sqrt(H).
    logits_soft_cap: None or c > 0: logits become c * tanh(s / c).
    block_q, block_k: tile sizes (shrunk for short sequences).
    interpret: run the Pallas interpreter (CPU tests).
  Returns:
    [B, T, N, H] in q's dtype; differentiable in q, k and v.
  """
  st, *args = _prepare(q, k, v, segment_ids, causal, window, softmax_scale, logits_soft_cap,
                       block_q, block_k, interpret)
  o_bnth = _flash(st, *args)
  return jnp.swapaxes(o_bnth[:, :, :q.shape[1]], 1, 2)  # [B, T, N, H]


def flash_attention_with_lse(q, k, v, *, segment_ids=None, causal=True, window=None,
                             softmax_scale=None, logits_soft_cap=None, block_q=128, block_k=128,
                             interpret=False):
  """flash_attention that also returns each row's log-sum-exp, differentiable in both.

  Same arguments and conventions as `flash_attention`. Returns (out, lse):
  out [B, T, N, H] in q's dtype, lse [B, T, N] float32, the natural log of the
  row's softmax denominator, lse_i = log sum_j exp(s_ij) over the visible keys
  j with s the scaled (soft-capped) logits, -inf on a row with no visible key
  (whose out is 0). Blocks attended separately merge exactly with it
  (out = sum_b exp(lse_b - lse) out_b, lse = logsumexp_b lse_b): ring attention
  uses this. The VJP takes cotangents for both outputs (module docstring:
  the backward's delta becomes delta - d lse).
  """
  st, *args = _prepare(q, k, v, segment_ids, causal, window, softmax_scale, logits_soft_cap,
                       block_q, block_k, interpret)
  o_bnth, lse_bnt = _flash_lse(st, *args)
  T = q.shape[1]
  # The kernel stores +inf on empty rows (so its backward recomputes p = 0); the
  # caller gets the true log of an empty sum.
  lse_btn = jnp.swapaxes(lse_bnt[:, :, :T], 1, 2)
  return jnp.swapaxes(o_bnth[:, :, :T], 1, 2), jnp.where(lse_btn == jnp.inf, -jnp.inf, lse_btn)
