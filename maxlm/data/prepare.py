r"""Tokenize once: sources -> ArrayRecord token shards with a manifest.

  python -m maxlm.data.prepare --config=configs/data_mixture.py:three_domains \
      --tokenizer=/tmp/tok.model --out=/tmp/shards --workers=2
  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/run \
      --config.data.tokenizer.path=/tmp/tok.model --config.data.prepared_dir=/tmp/shards

Layout of --out: see maxlm/data/shards.py (the one home of the format,
which the training pipeline reads with).

Why ArrayRecord: Grain reads it natively (ArrayRecordDataSource: random access
by index, so global shuffle, host sharding and exact resume cost nothing), and
a document is one variable-length record; tensorstore/zarr would want fixed
chunks and an offsets array beside them.

Resumable: a shard is written to a temporary name and renamed, then its .json
is written; a shard whose .json exists (with the same tokenizer hash) is not
redone. Shards run in parallel worker processes with a progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time

from maxlm.data import config as config_lib
from maxlm.data import pipeline
from maxlm.data import shards as shards_lib
from maxlm.data import tokenizer as tokenizer_lib

_DOCS_PER_SHARD = 256


@dataclasses.dataclass(frozen=True)
class _Task:
  path: str  # shard path without extension
  tokenizer_path: str
  tokenizer_sha: str
  dtype: str
  docs: list  # [(text, doc_id)]


def prepare(data_config, tokenizer_path: str, out_dir: str, workers: int = 1,
            docs_per_shard: int = _DOCS_PER_SHARD, progress: bool = True) -> dict:
  """Writes (or completes) the shards and manifest; returns the manifest."""
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  vocab = tokenizer_lib.load(tokenizer_path).vocab_size()
  dtype = "<u2" if vocab <= 1 << 16 else "<u4"
  old = os.path.join(out_dir, "manifest.json")
  if os.path.exists(old) and json.load(open(old))["tokenizer_sha256"] != sha:
    raise ValueError(f"{out_dir} holds shards of another tokenizer; use a new --out")
  tasks, layout = [], {}
  plans = pipeline.plan_sources(data_config)
  _write_errors(out_dir, data_config)
  for plan in plans:
    os.makedirs(os.path.join(out_dir, plan.name), exist_ok=True)
    ids = [d for _, d in plan.train] + [d for _, d in plan.heldout]
    layout[plan.name] = dict(domain=plan.config["domain"], train=[], heldout=[],
                             doc_id_range=[min(ids), max(ids) + 1])
    for split, docs in (("train", plan.train), ("heldout", plan.heldout)):
      for k in range(0, len(docs), docs_per_shard):
        rel = os.path.join(plan.name, f"{split}-{k // docs_per_shard:05d}")
        layout[plan.name][split].append(rel)
        tasks.append(_Task(os.path.join(out_dir, rel), tokenizer_path, sha, dtype,
                           docs[k:k + docs_per_shard]))
  todo = [t for t in tasks if not _done(t)]
  t0, n_tok = time.time(), 0
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="prepare", unit="shard")
  if workers > 1 and len(todo) > 1:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
      for n in pool.imap_unordered(_write_shard, todo):
        n_tok += n
        bar and bar.update(1)
  else:
    for t in todo:
      n_tok += _write_shard(t)
      bar and bar.update(1)
  bar and bar.close()
  manifest = _manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype)
  manifest["last_run"] = dict(shards_written=len(todo), tokens=n_tok,
                              seconds=round(time.time() - t0, 2))
  tmp = old + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, old)
  return manifest


def _done(t: _Task) -> bool:
  try:
    with open(t.path + ".json") as f:
      return json.load(f)["tokenizer_sha256"] == t.tokenizer_sha
  except (OSError, ValueError, KeyError):
    return False


def _write_shard(t: _Task) -> int:
  from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
  sp = tokenizer_lib.load(t.tokenizer_path)
  tmp = f"{t.path}.array_record.tmp{os.getpid()}"
  # group_size:1 = every record separately addressable (fast random access).
  w = arm.ArrayRecordWriter(tmp, "group_size:1")
  n_docs, n_tok = 0, 0
  for (_, doc_id), toks in zip(t.docs, sp.encode([d[0] for d in t.docs])):
    w.write(shards_lib.encode_record(doc_id, toks, t.dtype))
    n_docs += 1
    n_tok += len(toks)
  w.close()
  os.replace(tmp, t.path + ".array_record")
  # The summary marks the shard done (written last); ids live in the records.
  with open(t.path + ".json.tmp", "w") as f:
    json.dump(dict(tokenizer_sha256=t.tokenizer_sha, docs=n_docs, tokens=n_tok), f)
  os.replace(t.path + ".json.tmp", t.path + ".json")
  return n_tok


def _manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype) -> dict:
  sources, domains = {}, {}
  for name, lay in layout.items():
    entry = dict(domain=lay["domain"], doc_id_range=lay["doc_id_range"])
    for split in ("train", "heldout"):
      metas = []
      for rel in lay[split]:
        with open(os.path.join(out_dir, rel + ".json")) as f:
          metas.append(json.load(f))
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
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, shards_lib.ERRORS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, shards_lib.ERRORS))


# Kept importable from here (older callers): the reader lives in shards.py.
load_manifest = shards_lib.load_manifest
split_source = shards_lib.split_source
DecodeRecord = shards_lib.DecodeRecord


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  cfg = flags.FLAGS.config
  data_config = cfg.data if "data" in cfg else cfg
  m = prepare(data_config, flags.FLAGS.tokenizer, flags.FLAGS.out, workers=flags.FLAGS.workers)
  for name, s in m["sources"].items():
    print(f"{name:16s} {s['domain']:10s} {s['train']['docs']:8d} docs {s['train']['tokens']:12d} "
          f"tokens ({len(s['train']['shards'])} shards), held out {s['heldout']['docs']} docs")
  print(f"manifest: {os.path.join(flags.FLAGS.out, 'manifest.json')}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,ungrouped-imports
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Stage or data config file[:arg].",
                                  lock_config=True)
  flags.DEFINE_string("tokenizer", None, "SentencePiece .model to tokenize with.")
  flags.DEFINE_string("out", None, "Output directory (resumable).")
  flags.DEFINE_integer("workers", 1, "Worker processes.")
  flags.mark_flags_as_required(["config", "tokenizer", "out"])
  app.run(main)
