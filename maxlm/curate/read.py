"""Reading sources into documents: JSONL (plain, .gz, .zst), Parquet, plain text, HTML, WARC.

Every document gets a stable id: the record's id field when it has one, else
"<file>:<line>" (JSONL, 1-based line) or "<file>:<row>" (Parquet) or "<file>"
(one text or HTML file is one document); a WARC response record keeps its
WARC-Record-ID, else "<file>@<offset>" (byte offset of the record in the
uncompressed stream). Files are opened through Beam's
FileSystems, so the same globs work on local disk, gs:// and s3://.

Bad input never stops the run: an undecodable line, a broken JSON line, a record
without a text field, an empty document, HTML without main text and an unreadable
file each become a read error {"stage": "read", "rule", "file", "line"} in the
"rejects" output; the driver checks them against the error budget after the run.

HTML main-text extraction uses trafilatura (Barbaresi 2021): pure Python, in the
environment already, and the best-scoring open extractor in its own and in
ScrapingHub's article-extraction benchmarks; resiliparse is faster but a
compiled extra dependency.

WARC (ISO 28500; .warc, .warc.gz with one gzip member per record, as Common
Crawl ships them) is parsed here, without warcio (not in the environment): the
format is a version line, header lines, a blank line, Content-Length bytes of
block and two CRLFs. Only "response" records whose HTTP Content-Type is HTML
become documents (request, metadata and warcinfo records, images and PDFs are
skipped without counting as errors); the HTTP body is de-chunked and
gunzipped when its headers say so, decoded with the declared charset (else
trafilatura guesses), and reduced to main text by trafilatura. meta keeps the
URL (WARC-Target-URI), the date and the record's offset.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_JSONL = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
_TEXT = (".txt", ".md", ".rst", ".py", ".tex")
_HTML = (".html", ".htm")
_WARC = (".warc", ".warc.gz", ".arc.warc")
_CHARSET_RE = re.compile(rb"charset=[\"']?([A-Za-z0-9_\-.:]+)", re.I)


def _error(path: str, line, rule: str, detail: str = "") -> dict:
  return {"id": f"{path}:{line}" if line is not None else path, "stage": "read", "rule": rule,
          "file": path, "line": line, "detail": detail[:200]}


def _doc(doc_id: str, text: str, path: str, source: str, meta: dict | None = None) -> dict:
  return {"id": doc_id, "text": text, "source": source, "meta": dict(meta or {}, file=path)}


def _open_raw(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _decompressed_lines(path: str):
  raw = _open_raw(path)
  if path.endswith(".gz"):
    return gzip.GzipFile(fileobj=raw)
  if path.endswith(".zst"):
    import zstandard
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
  return raw


def read_jsonl(path: str, source: str, *, text_field: str = "text", id_field: str = "id"):
  """Yields ("doc", doc) or ("error", error) for every line of a JSONL file."""
  f = _decompressed_lines(path)
  lineno = 0
  try:
    for lineno, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        rec = json.loads(raw.decode("utf-8"))
      except UnicodeDecodeError as e:
        yield "error", _error(path, lineno, "undecodable", str(e))
        continue
      except ValueError as e:
        yield "error", _error(path, lineno, "bad_json", str(e))
        continue
      text = rec.get(text_field) if isinstance(rec, dict) else None
      if not isinstance(text, str):
        yield "error", _error(path, lineno, "missing_text", f"no string field {text_field!r}")
        continue
      if not text.strip():
        yield "error", _error(path, lineno, "empty")
        continue
      doc_id = str(rec[id_field]) if rec.get(id_field) is not None else f"{path}:{lineno}"
      meta = {k: v for k, v in rec.items() if k not in (text_field, id_field)}
      yield "doc", _doc(doc_id, text, path, source, meta)
  except Exception as e:  # truncated archive or I/O error mid-file: keep what was read.
    yield "error", _error(path, lineno + 1, "unreadable_file", f"{type(e).__name__}: {e}")


def read_parquet(path: str, source: str, *, text_field: str = "text", id_field: str = "id"):
  import pyarrow.parquet as pq
  table = pq.read_table(_open_raw(path))
  if text_field not in table.column_names:
    yield "error", _error(path, None, "missing_text", f"no column {text_field!r}")
    return
  for row, rec in enumerate(table.to_pylist()):
    text = rec.pop(text_field)
    if not isinstance(text, str) or not text.strip():
      yield "error", _error(path, row, "empty")
      continue
    rec_id = rec.pop(id_field, None)
    yield "doc", _doc(str(rec_id) if rec_id is not None else f"{path}:{row}", text, path, source, rec)


def read_whole_file(path: str, source: str, *, html: bool = False):
  data = _decompressed_lines(path).read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    yield "error", _error(path, line, "undecodable", str(e))
    return
  if html:
    text = extract_html(text)
    if not text.strip():
      yield "error", _error(path, None, "html_no_text")
      return
  if not text.strip():
    yield "error", _error(path, None, "empty")
    return
  yield "doc", _doc(path, text, path, source)


def extract_html(html) -> str:
  """Main text of an HTML page (str or bytes) with trafilatura; "" when it finds none."""
  import trafilatura
  return trafilatura.extract(html, include_comments=False, include_tables=False) or ""


def iter_warc(f, position: dict | None = None):
  """Yields (offset, headers, block) for each record of an uncompressed WARC stream.

  Header names are lowercased. Raises ValueError on a malformed record: a WARC
  cannot be resynchronised without scanning, so the rest of the file is lost
  and counted as unreadable. `position["offset"]` is the start of the record
  being read, for the error report.
  """
  position = {} if position is None else position
  offset = 0
  while True:
    line = f.readline()
    while line in (b"\r\n", b"\n"):  # blank lines between records
      offset += len(line)
      line = f.readline()
    if not line:
      return
    if not line.startswith(b"WARC/"):
      raise ValueError(f"no WARC version line at offset {offset}")
    start, pos, headers = offset, offset + len(line), {}
    position["offset"] = start
    while True:
      line = f.readline()
      pos += len(line)
      if not line:
        raise ValueError(f"truncated WARC header at offset {start}")
      if line in (b"\r\n", b"\n"):
        break
      name, _, value = line.decode("utf-8", "replace").partition(":")
      headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    block = f.read(length)
    if len(block) < length:
      raise ValueError(f"truncated WARC record at offset {start}")
    offset = pos + length
    yield start, headers, block


def _dechunk(body: bytes) -> bytes:
  out, pos = [], 0
  while pos < len(body):
    end = body.find(b"\r\n", pos)
    if end < 0:
      break
    size = int(body[pos:end].split(b";")[0].strip() or b"0", 16)
    if size == 0:
      break
    out.append(body[end + 2:end + 2 + size])
    pos = end + 2 + size + 2
  return b"".join(out)


def http_html(block: bytes):
  """(html as str or bytes, None) from an HTTP response block, or (None, reason) when it is no HTML."""
  sep = block.find(b"\r\n\r\n")
  head, body = (block[:sep], block[sep + 4:]) if sep >= 0 else (block, b"")
  lines = head.split(b"\r\n")
  headers = {}
  for line in lines[1:]:
    name, _, value = line.partition(b":")
    headers[name.strip().lower()] = value.strip()
  ctype = headers.get(b"content-type", b"text/html").lower()
  if b"html" not in ctype:
    return None, "not_html"
  if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
    body = _dechunk(body)
  if headers.get(b"content-encoding", b"").lower() in (b"gzip", b"x-gzip"):
    body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
  m = _CHARSET_RE.search(ctype)
  if m:
    try:
      return body.decode(m.group(1).decode()), None
    except (LookupError, UnicodeDecodeError):
      pass
  return body, None  # trafilatura detects the encoding of bytes itself


def read_warc(path: str, source: str):
  f = _decompressed_lines(path)
  position = {"offset": 0}
  try:
    for offset, headers, block in iter_warc(f, position):
      if headers.get("warc-type") != "response":
        continue
      html, why = http_html(block)
      if html is None:
        continue  # images, PDFs, redirects without HTML: not text, not an error
      text = extract_html(html)
      if not text.strip():
        yield "error", _error(path, offset, "html_no_text", headers.get("warc-target-uri", ""))
        continue
      doc_id = headers.get("warc-record-id") or f"{path}@{offset}"
      yield "doc", _doc(doc_id, text, path, source,
                        {"url": headers.get("warc-target-uri", ""), "date": headers.get("warc-date", ""),
                         "offset": offset})
  except Exception as e:  # truncated archive or malformed record: keep what was read.
    yield "error", _error(path, position["offset"], "unreadable_file", f"{type(e).__name__}: {e}")


def read_file(path: str, source: str, *, text_field: str = "text", id_field: str = "id"):
  """Dispatches on the file name; yields ("doc", doc) or ("error", error)."""
  name = path.lower()
  try:
    if name.endswith(_JSONL):
      yield from read_jsonl(path, source, text_field=text_field, id_field=id_field)
    elif name.endswith(".parquet"):
      yield from read_parquet(path, source, text_field=text_field, id_field=id_field)
    elif name.endswith(_HTML):
      yield from read_whole_file(path, source, html=True)
    elif name.endswith(_WARC):
      yield from read_warc(path, source)
    elif name.endswith(_TEXT):
      yield from read_whole_file(path, source)
    else:
      yield "error", _error(path, None, "unknown_format")
  except Exception as e:
    yield "error", _error(path, None, "unreadable_file", f"{type(e).__name__}: {e}")


def match_inputs(patterns: list[str]) -> list[tuple[str, str]]:
  """(path, source) for every file matching the globs, sorted; source = the glob it came from."""
  out = []
  for result in FileSystems.match(list(patterns)):
    pattern = result.pattern
    out.extend((m.path, pattern) for m in result.metadata_list)
  if not out:
    raise FileNotFoundError(f"no input files match {patterns}")
  return sorted(set(out))


class _ReadFn(beam.DoFn):
  def __init__(self, text_field, id_field):
    self._kw = dict(text_field=text_field, id_field=id_field)

  def process(self, path_source):
    path, source = path_source
    for kind, rec in read_file(path, source, **self._kw):
      yield rec if kind == "doc" else beam.pvalue.TaggedOutput("rejects", rec)


class ReadDocuments(beam.PTransform):
  """Globs -> {"docs", "rejects"}; the file list is matched at construction (deterministic)."""

  def __init__(self, patterns, *, text_field="text", id_field="id", **unused):
    super().__init__(label="read")
    self._files = match_inputs(patterns)
    self._kw = dict(text_field=text_field, id_field=id_field)

  def expand(self, pbegin):
    out = (pbegin
           | "files" >> beam.Create(self._files)
           | "spread" >> beam.Reshuffle()  # one file per work item, spread over workers
           | "parse" >> beam.ParDo(_ReadFn(**self._kw)).with_outputs("rejects", main="docs"))
    return {"docs": out.docs, "rejects": out.rejects}
