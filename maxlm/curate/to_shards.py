"""The end of a curation pipeline that writes tokenize-once shards (curate -> shards).

  python -m maxlm.curate --config=configs/curate.py:default --input='raw/*.jsonl.zst' \
      --output=runs/curated --shards_out=runs/curated_shards --tokenizer=runs/tok/tok.model
  python -m maxlm.train ... --config.data.prepared_dir=runs/curated_shards \
      --config.data.tokenizer.path=runs/tok/tok.model

The kept documents go, in the same Beam pipeline, through the shard format
and writer prepare uses (maxlm.data.shards: ShardWriter, the manifest), so
the output is a prepared directory training reads with data.prepared_dir.
One source per partition of the curated output (write.partition_by, the
domain label by default): the manifest's source name and domain are the
partition's, so the training config names its sources after them.

How documents are placed, with no order and no pass over the corpus first:
  - held out when unit_hash(id) < heldout_fraction (the curated id is stable);
  - tokenized in batches (BatchElements), tokens travel as uint16/uint32;
  - a (partition, split) with T tokens gets ceil(T / shard_tokens) shards,
    a document's shard by another hash of its id (so shards come out near the
    token target without sorting the corpus);
  - doc ids are dense, [0, N) over all partitions: a shard's first id is the
    number of documents in the shards before it (counts as a side input),
    its documents in id order within it. Shards are O(shard) in a worker's memory.
The documents are those of the curated docs/ output (a test checks the token
multiset against prepare run on that output); their ids and the held-out
choice are curate's own, not prepare's file positions.
"""

from __future__ import annotations

import glob
import math
import os

import apache_beam as beam
import numpy as np

from maxlm.data import doc_index
from maxlm.data import shards as shards_lib
from maxlm.data import tokenizer as tokenizer_lib

_SPLITS = ("heldout", "train")  # id order of the splits within a partition


def _place(doc, partition_by, default, fraction):
  part = str(doc["meta"].get(partition_by) or default)
  split = "heldout" if fraction > 0 and doc_index.unit_hash(doc["id"]) < fraction else "train"
  return (part, split), (doc["id"], doc["text"])


class _Tokenize(beam.DoFn):
  """A batch of ((partition, split), (id, text)) -> ((partition, split), (id, tokens))."""

  def __init__(self, tokenizer_path: str, dtype: str):
    self._path, self._dtype = tokenizer_path, dtype

  def setup(self):
    self._sp = tokenizer_lib.load(self._path)

  def process(self, batch):
    for (key, (doc_id, _)), toks in zip(batch, self._sp.encode([t for _, (_, t) in batch])):
      yield key, (doc_id, np.asarray(toks, self._dtype))


def _bucket(item, totals, shard_tokens):
  (part, split), (doc_id, toks) = item
  n = max(1, math.ceil(totals[(part, split)] / shard_tokens))
  return (part, split, int(doc_index.unit_hash("shard:" + doc_id) * n)), (doc_id, toks)


class _WriteShard(beam.DoFn):
  """One shard from its documents: ids from the counts of the shards before it."""

  def __init__(self, out_dir, tokenizer_path, sha, dtype):
    self._out, self._tok, self._sha, self._dtype = out_dir, tokenizer_path, sha, dtype

  def process(self, keyed, counts):
    (part, split, b), docs = keyed
    key = (part, _SPLITS.index(split), b)
    first = sum(n for (p, s, k), n in counts.items() if (p, _SPLITS.index(s), k) < key)
    path = os.path.join(self._out, part, f"{split}-{b:05d}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w = shards_lib.ShardWriter(path, self._tok, self._sha, self._dtype)
    for i, (_, toks) in enumerate(sorted(docs, key=lambda d: d[0])):  # id order: deterministic
      w.add_tokens(first + i, toks)
    w.close()
    yield path


def write_shards(docs, *, out_dir: str, tokenizer_path: str, partition_by: str, default: str,
                 heldout_fraction: float, shard_tokens: int):
  """Adds the shard writer after `docs` (the kept curated documents)."""
  dtype = shards_lib.token_dtype(tokenizer_lib.load(tokenizer_path).vocab_size)
  sha = tokenizer_lib.tokenizer_hash(tokenizer_path)
  toks = (docs
          | "shard_place" >> beam.Map(_place, partition_by, default, heldout_fraction)
          | "shard_batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=512)
          | "shard_tokenize" >> beam.ParDo(_Tokenize(tokenizer_path, dtype)))
  totals = (toks | "shard_tokens" >> beam.Map(lambda kv: (kv[0], len(kv[1][1])))
            | "shard_total" >> beam.CombinePerKey(sum))
  placed = toks | "shard_bucket" >> beam.Map(_bucket, beam.pvalue.AsDict(totals), shard_tokens)
  counts = (placed | "shard_one" >> beam.Map(lambda kv: (kv[0], 1))
            | "shard_count" >> beam.CombinePerKey(sum))
  _ = (placed | "shard_group" >> beam.GroupByKey()
       | "shard_write" >> beam.ParDo(_WriteShard(out_dir, tokenizer_path, sha, dtype),
                                     beam.pvalue.AsDict(counts)))


def write_manifest(out_dir: str, tokenizer_path: str) -> dict:
  """The manifest of the shards the pipeline wrote (after it finished)."""
  vocab = tokenizer_lib.load(tokenizer_path).vocab_size
  layout = {}
  for part in sorted(d for d in os.listdir(out_dir) if os.path.isdir(os.path.join(out_dir, d))):
    lay = dict(domain=part)
    lo, hi = None, None
    for split in _SPLITS:
      rels = sorted(os.path.relpath(p[:-len(".json")], out_dir)
                    for p in glob.glob(os.path.join(out_dir, part, f"{split}-*.json")))
      lay[split] = rels
      for rel in rels:
        a, b = shards_lib.read_json(os.path.join(out_dir, rel + ".json"))["doc_id_range"]
        lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    lay["doc_id_range"] = [lo, hi]
    layout[part] = lay
  manifest = shards_lib.build_manifest(out_dir, layout, tokenizer_path,
                                       tokenizer_lib.tokenizer_hash(tokenizer_path), vocab,
                                       shards_lib.token_dtype(vocab))
  shards_lib.write_json(os.path.join(out_dir, shards_lib.MANIFEST), manifest)
  return manifest
