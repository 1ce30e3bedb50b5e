"""Next-token cross entropy from hidden states, with the LM head applied in chunks.

The dense loss builds float32 logits [B, T, V] and XLA keeps them (and the
softmax, and their gradient) live across the backward pass: for the `1b`
preset (V = 128,256) at 8 x 2048 tokens per device that is 8.4 GB per copy,
more than the rest of the step. Here the LM head and the softmax statistics
are computed over `chunk` sequence positions at a time inside a `lax.scan`,
under a custom VJP whose backward pass recomputes each chunk's logits from
the saved hidden states and head weights (the blockwise cross entropy of
Levanter, MaxText's vocabulary tiling). Only [B, chunk, V] logits exist at a
time, in the forward and in the backward; the residuals are the inputs plus
one float32 log-normaliser per token.

Chunks run along T, every row in each chunk, so a batch sharded over
(data, fsdp) stays sharded the same way inside the scan; the vocab axis of the
chunk's logits keeps the logical axis 'vocab' (tensor-parallel heads work).

One primitive, `logit_stats(hidden, w, ids)`, returns per token the
log-normaliser log Z, the logits at K given ids (K = 1: the target) and max
|logit|. Cross entropy (log Z - logit[target]), PaLM's z-loss (log Z)^2 and a
top-k distillation KL (logit[ids] - log Z) are all functions of those, so
autodiff through them reaches the chunked backward. The dense path (chunk = 0)
computes the same statistics from full logits: the tests compare the two, and
both against optax.

`token_chunk_map(fn, consts, per_token, chunk=...)` is the same chunking for a
per-token function of any shape (distillation's student side: cross entropy
plus a KL to the teacher, computed from the student's and the teacher's hidden
chunks), with the backward recomputing each chunk under jax.checkpoint.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

_LOGITS_AXES = ("batch", "length", "vocab")


def _logits(x_bcd, w_dv):
  """float32 logits of a chunk, matmul inputs in the hidden's dtype (as the dense head)."""
  logits_bcv = jnp.einsum("bcd,dv->bcv", x_bcd, w_dv.astype(x_bcd.dtype),
                          preferred_element_type=jnp.float32)
  return nn.with_logical_constraint(logits_bcv, _LOGITS_AXES)


def head_logits(x_bcd, w_dv):
  """The LM head on hidden states [B, C, D] -> float32 logits [B, C, V], as the dense head."""
  return _logits(x_bcd, w_dv)


def _pick(logits_bcv, ids_bck):
  """logits at the ids [B, C, K]; K = 1 as a masked sum (no gather over a sharded vocab)."""
  if ids_bck.shape[-1] == 1:
    hit_bcv = ids_bck == jnp.arange(logits_bcv.shape[-1], dtype=ids_bck.dtype)
    return jnp.sum(jnp.where(hit_bcv, logits_bcv, 0.0), axis=-1, keepdims=True)
  return jnp.take_along_axis(logits_bcv, ids_bck, axis=-1)


def _stats(logits_bcv, ids_bck):
  lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
  return lse_bc, _pick(logits_bcv, ids_bck), jnp.max(jnp.abs(logits_bcv), axis=-1)


def _pick_transpose(g_bck, ids_bck, vocab: int):
  """d(picked)/d(logits) applied to g: g scattered to [B, C, V] at the ids."""
  if ids_bck.shape[-1] == 1:
    return jnp.where(ids_bck == jnp.arange(vocab, dtype=ids_bck.dtype), g_bck, 0.0)
  B, C, K = ids_bck.shape
  zeros_bcv = jnp.zeros((B, C, vocab), g_bck.dtype)
  b_idx = jnp.arange(B)[:, None, None]
  c_idx = jnp.arange(C)[None, :, None]
  return zeros_bcv.at[b_idx, c_idx, ids_bck].add(g_bck)


def _split(a_bt, chunk: int):
  """[B, T, ...] -> [T / chunk, B, chunk, ...]: the scan axis first, rows kept whole."""
  B, T = a_bt.shape[:2]
  return jnp.swapaxes(a_bt.reshape(B, T // chunk, chunk, *a_bt.shape[2:]), 0, 1)


def _merge(a_nbc):
  """[T / chunk, B, chunk, ...] -> [B, T, ...]."""
  a_bnc = jnp.swapaxes(a_nbc, 0, 1)
  return a_bnc.reshape(a_bnc.shape[0], -1, *a_bnc.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_stats(x_btd, w_dv, ids_btk, chunk):
  return _chunked_fwd(x_btd, w_dv, ids_btk, chunk)[0]


def _chunked_fwd(x_btd, w_dv, ids_btk, chunk):
  def body(_, xs):
    x_bcd, ids_bck = xs
    return None, _stats(_logits(x_bcd, w_dv), ids_bck)

  _, outs = jax.lax.scan(body, None, (_split(x_btd, chunk), _split(ids_btk, chunk)))
  lse_bt, picked_btk, max_abs_bt = (_merge(o) for o in outs)
  return (lse_bt, picked_btk, max_abs_bt), (x_btd, w_dv, ids_btk, lse_bt)


def _chunked_bwd(chunk, res, g):
  x_btd, w_dv, ids_btk, lse_bt = res
  g_lse_bt, g_picked_btk, _ = g  # max |logit| is a diagnostic: no gradient
  V = w_dv.shape[-1]

  def body(dw_dv, xs):
    x_bcd, ids_bck, lse_bc, g_lse_bc, g_pick_bck = xs
    logits_bcv = _logits(x_bcd, w_dv)  # recomputed: never saved across the scan
    p_bcv = jnp.exp(logits_bcv - lse_bc[..., None])  # d lse / d logits = softmax
    dlogits_bcv = g_lse_bc[..., None] * p_bcv + _pick_transpose(g_pick_bck, ids_bck, V)
    dlogits_bcv = nn.with_logical_constraint(dlogits_bcv.astype(x_bcd.dtype), _LOGITS_AXES)
    dx_bcd = jnp.einsum("bcv,dv->bcd", dlogits_bcv, w_dv.astype(x_bcd.dtype),
                        preferred_element_type=jnp.float32).astype(x_bcd.dtype)
    dw_dv = dw_dv + jnp.einsum("bcd,bcv->dv", x_bcd, dlogits_bcv,
                               preferred_element_type=jnp.float32)
    return dw_dv, dx_bcd

  xs = tuple(_split(a, chunk) for a in (x_btd, ids_btk, lse_bt, g_lse_bt, g_picked_btk))
  dw_dv, dx_nbcd = jax.lax.scan(body, jnp.zeros(w_dv.shape, jnp.float32), xs)
  return _merge(dx_nbcd), dw_dv.astype(w_dv.dtype), None


_chunked_stats.defvjp(_chunked_fwd, _chunked_bwd)


def logit_stats(hidden_btd, w_dv, ids_btk, *, chunk: int = 0):
  """Per-token statistics of logits = hidden @ w, float32, without materialising them.

  hidden_btd: final-normed hidden [B, T, D] (its dtype is the matmul's);
  w_dv: LM head [D, V]; ids_btk: int [B, T, K] token ids whose logits to return.
  Returns (lse_bt = log sum_v exp(logit), picked_btk = logits at ids_btk,
  max_abs_bt = max_v |logit| (no gradient)). chunk = 0: dense logits; chunk > 0:
  `chunk` positions at a time (T is padded up to a multiple; chunk > T is T).
  """
  if chunk <= 0:
    logits_btv = _logits(hidden_btd, w_dv)
    lse_bt, picked_btk, max_abs_bt = _stats(logits_btv, ids_btk)
    return lse_bt, picked_btk, jax.lax.stop_gradient(max_abs_bt)
  B, T = hidden_btd.shape[:2]
  chunk = min(chunk, T)
  pad = -T % chunk
  if pad:  # padded positions: zero hidden, id 0; sliced off, so they get no gradient
    hidden_btd = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
    ids_btk = jnp.pad(ids_btk, ((0, 0), (0, pad), (0, 0)))
  lse_bt, picked_btk, max_abs_bt = _chunked_stats(hidden_btd, w_dv, ids_btk, chunk)
  return lse_bt[:, :T], picked_btk[:, :T], jax.lax.stop_gradient(max_abs_bt[:, :T])


def token_chunk_map(fn, consts, per_token, *, chunk: int):
  """fn(consts, per_token) applied `chunk` positions of T at a time: a pytree of [B, T, ...].

  per_token: a pytree of [B, T, ...] arrays; fn(consts, chunk_pytree of [B, C, ...])
  returns a pytree of per-token values [B, C, ...] (e.g. a chunk's logits reduced
  to a loss per token). chunk = 0 (or >= T): fn on the whole of T, the dense path.
  T is padded up to a multiple of chunk with zeros (sliced off: no gradient).

  Each chunk's body runs under jax.checkpoint inside a lax.scan, so autodiff
  saves only the body's inputs (the hidden chunk; loop-invariant consts such as
  the head weights are hoisted out of the scan's residuals, not stacked per
  chunk) and the backward recomputes the chunk's [B, C, V] logits, as the custom
  VJP above does. A hand-written VJP is kept for cross entropy (its gradient,
  softmax minus one-hot, needs no second forward); for a general `fn` (a KL over
  the vocabulary or the teacher's top-k, AFM's argmax target) remat gives the
  same memory bound with the gradient derived by autodiff from the very formulas
  the dense path uses, instead of a second hand-derived copy per loss.
  """
  leaves = jax.tree.leaves(per_token)
  T = leaves[0].shape[1]
  if chunk <= 0 or chunk >= T:
    return fn(consts, per_token)
  pad = -T % chunk

  def split(a_bt):
    if pad:
      a_bt = jnp.pad(a_bt, [(0, 0), (0, pad)] + [(0, 0)] * (a_bt.ndim - 2))
    return _split(a_bt, chunk)

  body = jax.checkpoint(fn, prevent_cse=False)  # inside scan, CSE across chunks is not a risk
  _, out = jax.lax.scan(lambda carry, xs: (carry, body(consts, xs)), None,
                        jax.tree.map(split, per_token))
  return jax.tree.map(lambda o: _merge(o)[:, :T], out)


def cross_entropy_sums(hidden_btd, w_dv, targets_bt, loss_mask_bt, domain_ids_bt, *,
                       num_domains: int, z_loss: float = 0.0, chunk: int = 0):
  """(objective sum, aux sums) of next-token cross entropy over tokens with loss_mask 1.

  The objective is the cross entropy plus z_loss * (log Z)^2 per token (PaLM,
  Chowdhery et al. 2022, sec. 5) when z_loss > 0. aux: count, nll_sum,
  domain_loss_sum / domain_count [num_domains] (per-domain channel sums),
  max_abs_logit (a max over scored tokens, not a sum) and z_loss_sum when on.
  """
  mask_bt = loss_mask_bt.astype(jnp.float32)
  if chunk <= 0:
    # The dense path is exactly the loss maxlm trained with before chunking (optax's
    # cross entropy on full logits), bit for bit: dense runs and figures stay comparable.
    logits_btv = _logits(hidden_btd, w_dv)
    nll_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt) * mask_bt
    lse_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    max_abs_bt = jax.lax.stop_gradient(jnp.abs(logits_btv)).max(-1)
  else:
    lse_bt, picked_bt1, max_abs_bt = logit_stats(hidden_btd, w_dv, targets_bt[..., None],
                                                 chunk=chunk)
    nll_bt = (lse_bt - picked_bt1[..., 0]) * mask_bt
  domain_b_t = domain_ids_bt.reshape(-1)
  aux = dict(
      count=mask_bt.sum(),
      nll_sum=nll_bt.sum(),
      domain_loss_sum=jax.ops.segment_sum(nll_bt.reshape(-1), domain_b_t, num_domains),
      domain_count=jax.ops.segment_sum(mask_bt.reshape(-1), domain_b_t, num_domains),
      max_abs_logit=jnp.max(max_abs_bt * mask_bt),
  )
  total = aux["nll_sum"]
  if z_loss > 0:
    aux["z_loss_sum"] = (z_loss * jnp.square(lse_bt) * mask_bt).sum()
    total = total + aux["z_loss_sum"]
  return total, aux


def masked_nll(hidden_btd, w_dv, targets_bt, mask_bt, *, chunk: int = 0):
  """Per-token cross entropy [B, T] (0 where mask is 0): what evaluation and distillation use."""
  lse_bt, picked_bt1, _ = logit_stats(hidden_btd, w_dv, targets_bt[..., None], chunk=chunk)
  return (lse_bt - picked_bt1[..., 0]) * mask_bt.astype(jnp.float32)

