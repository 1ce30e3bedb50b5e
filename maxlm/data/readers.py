"""One reader per file format, streaming: the only code that parses input files.

Curation (maxlm.curate.read, on Beam), tokenize-once (maxlm.data.prepare) and
training from raw files (maxlm.data.sources) all read through `read_file`, so a
format, its error kinds and its quirks live in one place. Formats register
themselves with `@file_format(name, suffixes)` beside their reader; a file's
format is named by its suffix (after a compression suffix).

Compression is decided by the file's first bytes (gzip 1f 8b, zstd 28 b5 2f fd),
not only by its name: a `.jsonl.zst` that holds gzip is read as gzip and counted
as `compression_mismatch`; one that holds neither is `unreadable_file`, naming
the file. Streams are decompressed chunk by chunk with zlib / zstandard
decompressor objects, whose end-of-frame flag tells a complete stream from a
truncated one (zstandard's stream_reader returns a silent EOF on a cut frame):
what was decoded before the cut is kept, and the cut is one `truncated_file`
error with the line and the uncompressed byte offset where it happened.

Every reader yields `Record`s and reports bad input to an `ErrorLog`
(`errors.add(path, kind, line, detail)`): nothing raises for bad data, and every
bad line is counted and listed (not a few examples). Kinds:
  unreadable_file       cannot be opened, or not what its name/magic says
  truncated_file        compressed stream or record cut short (readable part kept)
  compression_mismatch  named .gz/.zst but holds the other (or none): read as found
  invalid_utf8          bad bytes; the text is kept with U+FFFD in their place
  malformed_jsonl       a JSONL line that is not JSON
  missing_field         no string text field (record, row or column)
  empty_document        text empty after stripping whitespace
  html_no_text          HTML (or a WARC page) without main text
  unknown_format        a suffix no reader is registered for
  wrong_type, unknown_role, no_response   instruction records (maxlm.data.instruct)

A Record's `span` is (byte offset, length) of its bytes in an uncompressed local
file, so the raw training path can re-read one document with os.pread instead of
holding its text (see maxlm.data.doc_index); it is None otherwise.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import io
import json
import json.scanner
import os
import zlib
from typing import Callable, Iterator

_CHUNK = 1 << 20  # bytes read / decompressed at a time
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd"}
MAX_EXAMPLES = 5  # detail strings kept per (file, kind); every line number is kept


class DataErrorBudgetExceeded(RuntimeError):
  pass


class ErrorLog:
  """Bad input per (file, kind): every line number, the first few details.

  `budget` < 0 means unlimited; adding the error that exceeds it raises
  DataErrorBudgetExceeded with the report so far.
  """

  def __init__(self, budget: int = -1, keep: int = MAX_EXAMPLES):
    self.budget = budget
    self.keep = keep
    self.counts = collections.Counter()  # (path, kind) -> n
    self.lines = collections.defaultdict(lambda: array.array("q"))  # (path, kind) -> lines (-1: none)
    self.examples = collections.defaultdict(list)  # (path, kind) -> ["path:line: kind detail"]

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def add(self, path: str, kind: str, line: int | None = None, detail: str = ""):
    self.counts[(path, kind)] += 1
    self.lines[(path, kind)].append(-1 if line is None else int(line))
    where = f"{path}:{line}" if line is not None else path
    if len(self.examples[(path, kind)]) < self.keep:
      self.examples[(path, kind)].append(f"{where}: {kind} {detail}".rstrip())
    if 0 <= self.budget < self.total:
      raise DataErrorBudgetExceeded(
          f"data error budget exceeded: {self.total} bad inputs > budget "
          f"{self.budget} (data.error_budget). Last: {where}: {kind} {detail}\n"
          + self.report())

  def merge(self, other: "ErrorLog") -> None:
    for key, n in other.counts.items():
      self.counts[key] += n
      self.lines[key].extend(other.lines[key])
      self.examples[key] = (self.examples[key] + other.examples[key])[:self.keep]

  def report(self) -> str:
    """Grouped by kind, then file: count, every line (as ranges), first details."""
    if not self.counts:
      return "no bad input"
    out = []
    for kind in sorted({k for _, k in self.counts}):
      n_kind = sum(n for (_, k), n in self.counts.items() if k == kind)
      out.append(f"{kind}: {n_kind}")
      for (path, k), n in sorted(self.counts.items()):
        if k != kind:
          continue
        lines = sorted(set(self.lines[(path, k)]) - {-1})
        where = f" lines {_ranges(lines)}" if lines else ""
        out.append(f"  {n:6d}  {path}{where}")
        out += ["          e.g. " + e for e in self.examples[(path, k)][:2]]
    return "\n".join(out)


def _ranges(xs: list[int]) -> str:
  """[1, 2, 3, 7] -> '1-3, 7'."""
  parts, start = [], None
  for i, x in enumerate(xs):
    if start is None:
      start = x
    if i + 1 == len(xs) or xs[i + 1] != x + 1:
      parts.append(f"{start}" if start == x else f"{start}-{x}")
      start = None
  return ", ".join(parts)


@dataclasses.dataclass
class Record:
  text: str
  line: int | None  # 1-based line (JSONL, text), row (Parquet, ArrayRecord, 0-based), byte offset (WARC)
  fields: dict  # the record's other fields (JSONL keys, Parquet columns, WARC url/date)
  span: tuple[int, int] | None = None  # (offset, length) in an uncompressed local file
  span_kind: str = ""  # "json" (span holds a JSONL line) or "text" (span holds the text)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  suffixes: tuple[str, ...]
  read: Callable[..., Iterator[Record]]


FORMATS: dict[str, Format] = {}


def file_format(name: str, suffixes: tuple[str, ...]):
  """Registers `fn(path, errors, *, text_field) -> Iterator[Record]` as a format."""
  def register(fn):
    FORMATS[name] = Format(name, tuple(suffixes), fn)
    return fn
  return register


def format_of(path: str) -> str | None:
  """Format name from the suffix (a compression suffix is looked through)."""
  name = path.lower()
  for suffix in _COMPRESSION_SUFFIXES:
    if name.endswith(suffix) and not name.endswith(".warc" + suffix):
      name = name[:-len(suffix)]
  name = name[:-len(".gz")] if name.endswith(".warc.gz") else name
  best = None
  for fmt in FORMATS.values():
    for s in fmt.suffixes:
      if name.endswith(s) and (best is None or len(s) > best[0]):
        best = (len(s), fmt.name)
  return best and best[1]


def read_file(path: str, errors: ErrorLog, *, fmt: str | None = None,
              text_field: str = "text") -> Iterator[Record]:
  """Records of one file; bad input goes to `errors`, never raises for bad data."""
  fmt = fmt or format_of(path)
  if fmt not in FORMATS:
    errors.add(path, "unknown_format", detail=f"no reader for {os.path.basename(path)!r}")
    return
  try:
    yield from FORMATS[fmt].read(path, errors, text_field=text_field)
  except (OSError, ValueError, EOFError) as e:  # open/parse failures not caught inside a reader
    errors.add(path, "unreadable_file", detail=f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------------------
# Opening and decompressing
# ---------------------------------------------------------------------------

class TruncatedStream(EOFError):
  """A compressed stream ends (or breaks) before its end-of-stream marker."""


def _open_raw(path: str):
  if "://" in path:  # gs://, s3://, ...: Beam's filesystems (curation runs on Beam already)
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
  return open(path, "rb")


def _member_chunks(raw, new_decoder, errors_type, what: str) -> Iterator[bytes]:
  """Decompressed chunks of a stream of gzip members / zstd frames.

  TruncatedStream when the input ends inside a member (the decoder has no
  end-of-stream yet) or holds corrupt data.
  """
  d, started = new_decoder(), False
  while True:
    chunk = raw.read(_CHUNK)
    if not chunk:
      if started:
        raise TruncatedStream(f"{what} stream ends before its end-of-stream marker")
      return
    while chunk:
      started = True
      try:
        out = d.decompress(chunk)
      except errors_type as e:
        raise TruncatedStream(f"corrupt {what} data: {e}") from e
      if out:
        yield out
      if not d.eof:
        break
      # End of one member/frame: what follows starts the next one (zero padding ends it).
      chunk = d.unused_data
      d, started = new_decoder(), False
      if not chunk.strip(b"\x00"):
        chunk = b""


def _gzip_chunks(raw) -> Iterator[bytes]:
  return _member_chunks(raw, lambda: zlib.decompressobj(31), zlib.error, "gzip")


def _zstd_chunks(raw) -> Iterator[bytes]:
  import zstandard  # pylint: disable=g-import-not-at-top
  dctx = zstandard.ZstdDecompressor()
  return _member_chunks(raw, dctx.decompressobj, zstandard.ZstdError, "zstd")


class _ChunkReader(io.RawIOBase):
  """A raw stream over a generator of byte chunks (so io.BufferedReader gives readline)."""

  def __init__(self, chunks: Iterator[bytes], raw):
    self._chunks, self._raw, self._buf = chunks, raw, b""

  def readable(self):
    return True

  def readinto(self, b):
    while not self._buf:
      self._buf = next(self._chunks, None)
      if self._buf is None:
        self._buf = b""
        return 0
    n = min(len(b), len(self._buf))
    b[:n], self._buf = self._buf[:n], self._buf[n:]
    return n

  def close(self):
    self._raw.close()
    super().close()


def open_stream(path: str, errors: ErrorLog):
  """(binary reader of the decompressed bytes, is_plain_local) or None if unreadable.

  Compression comes from the magic bytes; a name that says otherwise is counted.
  """
  try:
    raw = _open_raw(path)
    head = raw.read(4)
  except OSError as e:
    errors.add(path, "unreadable_file", detail=f"{type(e).__name__}: {e}")
    return None
  found = "gzip" if head[:2] == _GZIP_MAGIC else "zstd" if head == _ZSTD_MAGIC else None
  named = next((c for s, c in _COMPRESSION_SUFFIXES.items() if path.lower().endswith(s)), None)
  if named and not found:
    raw.close()
    errors.add(path, "unreadable_file", detail=f"named {named} but is not {named} data "
               f"(first bytes {head.hex(' ')})")
    return None
  if found != named:
    errors.add(path, "compression_mismatch",
               detail=f"named {named or 'uncompressed'} but holds {found}; read as {found}")
  rest = _Prefixed(head, raw)
  if found is None:
    return io.BufferedReader(rest, _CHUNK), "://" not in path
  chunks = _gzip_chunks(rest) if found == "gzip" else _zstd_chunks(rest)
  return io.BufferedReader(_ChunkReader(chunks, raw), _CHUNK), False


class _Prefixed(io.RawIOBase):
  """`raw` with `head` (already read to sniff the magic) put back in front."""

  def __init__(self, head: bytes, raw):
    self._head, self._raw = head, raw

  def readable(self):
    return True

  def read(self, n=-1):
    if self._head:
      cut = len(self._head) if n < 0 else min(n, len(self._head))
      out, self._head = self._head[:cut], self._head[cut:]
      if n < 0:
        return out + self._raw.read()
      return out + (self._raw.read(n - len(out)) if n > len(out) else b"")
    return self._raw.read(n)

  def readinto(self, b):
    data = self.read(len(b))
    b[:len(data)] = data
    return len(data)

  def close(self):
    self._raw.close()
    super().close()


def _lines(path: str, errors: ErrorLog) -> Iterator[tuple[int, int, bytes]]:
  """(1-based line, offset, bytes) of each line, in the decompressed stream.

  A truncated stream ends the iteration after one truncated_file error; a last
  line cut by the truncation is not passed on (it would read as malformed).
  """
  opened = open_stream(path, errors)
  if opened is None:
    return
  f, _ = opened
  lineno, offset = 0, 0
  with f:
    while True:
      try:
        line = f.readline()
      except TruncatedStream as e:
        errors.add(path, "truncated_file" if offset else "unreadable_file", lineno + 1,
                   f"{e} at uncompressed byte {offset}; {lineno} lines before it kept")
        return
      if not line:
        return
      lineno += 1
      yield lineno, offset, line
      offset += len(line)


def is_plain_local(path: str) -> bool:
  """True when byte spans of the file can be re-read with os.pread."""
  if "://" in path:
    return False
  with open(path, "rb") as f:
    head = f.read(4)
  return not (head[:2] == _GZIP_MAGIC or head == _ZSTD_MAGIC)


def decode(raw: bytes, path: str, errors: ErrorLog, line: int | None) -> str:
  """UTF-8 text; bad bytes become U+FFFD and one invalid_utf8 error (a few bad bytes
  should not lose a document)."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    where = line if line is not None else raw[:e.start].count(b"\n") + 1
    errors.add(path, "invalid_utf8", where, f"byte {e.start}")
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------

@file_format("jsonl", (".jsonl", ".json", ".ndjson"))
def read_jsonl(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """One record per line; the other keys become fields."""
  for n, span, _, rec in _json_lines(path, errors):
    text = rec.get(text_field) if isinstance(rec, dict) else None
    if not isinstance(text, str):
      errors.add(path, "missing_field", n, f"no string field {text_field!r}")
      continue
    if not text.strip():
      errors.add(path, "empty_document", n)
      continue
    del rec[text_field]
    yield Record(text, n, rec, span, "json")


@file_format("instruct_jsonl", ())  # no suffix: chosen by the 'instruct' source kind only
def read_instruct_jsonl(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """Instruction records (maxlm.data.instruct), one per line; the record's text is its whole
  JSON line (re-parsed when tokenized), its field 'form' says messages or prompt_response.
  Bad records are counted by maxlm.data.instruct.check_record's kind, naming the field."""
  del text_field
  from maxlm.data import instruct  # pylint: disable=g-import-not-at-top
  for n, span, line, rec in _json_lines(path, errors):
    form, kind, detail = instruct.check_record(rec)
    if kind:
      errors.add(path, kind, n, detail)
      continue
    yield Record(line, n, {"form": form}, span, "text")


def _json_lines(path: str, errors: ErrorLog):
  """(line number, byte span or None, decoded line, parsed JSON) of every non-blank line;
  malformed lines are counted. The span (offset, length) only for a plain local file,
  where the lazy index can seek back to it."""
  plain = is_plain_local(path) if "://" not in path and os.path.isfile(path) else False
  for n, offset, raw in _lines(path, errors):
    if not raw.strip():
      continue
    line = decode(raw, path, errors, n)
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      errors.add(path, "malformed_jsonl", n, str(e))
      continue
    yield n, ((offset, len(raw)) if plain else None), line, rec


_BYTES_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: blank-line test of _json_lines
_JSON_WS = " \t\n\r"  # json's own whitespace (json.decoder.WHITESPACE)
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner behind json.loads


def jsonl_text_batches(path: str, errors: ErrorLog, *, text_field: str = "text",
                       chunk: int = _CHUNK,
                       consumed: Callable[[int], None] | None = None
                       ) -> Iterator[tuple[list[int], list[str]]]:
  """What read_jsonl yields, as (line numbers, texts) per block of ~`chunk` bytes.

  For tokenize-once (maxlm.data.prepare), where per-document Python work is
  the cost next to the tokenizer's: a block is decoded in one call and split
  at newlines, each line parsed by json's C scanner directly, no Record or
  span made. The same documents, line numbers and errors (kinds, lines and
  details) as read_jsonl: anything unusual on a line (a parse error, invalid
  UTF-8, a truncated stream) takes read_jsonl's own steps for it.
  `consumed(bytes)` is told after each block how far into the file (the
  compressed bytes, for a compressed one) reading has got: progress and ETA.
  """
  opened = open_stream(path, errors)
  if opened is None:
    return
  f, _ = opened
  underlying = f.raw._raw  # the file itself, under the decompressor (_Prefixed / _ChunkReader)
  lineno, offset, tail = 0, 0, b""
  with f:
    while True:
      try:
        block = f.read1(chunk)
      except TruncatedStream as e:  # _lines' message: the complete lines before the cut are kept
        errors.add(path, "truncated_file" if offset else "unreadable_file", lineno + 1,
                   f"{e} at uncompressed byte {offset}; {lineno} lines before it kept")
        return
      buf = tail + block
      cut = len(buf) if not block else buf.rfind(b"\n") + 1
      if not cut:
        if not block:
          return
        tail = buf
        continue
      tail = buf[cut:]
      lines, texts = _jsonl_block(buf[:cut], lineno, path, errors, text_field)
      lineno += buf.count(b"\n", 0, cut) + (0 if buf[cut - 1:cut] == b"\n" else 1)
      offset += cut
      if consumed is not None:
        consumed(underlying.tell())
      if texts:
        yield lines, texts
      if not block:
        return


def jsonl_range_batches(path: str, errors: ErrorLog, start: int, end: int, lineno: int, *,
                        text_field: str = "text", chunk: int = _CHUNK
                        ) -> Iterator[tuple[list[int], list[str]]]:
  """jsonl_text_batches of the lines of a plain (uncompressed) file that start
  in bytes [start, end): the unit of work of prepare on Beam, where workers
  read byte ranges of one file. `lineno` is the number of lines before the
  first such line (count_newlines of the earlier ranges, plus one for a range
  not at 0), so line numbers, keys and errors are those of reading the file
  whole. A line belongs to the range its first byte is in."""
  with open(path, "rb") as f:
    base = 0
    if start > 0:  # the first line starting at or after `start`
      f.seek(start - 1)
      base = start - 1 + len(f.readline())
    buf = b""
    while base < end:
      block = f.read(chunk)
      buf += block
      if not block:  # end of file: a last line without a newline
        if buf:
          yield from _numbered(buf, lineno, path, errors, text_field)
        return
      cut = buf.rfind(b"\n") + 1
      if not cut:
        continue
      if base + cut > end:  # the range ends inside: up to the line holding byte end - 1
        cut = buf.find(b"\n", max(0, end - 1 - base)) + 1
        yield from _numbered(buf[:cut], lineno, path, errors, text_field)
        return
      yield from _numbered(buf[:cut], lineno, path, errors, text_field)
      lineno += buf.count(b"\n", 0, cut)
      base += cut
      buf = buf[cut:]


def _numbered(raw, lineno, path, errors, text_field):
  lines, texts = _jsonl_block(raw, lineno, path, errors, text_field)
  if texts:
    yield lines, texts


def count_newlines(path: str, start: int, end: int, chunk: int = 4 * _CHUNK) -> int:
  """Newline bytes in [start, end) of a file (the line numbers of a byte range)."""
  n = 0
  with open(path, "rb") as f:
    f.seek(start)
    left = end - start
    while left > 0:
      block = f.read(min(chunk, left))
      if not block:
        break
      n += block.count(b"\n")
      left -= len(block)
  return n


def _jsonl_block(raw: bytes, lineno: int, path: str, errors: ErrorLog,
                 text_field: str) -> tuple[list[int], list[str]]:
  """(line numbers, texts) of whole lines `raw`, the first numbered lineno + 1."""
  try:
    strs = raw.decode("utf-8").split("\n")
  except UnicodeDecodeError:  # find the bad lines one by one (decode counts each)
    strs = None
  pieces = raw.split(b"\n") if strs is None else strs
  if pieces[-1] in ("", b""):  # the block ends with a newline: no line after it
    pieces.pop()
  ended_all = raw.endswith(b"\n")
  last = len(pieces) - 1
  lines, texts = [], []
  if strs is None:
    for i, s in enumerate(pieces):
      _jsonl_line(s, lineno + i + 1, i < last or ended_all, False, path, errors, text_field,
                  lines, texts)
    return lines, texts
  scan = _scan_json
  for i, s in enumerate(pieces):
    # The common line, in as few steps as possible: one JSON object, no space
    # around it, a non-blank string text. Anything else takes _jsonl_line.
    try:
      rec, end = scan(s, 0)
      text = rec[text_field]
    except Exception:  # pylint: disable=broad-except  (no value, not a dict, no field: below)
      text = None
    else:
      if end == len(s) and type(text) is str and text and not text.isspace():  # pylint: disable=unidiomatic-typecheck
        lines.append(lineno + i + 1)
        texts.append(text)
        continue
    _jsonl_line(s, lineno + i + 1, i < last or ended_all, True, path, errors, text_field,
                lines, texts)
  return lines, texts


def _jsonl_line(s, n: int, ended: bool, decoded: bool, path: str, errors: ErrorLog,
                text_field: str, lines: list, texts: list) -> None:
  """One line as _json_lines + read_jsonl take it (s: str without its newline,
  or the raw bytes when the block did not decode)."""
  if not s.strip(_BYTES_WS if decoded else b" \t\n\r\x0b\x0c"):
    return
  if not decoded:  # _lines keeps the newline in the line it decodes and parses
    s = decode(s + b"\n" if ended else s, path, errors, n)
  elif ended:
    s += "\n"
  try:
    rec = json.loads(s)
  except json.JSONDecodeError as e:
    errors.add(path, "malformed_jsonl", n, str(e))
    return
  text = rec.get(text_field) if isinstance(rec, dict) else None
  if not isinstance(text, str):
    errors.add(path, "missing_field", n, f"no string field {text_field!r}")
    return
  if not text.strip():
    errors.add(path, "empty_document", n)
    return
  lines.append(n)
  texts.append(text)


def _whole(path: str, errors: ErrorLog) -> tuple[bytes, bool] | None:
  opened = open_stream(path, errors)
  if opened is None:
    return None
  f, plain = opened
  with f:
    try:
      return f.read(), plain
    except TruncatedStream as e:
      errors.add(path, "unreadable_file", detail=str(e))
      return None


@file_format("text", (".txt", ".md", ".rst", ".py", ".tex"))
def read_text(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """The whole file is one record."""
  del text_field
  got = _whole(path, errors)
  if got is None:
    return
  raw, plain = got
  text = decode(raw, path, errors, None)
  if not text.strip():
    errors.add(path, "empty_document")
    return
  yield Record(text, None, {}, (0, len(raw)) if plain else None, "text")


def extract_html(html) -> str:
  """Main text of an HTML page (str or bytes) with trafilatura; "" when it finds none."""
  import trafilatura  # pylint: disable=g-import-not-at-top
  return trafilatura.extract(html, include_comments=False, include_tables=False) or ""


@file_format("html", (".html", ".htm"))
def read_html(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """Main text of one HTML page (trafilatura)."""
  del text_field
  got = _whole(path, errors)
  if got is None:
    return
  text = extract_html(decode(got[0], path, errors, None))
  if not text.strip():
    errors.add(path, "html_no_text")
    return
  yield Record(text, None, {})


@file_format("warc", (".warc", ".arc.warc"))
def read_warc(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """HTML responses of a WARC file (maxlm.data.warc), main text by trafilatura."""
  del text_field
  from maxlm.data import warc  # pylint: disable=g-import-not-at-top
  opened = open_stream(path, errors)
  if opened is None:
    return
  f, _ = opened
  position = {"offset": 0}
  with f:
    try:
      for offset, headers, block in warc.iter_warc(f, position):
        if headers.get("warc-type") != "response":
          continue
        html, _ = warc.http_html(block)
        if html is None:
          continue  # images, PDFs, redirects without HTML: not text, not an error
        text = extract_html(html)
        if not text.strip():
          errors.add(path, "html_no_text", offset, headers.get("warc-target-uri", ""))
          continue
        yield Record(text, offset, {"id": headers.get("warc-record-id"),
                                    "url": headers.get("warc-target-uri", ""),
                                    "date": headers.get("warc-date", ""), "offset": offset})
    except (ValueError, EOFError) as e:  # cut or malformed record: the records before it are kept
      errors.add(path, "truncated_file", position["offset"], f"{type(e).__name__}: {e}")


@file_format("parquet", (".parquet",))
def read_parquet(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """One record per row, a row group at a time (memory: one group); other columns are fields."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    pf = pq.ParquetFile(_open_raw(path))
  except Exception as e:  # pylint: disable=broad-except  (pyarrow raises its own error types)
    errors.add(path, "unreadable_file", detail=f"{type(e).__name__}: {e}")
    return
  if text_field not in pf.schema_arrow.names:
    errors.add(path, "missing_field", detail=f"no column {text_field!r}")
    return
  row = 0
  try:
    for g in range(pf.num_row_groups):
      for rec in pf.read_row_group(g).to_pylist():
        text = rec.pop(text_field)
        if not isinstance(text, str):
          errors.add(path, "missing_field", row, f"row has no string {text_field!r}")
        elif not text.strip():
          errors.add(path, "empty_document", row)
        else:
          yield Record(text, row, rec)
        row += 1
  except Exception as e:  # pylint: disable=broad-except  a damaged row group: earlier groups kept
    errors.add(path, "truncated_file", row, f"{type(e).__name__}: {e}")


@file_format("array_record", (".array_record",))
def read_array_record(path: str, errors: ErrorLog, *, text_field: str = "text") -> Iterator[Record]:
  """Records holding UTF-8 text, or JSON objects with the text field."""
  from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
  try:
    reader = arm.ArrayRecordReader(path)
    n = reader.num_records()
  except Exception as e:  # pylint: disable=broad-except
    errors.add(path, "unreadable_file", detail=f"{type(e).__name__}: {e}")
    return
  try:
    for start in range(0, n, 1024):
      for i, raw in enumerate(reader.read(list(range(start, min(n, start + 1024))))):
        row = start + i
        s = decode(raw, path, errors, row)
        fields = {}
        if s.startswith("{"):
          try:
            rec = json.loads(s)
            if isinstance(rec, dict) and isinstance(rec.get(text_field), str):
              s = rec.pop(text_field)
              fields = rec
          except json.JSONDecodeError:
            pass  # plain text that happens to start with a brace
        if not s.strip():
          errors.add(path, "empty_document", row)
          continue
        yield Record(s, row, fields)
  finally:
    reader.close()
