"""Batched log-prob scoring of continuations: the kernel of probes, perplexity and lm-eval.

A request is (context ids, continuation ids); its score is the log-prob of
every continuation token given everything before it, with each token's rank
(1 = the model's top choice) and whether greedy decoding would produce the
whole continuation. Requests are sorted by length, right-padded to a few
bucket lengths (four per octave) (so few shapes compile) and run in batches through the jitted
forward; log-softmax, gather and ranks happen on the device, so only [B, T]
arrays come back, never [B, T, V] logits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.model import ModelConfig, forward


@dataclasses.dataclass
class Score:
  logprobs: np.ndarray  # [C] float64: log p(token_i | everything before)
  ranks: np.ndarray | None  # [C] int: 1 + vocab entries scored strictly higher (None: not asked)
  greedy: bool | None  # every continuation token is the argmax (None: ranks not asked)

  @property
  def total(self) -> float:
    return float(self.logprobs.sum())

  @property
  def mean(self) -> float:
    return float(self.logprobs.mean()) if len(self.logprobs) else 0.0


@functools.partial(jax.jit, static_argnums=(0, 1))
def _token_stats(cfg: ModelConfig, with_ranks: bool, params, inputs_bt, targets_bt,
                 segment_ids_bt):
  logits_btv = forward(cfg, params, inputs_bt, segment_ids_bt)
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  logp_bt = jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
  if not with_ranks:  # rolling perplexity: a [B, T, V] compare and reduction saved
    return logp_bt, None
  tgt_logit_bt1 = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)
  rank_bt = 1 + jnp.sum(logits_btv > tgt_logit_bt1, axis=-1)
  return logp_bt, rank_bt


def bucket_length(n: int, min_bucket: int = 32) -> int:
  """n rounded up to a quarter of its power of two (at least min_bucket).

  Four shapes per octave: a padded row wastes at most ~25% (powers of two
  wasted up to half, and lm-eval's hf model pads each batch to its longest
  row), while the number of compiled shapes stays logarithmic in the length.
  """
  if n <= min_bucket:
    return min_bucket
  step = max(min_bucket, 1 << max(0, (n - 1).bit_length() - 3))  # 2^floor(log2(n-1)) / 4
  return -(-n // step) * step


def score_continuations(model_config, params, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                        *, batch_size: int = 8, max_len: int | None = None,
                        truncate: bool = False, with_ranks: bool = True) -> list[Score]:
  """Scores (context, continuation) id pairs; results in the order of `requests`.

  The model sees context + continuation[:-1] (at most `max_len` tokens). A
  longer request raises, or with `truncate` loses context from the left (as
  lm-eval does). The context must hold at least one token (e.g. BOS).
  `with_ranks=False` skips ranks and greedy (None in the Scores): a sum of
  log-probs needs neither.
  Every batch is dispatched before any result is read back: the device runs
  batch k+1 while the host builds batch k+2, with one host sync at the end.
  """
  cfg = ModelConfig.from_any(model_config)
  rows = _rows(requests, max_len, truncate)
  # Longest first: the first batch shows at once whether memory suffices.
  rows.sort(key=lambda r: -len(r[1]))
  pending = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    longest = max(len(ids) - 1 for _, ids, _ in chunk)
    T = bucket_length(longest)
    if max_len is not None:
      T = min(T, max(max_len, longest))
    # Full batches share one batch size; a partial last batch (the shortest rows)
    # rounds up to a multiple of 8 rather than running up to batch_size - 1 empty
    # rows: one more shape to compile, a smaller forward every call.
    B = batch_size if len(chunk) == batch_size else min(batch_size, -(-len(chunk) // 8) * 8)
    inputs = np.zeros((B, T), np.int32)
    targets = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    for b, (_, ids, _) in enumerate(chunk):
      n = len(ids) - 1
      inputs[b, :n], targets[b, :n], seg[b, :n] = ids[:-1], ids[1:], 1
    pending.append((chunk, _token_stats(cfg, with_ranks, params, inputs, targets, seg)))
  out: list[Score | None] = [None] * len(rows)
  for chunk, stats in pending:
    logp, rank = jax.device_get(stats)
    for b, (i, ids, c) in enumerate(chunk):
      n = len(ids) - 1
      lp = logp[b, n - c:n].astype(np.float64)
      if rank is None:
        out[i] = Score(lp, None, None)
      else:
        rk = rank[b, n - c:n]
        out[i] = Score(lp, rk, bool(np.all(rk == 1)))
  return out


def _rows(requests, max_len: int | None, truncate: bool) -> list[tuple[int, list, int]]:
  """(request index, ids to run, continuation length) per request, checked and truncated."""
  rows = []
  for i, (ctx, cont) in enumerate(requests):
    ctx, cont = list(ctx), list(cont)
    if not cont:
      raise ValueError(f"request {i}: the continuation is empty (nothing to score)")
    if not ctx:
      raise ValueError(f"request {i}: the context is empty; start it with BOS")
    ids = ctx + cont
    if max_len is not None and len(ids) - 1 > max_len:
      if not truncate:
        raise ValueError(f"request {i}: {len(ids) - 1} tokens exceed the context of {max_len}")
      if len(cont) > max_len:
        raise ValueError(f"request {i}: the continuation alone has {len(cont)} tokens, more than"
                         f" the context of {max_len}")
      ids = ids[-(max_len + 1):]
    rows.append((i, ids, len(cont)))
  return rows


def encode_pair(encode, context: str, continuation: str, prefix: Sequence[int]
                ) -> tuple[list[int], list[int]]:
  """(context ids, continuation ids) as lm-eval's `hf` model tokenizes a request.

  Trailing whitespace of the context moves into the continuation; then
  context + continuation is encoded as ONE string and the continuation is its
  tail after the context's ids. Encoding the continuation alone would differ
  for tokenizers whose pieces carry a leading-space marker (SentencePiece's
  dummy prefix, Metaspace): "cat" alone is "▁cat", but after "the" it is
  "cat" (mid-word) or "▁cat". `prefix` (BOS, or nothing) leads the
  context; an empty context is conditioned on prefix[0] alone, as lm-eval's
  `prefix_token_id`, unless the continuation already starts with that id.
  """
  prefix = list(prefix)
  if not context:
    cont = list(encode(continuation))
    if cont and prefix and cont[0] == prefix[0]:
      return cont[:1], cont[1:]
    return prefix[:1], cont
  n_space = len(context) - len(context.rstrip())
  if n_space:
    context, continuation = context[:-n_space], context[-n_space:] + continuation
  ctx = prefix + list(encode(context)) if context else list(prefix)
  whole = prefix + list(encode(context + continuation))
  return ctx, whole[len(ctx):]


def rolling_windows(ids: Sequence[int], max_len: int, prefix_id: int) -> list[tuple[list, list]]:
  """(context, continuation) windows that score every token of `ids` exactly once.

  The first window is conditioned on `prefix_id` (BOS); each later one on the
  tokens before it, as many as fit: one for a full window, more for a short
  last window, so every window fills max_len + 1 tokens and a long text costs
  len(ids) / max_len forwards. Tokens near a window start see less context
  than in one long pass; that is the usual price. These are exactly lm-eval's
  windows (utils.get_rolling_token_windows with context_len=1, made disjoint),
  so `loglikelihood_rolling` matches its hf model (tests/test_eval_lm_eval_hf.py).
  """
  ids = list(ids)
  out = []
  for start in range(0, len(ids), max_len):
    end = min(start + max_len, len(ids))
    # A later window's context ends at `start` and reaches back so the window
    # is max_len + 1 tokens long (start >= max_len, so the slice starts >= 0).
    ctx = [prefix_id] if start == 0 else ids[end - max_len - 1:start]
    out.append((ctx, ids[start:end]))
  return out
