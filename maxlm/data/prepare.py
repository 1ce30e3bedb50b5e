r"""Tokenize once on Apache Beam: sources -> ArrayRecord token shards + manifest.

  python -m maxlm.data.prepare --config=configs/data_mixture.py:three_domains \
      --tokenizer=/tmp/tok.model --out=/tmp/shards            # local, all cores
  python -m maxlm.data.prepare --config=... --tokenizer=... --out=/shared/shards \
      --runner=FlinkRunner --flink_master=host:8081 --environment_type=LOOPBACK
  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/run \
      --config.data.tokenizer.path=/tmp/tok.model --config.data.prepared_dir=/tmp/shards

Flags prepare does not know are Beam pipeline options. Without --runner it is
Beam's FnApiRunner with one process per core (maxlm.data.beam, shared with
maxlm.curate; DirectRunner's default Prism runner downloads a binary and
fails offline). A cluster runner needs --out on a filesystem every worker sees
(the shards are written by the workers with ArrayRecord's file writer).

What happens:
  1. Documents get what training from raw text gives them (pipeline.plan_sources):
     the held-out split by a stable hash of each document's key, the same
     curriculum order, the same global doc ids (file position, after earlier
     sources), so training from shards sees exactly the batches training from
     raw text would.
  2. Each split is cut into shards of a target size in tokens
     (`shard_tokens`, 16M tokens = 32 MB at uint16 by default): the documents
     per shard are fixed from a sample of the source's first documents (or
     `docs_per_shard`) and saved in prepare_plan.json, so a rerun cuts identically.
  3. In this process (--workers=1, no Beam flags) each source is streamed once
     in file order, each document into its split's open shard, in batches (a
     JSONL block is decoded in one call and parsed line by line with json's C
     scanner; the split of a batch is one array comparison; SentencePiece
     encodes 512 documents a call on one thread): memory is one batch and one
     shard writer, whatever the corpus, and tokens/s per core is measured
     against the tokenizer's own batch encode (bench/data_scale.py,
     BENCHMARKS.md). A source with an order_by (a curriculum needs every
     document) is planned whole.
     On Beam no worker plans or holds a source: plain JSONL files are read as
     byte ranges (--range_bytes, 64 MiB), other files and kinds one whole
     file / source per worker; ranges are tokenized into segments, then each
     shard is copied out of the segments covering it with global ids, so the
     shards equal the in-process ones (maxlm.data.prepare_stream).
  4. The manifest lists every shard with its document and token counts;
     errors.json keeps the bad-input report for training runs that never see
     the raw files. Layout and record format: maxlm/data/shards.py.

Resumable: a shard is written to a temporary name and renamed, then its .json
summary (the "done" marker) is written; a rerun writes only shards without a
summary, so a killed prepare loses nothing it finished and a rerun produces
byte-identical shards and manifest. On Beam each range's result (its counts
and error log, in <out>/_ranges/) marks it done the same way.

Progress: MB read of the sources' files over their total (known up front;
compressed bytes for a compressed file), an ETA, and the shards, documents
and tokens so far.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import threading
import time

import numpy as np

from maxlm.data import beam as beam_lib
from maxlm.data import config as config_lib
from maxlm.data import doc_index
from maxlm.data import prepare_stream as stream
from maxlm.data import readers as readers_lib
from maxlm.data import shards as shards_lib
from maxlm.data import sources as sources_lib
from maxlm.data import tokenizer as tokenizer_lib

SHARD_TOKENS = 16_000_000  # default target tokens per shard (32 MB of uint16)
PLAN = "prepare_plan.json"
_SAMPLE_DOCS = 64  # documents tokenized to estimate tokens per document
_ENCODE_BATCH = 512  # documents per SentencePiece batch call while writing a shard


def prepare(data_config, tokenizer_path: str, out_dir: str, workers: int = 1,
            docs_per_shard: int = 0, shard_tokens: int = SHARD_TOKENS,
            progress: bool = True, beam_args=None,
            range_bytes: int = stream.RANGE_BYTES) -> dict:
  """Writes (or completes) the shards and manifest; returns the manifest.

  workers=1 and no beam_args: in this process, streaming each source once
  (sources with an order_by are planned whole: a curriculum needs every
  document). Otherwise Beam pipelines over byte ranges of the sources
  (beam_args: Beam pipeline flags; workers: local processes, 0 = all cores;
  range_bytes: bytes of a plain JSONL file per unit of work).
  """
  for s in config_lib.iter_sources(data_config):
    if sources_lib.is_instruct(s):  # the shard format has no loss mask (maxlm.data.instruct)
      raise ValueError(
          f"prepare: data.sources.{s['name']} is an instruction source (kind {s['kind']!r});"
          " instruction sources are read raw by training, beside the shards: prepare a config"
          " without it, then train with it and data.prepared_dir")
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  vocab = tokenizer_lib.load(tokenizer_path).vocab_size
  dtype = shards_lib.token_dtype(vocab)
  old = os.path.join(out_dir, shards_lib.MANIFEST)
  if os.path.exists(old) and shards_lib.read_json(old)["tokenizer_sha256"] != sha:
    raise ValueError(f"{out_dir} holds shards of another tokenizer; use a new --out")
  os.makedirs(out_dir, exist_ok=True)
  config_lib.validate(data_config)
  t0 = time.time()
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    # The total is known up front: the bytes of the sources' files (compressed
    # ones count the compressed bytes read; the installed corpora declare their
    # files). A source whose files are unknown (seqio) adds none: with no file
    # at all the bar shows counts and rates, no ETA.
    total = input_bytes(data_config)
    bar = tqdm(desc="prepare", total=total or None, unit="B", unit_scale=True,
               bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B read "
                           "[{elapsed}<{remaining}, {rate_fmt}{postfix}]") if total else None)
  run = _Run(out_dir, tokenizer_path, sha, dtype, docs_per_shard, shard_tokens, bar)
  if workers == 1 and not beam_args:
    layout, errors, written = _prepare_in_process(data_config, run)
  else:
    layout, errors, written = _prepare_on_beam(data_config, run, workers, beam_args or (),
                                               range_bytes)
  if bar is not None:  # the last line: every byte read, the manifest's shard count
    run.shards = sum(len(lay[k]) for lay in layout.values() for k in ("train", "heldout"))
    if bar.total:
      bar.update(bar.total - bar.n)
    run.show()
    bar.refresh()
    bar.close()
  shards_lib.write_errors(out_dir, errors)
  manifest = shards_lib.build_manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype)
  manifest["last_run"] = dict(shards_written=len(written), tokens=sum(written),
                              seconds=round(time.time() - t0, 2))
  shards_lib.write_json(old, manifest)
  return manifest


def input_bytes(data_config) -> int:
  """Bytes of every file the sources read (sources.source_files; 0 where unknown)."""
  total = 0
  for src in config_lib.iter_sources(data_config):
    try:
      total += sum(os.path.getsize(p) for p in sources_lib.source_files(src))
    except (OSError, ImportError):
      pass  # reading the source reports it
  return total


def _si(n: int) -> str:
  return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


@dataclasses.dataclass
class _Run:
  """What every shard of one prepare call shares."""
  out_dir: str
  tokenizer_path: str
  sha: str
  dtype: str
  docs_per_shard: int
  shard_tokens: int
  bar: object  # tqdm or None: MB read of the sources' files / their total, with an ETA
  shards: int = 0  # progress counts
  docs: int = 0
  tokens: int = 0  # tokenized now (finished shards of an earlier run are not re-tokenized)
  read: dict = dataclasses.field(default_factory=dict)  # path -> bytes read

  def shard_path(self, name: str, split: str, k: int) -> tuple[str, str]:
    rel = os.path.join(name, f"{split}-{k:05d}")
    return rel, os.path.join(self.out_dir, rel)

  def clean(self, name: str) -> None:
    """Removes half-written files of a killed run in a source's directory (their shards are redone)."""
    d = os.path.join(self.out_dir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
      if ".tmp" in f:
        os.remove(os.path.join(d, f))

  def tick(self) -> None:
    """A shard finished (or found finished)."""
    self.shards += 1
    self.show()

  def advance(self, docs: int) -> None:
    """Documents streamed (the progress line's count)."""
    self.docs += docs

  def add_tokens(self, tokens: int) -> None:
    self.tokens += tokens

  def read_to(self, path: str, position: int) -> None:
    """`path` has been read up to byte `position` (compressed bytes for a
    compressed file): the bar's MB read and its ETA move."""
    self.read[path] = position
    if self.bar is not None:
      n = sum(self.read.values())
      self.bar.update(n - self.bar.n)
      self.show()

  def show(self) -> None:
    if self.bar is not None:
      self.bar.set_postfix_str(f"{self.shards} shards, {self.docs:,} docs, "
                               f"{_si(self.tokens)} tokens", refresh=False)


def _prepare_in_process(data_config, run: _Run):
  """Each source in turn: streamed (one pass, O(batch) memory) or, with an
  order_by, planned whole. Returns (layout, error logs, tokens of the shards written)."""
  budget = data_config.get("error_budget", -1)
  fraction = data_config.heldout_fraction
  cut = _saved_cut(run, [s["name"] for s in config_lib.iter_sources(data_config)])
  layout, errors, written, offset, bad = {}, {}, [], 0, 0
  base = _plan_fields(data_config)
  for src in config_lib.iter_sources(data_config):
    name = src["name"]
    run.clean(name)
    per = cut.get(name)
    if per is None:
      per = cut[name] = _docs_per_shard(
          run, [] if run.docs_per_shard else _stream_sample(src, fraction))
      _save_cut(run, cut)
    got = None
    if not src.get("order_by"):
      errors[name] = readers_lib.ErrorLog(budget)
      got = _stream_source(src, offset, fraction, per, run, errors[name])
    if got is None:  # a curriculum order, or the held-out rule needs the whole source
      plan = _worker_plan(json.dumps(dict(src), sort_keys=True, default=list),
                          json.dumps(base, sort_keys=True, default=list))
      _, errors[name] = sources_lib.cached_index(src, budget)
      got = _write_planned(plan, offset, per, run)
    lay, n_docs, tokens = got
    if not n_docs:
      raise ValueError(f"data.sources.{name}: no documents")
    bad += errors[name].total
    if 0 <= budget < bad:
      raise sources_lib.DataErrorBudgetExceeded(
          f"data error budget exceeded: {bad} bad inputs over all sources > "
          f"data.error_budget={budget}; see data.error_report(config)")
    layout[name] = dict(domain=src["domain"], train=lay["train"], heldout=lay["heldout"],
                        doc_id_range=[offset, offset + n_docs])
    written += tokens
    offset += n_docs
  return layout, errors, written


def _stream_sample(src, fraction) -> list[str]:
  """The first training documents of a source, in file order (what plan.train[:n] holds)."""
  out = []
  for doc in sources_lib.iter_documents(src, readers_lib.ErrorLog()):
    if not (fraction > 0 and doc_index.unit_hash(doc.key.split(":", 1)[1]) < fraction):
      out.append(doc.text)
      if len(out) >= _SAMPLE_DOCS:
        break
  return out


def _stream_source(src, offset, fraction, per, run: _Run, errors):
  """One pass over a source in file order, each document to its split's open
  shard; the same documents, ids and cut as planning the source
  (pipeline.plan_sources: held out by unit_hash of the key without the source
  name, ids by file position). Returns (layout, documents, tokens written), or
  None when the split needs the whole source (no document fell in the
  held-out fraction: planning holds out the lowest hash instead).

  Documents go through in batches (a few thousand per reader block): the
  split of a batch is one vectorised comparison, each split's documents are
  handed on as lists, so the Python work per document is a few operations
  beside the tokenizer's own (BENCHMARKS.md: prepare vs SentencePiece's
  batch encode speed)."""
  name = src["name"]
  splits = {k: _SplitShards(run, name, k, per) for k in ("train", "heldout")}
  n = 0
  for keys, texts in stream.document_batches(src, errors, run.read_to):
    ids = range(offset + n, offset + n + len(texts))
    held = stream.held_out(keys, fraction)
    if held.any():
      keep = (~held).tolist()
      splits["train"].add_batch(list(itertools.compress(texts, keep)),
                                list(itertools.compress(ids, keep)))
      held = held.tolist()
      splits["heldout"].add_batch(list(itertools.compress(texts, held)),
                                  list(itertools.compress(ids, held)))
    else:
      splits["train"].add_batch(texts, ids)
    n += len(texts)
  n_held = splits["heldout"].docs
  if (fraction > 0 and n >= 2 and not n_held) or (n < 2 and n_held):
    for sp in splits.values():
      sp.abort()
    return None
  tokens = [t for sp in splits.values() for t in sp.finish()]
  return {k: sp.rels for k, sp in splits.items()}, n, tokens


class _SplitShards:
  """The shards of one source's split, filled in order; finished shards are skipped (resume)."""

  def __init__(self, run: _Run, name: str, split: str, per: int):
    self._run, self._name, self._split, self._per = run, name, split, per
    self.rels, self.written, self.docs = [], [], 0
    self._texts, self._ids, self._writer, self._in_shard, self._paths = [], [], None, 0, []

  def add(self, text: str, doc_id: int) -> None:
    self.add_batch([text], [doc_id])

  def add_batch(self, texts: list, doc_ids) -> None:
    """Documents in order; cut into this split's shards of `per` documents."""
    i, n = 0, len(texts)
    while i < n:
      if self._in_shard == 0:
        rel, path = self._run.shard_path(self._name, self._split, len(self.rels))
        self.rels.append(rel)
        done = shards_lib.shard_done(path, self._run.sha)
        self._writer = None if done else shards_lib.ShardWriter(
            path, self._run.tokenizer_path, self._run.sha, self._run.dtype)
      take = min(n - i, self._per - self._in_shard)
      if self._writer is not None:
        self._texts += texts[i:i + take]
        self._ids += doc_ids[i:i + take]
        if len(self._texts) >= _ENCODE_BATCH:
          self._flush()
      self.docs += take
      self._in_shard += take
      self._run.advance(take)
      i += take
      if self._in_shard == self._per:
        self._close_shard()

  def _flush(self) -> None:
    before = self._writer.tokens
    for a in range(0, len(self._texts), _ENCODE_BATCH):
      self._writer.add_texts(self._texts[a:a + _ENCODE_BATCH], self._ids[a:a + _ENCODE_BATCH])
    self._run.add_tokens(self._writer.tokens - before)
    self._texts, self._ids = [], []

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._flush()
      self.written.append(self._writer.close())
      self._paths.append(self._writer.path)
    self._run.tick()
    self._texts, self._ids, self._writer, self._in_shard = [], [], None, 0

  def finish(self) -> list[int]:
    """Closes the last, partial shard; returns the tokens of each shard written now."""
    if self._in_shard:
      self._close_shard()
    return self.written

  def abort(self) -> None:
    """Removes what this pass wrote (the source is redone by planning it)."""
    if self._writer is not None:
      self._writer.abandon()
    self._writer = None
    for path in self._paths:  # the summary first: a kill in between leaves no "done" shard
      for ext in (".json", ".array_record"):
        os.remove(path + ext)


def _write_planned(plan, offset, per, run: _Run):
  """A planned source's shards, in this process (the index path of an ordered source)."""
  lay, tokens = {}, []
  for split in ("train", "heldout"):
    docs = _Shifted(getattr(plan, split), offset)
    n = len(getattr(plan, split))
    lay[split] = []
    for k, a in enumerate(range(0, n, per)):
      rel, path = run.shard_path(plan.name, split, k)
      lay[split].append(rel)
      if not shards_lib.shard_done(path, run.sha):
        tokens.append(_write_range(path, run.tokenizer_path, run.sha, run.dtype, docs, a,
                                   min(n, a + per)))
      run.tick()
  return lay, len(plan.train) + len(plan.heldout), tokens


def _write_range(path, tokenizer_path, sha, dtype, docs, start, stop) -> int:
  """Writes documents [start, stop) of `docs` (a plan split) as one shard; returns tokens."""
  w = shards_lib.ShardWriter(path, tokenizer_path, sha, dtype)
  for a in range(start, stop, _ENCODE_BATCH):
    w.add([docs[i] for i in range(a, min(stop, a + _ENCODE_BATCH))])
  return w.close()


def _prepare_on_beam(data_config, run: _Run, workers, beam_args, range_bytes):
  """Beam over byte ranges (maxlm.data.prepare_stream): no worker plans or holds
  a source, and the shards, ids and manifest equal the in-process prepare's.
  Sources with an order_by (a curriculum needs every document) and a source
  whose held-out split needs the whole source are planned here, as in-process."""
  budget = data_config.get("error_budget", -1)
  fraction = data_config.heldout_fraction
  srcs = list(config_lib.iter_sources(data_config))
  cut = _saved_cut(run, [s["name"] for s in srcs])
  for src in srcs:
    if src["name"] not in cut:
      cut[src["name"]] = _docs_per_shard(
          run, [] if run.docs_per_shard else _stream_sample(src, fraction))
  _save_cut(run, cut)
  job = stream.Job(run.out_dir, run.tokenizer_path, run.sha, run.dtype, fraction)
  ranges = {}
  for src in srcs:
    run.clean(src["name"])
    if not src.get("order_by"):
      ranges[src["name"]] = _saved_ranges(job, src, range_bytes)
  flat = [r for rs in ranges.values() for r in rs]
  beam = functools.partial(_beam_map, workers=workers, beam_args=beam_args)
  # Pass 1: line numbers of the ranges that start inside a file.
  beam(stream.count_lines, job, [(r,) for r in flat
                                 if r.ranged and not os.path.exists(stream.lines_path(job, r))])
  linenos = {}
  for rs in ranges.values():
    before = {}
    for r in rs:
      if r.ranged:
        linenos[r] = stream.first_line(before.get(r.path, 0), r)
        before[r.path] = before.get(r.path, 0) + shards_lib.read_json(
            stream.lines_path(job, r))["newlines"]
  # Pass 2: segments (tokenized ranges), with the bar following the results.
  todo = [r for r in flat if not os.path.exists(stream.result_path(job, r))]
  results = {}
  watch = _Watch(run, job, flat)
  with watch:
    beam(stream.write_segment, job, [(r, linenos.get(r, 0)) for r in todo])
    results.update({r: shards_lib.read_json(stream.result_path(job, r)) for r in flat})
    layout, errors, written, offset, bad, tasks = {}, {}, [], 0, 0, []
    for src in srcs:
      name = src["name"]
      rs = ranges.get(name)
      res = [results[r] for r in rs] if rs else []
      n, n_held = sum(x["docs"] for x in res), sum(x["heldout"] for x in res)
      if rs is not None and not ((fraction > 0 and n >= 2 and not n_held) or (n < 2 and n_held)):
        errors[name] = readers_lib.ErrorLog()
        for x in res:
          stream.merge_log(errors[name], x["errors"])
        lay, shard_tasks = _shards_of(job, run, name, rs, res, offset, cut[name])
        tasks += shard_tasks
      else:  # planned here (ordered; or no document fell in the held-out fraction)
        plan = _worker_plan(json.dumps(dict(src), sort_keys=True, default=list),
                            json.dumps(_plan_fields(data_config), sort_keys=True, default=list))
        _, errors[name] = sources_lib.cached_index(src, budget)
        lay, n, tokens = _write_planned(plan, offset, cut[name], run)
        written += tokens
      if not n:
        raise ValueError(f"data.sources.{name}: no documents")
      bad += errors[name].total
      if 0 <= budget < bad:
        raise sources_lib.DataErrorBudgetExceeded(
            f"data error budget exceeded: {bad} bad inputs over all sources > "
            f"data.error_budget={budget}; see data.error_report(config)")
      layout[name] = dict(domain=src["domain"], train=lay["train"], heldout=lay["heldout"],
                          doc_id_range=[offset, offset + n])
      offset += n
    # A segment a missing shard needs but a finished run removed: tokenize its range again.
    todo = [s for s in tasks if not shards_lib.shard_done(s.path, run.sha)]
    lost = {seg for s in todo for seg, *_ in s.segments
            if not os.path.exists(seg + ".array_record")}
    redo = [r for r in flat if any(stream.segment_path(job, r, k) in lost
                                   for k in ("train", "heldout"))]
    beam(stream.write_segment, job, [(r, linenos.get(r, 0)) for r in redo])
    # Pass 3: the shards, each copied out of the segments covering it.
    watch.shards(tasks, len(tasks) - len(todo))
    beam(stream.assemble, job, [(s,) for s in todo])
  missing = [s.path for s in todo if not shards_lib.shard_done(s.path, run.sha)]
  if missing:
    raise RuntimeError(f"prepare: {len(missing)} shards were not written, e.g. {missing[0]}")
  written += [shards_lib.read_json(s.path + ".json")["tokens"] for s in todo]
  for r in flat:  # the segments are copied: only the small results stay (a rerun skips)
    for k in ("train", "heldout"):
      for ext in (".array_record", ".json"):
        if os.path.exists(stream.segment_path(job, r, k) + ext):
          os.remove(stream.segment_path(job, r, k) + ext)
  return layout, errors, written


def _saved_ranges(job, src, range_bytes) -> list:
  """The source's ranges as the first run cut them (a rerun must number lines alike)."""
  path = os.path.join(job.dir(src["name"]), "ranges.json")
  source = json.dumps(dict(src), sort_keys=True, default=list)
  if os.path.exists(path):
    saved = shards_lib.read_json(path)
    if saved["source"] == source:
      for f in os.listdir(job.dir(src["name"])):  # a killed worker's half-written segment
        if ".tmp" in f:
          os.remove(os.path.join(job.dir(src["name"]), f))
      return [stream.Range(source, i, *r) for i, r in enumerate(saved["ranges"])]
  os.makedirs(job.dir(src["name"]), exist_ok=True)
  for f in os.listdir(job.dir(src["name"])):  # results of other ranges are stale
    os.remove(os.path.join(job.dir(src["name"]), f))
  rs = stream.make_ranges(src, range_bytes)
  shards_lib.write_json(path, dict(source=source,
                                   ranges=[[r.path, r.rel, r.start, r.end] for r in rs]))
  return rs


def _shards_of(job, run: _Run, name, rs, res, offset, per):
  """(layout, stream.Shard tasks) of a streamed source: documents [k*per, (k+1)*per)
  of each split, as the in-process cut, from the ranges' counts."""
  lay, tasks = {}, []
  for split in ("train", "heldout"):
    segs, pos, before = [], 0, 0
    for r, x in zip(rs, res):
      segs.append((stream.segment_path(job, r, split), pos, x[split], offset + before))
      pos += x[split]
      before += x["docs"]
    lay[split] = []
    for k, a in enumerate(range(0, pos, per)):
      rel, path = run.shard_path(name, split, k)
      lay[split].append(rel)
      b = min(pos, a + per)
      tasks.append(stream.Shard(path, split, a, b, tuple(
          sg for sg in segs if sg[2] and sg[1] < b and sg[1] + sg[2] > a)))
  return lay, tasks


class _Watch:
  """The bar while Beam runs: MB read by the finished ranges (pass 2), their
  documents and tokens, then the shards assembled (pass 3), polled from the
  small result files the workers write."""

  def __init__(self, run: _Run, job, ranges):
    self._run, self._job, self._ranges, self._seen = run, job, ranges, {}
    self._tasks, self._done_before, self._done = [], 0, set()
    self._stop = threading.Event()
    self._thread = None

  def shards(self, tasks, done_before):
    self._tasks, self._done_before = tasks, done_before
    self._poll()

  def _poll(self):
    run = self._run
    for r in self._ranges:
      if r not in self._seen and os.path.exists(stream.result_path(self._job, r)):
        x = shards_lib.read_json(stream.result_path(self._job, r))
        self._seen[r] = x
        run.docs += x["docs"]
        run.tokens += x["tokens"]
        run.read[f"{r.path or r.source}@{r.start}"] = r.bytes()
    self._done.update(t.path for t in self._tasks
                      if t.path not in self._done and shards_lib.shard_done(t.path, run.sha))
    run.shards = self._done_before + len(self._done)
    if run.bar is not None:
      run.bar.update(sum(run.read.values()) - run.bar.n)
      run.show()
      run.bar.refresh()

  def __enter__(self):
    if self._run.bar is not None:
      def loop():
        while not self._stop.wait(0.5):
          self._poll()
      self._thread = threading.Thread(target=loop, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._poll()


def _plan_fields(data_config) -> dict:
  """The data config without its sources (a worker plans one source)."""
  d = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  return {k: v for k, v in d.items() if k not in ("sources", "schedule")}


def _saved_cut(run: _Run, names) -> dict:
  """Documents per shard for each source as fixed by the first run (so a rerun
  with other defaults still completes the same cut); {} if none or stale."""
  path = os.path.join(run.out_dir, PLAN)
  if os.path.exists(path):
    saved = shards_lib.read_json(path)
    if saved["tokenizer_sha256"] == run.sha and set(saved["docs_per_shard"]) == set(names):
      return dict(saved["docs_per_shard"])
  return {}


def _save_cut(run: _Run, cut: dict) -> None:
  path = os.path.join(run.out_dir, PLAN)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(dict(tokenizer_sha256=run.sha, docs_per_shard=cut), f, indent=2)
  os.replace(tmp, path)


def _docs_per_shard(run: _Run, sample: list[str]) -> int:
  """docs_per_shard if given, else shard_tokens over the sample's mean tokens per document."""
  if run.docs_per_shard:
    return int(run.docs_per_shard)
  sp = tokenizer_lib.load(run.tokenizer_path)
  per_doc = max(1.0, sum(len(x) for x in sp.encode(sample)) / max(1, len(sample)))
  return max(1, int(run.shard_tokens / per_doc))


@functools.lru_cache(maxsize=2)
def _worker_plan(source_json: str, fields_json: str):
  """A worker's plan of one source (ids shifted by the caller's offset)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(json.loads(fields_json))
  src = json.loads(source_json)
  c.sources = ml_collections.ConfigDict({src["name"]: {k: v for k, v in src.items()
                                                         if k != "name"}})
  c.schedule = ()
  from maxlm.data import pipeline  # pylint: disable=g-import-not-at-top
  (plan,) = pipeline.plan_sources(c)
  return plan


class _Shifted:
  """A plan split whose doc ids start at `offset` (a worker plans one source)."""

  def __init__(self, docs, offset):
    self._docs, self._offset = docs, offset

  def __getitem__(self, i):
    text, d = self._docs[i]
    return text, d + self._offset


def _apply(fn, job, args):
  fn(job, *args)


def _beam_map(fn, job, elements, workers: int, beam_args) -> None:
  """fn(job, *element) for each element on Beam (nothing is collected: each
  writes its result beside the shards)."""
  if not elements:
    return
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  options, runner = beam_lib.pipeline_options(beam_args, workers)
  # Workers of the local runner are fresh interpreters: they must find maxlm.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  with beam.Pipeline(runner=runner, options=options) as p:
    _ = (p | "units" >> beam.Create(elements)
         | "spread" >> beam.Reshuffle()
         | fn.__name__ >> beam.Map(functools.partial(_apply, fn, job)))


# Kept importable from here (older callers): the reader lives in shards.py.
load_manifest = shards_lib.load_manifest
split_source = shards_lib.split_source


def __getattr__(name):
  if name == "DecodeRecord":  # made on first use (it imports grain)
    return shards_lib.DecodeRecord
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  cfg = flags.FLAGS.config
  data_config = cfg.data if "data" in cfg else cfg
  f = flags.FLAGS
  m = prepare(data_config, f.tokenizer, f.out, workers=f.workers, docs_per_shard=f.docs_per_shard,
              shard_tokens=f.shard_tokens, beam_args=argv[1:] or None,
              progress=f.progress, range_bytes=f.range_bytes)
  for name, s in m["sources"].items():
    print(f"{name:16s} {s['domain']:10s} {s['train']['docs']:8d} docs {s['train']['tokens']:12d} "
          f"tokens ({len(s['train']['shards'])} shards), held out {s['heldout']['docs']} docs "
          f"({len(s['heldout']['shards'])} shards)")
  total = sum(len(s[k]["shards"]) for s in m["sources"].values() for k in ("train", "heldout"))
  print(f"{total} shards ({m['last_run']['shards_written']} written now); "
        f"manifest: {os.path.join(f.out, shards_lib.MANIFEST)}")


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top,ungrouped-imports
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Stage or data config file[:arg].",
                                  lock_config=True)
  flags.DEFINE_string("tokenizer", None, "SentencePiece .model to tokenize with.")
  flags.DEFINE_string("out", None, "Output directory (resumable).")
  flags.DEFINE_integer("workers", 0, "Local worker processes (0 = all cores; 1 and no Beam "
                       "flags = in this process).")
  flags.DEFINE_integer("shard_tokens", SHARD_TOKENS, "Target tokens per shard.")
  flags.DEFINE_integer("docs_per_shard", 0, "Documents per shard (0 = from shard_tokens).")
  flags.DEFINE_boolean("progress", True, "Show a progress bar.")
  flags.DEFINE_integer("range_bytes", stream.RANGE_BYTES, "On Beam: bytes of a JSONL file per "
                       "unit of work.")
  # Flags prepare does not define are Beam pipeline options.
  rest = flags.FLAGS(sys.argv, known_only=True)
  from maxlm.monitor.logs import absl_verbosity, quiet_library_logs  # pylint: disable=g-import-not-at-top
  quiet_library_logs(absl_verbosity())  # Beam's per-stage INFO lines (--verbosity=0 shows them)
  if not (flags.FLAGS.tokenizer and flags.FLAGS.out and flags.FLAGS.config is not None):
    sys.exit("usage: python -m maxlm.data.prepare --config=CFG --tokenizer=TOK --out=DIR "
             "[Beam pipeline flags]")
  # Run the importable module's main: Beam workers unpickle its _Task and
  # functions by module name, which __main__ is not.
  from maxlm.data import prepare as prepare_module  # pylint: disable=g-import-not-at-top
  prepare_module.main(rest)
