"""Reading curation inputs into documents, on Beam, through maxlm.data.readers.

The formats themselves (JSONL plain/.gz/.zst, Parquet, text, HTML, WARC) and their
error kinds live in maxlm.data.readers, shared with prepare and training; this
module turns them into curation's records.

Every document gets a stable id: the record's id field when it has one, else
"<file>:<line>" (JSONL, 1-based line) or "<file>:<row>" (Parquet) or "<file>"
(one text or HTML file is one document); a WARC response record keeps its
WARC-Record-ID, else "<file>@<offset>" (byte offset of the record in the
uncompressed stream). Files are matched through Beam's FileSystems, so the
same globs work on local disk, gs:// and s3://.

Bad input never stops the run: every bad line, record and file becomes a read
error {"stage": "read", "rule": <kind>, "file", "line", "detail"} in the
"rejects" output; the driver checks them against the error budget after the run.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from maxlm.data import readers
from maxlm.data.readers import extract_html  # noqa: F401  (re-exported)
from maxlm.data.warc import http_html, iter_warc  # noqa: F401  (re-exported)


def _error(path: str, line, rule: str, detail: str = "") -> dict:
  return {"id": f"{path}:{line}" if line is not None else path, "stage": "read", "rule": rule,
          "file": path, "line": line, "detail": detail[:200]}


class _Errors:
  """The ErrorLog interface readers report to, collecting curation's error records."""

  def __init__(self):
    self.pending = []

  def add(self, path, kind, line=None, detail=""):
    self.pending.append(_error(path, line, kind, detail))


def read_file(path: str, source: str, *, text_field: str = "text", id_field: str = "id"):
  """Yields ("doc", doc) or ("error", error) for one file, in file order."""
  errors = _Errors()
  fmt = readers.format_of(path)
  for rec in readers.read_file(path, errors, text_field=text_field):
    yield from (("error", e) for e in errors.pending)
    errors.pending.clear()
    rec_id = rec.fields.get(id_field)
    if rec_id is not None:
      doc_id = str(rec_id)
    elif rec.line is None:
      doc_id = path
    else:
      doc_id = f"{path}{'@' if fmt == 'warc' else ':'}{rec.line}"
    meta = {k: v for k, v in rec.fields.items() if k != id_field}
    yield "doc", {"id": doc_id, "text": rec.text, "source": source, "meta": dict(meta, file=path)}
  yield from (("error", e) for e in errors.pending)


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
  def __init__(self, text_field, id_field, progress_dir=None):
    self._kw = dict(text_field=text_field, id_field=id_field)
    self._progress_dir = progress_dir

  def setup(self):
    from maxlm.curate import progress  # pylint: disable=g-import-not-at-top
    self._counter = progress.Counter(self._progress_dir) if self._progress_dir else None

  def process(self, item):
    index, path, source = item
    for kind, rec in read_file(path, source, **self._kw):
      if self._counter is not None:
        self._counter.record()
      yield rec if kind == "doc" else beam.pvalue.TaggedOutput("rejects", rec)
    if self._counter is not None:
      self._counter.file_done(index)

  def teardown(self):
    if self._counter is not None:
      self._counter.flush()


class ReadDocuments(beam.PTransform):
  """Globs -> {"docs", "rejects"}; the file list is matched at construction (deterministic).

  progress_dir: where the workers keep their counts for maxlm.curate.progress (None: no counts).
  """

  def __init__(self, patterns, *, text_field="text", id_field="id", progress_dir=None, **unused):
    super().__init__(label="read")
    self._files = match_inputs(patterns)
    self._kw = dict(text_field=text_field, id_field=id_field, progress_dir=progress_dir)

  def expand(self, pbegin):
    files = [(i, path, source) for i, (path, source) in enumerate(self._files)]
    out = (pbegin
           | "files" >> beam.Create(files)
           | "spread" >> beam.Reshuffle()  # one file per work item, spread over workers
           | "parse" >> beam.ParDo(_ReadFn(**self._kw)).with_outputs("rejects", main="docs"))
    return {"docs": out.docs, "rejects": out.rejects}
