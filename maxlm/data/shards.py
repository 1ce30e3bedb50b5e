"""Tokenize-once shards: the record format, the shard writer, the manifest and
one source's split for reading.

`python -m maxlm.data.prepare` writes them (through ShardWriter); the training
pipeline reads them. Both import this module (and only this one) for the
format, so the writer and the reader can never disagree about it.

Layout of a prepared directory:
  manifest.json        tokenizer sha256, dtype, vocab size; per source: domain,
                       doc_id_range [lo, hi) and per split (train / heldout):
                       shards (paths), shard_docs, shard_tokens, docs, tokens
  errors.json          bad input prepare met, per file and kind (the run's
                       data_errors.txt comes from here: training never reads
                       the raw sources)
  <source>/<split>-00003.array_record

A record is <int64 doc_id><tokens as uint16 (V <= 65536) or uint32>,
little-endian, without <s> / </s> (added when reading, per data.add_bos/eos),
so the document id travels inside its record and no id list is ever loaded.

Opening a source costs O(shards), never O(documents): the manifest already
holds each shard's document count, and Grain's ArrayRecordDataSource reads
records by global index on demand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy as np

from maxlm.data import tokenizer as tokenizer_lib

HEADER = struct.Struct("<q")
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1,uncompressed"
ERRORS = "errors.json"


def token_dtype(vocab_size: int) -> str:
  """uint16 while every id fits (half the bytes), else uint32; little-endian."""
  return "<u2" if vocab_size <= 1 << 16 else "<u4"


def encode_record(doc_id: int, tokens, dtype: str) -> bytes:
  return HEADER.pack(int(doc_id)) + np.asarray(tokens, dtype).tobytes()


class ShardWriter:
  """Writes one shard: records to a temporary file, renamed when closed, then
  its summary <path>.json (the "done" marker a resumed prepare looks for).

  Documents go through in batches (`add`): a shard of 16M tokens never sits
  in memory as Python lists (36 bytes a token), only one batch does.

  Why not array_record's own Beam sink (array_record.beam.WriteToArrayRecord,
  0.8.x): it is a FileBasedSink that spreads one PCollection over N files in
  no set order and finalises them all at the end, so (a) a shard cannot be a
  fixed run of documents with known ids (the manifest's per-shard document
  and token counts, prepare's cut identical to training from raw text),
  (b) a killed run keeps nothing (here each shard is renamed into place and
  marked done alone, and a rerun writes only the missing ones), and (c) its
  docstring says it does not work with non-disk writes. Both pipelines call
  this writer from their own DoFn (prepare's shard tasks, curate's grouped shards).
  """

  def __init__(self, path: str, tokenizer_path: str, tokenizer_sha: str, dtype: str):
    from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
    self.path, self._sha, self._dtype = path, tokenizer_sha, dtype
    self._sp = tokenizer_lib.load(tokenizer_path)
    self._tmp = f"{path}.array_record.tmp{os.getpid()}"
    # group_size:1 = every record separately addressable (fast random access).
    # Uncompressed: token ids are near-incompressible (the default codec saved
    # 14% of the bytes for 22% of prepare's CPU time, BENCHMARKS.md issue 13).
    self._w = arm.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
    self._fmt = "<q%d" + ("H" if np.dtype(dtype).itemsize == 2 else "I")
    self._packs = {}  # tokens -> Struct(<doc id><tokens>).pack
    self.docs = self.tokens = 0
    self._ids = (0, 0)  # [lo, hi) of the doc ids written

  def add(self, items) -> None:
    """items: [(text, doc_id)], tokenized in one batch call."""
    if items:
      texts, ids = zip(*items)
      self.add_texts(texts, ids)

  def add_texts(self, texts, doc_ids) -> None:
    """Documents tokenized in one batch call (one thread: one process per core);
    each record packed by one struct call (the fastest way from the tokenizer's
    Python ints to bytes: 6% of the encode time, numpy 10%)."""
    if not len(texts):
      return
    write, packs = self._w.write, self._packs
    encoded = self._sp.encode_batch(texts, num_threads=1)
    for doc_id, toks in zip(doc_ids, encoded):
      pack = packs.get(len(toks))
      if pack is None:
        pack = packs[len(toks)] = struct.Struct(self._fmt % len(toks)).pack
      write(pack(doc_id, *toks))
    n_tok = sum(map(len, encoded))
    lo, hi = int(min(doc_ids)), int(max(doc_ids)) + 1
    self._ids = (min(lo, self._ids[0]), max(hi, self._ids[1])) if self.docs else (lo, hi)
    self.docs += len(texts)
    self.tokens += n_tok

  def add_record(self, doc_id: int, token_bytes: bytes, itemsize: int) -> None:
    """One document's tokens already as this shard's bytes (a segment's record)."""
    self._w.write(HEADER.pack(doc_id) + token_bytes)
    self.docs += 1
    self.tokens += len(token_bytes) // itemsize
    lo, hi = self._ids
    self._ids = (min(lo, doc_id), max(hi, doc_id + 1)) if self.docs > 1 else (doc_id, doc_id + 1)

  def add_tokens(self, doc_id: int, toks) -> None:
    """One document already tokenized (with this writer's tokenizer)."""
    self._w.write(encode_record(doc_id, toks, self._dtype))
    self.docs += 1
    self.tokens += len(toks)
    lo, hi = self._ids
    self._ids = (min(lo, doc_id), max(hi, doc_id + 1)) if self.docs > 1 else (doc_id, doc_id + 1)

  def abandon(self) -> None:
    """Closes and removes the temporary file: nothing of this shard is kept."""
    self._w.close()
    os.remove(self._tmp)

  def close(self) -> int:
    """Renames the records into place, then writes the summary; returns tokens."""
    self._w.close()
    os.replace(self._tmp, self.path + ".array_record")
    with open(self.path + ".json.tmp", "w") as f:
      json.dump(dict(tokenizer_sha256=self._sha, docs=self.docs, tokens=self.tokens,
                     doc_id_range=list(self._ids)), f)
    os.replace(self.path + ".json.tmp", self.path + ".json")
    return self.tokens


def shard_done(path: str, tokenizer_sha: str) -> bool:
  """True when the shard at `path` (no extension) was finished with this tokenizer."""
  try:
    with open(path + ".json") as f:
      return json.load(f)["tokenizer_sha256"] == tokenizer_sha
  except (OSError, ValueError, KeyError):
    return False


def decode_record(record: bytes, dtype: str) -> tuple[int, np.ndarray]:
  """(doc_id, tokens) of one record."""
  (doc_id,) = HEADER.unpack_from(record)
  return doc_id, np.frombuffer(record, dtype, offset=HEADER.size)


def build_manifest(out_dir, layout, tokenizer_path, sha, vocab, dtype) -> dict:
  """The manifest of finished shards. layout: {source: {"domain", "doc_id_range",
  "train": [shard paths relative to out_dir, no extension], "heldout": [...]}}."""
  sources, domains = {}, {}
  for name, lay in layout.items():
    entry = dict(domain=lay["domain"], doc_id_range=lay["doc_id_range"])
    for split in ("train", "heldout"):
      metas = [read_json(os.path.join(out_dir, rel + ".json")) for rel in lay[split]]
      entry[split] = dict(shards=[rel + ".array_record" for rel in lay[split]],
                          shard_docs=[m["docs"] for m in metas],
                          shard_tokens=[m["tokens"] for m in metas],
                          docs=sum(m["docs"] for m in metas),
                          tokens=sum(m["tokens"] for m in metas))
    sources[name] = entry
    domains[lay["domain"]] = domains.get(lay["domain"], 0) + entry["train"]["tokens"]
  return dict(tokenizer_sha256=sha, tokenizer_path=os.path.abspath(tokenizer_path),
              vocab_size=vocab, dtype=dtype, sources=sources, train_tokens_per_domain=domains)


def write_json(path: str, obj) -> None:
  """Atomically (temporary file, then rename): a reader never sees half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def write_errors(out_dir: str, errors: dict) -> None:
  """errors.json from {source: ErrorLog}: the bad input met while reading, kept
  for the training run's report (training from shards never reads the raw files)."""
  write_json(os.path.join(out_dir, ERRORS),
             {name: dict(total=log.total, report=log.report()) for name, log in errors.items()})


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def load_manifest(prepared_dir: str, tokenizer_path: str) -> dict:
  """The manifest, after checking it was made with this tokenizer."""
  path = os.path.join(prepared_dir, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.prepared_dir={prepared_dir!r} has no {MANIFEST}; "
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
  """(records, number of documents) of one source's split.

  `records` is indexable by the document's position in the split (an
  ArrayRecordDataSource over the split's shards, or [] when it has none).
  """
  if name not in manifest["sources"]:
    raise ValueError(f"data.prepared_dir={prepared_dir!r} has no source {name!r} "
                     f"(it has {sorted(manifest['sources'])}); re-run prepare")
  entry = manifest["sources"][name][split]
  if not entry["shards"]:
    return [], 0
  import grain  # pylint: disable=g-import-not-at-top
  paths = [os.path.join(prepared_dir, s) for s in entry["shards"]]
  return grain.sources.ArrayRecordDataSource(paths), int(entry["docs"])


def doc_id_range(manifest: dict, name: str) -> tuple[int, int]:
  """[lo, hi) of the source's document ids (train and held out)."""
  lo, hi = manifest["sources"][name]["doc_id_range"]
  return int(lo), int(hi)


def load_errors(prepared_dir: str) -> dict:
  """{source: {"total": n, "report": str}} recorded by prepare ({} if none)."""
  path = os.path.join(prepared_dir, ERRORS)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _decode_record_class():
  import grain  # pylint: disable=g-import-not-at-top

  from maxlm.data import packing  # pylint: disable=g-import-not-at-top  (grain too)

  @dataclasses.dataclass(frozen=True)
  class DecodeRecord(grain.transforms.Map):
    """A shard record -> example dict of packing.FEATURES, framed by bos/eos
    (None = the tokenizer has none: nothing added)."""
    dtype: str
    domain_id: int
    bos_id: int | None  # the tokenizer's own (pipeline.framing)
    eos_id: int | None

    def map(self, record: bytes):
      doc_id, toks = decode_record(record, self.dtype)
      parts = ([[self.bos_id]] if self.bos_id is not None else []) + [toks.astype(np.int32)] + (
          [[self.eos_id]] if self.eos_id is not None else [])
      return packing.to_example(np.concatenate(parts).astype(np.int32), self.domain_id, doc_id)

  DecodeRecord.__qualname__ = "DecodeRecord"  # pickled by name (Grain's worker processes)
  DecodeRecord.__module__ = __name__
  return DecodeRecord


def __getattr__(name):
  # DecodeRecord subclasses grain's Map: made on first use, so prepare (which
  # writes shards and never reads them) does not import grain and jax (0.6 s).
  if name == "DecodeRecord":
    cls = globals()["DecodeRecord"] = _decode_record_class()
    return cls
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
