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
  1. The sources are planned as for training (pipeline.plan_sources: the same
     held-out split by a stable hash of each document's key, the same
     curriculum order, the same global doc ids), so training from shards sees
     exactly the batches training from raw text would.
  2. Each split is cut into shards of a target size in tokens
     (`shard_tokens`, 16M tokens = 32 MB at uint16 by default): the documents
     per shard are fixed from a sample of the source (or `docs_per_shard`) and
     saved in prepare_plan.json, so a rerun cuts identically.
  3. Beam writes the missing shards in parallel: a worker re-plans only the
     source it needs (once per process) and tokenizes its shard's documents in
     one batch call. Layout and record format: maxlm/data/shards.py.
  4. The manifest lists every shard with its document and token counts;
     errors.json keeps the bad-input report for training runs that never see
     the raw files.

Memory: a worker holds one source's plan (today: its texts; with the lazy
document index of maxlm.data.sources, byte offsets only) and one shard.

Resumable: a shard is written to a temporary name and renamed, then its .json
summary (the "done" marker) is written; a rerun writes only shards without a
summary, so a killed prepare loses nothing it finished and a rerun produces
byte-identical shards and manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time

from maxlm.data import beam as beam_lib
from maxlm.data import config as config_lib
from maxlm.data import pipeline
from maxlm.data import shards as shards_lib
from maxlm.data import tokenizer as tokenizer_lib

SHARD_TOKENS = 16_000_000  # default target tokens per shard (32 MB of uint16)
PLAN = "prepare_plan.json"
_SAMPLE_DOCS = 64  # documents tokenized to estimate tokens per document
_ENCODE_BATCH = 512  # documents per SentencePiece batch call while writing a shard


@dataclasses.dataclass(frozen=True)
class _Task:
  """One shard: documents [start, stop) of a source's split."""
  path: str  # shard path without extension
  tokenizer_path: str
  tokenizer_sha: str
  dtype: str
  source: dict  # the source's config entry (for re-planning on a worker)
  data_config: dict  # fields plan_sources reads besides the sources
  offset: int  # the source's first global doc id (a worker plans it alone, from 0)
  split: str
  start: int
  stop: int


def prepare(data_config, tokenizer_path: str, out_dir: str, workers: int = 1,
            docs_per_shard: int = 0, shard_tokens: int = SHARD_TOKENS,
            progress: bool = True, beam_args=None) -> dict:
  """Writes (or completes) the shards and manifest; returns the manifest.

  workers=1 and no beam_args: in this process. Otherwise a Beam pipeline
  (beam_args: Beam pipeline flags; workers: local processes, 0 = all cores).
  """
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  vocab = tokenizer_lib.load(tokenizer_path).vocab_size
  dtype = "<u2" if vocab <= 1 << 16 else "<u4"
  old = os.path.join(out_dir, shards_lib.MANIFEST)
  if os.path.exists(old) and _read_json(old)["tokenizer_sha256"] != sha:
    raise ValueError(f"{out_dir} holds shards of another tokenizer; use a new --out")
  os.makedirs(out_dir, exist_ok=True)
  plans = pipeline.plan_sources(data_config)
  _write_errors(out_dir, data_config)
  cut = _shard_plan(out_dir, plans, tokenizer_path, sha, docs_per_shard, shard_tokens)
  tasks, layout = [], {}
  base = _plan_fields(data_config)
  for plan in plans:
    os.makedirs(os.path.join(out_dir, plan.name), exist_ok=True)
    lo, hi = pipeline.id_range(plan)
    layout[plan.name] = dict(domain=plan.config["domain"], train=[], heldout=[],
                             doc_id_range=[lo, hi])
    per = cut[plan.name]
    for split in ("train", "heldout"):
      n = len(getattr(plan, split))
      for k, a in enumerate(range(0, n, per)):
        rel = os.path.join(plan.name, f"{split}-{k:05d}")
        layout[plan.name][split].append(rel)
        tasks.append(_Task(os.path.join(out_dir, rel), tokenizer_path, sha, dtype,
                           dict(plan.config), base, lo, split, a, min(n, a + per)))
  todo = [t for t in tasks if not _done(t)]
  for name in layout:  # half-written files of a killed run; their shards are redone
    for f in os.listdir(os.path.join(out_dir, name)):
      if ".tmp" in f:
        os.remove(os.path.join(out_dir, name, f))
  t0 = time.time()
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="prepare", unit="shard")
  if not todo:
    pass
  elif workers == 1 and not beam_args:
    local = {p.name: p for p in plans}
    for t in todo:
      _write_shard(t, getattr(local[t.source["name"]], t.split))
      bar and bar.update(1)
  else:
    _run_beam(todo, workers, beam_args or (), bar)
  bar and bar.close()
  manifest = _manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype)
  written = [_read_json(t.path + ".json") for t in todo]
  manifest["last_run"] = dict(shards_written=len(todo), tokens=sum(m["tokens"] for m in written),
                              seconds=round(time.time() - t0, 2))
  tmp = old + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, old)
  return manifest


def _plan_fields(data_config) -> dict:
  """The data config without its sources (a worker plans one source)."""
  d = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  return {k: v for k, v in d.items() if k not in ("sources", "schedule")}


def _shard_plan(out_dir, plans, tokenizer_path, sha, docs_per_shard, shard_tokens) -> dict:
  """Documents per shard for each source, fixed at the first run (so a rerun
  with other defaults still completes the same cut)."""
  path = os.path.join(out_dir, PLAN)
  if os.path.exists(path):
    saved = _read_json(path)
    if saved["tokenizer_sha256"] == sha and set(saved["docs_per_shard"]) == {p.name for p in plans}:
      return saved["docs_per_shard"]
  sp = tokenizer_lib.load(tokenizer_path)
  cut = {}
  for plan in plans:
    if docs_per_shard:
      cut[plan.name] = int(docs_per_shard)
      continue
    sample = [plan.train[i][0] for i in range(min(_SAMPLE_DOCS, len(plan.train)))]
    per_doc = max(1.0, sum(len(x) for x in sp.encode(sample)) / max(1, len(sample)))
    cut[plan.name] = max(1, int(shard_tokens / per_doc))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(dict(tokenizer_sha256=sha, docs_per_shard=cut), f, indent=2)
  os.replace(tmp, path)
  return cut


def _done(t: _Task) -> bool:
  try:
    return _read_json(t.path + ".json")["tokenizer_sha256"] == t.tokenizer_sha
  except (OSError, ValueError, KeyError):
    return False


def _write_shard(t: _Task, docs) -> int:
  """Writes documents [t.start, t.stop) of `docs` (a plan split); returns tokens."""
  from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
  sp = tokenizer_lib.load(t.tokenizer_path)
  tmp = f"{t.path}.array_record.tmp{os.getpid()}"
  # group_size:1 = every record separately addressable (fast random access).
  w = arm.ArrayRecordWriter(tmp, "group_size:1")
  n_tok = 0
  # Documents stream through in batches: a shard of 16M tokens never sits in
  # memory as Python lists (36 bytes a token), only one batch does.
  for a in range(t.start, t.stop, _ENCODE_BATCH):
    items = [docs[i] for i in range(a, min(t.stop, a + _ENCODE_BATCH))]
    for (_, doc_id), toks in zip(items, sp.encode([text for text, _ in items])):
      w.write(shards_lib.encode_record(doc_id, toks, t.dtype))
      n_tok += len(toks)
  w.close()
  os.replace(tmp, t.path + ".array_record")
  # The summary marks the shard done (written last); ids live in the records.
  with open(t.path + ".json.tmp", "w") as f:
    json.dump(dict(tokenizer_sha256=t.tokenizer_sha, docs=t.stop - t.start, tokens=n_tok), f)
  os.replace(t.path + ".json.tmp", t.path + ".json")
  return n_tok


@functools.lru_cache(maxsize=2)
def _worker_plan(source_json: str, fields_json: str):
  """A worker's plan of one source (ids shifted by the caller's offset)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(json.loads(fields_json))
  src = json.loads(source_json)
  c.sources = ml_collections.ConfigDict({src["name"]: {k: v for k, v in src.items()
                                                         if k != "name"}})
  c.schedule = ()
  (plan,) = pipeline.plan_sources(c)
  return plan


class _Shifted:
  """A plan split whose doc ids start at `offset` (a worker plans one source)."""

  def __init__(self, docs, offset):
    self._docs, self._offset = docs, offset

  def __getitem__(self, i):
    text, d = self._docs[i]
    return text, d + self._offset


def _beam_write(t: _Task) -> str:
  plan = _worker_plan(json.dumps(t.source, sort_keys=True, default=list),
                      json.dumps(t.data_config, sort_keys=True, default=list))
  _write_shard(t, _Shifted(getattr(plan, t.split), t.offset))
  return t.path


def _run_beam(todo: list[_Task], workers: int, beam_args, bar) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  options, runner = beam_lib.pipeline_options(beam_args, workers)
  # Workers of the local runner are fresh interpreters: they must find maxlm.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  stop = threading.Event()

  def watch():  # the bar counts summaries as workers finish shards
    seen = 0
    while not stop.wait(0.5):
      n = sum(_done(t) for t in todo)
      bar.update(n - seen)
      seen = n
    bar.update(sum(_done(t) for t in todo) - seen)

  watcher = threading.Thread(target=watch, daemon=True) if bar is not None else None
  watcher and watcher.start()
  try:
    with beam.Pipeline(runner=runner, options=options) as p:
      _ = (p | "shards" >> beam.Create(todo)
           | "spread" >> beam.Reshuffle()
           | "write" >> beam.Map(_beam_write))
  finally:
    stop.set()
    watcher and watcher.join()
  missing = [t.path for t in todo if not _done(t)]
  if missing:
    raise RuntimeError(f"prepare: {len(missing)} shards were not written, e.g. {missing[0]}")


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype) -> dict:
  sources, domains = {}, {}
  for name, lay in layout.items():
    entry = dict(domain=lay["domain"], doc_id_range=lay["doc_id_range"])
    for split in ("train", "heldout"):
      metas = [_read_json(os.path.join(out_dir, rel + ".json")) for rel in lay[split]]
      entry[split] = dict(shards=[rel + ".array_record" for rel in lay[split]],
                          shard_docs=[m["docs"] for m in metas],
                          shard_tokens=[m["tokens"] for m in metas],
                          docs=sum(m["docs"] for m in metas),
                          tokens=sum(m["tokens"] for m in metas))
    sources[name] = entry
    domains[lay["domain"]] = domains.get(lay["domain"], 0) + entry["train"]["tokens"]
  return dict(tokenizer_sha256=sha, tokenizer_path=os.path.abspath(tokenizer_path),
              vocab_size=vocab, dtype=dtype, sources=sources, train_tokens_per_domain=domains)


def _write_errors(out_dir: str, data_config) -> None:
  """Bad input met while reading the sources, kept for the training run's
  report (training from shards never reads the raw files)."""
  from maxlm.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for s in config_lib.iter_sources(data_config):
    _, errors = sources_lib.cached_documents(s, data_config.get("error_budget", -1))
    out[s["name"]] = dict(total=errors.total, report=errors.report())
  tmp = os.path.join(out_dir, shards_lib.ERRORS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, shards_lib.ERRORS))


# Kept importable from here (older callers): the reader lives in shards.py.
load_manifest = shards_lib.load_manifest
split_source = shards_lib.split_source
DecodeRecord = shards_lib.DecodeRecord


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  cfg = flags.FLAGS.config
  data_config = cfg.data if "data" in cfg else cfg
  f = flags.FLAGS
  m = prepare(data_config, f.tokenizer, f.out, workers=f.workers, docs_per_shard=f.docs_per_shard,
              shard_tokens=f.shard_tokens, beam_args=argv[1:] or None,
              progress=f.progress)
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
