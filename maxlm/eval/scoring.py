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
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

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
                        truncate: bool = False, with_ranks: bool = True,
                        progress=None, stats: dict | None = None) -> list[Score]:
  """Scores (context, continuation) id pairs; results in the order of `requests`.

  The model sees context + continuation[:-1] (at most `max_len` tokens). A
  longer request raises, or with `truncate` loses context from the left (as
  lm-eval does). The context must hold at least one token (e.g. BOS).
  `with_ranks=False` skips ranks and greedy (None in the Scores): a sum of
  log-probs needs neither.
  Batches are dispatched ahead of the host: batch k is read back only after
  batch k + _IN_FLIGHT is dispatched, so the device runs while the host builds
  the next rows, and `progress` (`update(n=rows)`, e.g. a maxlm.monitor
  Progress) counts requests whose scores are really back.

  Multi-host: when `params` span several processes (a global array, as in
  training), every process must enter every jitted call, and a process that
  ran all requests would only repeat the others' work. Each call then takes
  `batch_size` rows per process: the sorted requests are cut into global
  batches of batch_size x process_count rows, sharded over the mesh's batch
  axes, so each process's devices run their contiguous slice (its share);
  every process runs the same calls (same count, same padded shapes), because
  every process holds the same request list (lm-eval builds it identically on
  each). The [B, T] results are all-gathered, so every process returns all
  Scores in the original order. `stats` (a dict) accumulates `rows` (real
  requests this process's devices ran), `calls` and `padded_rows`.
  """
  cfg = ModelConfig.from_any(model_config)
  rows = _rows(requests, max_len, truncate)
  # Longest first: the first batch shows at once whether memory suffices.
  rows.sort(key=lambda r: -len(r[1]))
  place = _Placement.of(params)
  group, unit = batch_size, 8
  if place is not None:
    # batch_size rows per process, rounded to what the batch axes divide.
    unit = math.lcm(8, place.n_shards)
    group = -(-batch_size * jax.process_count() // place.n_shards) * place.n_shards
  out: list[Score | None] = [None] * len(rows)
  pending = []
  for start in range(0, len(rows), group):
    chunk = rows[start:start + group]
    longest = max(len(ids) - 1 for _, ids, _ in chunk)
    T = bucket_length(longest)
    if max_len is not None:
      T = min(T, max(max_len, longest))
    # Full batches share one batch size; a partial last batch (the shortest rows)
    # rounds up to a multiple of 8 rather than running up to batch_size - 1 empty
    # rows: one more shape to compile, a smaller forward every call.
    B = group if len(chunk) == group else min(group, -(-len(chunk) // unit) * unit)
    inputs = np.zeros((B, T), np.int32)
    targets = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    for b, (_, ids, _) in enumerate(chunk):
      n = len(ids) - 1
      inputs[b, :n], targets[b, :n], seg[b, :n] = ids[:-1], ids[1:], 1
    if place is None:
      local = len(chunk)
    else:
      local = place.local_rows(B, len(chunk))
      inputs, targets, seg = (place.put(a) for a in (inputs, targets, seg))
    if stats is not None:
      stats["rows"] = stats.get("rows", 0) + local
      stats["calls"] = stats.get("calls", 0) + 1
      stats["padded_rows"] = stats.get("padded_rows", 0) + B
    pending.append((chunk, _token_stats(cfg, with_ranks, params, inputs, targets, seg)))
    if len(pending) > _IN_FLIGHT:
      _collect(*pending.pop(0), out, place, progress)
  for chunk, stats_bt in pending:
    _collect(chunk, stats_bt, out, place, progress)
  return out


_IN_FLIGHT = 2  # batches dispatched ahead of the one being read back


def _collect(chunk, stats_bt, out, place, progress) -> None:
  """Reads one batch's [B, T] log-probs (and ranks) back into per-request Scores."""
  if place is None:
    logp, rank = jax.device_get(stats_bt)
  else:  # every process gets every row (an all-gather), so all return the full list
    logp, rank = (None if a is None else multihost_utils.process_allgather(a, tiled=True)
                  for a in stats_bt)
  for b, (i, ids, c) in enumerate(chunk):
    n = len(ids) - 1
    lp = np.asarray(logp[b, n - c:n], np.float64)
    if rank is None:
      out[i] = Score(lp, None, None)
    else:
      rk = np.asarray(rank[b, n - c:n])
      out[i] = Score(lp, rk, bool(np.all(rk == 1)))
  if progress is not None:
    progress.update(n=len(chunk))


@dataclasses.dataclass(frozen=True)
class _Placement:
  """Where a global batch goes when the params span processes (None: one process's params)."""
  sharding: NamedSharding  # [B, T]: B over the mesh's batch axes, T whole

  @classmethod
  def of(cls, params) -> "_Placement | None":
    leaves = [x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
    spanning = [x for x in leaves if not x.is_fully_addressable]
    if not spanning:  # params every process holds whole: each could score alone
      return None
    if not isinstance(spanning[0].sharding, NamedSharding):
      raise ValueError(f"params span processes with a {type(spanning[0].sharding).__name__};"
                       " multi-host scoring places its batches on the params' NamedSharding mesh")
    mesh = spanning[0].sharding.mesh
    # The axes that split the batch in training (maxlm/sharding/mesh.py: data, fsdp); tensor
    # and context replicate the rows (their devices cooperate on the same rows).
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    return cls(NamedSharding(mesh, P(axes if axes else None)))

  @property
  def n_shards(self) -> int:
    axes = self.sharding.spec[0] or ()
    axes = (axes,) if isinstance(axes, str) else axes  # P normalises a 1-tuple to its name
    return math.prod(self.sharding.mesh.shape[a] for a in axes)

  def put(self, a_bt: np.ndarray) -> jax.Array:
    # Every process holds the whole batch; each gives its devices only their slice.
    return jax.make_array_from_callback(a_bt.shape, self.sharding, lambda idx: a_bt[idx])

  def local_rows(self, B: int, n_real: int) -> int:
    """How many of the first n_real rows of a [B, ...] batch this process's devices hold."""
    rows = set()
    for idx in self.sharding.addressable_devices_indices_map((B, 1)).values():
      rows.update(range(*idx[0].indices(B)))
    return sum(1 for r in rows if r < n_real)


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
