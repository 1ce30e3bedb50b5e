"""Documents of a source streamed to shards in batches, and prepare's units of
work on Beam: byte ranges of JSONL files, the segments they are tokenized
into, and the shards assembled from those.

In one process (maxlm.data.prepare) a source is read once in file order by
`document_batches`. On Beam no worker plans or holds a source: the driver
lists ranges (`make_ranges`: about `range_bytes` of one plain JSONL file,
split where lines begin; a compressed file or a source of another kind is
one range, read whole), then three passes over them, each a map over small
elements whose results are small files in <out>/_ranges/<source>/:
  1. count_lines   newlines per byte range (line numbers: the held-out
                   split hashes path:line keys)
  2. write_segment the range's documents, held out by the same hash, each
                   split tokenized into a segment (ArrayRecord, ids local to
                   the range) with its counts and error log
  3. assemble      each final shard (documents [k*per, (k+1)*per) of a split,
                   exactly the in-process cut) copies its records out of the
                   segments covering it, its ids made global (the source's
                   first id + documents before the range + local id)
Records go from segment to shard without re-tokenizing; the driver holds one
count per range.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np

from maxlm.data import doc_index
from maxlm.data import readers as readers_lib
from maxlm.data import shards as shards_lib
from maxlm.data import sources as sources_lib

RANGE_BYTES = 64 << 20  # bytes of a plain JSONL file per unit of work on Beam
RANGES = "_ranges"  # <out>/_ranges/<source>/: the passes' results and the segments


def held_out(keys: list[str], fraction: float) -> np.ndarray:
  """doc_index.unit_hash(key) < fraction for each key, as one array comparison
  (the same floats: a uint64 over 2**64, rounded once either way)."""
  if fraction <= 0 or not keys:
    return np.zeros(len(keys), bool)
  sha1 = hashlib.sha1
  digests = b"".join([sha1(k.encode()).digest()[:8] for k in keys])
  return np.frombuffer(digests, ">u8") / 2.0**64 < fraction


_BATCH_DOCS = 4096  # documents per batch from the generic (non-JSONL) path


def document_batches(src, errors, read_to=None):
  """(held-out keys, texts) of a source's documents in file order, in batches.

  The key is the document's key without the source name (what plan_sources
  hashes). JSONL sources read through readers.jsonl_text_batches (no Record
  or Document per line); the other kinds through sources.iter_documents."""
  if src["kind"] == "jsonl" and ":" not in src["name"]:
    yield from _jsonl_batches(src, errors, read_to)
    return
  keys, texts, path = [], [], None
  # An installed corpus's documents name their file relative to its root: the
  # declared file it is (by its trailing path components), for progress.
  by_tail = {}
  for f in [] if src.get("paths") else sources_lib.source_files(src):
    parts = f.split(os.sep)
    for i in range(len(parts)):
      by_tail.setdefault(os.sep.join(parts[i:]), f)
  for doc in sources_lib.iter_documents(src, errors):
    keys.append(doc.key.split(":", 1)[1])
    texts.append(doc.text)
    doc_path = by_tail.get(doc.meta.get("path"), path) if by_tail else doc.meta.get("path")
    if doc_path != path:  # progress by whole files on this path
      _file_done(path, read_to)
      path = doc_path
    if len(texts) >= _BATCH_DOCS:
      yield keys, texts
      keys, texts = [], []
  _file_done(path, read_to)
  if texts:
    yield keys, texts
  # Files without a document (or whose documents name no file) count as read too.
  for p in sources_lib.source_files(src):
    _file_done(p, read_to)


def _file_done(path, read_to) -> None:
  if read_to and path and os.path.isfile(path):
    read_to(path, os.path.getsize(path))


def _jsonl_batches(src, errors, read_to):
  """sources.iter_documents of a jsonl source, in batches: the same files, keys
  (rel:line#piece), min_doc_chars / max_doc_chars / max_docs rules and error
  log (tests/test_data_prepare.py compares the two on bad input)."""
  field = src.get("text_field", "text")
  left = [src.get("max_docs") or 0]  # pieces still allowed (0: no limit)
  for path, rel in sources_lib.expand_paths(src):
    consumed = functools.partial(read_to, path) if read_to else None
    try:
      for lines, texts in readers_lib.jsonl_text_batches(path, errors, text_field=field,
                                                         consumed=consumed):
        got = _pieces(src, rel, lines, texts, left)
        if got[1]:
          yield got
        if src.get("max_docs") and not left[0]:
          return
    except (OSError, ValueError, EOFError) as e:  # what readers.read_file counts for a file
      errors.add(path, "unreadable_file", detail=f"{type(e).__name__}: {e}")
    _file_done(path, read_to)


def _pieces(src, rel, lines, texts, left):
  """(keys, texts) of a batch of JSONL documents under sources._pieces' rules:
  min_doc_chars drops, max_doc_chars cuts into pieces, max_docs (left[0]
  pieces still allowed, updated; 0 = no limit) stops."""
  min_chars, max_chars = src.get("min_doc_chars", 0), src.get("max_doc_chars", 0)
  limit = bool(src.get("max_docs"))
  if not (min_chars or max_chars or limit):
    return [f"{rel}:{line}#0" for line in lines], texts
  keys, out = [], []
  for line, text in zip(lines, texts):
    if len(text) < min_chars:
      continue  # a filter, not an error (sources._pieces)
    pieces = doc_index.cut(text, max_chars)
    if limit:
      pieces = pieces[:left[0]]
      left[0] -= len(pieces)
    keys += [f"{rel}:{line}#{i}" for i in range(len(pieces))]
    out += pieces
    if limit and not left[0]:
      break
  return keys, out


# ---------------------------------------------------------------------------
# Units of work on Beam
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
  """Part of one source: bytes [start, end) of a plain JSONL file (path set,
  end >= 0), or a whole file / the whole source read in order (end < 0)."""
  source: str  # the source's config entry, JSON (workers have no config)
  index: int  # position among the source's ranges (file order)
  path: str = ""  # "" = the whole source
  rel: str = ""
  start: int = 0
  end: int = -1

  @property
  def src(self) -> dict:
    return json.loads(self.source)

  @property
  def ranged(self) -> bool:
    return self.end >= 0

  def bytes(self) -> int:
    """Input bytes this range reads (progress)."""
    if self.ranged:
      return self.end - self.start
    if self.path:
      return os.path.getsize(self.path)
    return sum(os.path.getsize(p) for p in sources_lib.source_files(self.src))


def make_ranges(src: dict, range_bytes: int = RANGE_BYTES) -> list[Range]:
  """The source's ranges in file order. Plain JSONL files are cut every
  range_bytes (a line belongs to the range its first byte is in); a source
  with max_docs (a count over the whole source) or of another kind is one range."""
  source = json.dumps(dict(src), sort_keys=True, default=list)
  if src["kind"] != "jsonl" or ":" in src["name"] or src.get("max_docs"):
    return [Range(source, 0)]
  out = []
  for path, rel in sources_lib.expand_paths(src):
    size = os.path.getsize(path)
    # Compressed (or named so: a .gz holding plain text is an error read whole reports).
    if path.lower().endswith((".gz", ".zst")) or not readers_lib.is_plain_local(path):
      out.append(Range(source, len(out), path, rel))
      continue
    for a in range(0, max(size, 1), range_bytes):
      out.append(Range(source, len(out), path, rel, a, min(size, a + range_bytes)))
  return out


@dataclasses.dataclass(frozen=True)
class Job:
  """What a worker needs besides a range (tokenizer, output, split rule)."""
  out_dir: str
  tokenizer_path: str
  tokenizer_sha: str
  dtype: str
  fraction: float

  def dir(self, name: str) -> str:
    return os.path.join(self.out_dir, RANGES, name)


def _name(r: Range) -> str:
  return json.loads(r.source)["name"]


def lines_path(job: Job, r: Range) -> str:
  return os.path.join(job.dir(_name(r)), f"r-{r.index:06d}.lines.json")


def result_path(job: Job, r: Range) -> str:
  return os.path.join(job.dir(_name(r)), f"r-{r.index:06d}.json")


def segment_path(job: Job, r: Range, split: str) -> str:
  """Without extension (a ShardWriter path)."""
  return os.path.join(job.dir(_name(r)), f"r-{r.index:06d}-{split}")


def count_lines(job: Job, r: Range) -> None:
  """Pass 1: newlines in [start - 1, end - 1) (from 0 for the first range):
  summed over the earlier ranges of its file they number a range's lines."""
  if r.ranged:
    n = readers_lib.count_newlines(r.path, max(0, r.start - 1), max(0, r.end - 1))
    shards_lib.write_json(lines_path(job, r), dict(newlines=n))


def first_line(newlines_before: int, r: Range) -> int:
  """Lines before the range's first line (readers.jsonl_range_batches' lineno)."""
  return newlines_before + 1 if r.start > 0 else 0


def write_segment(job: Job, r: Range, lineno: int) -> None:
  """Pass 2: the range's documents, each split tokenized into its segment
  (ids local to the range, in file order), then the result: documents per
  split and the error log (written last: it marks the range done)."""
  src = r.src
  errors = readers_lib.ErrorLog()
  writers = {k: shards_lib.ShardWriter(segment_path(job, r, k), job.tokenizer_path,
                                       job.tokenizer_sha, job.dtype)
             for k in ("train", "heldout")}
  n = 0
  for keys, texts in _range_batches(src, r, lineno, errors):
    ids = range(n, n + len(texts))
    held = held_out(keys, job.fraction).tolist()
    for split, want in (("train", False), ("heldout", True)):
      pick = [i for i, h in zip(ids, held) if h == want]
      if pick:
        writers[split].add_texts([texts[i - n] for i in pick], pick)
    n += len(texts)
  for w in writers.values():
    w.close()
  shards_lib.write_json(result_path(job, r), dict(
      docs=n, train=writers["train"].docs, heldout=writers["heldout"].docs,
      tokens=writers["train"].tokens + writers["heldout"].tokens, errors=_log_state(errors)))


def _range_batches(src, r: Range, lineno: int, errors):
  if not r.path:
    yield from document_batches(src, errors)
    return
  field = src.get("text_field", "text")
  left = [0]
  try:
    if r.ranged:
      batches = readers_lib.jsonl_range_batches(r.path, errors, r.start, r.end, lineno,
                                                text_field=field)
    else:
      batches = readers_lib.jsonl_text_batches(r.path, errors, text_field=field)
    for lines, texts in batches:
      got = _pieces(src, r.rel, lines, texts, left)
      if got[1]:
        yield got
  except (OSError, ValueError, EOFError) as e:  # what readers.read_file counts for a file
    errors.add(r.path, "unreadable_file", detail=f"{type(e).__name__}: {e}")


def _log_state(log) -> dict:
  return dict(counts=[[p, k, n] for (p, k), n in log.counts.items()],
              lines=[[p, k, list(v)] for (p, k), v in log.lines.items()],
              examples=[[p, k, v] for (p, k), v in log.examples.items()])


def merge_log(log, state: dict) -> None:
  """Adds a range's error log (its result's "errors") to `log` (in range order:
  the same lines and first examples as reading the source whole)."""
  part = readers_lib.ErrorLog()
  for p, k, n in state["counts"]:
    part.counts[(p, k)] = n
  for p, k, v in state["lines"]:
    part.lines[(p, k)].extend(v)
  for p, k, v in state["examples"]:
    part.examples[(p, k)] = list(v)
  log.merge(part)


@dataclasses.dataclass(frozen=True)
class Shard:
  """Pass 3: one final shard, documents [start, stop) of a source's split."""
  path: str  # without extension
  split: str
  start: int
  stop: int
  # (segment path, first split position in it, its documents, global id of its local id 0)
  segments: tuple


def assemble(job: Job, s: Shard) -> None:
  """Copies the shard's records out of the segments, ids made global."""
  from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
  w = shards_lib.ShardWriter(s.path, job.tokenizer_path, job.tokenizer_sha, job.dtype)
  size = np.dtype(job.dtype).itemsize
  for seg, first, docs, id0 in s.segments:
    a, b = max(s.start, first), min(s.stop, first + docs)
    if a >= b:
      continue
    reader = arm.ArrayRecordReader(seg + ".array_record")
    try:
      for rec in reader.read(list(range(a - first, b - first))):
        (local,) = shards_lib.HEADER.unpack_from(rec)
        w.add_record(id0 + local, rec[shards_lib.HEADER.size:], size)
    finally:
      reader.close()
  w.close()
