"""Held-out loss, perplexity and bits per byte, per domain.

Bits per byte (BPB) = total nats / (ln 2 * UTF-8 bytes of the text scored).
Unlike per-token loss it does not depend on the tokenizer, so runs with
different vocabularies compare (Gao et al. 2020, The Pile, sec. 4). Special
tokens (BOS, EOS, padding) have no bytes: their nats count, their bytes do not.

Two ways in:
  * during training, held-out *token* batches (maxlm.data.make_eval_batches)
    give nats per domain; their bytes come from a per-token byte-length table
    of the tokenizer (`token_byte_lengths`), summed over scored targets
    (`heldout_bytes`), once per run, on the host;
  * offline, `score_texts` scores raw strings and counts their bytes directly.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from maxlm.eval import progress as progress_lib
from maxlm.eval import scoring


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
  return total_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


def token_byte_lengths(tokenizer, vocab_size: int | None = None) -> np.ndarray:
  """UTF-8 bytes each token id stands for: [V] int64 (0 for control tokens).

  Accepts a tokenizer path (maxlm.data.tokenizer.load) or any object with a
  `token_bytes()` method (maxlm.data.tokenizer.Tokenizer, test tokenizers).
  """
  if isinstance(tokenizer, str):
    from maxlm.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    tokenizer = tok_lib.load(tokenizer)
  table = np.asarray(tokenizer.token_bytes(), np.int64)
  if vocab_size is not None and vocab_size > len(table):
    table = np.pad(table, (0, vocab_size - len(table)))  # vocab padding ids: no text
  return table


def heldout_bytes(eval_batches: Mapping[str, Sequence[dict]], byte_table: np.ndarray) -> dict:
  """UTF-8 bytes behind the scored targets (loss_mask 1) of each domain's held-out batches."""
  return {dom: int(sum(np.sum(byte_table[b["targets"]] * (b["loss_mask"] > 0)) for b in batches))
          for dom, batches in eval_batches.items()}


def heldout_metrics(nats: Mapping[str, float], tokens: Mapping[str, float],
                    n_bytes: Mapping[str, int] | None = None, prefix: str = "eval") -> dict:
  """{prefix/dom/loss, /ppl, /bpb} from per-domain sums of nats, tokens and bytes."""
  out = {}
  for dom, total in nats.items():
    if not tokens.get(dom):
      continue
    loss = total / tokens[dom]
    out[f"{prefix}/{dom}/loss"] = loss
    out[f"{prefix}/{dom}/ppl"] = math.exp(min(loss, 700.0))
    if n_bytes and n_bytes.get(dom):
      out[f"{prefix}/{dom}/bpb"] = bits_per_byte(total, n_bytes[dom])
  return out


def score_texts(model_config, params, tokenizer, texts: Sequence[str], *, max_len: int,
                batch_size: int = 8, progress: bool = False) -> dict:
  """Nats, tokens, bytes, loss, perplexity and BPB of raw texts.

  Each text is scored from BOS to its last token in non-overlapping windows
  of `max_len` (scoring.rolling_windows); its bytes are its UTF-8 length.
  `progress`: '[k/n] windows; elapsed, ETA' lines on stderr (quiet by default: a library call).
  """
  requests = []
  for t in texts:
    ids = tokenizer.encode(t)
    if ids:
      prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
      requests.extend(scoring.rolling_windows(ids, max_len, prefix))
  bar = progress_lib.maybe(progress, len(requests), desc="perplexity", unit="windows")
  scores = scoring.score_continuations(model_config, params, requests, batch_size=batch_size,
                                       max_len=max_len, progress=bar)
  nats = -sum(s.total for s in scores)
  n_tokens = sum(len(s.logprobs) for s in scores)
  n_bytes = sum(len(t.encode("utf-8")) for t in texts)
  loss = nats / max(n_tokens, 1)
  return dict(nats=nats, tokens=n_tokens, bytes=n_bytes, loss=loss,
              ppl=math.exp(min(loss, 700.0)), bpb=bits_per_byte(nats, n_bytes))
