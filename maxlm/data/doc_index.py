"""Lazy documents: where each document's bytes are, never its text.

The raw training path (no data.prepared_dir) used to hold every document's
text in a Python list: a 5 GB JSONL needed ~15 GB of RAM before the first
step. A `DocIndex` instead keeps, per document piece, a few numbers in numpy
arrays (~50 bytes): which file, byte offset and length, piece number, key
parts, the held-out hash, the length in characters and the curriculum value.
`text(i)` re-reads the bytes with os.pread (thread-safe, no seek) and decodes
them; a JSONL line is parsed again, a long document is cut again by the same
deterministic rule.

Documents that have no byte span in a plain local file (compressed files,
Parquet rows, ArrayRecord records, the built-in corpora, remote files) are
copied once, as UTF-8 text, into a scratch "spill" file and read from there:
random access into a zstd stream or a Parquet row group (the smallest unit
Parquet decodes) would re-decode a whole block per document. The spill file
lives in $MAXLM_SPILL_DIR (default: the system temp directory) and is removed
when the index is garbage-collected or the process exits; its size is the
text of those sources. For corpora larger than local disk, tokenize once with
`python -m maxlm.data.prepare` and train from shards.
"""

from __future__ import annotations

import array
import collections
import hashlib
import json
import os
import tempfile
import threading
import weakref

import numpy as np

_SPAN_TEXT, _SPAN_JSON = 0, 1
_MAX_OPEN_FILES = 64  # open descriptors kept per index (an LRU): text_files sources can be huge


def unit_hash(key: str) -> float:
  """A stable uniform number in [0, 1) from a key (held-out split, sample order)."""
  return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def cut(text: str, max_chars: int) -> list[str]:
  """Cuts text at paragraph breaks (else line breaks) into <= max_chars pieces."""
  if not max_chars or len(text) <= max_chars:
    return [text]
  pieces, start = [], 0
  while len(text) - start > max_chars:
    # Prefer a paragraph break, then a line break, else cut mid-line.
    end = text.rfind("\n\n", start, start + max_chars - 1)
    end = end + 2 if end > start else text.rfind("\n", start, start + max_chars) + 1
    end = end if end > start else start + max_chars
    pieces.append(text[start:end])
    start = end
  pieces.append(text[start:])
  return [p for p in pieces if p.strip()]


class DocIndex:
  """The pieces of one source, in file order, as arrays; `text(i)` reads one."""

  def __init__(self, name: str, text_field: str = "text", max_doc_chars: int = 0):
    self.name, self.text_field, self.max_doc_chars = name, text_field, max_doc_chars
    self.stores: list[str] = []  # backing files; the spill file last if any
    self.rels: list[str] = []  # key part of each distinct file / document group
    self._store_of, self._rel_of = {}, {}
    self._cols = {k: array.array(t, b"") for k, t in (
        ("store", "i"), ("offset", "q"), ("length", "q"), ("span", "b"), ("piece", "i"),
        ("rel", "i"), ("line", "q"), ("unit", "d"), ("chars", "q"), ("order", "d"))}
    self._spill, self._spill_store = None, -1
    self._finalizer = None
    self._init_readers()

  # --- building -----------------------------------------------------------

  def add(self, rel: str, line: int | None, pieces: list[str], *, text: str,
          path: str | None, span: tuple[int, int] | None, span_kind: str,
          order_value: float = float("nan")) -> None:
    """One document's pieces; `span` in `path` re-reads it, else its text is spilled."""
    if span is None:
      store, (offset, length), kind = self._spill_text(text), self._last_spill, _SPAN_TEXT
    else:
      store, (offset, length) = self._store(path), span
      kind = _SPAN_JSON if span_kind == "json" else _SPAN_TEXT
    rel_i = self._rel_of.setdefault(rel, len(self.rels))
    if rel_i == len(self.rels):
      self.rels.append(rel)
    base = rel if line is None else f"{rel}:{line}"
    c = self._cols
    for i, piece in enumerate(pieces):
      c["store"].append(store), c["offset"].append(offset), c["length"].append(length)
      c["span"].append(kind), c["piece"].append(i), c["rel"].append(rel_i)
      c["line"].append(-1 if line is None else int(line))
      # The key without its source name: two sources over the same files hold out the same pieces.
      c["unit"].append(unit_hash(f"{base}#{i}"))
      c["chars"].append(len(piece)), c["order"].append(order_value)

  def finish(self) -> "DocIndex":
    """Freezes the arrays (numpy views of the built buffers) and closes the spill file."""
    for k, col in self._cols.items():
      setattr(self, k, np.frombuffer(col, dtype=col.typecode) if len(col) else
              np.zeros(0, col.typecode))
    del self._cols
    if self._spill is not None:
      self._spill.close()
      self._spill = None
    return self

  def _store(self, path: str) -> int:
    i = self._store_of.setdefault(path, len(self.stores))
    if i == len(self.stores):
      self.stores.append(path)
    return i

  def _spill_text(self, text: str) -> int:
    if self._spill is None:
      fd, path = tempfile.mkstemp(prefix=f"maxlm-{self.name}-", suffix=".spill",
                                  dir=os.environ.get("MAXLM_SPILL_DIR") or None)
      self._spill = os.fdopen(fd, "wb")
      self._spill_store = self._store(path)
      self._finalizer = weakref.finalize(self, _remove, path)
    raw = text.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates
    self._last_spill = (self._spill.tell(), len(raw))
    self._spill.write(raw)
    return self._spill_store

  # --- reading ------------------------------------------------------------

  def __len__(self) -> int:
    return len(self.offset)

  def key(self, i: int) -> str:
    line = int(self.line[i])
    base = self.rels[self.rel[i]] if line < 0 else f"{self.rels[self.rel[i]]}:{line}"
    return f"{self.name}:{base}#{int(self.piece[i])}"

  def line_of(self, i: int) -> int | None:
    line = int(self.line[i])
    return None if line < 0 else line

  def path_of(self, i: int) -> str:
    return self.stores[self.store[i]]

  def text(self, i: int) -> str:
    i = int(i)
    raw = self._pread(int(self.store[i]), int(self.length[i]), int(self.offset[i]))
    if len(raw) != self.length[i]:
      raise RuntimeError(f"{self.path_of(i)} changed since it was indexed "
                         f"(document {self.key(i)}); restart the run")
    if self.span[i] == _SPAN_JSON:
      text = json.loads(raw.decode("utf-8", "replace"))[self.text_field]
    else:
      text = raw.decode("utf-8", "replace" if self.store[i] != self._spill_store else "surrogatepass")
    if self.max_doc_chars and len(text) > self.max_doc_chars:
      text = cut(text, self.max_doc_chars)[int(self.piece[i])]
    return text

  def _pread(self, store: int, length: int, offset: int) -> bytes:
    with self._lock:
      if self._pid != os.getpid():  # forked: descriptors are shared with the parent's offsets
        self._fds.clear()           # (pread has none, but close-on-evict must not hit its fds)
        self._pid = os.getpid()
      fd = self._fds.pop(store, None)
      if fd is None:
        fd = os.open(self.stores[store], os.O_RDONLY)
        if len(self._fds) >= _MAX_OPEN_FILES:
          os.close(self._fds.popitem(last=False)[1])
      self._fds[store] = fd
      return os.pread(fd, length, offset)

  def _init_readers(self):
    self._lock, self._fds, self._pid = threading.Lock(), collections.OrderedDict(), os.getpid()

  def __getstate__(self):
    if hasattr(self, "_cols"):
      raise RuntimeError("DocIndex is pickled before finish()")
    state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_fds", "_pid",
                                                                 "_finalizer", "_spill")}
    return state

  def __setstate__(self, state):
    # A copy in a worker process reads the spill file but never deletes it: the owner does.
    self.__dict__.update(state, _finalizer=None, _spill=None)
    self._init_readers()

  # os.close bound at definition: at interpreter shutdown module globals may
  # already be None when the last index is collected.
  def __del__(self, _close=os.close):
    for fd in getattr(self, "_fds", {}).values():
      try:
        _close(fd)
      except OSError:
        pass


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
