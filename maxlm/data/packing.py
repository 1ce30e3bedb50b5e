"""Documents -> fixed-length rows with segment ids, positions and a loss mask.

Each document's tokens [<s>, t1, ..., tn, </s>] become one example with
inputs = tokens[:-1] and targets = tokens[1:] BEFORE packing, so every
(input, target) pair lies inside one document: a row never asks the model to
predict the first token of the next document from the previous one, and the
loss mask is simply "not padding". A document longer than a row is split into
row-sized pieces of (input, target) pairs; no token is lost at the cut and
positions restart at 0 in each piece (RoPE sees a fresh document).

A per-target mask travels with the tokens ('target_mask'): an instruction
record (maxlm.data.instruct) gives each token a response flag m, and target j
(token j+1, predicted at position j) is scored iff m[j+1] = 1, so the loss
falls on response tokens only. Plain text has m = 1 everywhere, and the loss
mask stays exactly "not padding".

Packing itself is Grain's: FirstFitPackIterDataset or ConcatThenSplitIterDataset.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

# Features carried per token through packing. 'doc_ids' (a global document
# index) and 'doc_offsets' (token index within the document) let reuse
# accounting and tests see which document, and which piece of it, each token
# is from; they are dropped from the driver's batches unless asked for.
# 'target_mask' (1 = the target is scored) becomes part of the batch's loss_mask.
FEATURES = ("inputs", "targets", "domain_ids", "doc_ids", "doc_offsets", "target_mask")
BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "domain_ids")


def to_example(tokens: np.ndarray, domain_id: int, doc_id: int,
               token_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """[t0..tn] -> inputs t0..t(n-1), targets t1..tn, per-token domain and doc.

  token_mask [n+1]: 1 where a token is to be learned (a response token); the
  target mask is token_mask[1:], since target j is token j+1. None = all.
  """
  tokens = np.asarray(tokens, np.int32)
  n = len(tokens) - 1
  if token_mask is None:
    target_mask = np.ones(n, np.int32)
  else:
    token_mask = np.asarray(token_mask, np.int32)
    if token_mask.shape != tokens.shape:
      raise ValueError(f"token_mask has shape {token_mask.shape}, tokens {tokens.shape}")
    target_mask = token_mask[1:]
  return dict(inputs=tokens[:-1], targets=tokens[1:],
              domain_ids=np.full(n, domain_id, np.int32),
              doc_ids=np.full(n, doc_id, np.int32),
              doc_offsets=np.arange(n, dtype=np.int32),
              target_mask=target_mask)


@dataclasses.dataclass(frozen=True)
class SplitLong(grain.experimental.FlatMapTransform):
  """Splits (or truncates) examples longer than a row into row-sized pieces.

  Grain's FirstFit packer rejects elements longer than the row, and Grain has
  no policy-driven split, hence this small FlatMap.
  """
  seq_len: int
  policy: str = "split"  # 'split' | 'truncate'
  max_fan_out: int = 1 << 20  # unused by the IterDataset flat map; required field

  def flat_map(self, ex):
    n = len(ex["inputs"])
    if n == 0:
      return []
    if n <= self.seq_len or self.policy == "truncate":
      return [{k: v[:self.seq_len] for k, v in ex.items()}]
    return [{k: v[i:i + self.seq_len] for k, v in ex.items()}
            for i in range(0, n, self.seq_len)]


def pack(ds: grain.IterDataset, *, packing: str, seq_len: int, num_bins: int,
         seed: int, long_doc_policy: str = "split",
         shuffle_bins: bool = True) -> grain.IterDataset:
  """Examples (FEATURES) -> rows with inputs_segment_ids / inputs_positions."""
  length = {k: seq_len for k in FEATURES}
  if packing == "first_fit":
    ds = grain.experimental.FlatMapIterDataset(ds, SplitLong(seq_len, long_doc_policy))
    # Non-input features are "meta": packed and padded alongside, without
    # their own segment ids and positions (they equal the inputs').
    return grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=length, num_packing_bins=num_bins, seed=seed,
        shuffle_bins=shuffle_bins, meta_features=FEATURES[1:])
  if packing == "concat_split":
    if long_doc_policy == "truncate":
      ds = grain.experimental.FlatMapIterDataset(ds, SplitLong(seq_len, "truncate"))
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=length)
  raise ValueError(f"data.packing={packing!r}: expected 'first_fit' or 'concat_split'")


def finalize(row: dict, keep_doc_ids: bool = False) -> dict[str, np.ndarray]:
  """A packed row (or batch of rows) in the driver's format.

  Padding has segment id 0; the loss mask is 'not padding' (every target
  already belongs to its input's document, see module docstring) and, for
  instruction records, 'a response target' (target_mask). Padding carries
  domain id 0, so readers must weight by loss_mask.
  """
  seg = row["inputs_segment_ids"].astype(np.int32)
  scored = seg > 0
  if "target_mask" in row:  # a row built without it (by hand) is all text
    scored &= row["target_mask"] > 0
  out = dict(inputs=row["inputs"].astype(np.int32),
             targets=row["targets"].astype(np.int32),
             segment_ids=seg,
             positions=row["inputs_positions"].astype(np.int32),
             loss_mask=scored.astype(np.float32),
             domain_ids=row["domain_ids"].astype(np.int32))
  if keep_doc_ids:
    out["doc_ids"] = np.where(seg > 0, row["doc_ids"], -1).astype(np.int32)
  return out
