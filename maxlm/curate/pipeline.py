"""The curation pipeline: read -> per-document stages -> dedup -> decontam -> write.

`build_pipeline` wires the stages named in the config into a Beam pipeline;
`run` adds the runner, waits, writes the report and checks the error budget.
Only this module sees the whole curate config; each stage gets its own
sub-config as keyword arguments (`NearDedup(**config.near_dedup)`).

Outputs under DIR:
  docs/<domain>-SSSSS-of-NNNNN.jsonl.zst   kept documents {"id", "text", "source", "meta"}
                                           (.jsonl with write.compression="none")
  rejects/part-*.jsonl.zst                 removed documents with "stage", "rule", "detail"
  notes/part-*.jsonl                       kept-but-changed documents (masked contamination)
  read_errors.jsonl                        bad input, with file and line
  summary.json, summary.md                 counts and bytes per stage, source and rule (report.py)
  stages.png, rules.png, sources.png, distributions.png   the report's charts

Documents are written as JSONL compressed with zstd: line-oriented, so readers
stream them; free-form metadata without a schema; zstd decompresses at >1 GB/s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile

import apache_beam as beam
import zstandard
from apache_beam.io import fileio
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from maxlm.curate import outdir, report
from maxlm.curate.classifier import ClassifierScore
from maxlm.curate.decontam import Decontaminate
from maxlm.curate.dedup import Boilerplate, ExactDedup, NearDedup
from maxlm.curate.read import ReadDocuments
from maxlm.curate.stages import (C4Lines, FineWebQuality, GopherQuality, GopherRepetition, LanguageId,
                                 Normalize)
from maxlm.data import beam as beam_lib
from maxlm.data import config as data_config


def _model_score(**kwargs):
  from maxlm.curate.modelscore import ModelScore  # imports jax only when the stage is on
  return ModelScore(**kwargs)


# In FineWeb's order: language, repetition, quality, C4, FineWeb; then scores (which
# dedup's keep rule reads), exact dedup, boilerplate lines (after exact dedup, so
# copies of one page do not count as repetition across pages), near dedup, decontam.
STAGES = (
    ("normalize", Normalize),
    ("langid", LanguageId),
    ("gopher_repetition", GopherRepetition),
    ("gopher_quality", GopherQuality),
    ("c4", C4Lines),
    ("fineweb", FineWebQuality),
    ("classifier", ClassifierScore),
    ("model_score", _model_score),
    ("exact_dedup", ExactDedup),
    ("boilerplate", Boilerplate),
    ("near_dedup", NearDedup),
    ("decontam", Decontaminate),
)
# Scores whose distributions the report draws: meta field -> histogram bin width.
SCORE_HISTOGRAMS = {"classifier": 0.05, "model_score": 0.25}


def _nbytes(rec: dict) -> int:
  return len(rec.get("text", "").encode("utf-8"))


class _CountFn(beam.DoFn):
  """Sums (docs, bytes) per key over a bundle and emits one element per key at its end.

  The counts of every stage meet in one Flatten, where the runner encodes each
  element (combiner lifting stops at a Flatten): per-document count elements
  were 90k of the 120k elements the dedup benchmark moved between stages.
  """

  def __init__(self, keys_fn):
    self._keys_fn = keys_fn

  def start_bundle(self):
    self._sums = {}

  def process(self, r):
    sums = self._sums
    for key, (docs, nbytes) in self._keys_fn(r):
      acc = sums.get(key)
      if acc is None:
        sums[key] = [docs, nbytes]
      else:
        acc[0] += docs
        acc[1] += nbytes

  def finish_bundle(self):
    for key, (docs, nbytes) in self._sums.items():
      yield WindowedValue((key, (docs, nbytes)), GlobalWindow().max_timestamp(), [GlobalWindow()])
    self._sums = {}


def _count(pcoll, label: str, key_fn):
  """Counts (docs, bytes) per key_fn(r) = (stage, kind, key), and per source as (stage, "source_" + kind, source)."""
  def keys(r):
    (stage, kind, key), value = key_fn(r), (1, _nbytes(r))
    return (((stage, kind, key), value), ((stage, "source_" + kind, str(r.get("source", ""))), value))
  return pcoll | f"count_{label}" >> beam.ParDo(_CountFn(keys))


def _score_bin(doc, stage, field, width):
  value = doc["meta"].get(field)
  if isinstance(value, (int, float)) and value == value:  # not NaN
    yield (stage, "score_hist", f"{math.floor(value / width) * width:.4g}"), (1, 0)


class _JsonlSink(fileio.FileSink):
  """JSONL, zstd-compressed unless `compress` is False (maxlm.data's jsonl source reads plain files)."""

  def __init__(self, compress: bool = True):
    self._compress = compress

  def open(self, fh):
    self._fh = fh
    self._writer = zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) if self._compress else fh

  def write(self, record):
    self._writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

  def flush(self):
    if self._compress:
      self._writer.flush(zstandard.FLUSH_FRAME)  # Beam closes the file itself


def _sum_pairs(pairs) -> tuple[int, int]:
  docs = nbytes = 0
  for d, b in pairs:
    docs, nbytes = docs + d, nbytes + b
  return docs, nbytes


def _to_json(rec) -> str:
  return json.dumps(rec, ensure_ascii=False)


class _CountWritten(beam.DoFn):
  """Passes documents on to the writer, counting them for maxlm.curate.progress."""

  def __init__(self, progress_dir: str):
    self._progress_dir = progress_dir

  def setup(self):
    from maxlm.curate import progress  # pylint: disable=g-import-not-at-top
    self._counter = progress.Counter(self._progress_dir)

  def process(self, doc):
    self._counter.written()
    yield doc

  def teardown(self):
    self._counter.flush()


def build_pipeline(p: beam.Pipeline, config, inputs, output: str, progress_dir: str | None = None,
                   shards: dict | None = None):
  """Adds every enabled stage of `config` to `p`, reading `inputs` and writing under `output`.

  progress_dir: a local directory where the workers count records read and
  documents written (maxlm.curate.progress); None counts nothing.
  shards: also write the kept documents as tokenize-once shards, in this
  pipeline: {"out", "tokenizer", "heldout_fraction", "shard_tokens"} (maxlm.curate.to_shards).
  """
  # --- read ---
  read = p | ReadDocuments(inputs, progress_dir=progress_dir, **config.read)
  docs = read["docs"]
  rejects, notes = [read["rejects"]], []
  counts = [_count(docs, "read", lambda r: ("read", "kept", ""))]
  stage_names = ["read"]

  # --- per-document stages, dedup, decontam ---
  for name, ctor in STAGES:
    sub = config[name].to_dict()
    if not sub.get("enabled", False):
      continue
    out = docs | ctor(**sub)
    docs = out["docs"]
    rejects.append(out["reject_batches"] if "reject_batches" in out else out["rejects"])
    if "notes" in out:
      notes.append(out["notes"])
    counts.append(_count(docs, name, lambda r, name=name: (name, "kept", "")))
    if name == "langid":
      counts.append(docs | "count_langs" >> beam.ParDo(_CountFn(
          lambda d: [(("langid", "lang", d["meta"]["lang"]), (1, _nbytes(d)))])))
    if name in SCORE_HISTOGRAMS:
      field = sub.get("score_field") or {"classifier": "quality_score", "model_score": "model_logprob"}[name]
      counts.append(docs | f"hist_{name}" >> beam.FlatMap(_score_bin, name, field, SCORE_HISTOGRAMS[name]))
    if "cluster_sizes" in out:
      counts.append(out["cluster_sizes"] | "count_cluster_sizes" >> beam.ParDo(
          _CountFn(lambda n: [(("near_dedup", "cluster_size", str(n)), (1, 0))])))
    stage_names.append(name)

  # --- write ---
  # Some stages give their rejects as lists (reject_batches): the Flatten stores a list
  # for the price of one element.
  all_rejects = (rejects | "flatten_rejects" >> beam.Flatten()
                 | "unbatch_rejects" >> beam.FlatMap(lambda r: r if isinstance(r, list) else [r]))
  counts.append(_count(all_rejects, "rejects", lambda r: (r["stage"], "removed", r["rule"])))
  if notes:
    all_notes = notes | "flatten_notes" >> beam.Flatten()
    counts.append(all_notes | "count_notes" >> beam.Map(lambda r: ((r["stage"], "note", r["kind"]), (1, 0))))
    _ = (all_notes | "notes_json" >> beam.Map(_to_json)
         | "write_notes" >> beam.io.WriteToText(os.path.join(output, "notes", "part"), ".jsonl"))
  partition_by, default = config.write.partition_by, config.write.default_partition
  compress = config.write.get("compression", "zstd") == "zstd"
  if progress_dir:
    docs = docs | "count_written" >> beam.ParDo(_CountWritten(progress_dir))
  _ = docs | "write_docs" >> fileio.WriteToFiles(
      path=os.path.join(output, "docs"),
      destination=lambda d: str(d["meta"].get(partition_by) or default),
      sink=lambda dest: _JsonlSink(compress),
      file_naming=fileio.destination_prefix_naming(".jsonl.zst" if compress else ".jsonl"),
      shards=config.write.num_shards)
  if shards:
    from maxlm.curate import to_shards  # pylint: disable=g-import-not-at-top
    to_shards.write_shards(docs, out_dir=shards["out"], tokenizer_path=shards["tokenizer"],
                           partition_by=partition_by, default=default,
                           heldout_fraction=shards["heldout_fraction"],
                           shard_tokens=shards["shard_tokens"])
  drop_text = not config.write.rejects_keep_text
  _ = (all_rejects
       | "rejects_json" >> beam.Map(lambda r: _to_json({k: v for k, v in r.items() if k != "text"} if drop_text else r))
       | "write_rejects" >> beam.io.WriteToText(os.path.join(output, "rejects", "part"), ".jsonl.zst"))
  # read_errors.jsonl and counts.jsonl: one GroupByKey by file name, each file written
  # whole by one worker (both are small: counts per key, errors within the error budget);
  # two WriteToText would add 22 transforms, whose set-up cost more than the writing.
  # The (name, None) markers make both files exist when they have no lines.
  errors = read["rejects"] | "errors_json" >> beam.Map(lambda r: ("read_errors.jsonl", _to_json(r)))
  counts_json = (counts
                 | "flatten_counts" >> beam.Flatten()
                 | "sum_counts" >> beam.CombinePerKey(_sum_pairs)
                 | "counts_json" >> beam.Map(lambda kv: ("counts.jsonl", json.dumps([list(kv[0]), list(kv[1])]))))
  markers = p | "small_files" >> beam.Create([("read_errors.jsonl", None), ("counts.jsonl", None)],
                                             reshuffle=False)
  _ = ((markers, errors, counts_json)
       | "flatten_small" >> beam.Flatten()
       | "group_small" >> beam.GroupByKey()
       | "write_small" >> beam.Map(_write_lines, output))
  return stage_names


def _write_lines(name_lines, output: str) -> None:
  """Writes one small output file, output/name, from its (name, lines) group."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  name, lines = name_lines
  with FileSystems.create(os.path.join(output, name)) as f:
    for line in lines:
      if line is not None:
        f.write(line.encode("utf-8") + b"\n")


def run(config, inputs, output: str, beam_args=(), overwrite: bool = False,
        progress: bool = False, shards: dict | None = None) -> dict:
  """Runs the pipeline to completion; returns the summary (also written under `output`).

  `output` must be empty, or hold this same run (see outdir.claim); `overwrite`
  replaces another run's outputs. `progress`: lines with records read / total,
  rate and ETA on stderr while it runs (local runner only: maxlm.curate.progress).
  `shards`: also end in the shard writer (see build_pipeline); its "out" must
  be empty or absent; the summary gets "shards": the manifest's path.
  """
  from maxlm.curate import read  # pylint: disable=g-import-not-at-top
  fp = outdir.fingerprint(config.to_dict(), read.match_inputs(inputs))
  done = outdir.claim(output, fp, overwrite)
  if done is not None:
    report.check_error_budget(done, config.read.max_error_fraction)
    return done
  if shards:
    shards = dict(shards)
    shards.setdefault("heldout_fraction", data_config.default_data_config().heldout_fraction)
    shards.setdefault("shard_tokens", 16_000_000)
    if os.path.isdir(shards["out"]) and os.listdir(shards["out"]):
      raise FileExistsError(f"--shards_out={shards['out']} is not empty: shards of another run "
                            "would mix with these; give a new directory")
  options, runner = beam_lib.pipeline_options(beam_args, config.num_workers)
  if runner is not None and not any(a.startswith("--direct_running_mode") for a in beam_args or ()):
    from apache_beam.options.pipeline_options import DirectOptions  # pylint: disable=g-import-not-at-top
    direct = options.view_as(DirectOptions)
    if direct.direct_num_workers == 1:
      # One worker runs in this process: a worker subprocess would only add a second
      # interpreter (its imports: ~1 CPU s) and gRPC encode/decode of every element
      # between it and the runner (3 of 12 CPU s of the dedup benchmark).
      direct.direct_running_mode = "in_memory"
  with contextlib.ExitStack() as stack:
    progress_dir = watcher = None
    if progress and runner is not None:  # the local runner: its workers share this disk
      from maxlm.curate import progress as progress_lib  # pylint: disable=g-import-not-at-top
      progress_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="maxlm-curate-"))
      watcher = progress_lib.Watcher(progress_dir, [f for f, _ in read.match_inputs(inputs)])
      stack.callback(watcher.halt)  # a failed pipeline stops the thread without a last line
      watcher.start()
    with beam.Pipeline(runner=runner, options=options) as p:
      stage_names = build_pipeline(p, config, inputs, output, progress_dir=progress_dir,
                                   shards=shards)
    if watcher is not None:
      watcher.stop()
  if shards:
    from maxlm.curate import to_shards  # pylint: disable=g-import-not-at-top
    to_shards.write_manifest(shards["out"], shards["tokenizer"])
  summary = report.write_report(output, stage_names, config.to_dict(),
                                with_charts=config.write.get("charts", True))
  logging.info("curate: %s", json.dumps(summary["stages"]))
  outdir.mark_complete(output, fp)
  report.check_error_budget(summary, config.read.max_error_fraction)
  return summary
