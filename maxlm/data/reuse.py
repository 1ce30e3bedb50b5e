"""This host's rows of each global batch, and per-document reuse counts.

HostBatches is the last stage of the training iterator. It receives the
global batch (identical on every host, see pipeline.py), counts which
documents start in it, keeps rows [p*b, (p+1)*b) and converts them to the
driver's dict. Counting after the prefetch thread means the counts cover
exactly the batches the loop consumed.

Counts are a compact int32 array per source over its document-id range
(4 bytes a document: 6.4 MB for 1.6M documents); they are not in the JSON
iterator state (which stays O(sources)) but saved beside it as
doc_counts.npz by maxlm/data/state.py. Because every host sees every row, the
counts are global and equal on every host.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import grain
import numpy as np

from maxlm.data import packing

STATE_KEY = "maxlm_hosts"  # marks this stage's state: topology-independent
COUNTS_FILE = "doc_counts.npz"


class HostBatches(grain.IterDataset):
  """Global batches of packed rows -> this host's finalized rows + reuse counts."""

  def __init__(self, parent: grain.IterDataset, ranges: Sequence[tuple[str, int, int]], *,
               process_index: int, process_count: int, keep_doc_ids: bool = False):
    super().__init__(parent)
    ranges = sorted(ranges, key=lambda r: r[1])
    for (a, _, hi), (b, lo, _) in zip(ranges[:-1], ranges[1:]):
      if lo < hi:
        raise ValueError(f"data sources {a!r} and {b!r} have overlapping document ids")
    self._ranges = tuple(ranges)
    self._p, self._n = process_index, process_count
    self._keep = keep_doc_ids

  def __iter__(self):
    return _HostBatchesIterator(self._parent.__iter__(), self._ranges, self._p, self._n,
                                self._keep)

  def __str__(self):
    return f"HostBatches(process {self._p} of {self._n})"


class _HostBatchesIterator(grain.DatasetIterator):

  def __init__(self, parent, ranges, process_index, process_count, keep_doc_ids):
    super().__init__(parent)
    self._ranges = ranges
    self._los = np.array([lo for _, lo, _ in ranges], np.int64)
    self._p, self._n = process_index, process_count
    self._keep = keep_doc_ids
    self._counts = [np.zeros(hi - lo, np.int32) for _, lo, hi in ranges]

  def __next__(self):
    batch = next(self._parent)
    seg = batch["inputs_segment_ids"]
    if len(seg) % self._n:
      raise ValueError(f"global batch of {len(seg)} rows is not divisible by "
                       f"{self._n} processes")
    # A document is served when its first piece (offset 0) is in the batch.
    ids = batch["doc_ids"][(batch["doc_offsets"] == 0) & (seg > 0)].astype(np.int64)
    k = np.searchsorted(self._los, ids, side="right") - 1
    for j, (_, lo, hi) in enumerate(self._ranges):
      sel = ids[(k == j) & (ids < hi)]
      np.add.at(self._counts[j], sel - lo, 1)
    b = len(seg) // self._n
    mine = {key: v[self._p * b:(self._p + 1) * b] for key, v in batch.items()}
    return packing.finalize(mine, self._keep)

  def doc_counts(self) -> dict[str, tuple[int, np.ndarray]]:
    """{source: (lowest doc id, counts over the source's id range)}."""
    return {name: (lo, c) for (name, lo, _), c in zip(self._ranges, self._counts)}

  def save_counts(self, directory: str) -> None:
    tmp = os.path.join(directory, COUNTS_FILE + ".tmp.npz")
    np.savez_compressed(tmp, **{name: c for (name, _, _), c in zip(self._ranges, self._counts)})
    os.replace(tmp, os.path.join(directory, COUNTS_FILE))

  def load_counts(self, directory: str) -> None:
    path = os.path.join(directory, COUNTS_FILE)
    if not os.path.exists(path):
      logging.warning("data: %s has no %s; per-document reuse counts restart at 0",
                      directory, COUNTS_FILE)
      return
    with np.load(path) as saved:
      for j, (name, lo, hi) in enumerate(self._ranges):
        if name in saved and len(saved[name]) == hi - lo:
          self._counts[j] = saved[name].astype(np.int32)
        else:
          logging.warning("data: source %r is new or changed size on resume; its "
                          "per-document reuse counts restart at 0", name)

  def get_state(self):
    return {"parent": self._parent.get_state(),
            STATE_KEY: {"topology_independent": True, "process_count": self._n}}

  def set_state(self, state):
    self._parent.set_state(state["parent"])

  def __str__(self):
    return "HostBatchesIterator"
