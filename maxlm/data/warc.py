"""WARC parsing (ISO 28500), without warcio (not in the environment).

A record is a version line, header lines, a blank line, Content-Length bytes of
block and two CRLFs; .warc.gz holds one gzip member per record, as Common Crawl
ships them (maxlm.data.readers decompresses the stream). Only "response"
records whose HTTP Content-Type is HTML become documents; the HTTP body is
de-chunked and gunzipped when its headers say so and decoded with the declared
charset (else the extractor guesses from the bytes).
"""

from __future__ import annotations

import re
import zlib

_CHARSET_RE = re.compile(rb"charset=[\"']?([A-Za-z0-9_\-.:]+)", re.I)


def iter_warc(f, position: dict | None = None):
  """Yields (offset, headers, block) for each record of an uncompressed WARC stream.

  Header names are lowercased. Raises ValueError on a malformed or cut record: a
  WARC cannot be resynchronised without scanning, so the rest of the file is
  lost. `position["offset"]` is the start of the record being read, for the
  error report.
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
