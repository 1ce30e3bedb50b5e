"""Curation progress across Beam's worker processes: records read / total, rate, ETA.

Beam's local runner (maxlm.data.beam) runs the pipeline in worker processes
and hands the launching process no counters until the pipeline is over. So
each worker keeps its counts in a small JSON file of a scratch directory
(rewritten at most once a second, atomically), and a thread of the launching
process sums them every few seconds and prints one line to stderr:

  curate: read 5,120/11,406 records (45%), 1,310 rec/s, 2,048 written; 4s elapsed, read ETA 5s

A record is one input unit of the readers: a JSONL line, a Parquet row, a
text or HTML file. The total is known when counting is cheap (plain local
JSONL: its non-blank lines; Parquet: the row count in its footer; text and
HTML: one per file); with any other input (compressed, WARC, remote) the line
gives the rate only. The ETA is for reading: dedup's groupings run after it.

A worker reports per file; a file it finishes counts as its known total (so
the final count equals the total exactly, whatever the bad lines were), and a
file read twice (a retried bundle) counts once. Only the local runner gets
this: a cluster's workers do not share the launcher's disk (its own UI shows
progress).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid

from maxlm.monitor.progress import duration


def count_records(path: str) -> int | None:
  """The records the reader will see in `path` when cheap to know, else None."""
  from maxlm.data import readers  # pylint: disable=g-import-not-at-top
  fmt = readers.format_of(path)
  local = "://" not in path and os.path.isfile(path)
  if fmt in ("text", "html"):
    return 1
  if not local:
    return None
  if fmt == "jsonl" and readers.is_plain_local(path):
    with open(path, "rb") as f:  # the reader skips blank lines without a record
      return sum(1 for line in f if line.strip())
  if fmt == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    try:
      return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # pylint: disable=broad-except  (unreadable: the reader reports it)
      return None
  return None


class Counter:
  """A worker's counts, in `directory`/<unique>.json: {"files": {index: records},
  "partial": records of the file being read, "written": documents written}."""

  def __init__(self, directory: str):
    self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.json")
    self._files, self._partial, self._written, self._last = {}, 0, 0, 0.0

  def record(self, n: int = 1) -> None:
    self._partial += n
    self._maybe_flush()

  def file_done(self, index: int) -> None:
    self._files[str(index)] = self._partial
    self._partial = 0
    self.flush()

  def written(self, n: int = 1) -> None:
    self._written += n
    self._maybe_flush()

  def _maybe_flush(self) -> None:
    if time.monotonic() - self._last >= 1.0:
      self.flush()

  def flush(self) -> None:
    self._last = time.monotonic()
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(dict(files=self._files, partial=self._partial, written=self._written), f)
    os.replace(tmp, self._path)


def totals(directory: str, known: list[int | None]) -> tuple[int, int]:
  """(records read, documents written) summed over the workers' files."""
  files, partial, written = {}, 0, 0
  for name in os.listdir(directory):
    if not name.endswith(".json"):
      continue
    try:
      with open(os.path.join(directory, name)) as f:
        c = json.load(f)
    except (OSError, ValueError):  # replaced while read: its next write counts
      continue
    files.update(c["files"])
    partial += c["partial"]
    written += c["written"]
  read = sum(known[int(i)] if known[int(i)] is not None else n for i, n in files.items())
  return read + partial, written


class Watcher:
  """Prints a progress line every `every` seconds while counts change, and a last one at stop()."""

  def __init__(self, directory: str, paths: list[str], *, every: float = 5.0, out=None,
               clock=time.monotonic):
    self._dir, self._paths, self._every = directory, list(paths), every
    self._out = out if out is not None else sys.stderr
    self._clock = clock
    self._known: list[int | None] = [None] * len(self._paths)
    self._total: int | None = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._t0 = clock()

  def start(self) -> "Watcher":
    self._thread.start()
    return self

  def _count_inputs(self) -> None:
    """Counted here, while the pipeline runs, so a large input delays nothing."""
    for i, p in enumerate(self._paths):
      if self._stop.is_set():
        return
      self._known[i] = count_records(p)
      if self._known[i] is None:
        return  # one unknown file: the total is unknown, the rate still shows
    self._total = sum(self._known)

  def _run(self) -> None:
    self._count_inputs()
    shown = None
    while not self._stop.wait(self._every):
      counts = totals(self._dir, self._known)
      if counts != shown and counts[0] > 0:
        print(self.line(*counts), file=self._out, flush=True)
        shown = counts

  def line(self, read: int, written: int, done: bool = False) -> str:
    elapsed = self._clock() - self._t0
    rate = read / elapsed if elapsed > 0 else 0.0
    if self._total:
      head = f"curate: read {read:,}/{self._total:,} records ({100 * read / self._total:.0f}%)"
    else:
      head = f"curate: read {read:,} records"
    if done:
      left = "done"
    elif self._total and rate > 0:
      left = f"read ETA {duration(max(0, self._total - read) / rate)}"
    else:
      left = "read ETA ?"
    return (f"{head}, {rate:,.0f} rec/s, {written:,} written; "
            f"{duration(elapsed)} elapsed, {left}")

  def halt(self) -> None:
    """Stops the thread, printing nothing more (idempotent)."""
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()

  def stop(self) -> str:
    """Stops the thread; prints and returns the final line (counts after the pipeline ended)."""
    self.halt()
    if self._total is None and all(k is not None for k in self._known):
      self._total = sum(self._known)
    line = self.line(*totals(self._dir, self._known), done=True)
    print(line, file=self._out, flush=True)
    return line
