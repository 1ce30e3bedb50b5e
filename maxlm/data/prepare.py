r"""Tokenize once: sources -> ArrayRecord token shards with a manifest.

  python -m maxlm.data.prepare --config=configs/data_mixture.py:three_domains \
      --tokenizer=/tmp/tok.model --out=/tmp/shards --workers=2
  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/run \
      --config.data.tokenizer.path=/tmp/tok.model --config.data.prepared_dir=/tmp/shards

Layout of --out:
  manifest.json                   tokenizer sha256, per source: domain, shards,
                                  documents, tokens; per domain: tokens
  <source>/train-00003.array_record   one record per document (curriculum
  <source>/train-00003.json           order if configured), + its summary
  <source>/heldout-00000.array_record held-out documents, same split as raw

A record is <int64 doc_id><tokens as uint16 (V <= 65536) or uint32>,
little-endian, without <s> / </s> (added when reading, per data.add_bos/eos).

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
import struct
import time

import grain
import numpy as np

from maxlm.data import tokenizer as tokenizer_lib

_DOCS_PER_SHARD = 256
_HEADER = struct.Struct("<q")


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
  from maxlm.data import pipeline  # pylint: disable=g-import-not-at-top  (cycle)
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  vocab = tokenizer_lib.load(tokenizer_path).vocab_size
  dtype = "<u2" if vocab <= 1 << 16 else "<u4"
  old = os.path.join(out_dir, "manifest.json")
  if os.path.exists(old) and json.load(open(old))["tokenizer_sha256"] != sha:
    raise ValueError(f"{out_dir} holds shards of another tokenizer; use a new --out")
  tasks, layout = [], {}
  for plan in pipeline.plan_sources(data_config):
    os.makedirs(os.path.join(out_dir, plan.name), exist_ok=True)
    layout[plan.name] = dict(domain=plan.config["domain"], train=[], heldout=[])
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
  ids, n_tok = [], 0
  for (text, doc_id), toks in zip(t.docs, sp.encode([d[0] for d in t.docs])):
    w.write(_HEADER.pack(doc_id) + np.asarray(toks, t.dtype).tobytes())
    ids.append(doc_id)
    n_tok += len(toks)
  w.close()
  os.replace(tmp, t.path + ".array_record")
  with open(t.path + ".json.tmp", "w") as f:
    json.dump(dict(tokenizer_sha256=t.tokenizer_sha, docs=len(ids), tokens=n_tok,
                   doc_ids=ids), f)
  os.replace(t.path + ".json.tmp", t.path + ".json")
  return n_tok


def _manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype) -> dict:
  sources, domains = {}, {}
  for name, lay in layout.items():
    entry = dict(domain=lay["domain"])
    for split in ("train", "heldout"):
      metas = [json.load(open(os.path.join(out_dir, rel + ".json"))) for rel in lay[split]]
      entry[split] = dict(shards=[rel + ".array_record" for rel in lay[split]],
                          docs=sum(m["docs"] for m in metas),
                          tokens=sum(m["tokens"] for m in metas))
    sources[name] = entry
    domains[lay["domain"]] = domains.get(lay["domain"], 0) + entry["train"]["tokens"]
  return dict(tokenizer_sha256=sha, tokenizer_path=os.path.abspath(tokenizer_path),
              vocab_size=vocab, dtype=dtype, sources=sources, train_tokens_per_domain=domains)


# ------------------------------------------------------------------ reading

def load_manifest(prepared_dir: str, tokenizer_path: str) -> dict:
  """The manifest, after checking it was made with this tokenizer."""
  path = os.path.join(prepared_dir, "manifest.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.prepared_dir={prepared_dir!r} has no manifest.json; "
                            "run `python -m maxlm.data.prepare` first")
  with open(path) as f:
    manifest = json.load(f)
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  if manifest["tokenizer_sha256"] != sha:
    raise ValueError(
        f"tokenizer mismatch: the shards in {prepared_dir} were made with tokenizer "
        f"sha256 {manifest['tokenizer_sha256'][:16]}... ({manifest['tokenizer_path']}) but "
        f"this run uses {tokenizer_path} (sha256 {sha[:16]}...). Set "
        "data.tokenizer.path to the shards' tokenizer, or re-run prepare.")
  return manifest


def split_source(prepared_dir: str, manifest: dict, name: str, split: str):
  """(ArrayRecordDataSource, doc ids in record order) of one source's split."""
  if name not in manifest["sources"]:
    raise ValueError(f"data.prepared_dir={prepared_dir!r} has no source {name!r} "
                     f"(it has {sorted(manifest['sources'])}); re-run prepare")
  shards = manifest["sources"][name][split]["shards"]
  ids = []
  for s in shards:
    with open(os.path.join(prepared_dir, s[:-len(".array_record")] + ".json")) as f:
      ids += json.load(f)["doc_ids"]
  if not shards:
    return [], ids
  return grain.sources.ArrayRecordDataSource([os.path.join(prepared_dir, s) for s in shards]), ids


@dataclasses.dataclass(frozen=True)
class DecodeRecord(grain.transforms.Map):
  """A shard record -> example dict of packing.FEATURES."""
  dtype: str
  domain_id: int
  add_bos: bool = True
  add_eos: bool = True
  tokenizer_path: str = ""  # BOS/EOS are this tokenizer's (special_ids)

  def map(self, record: bytes):
    from maxlm.data import packing  # pylint: disable=g-import-not-at-top
    (doc_id,) = _HEADER.unpack_from(record)
    toks = np.frombuffer(record, self.dtype, offset=_HEADER.size).astype(np.int32)
    bos, eos = tokenizer_lib.special_ids(self.tokenizer_path)
    parts = ([[bos]] if self.add_bos and bos is not None else []) + [toks] + (
        [[eos]] if self.add_eos and eos is not None else [])
    return packing.to_example(np.concatenate(parts).astype(np.int32), self.domain_id, doc_id)


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
