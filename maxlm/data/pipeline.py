"""Grain input pipelines: training iterator and held-out eval batches.

Per source (all Grain), from raw text or from prepared token shards:
  MapDataset.source(range(number of training documents))
    .shuffle(seed)                   # global shuffle, reseeded every epoch
                                     # (skipped for a curriculum order)
    .repeat(max_epochs or forever)   # a finite repeat is the epoch cap
    .map(Gather).map(Tokenize | DecodeRecord)   # in read threads
    .to_iter_dataset()
  [.mp_prefetch(workers)]            # optional worker processes
  -> packing.pack(...)               # FirstFit or ConcatThenSplit rows
Then the rows of all sources go through mixing.ScheduledMixIterDataset (token
shares on a step schedule), are batched into GLOBAL batches, prefetched by a
thread, and HostBatches keeps this host's rows, counts document reuse and
converts them to the driver's dict (packing.finalize).

Topology-independent order: the global batch at step s is a pure function of
(seed, data config, s). Every host runs the same global row stream and keeps
rows [p*b, (p+1)*b) of each global batch (b = global_batch / process_count),
so 1, 2 or 4 processes train on exactly the same batches, and the iterator
state is the same on every host: a checkpoint written by 2 processes restores
on 1 (maxlm/data/state.py reads it). Worker processes (data.worker_count) sit
before packing, where Grain's round-robin over workers keeps the element order
of worker_count=0, so the order does not depend on worker_count either.
The cost of this simple design: every host reads, tokenizes and packs the
whole global batch, i.e. process_count times the input work of one host's
share (with prepared shards that is record reads and packing only, cheap next
to a training step; with raw text on many hosts, prepare first).

Rows are packed per source, so a row holds one domain, and mixing whole rows
makes a source's token share its weight regardless of its document lengths.
Every stage is a Grain iterator with get_state/set_state; the state is O(number
of sources). Per-document reuse counts are a compact array per source kept by
HostBatches and saved beside the checkpoint, never in the JSON state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import grain
import numpy as np

from maxlm.data import config as config_lib
from maxlm.data import instruct
from maxlm.data import mixing
from maxlm.data import online_mixing
from maxlm.data import ordering
from maxlm.data import reuse as reuse_lib
from maxlm.data import packing
from maxlm.data import shards as shards_lib
from maxlm.data import sources as sources_lib
from maxlm.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class SourcePlan:
  """One source's documents after the held-out split, with global doc ids.

  `train` / `heldout` are lazy sequences (sources.TextIdSequence): [i] reads one
  (text, doc_id) from the source's files, `.doc_ids` holds the ids without
  reading any text, so a plan costs ~50 bytes per document, not its text.
  """
  name: str
  domain_id: int
  weight: float
  config: dict  # the source's entry from config.iter_sources
  train: sources_lib.TextIdSequence  # [(text, doc_id)] in curriculum order (or file order)
  heldout: sources_lib.TextIdSequence  # [(text, doc_id)]
  first_id: int = 0  # doc id of the source's first document in file order (index position 0)


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
  """(text, doc_id) -> example dict of packing.FEATURES."""
  tokenizer_path: str
  domain_id: int
  bos_id: int | None  # the tokenizer's (pipeline.framing); None = nothing prepended
  eos_id: int | None  # None = nothing appended

  def map(self, element):
    text, doc_id = element[:2]
    ids = tokenizer_lib.load(self.tokenizer_path).encode(text)
    ids = ([self.bos_id] if self.bos_id is not None else []) + ids + (
        [self.eos_id] if self.eos_id is not None else [])
    return packing.to_example(np.asarray(ids, np.int32), self.domain_id, doc_id)


@dataclasses.dataclass(frozen=True)
class InstructTokenize(grain.transforms.Map):
  """(JSON line of an instruction record, doc_id) -> example dict whose target_mask
  scores the response tokens only (maxlm.data.instruct)."""
  tokenizer_path: str
  domain_id: int
  bos_id: int | None
  eos_id: int | None
  source_name: str
  index: object  # the source's DocIndex: names the record's file and line in an error
  first_id: int  # the source's first doc id (doc_id - first_id = the index position)

  def map(self, element):
    text, doc_id = element[:2]
    try:
      ids, mask = instruct.encode(json.loads(text), tokenizer_lib.load(self.tokenizer_path),
                                  bos_id=self.bos_id, eos_id=self.eos_id)
    except Exception as e:  # a template error (jinja raises its own kinds): name the record
      i = int(doc_id) - self.first_id
      path = self.index.path_of(i)
      if path.endswith(".spill"):  # a compressed file's records are read from a scratch copy
        path = self.index.key(i).split(":", 1)[1].rsplit(":", 1)[0]  # relative to the glob
      raise ValueError(f"data.sources.{self.source_name}: {path}:{self.index.line_of(i)}:"
                       f" {type(e).__name__}: {e}") from e
    return packing.to_example(ids, self.domain_id, doc_id, mask)


def framing(data_config, tokenizer_path: str) -> tuple[int | None, int | None]:
  """(bos, eos) ids that frame every document: the tokenizer's own specials,
  each dropped when data.add_bos / data.add_eos is off."""
  bos, eos = tokenizer_lib.special_ids(tokenizer_path)
  return (bos if data_config.add_bos else None), (eos if data_config.add_eos else None)


def plan_sources(data_config, *, names=None, first_id: int = 0) -> list[SourcePlan]:
  """Indexes every source (one streaming pass, no text kept) and splits it; doc ids
  are global and stable. names: only these sources (ids from first_id on)."""
  config_lib.validate(data_config)
  domains = config_lib.domain_names(data_config)
  budget = data_config.get("error_budget", -1)
  plans, offset, bad = [], first_id, 0
  for s in config_lib.iter_sources(data_config):
    if names is not None and s["name"] not in names:
      continue
    docs, errors = sources_lib.cached_documents(s, budget)
    bad += errors.total
    if 0 <= budget < bad:
      raise sources_lib.DataErrorBudgetExceeded(
          f"data error budget exceeded: {bad} bad inputs over all sources > "
          f"data.error_budget={budget}; see data.error_report(config)")
    if not len(docs):
      raise ValueError(f"data.sources.{s['name']}: no documents")
    train, held = sources_lib.split_heldout(docs, data_config.heldout_fraction)
    train = train.ordered(s.get("order_by", ""), s.get("order_desc", False))
    # A document's id is its position in the source's file order, after earlier sources'.
    plans.append(SourcePlan(s["name"], domains.index(s["domain"]), s["weight"], s,
                            train.with_ids(offset), held.with_ids(offset), offset))
    offset += len(docs)
  return plans


@dataclasses.dataclass(frozen=True)
class Stream:
  """What the pipeline reads for one source and split: raw texts (tokenized
  on the fly) or records of prepared shards (already tokens)."""
  name: str
  domain_id: int
  weight: float
  config: dict
  items: object  # indexable: [(text, doc_id)] or an ArrayRecordDataSource
  num_docs: int  # len(items), known without touching them
  id_range: tuple[int, int]  # [lo, hi) holding every doc id of the source
  to_example: grain.transforms.Map  # item -> packing.FEATURES dict


@dataclasses.dataclass(frozen=True)
class Gather(grain.transforms.Map):
  """Index -> item of a stream (documents in any order)."""
  items: object

  def map(self, i):
    return self.items[int(i)]


def streams(data_config, *, tokenizer_path: str, split: str = "train") -> list[Stream]:
  """One Stream per configured source, from data.prepared_dir if set (then
  nothing reads the raw text sources; instruction sources, which prepare does
  not shard, are read raw beside the shards)."""
  c = data_config
  bos, eos = framing(c, tokenizer_path)
  if not c.get("prepared_dir"):
    return [_raw_stream(p, split, tokenizer_path, bos, eos) for p in plan_sources(c)]
  config_lib.validate(c)
  manifest = shards_lib.load_manifest(c.prepared_dir, tokenizer_path)
  domains = config_lib.domain_names(c)
  srcs = config_lib.iter_sources(c)
  raw = [s["name"] for s in srcs if sources_lib.is_instruct(s)]
  # Raw sources' doc ids follow every id in the shards (HostBatches needs them disjoint).
  first_id = max((shards_lib.doc_id_range(manifest, n)[1] for n in manifest["sources"]),
                 default=0)
  raw_plans = {p.name: p for p in plan_sources(c, names=raw, first_id=first_id)} if raw else {}
  out = []
  for s in srcs:
    if s["name"] in raw_plans:
      out.append(_raw_stream(raw_plans[s["name"]], split, tokenizer_path, bos, eos))
      continue
    items, n = shards_lib.split_source(c.prepared_dir, manifest, s["name"], split)
    dom = domains.index(s["domain"])
    out.append(Stream(s["name"], dom, s["weight"], s, items, n,
                      shards_lib.doc_id_range(manifest, s["name"]),
                      shards_lib.DecodeRecord(manifest["dtype"], dom, bos, eos)))
  return out


def _raw_stream(p: SourcePlan, split: str, tokenizer_path: str, bos, eos) -> Stream:
  """A planned source's split, tokenized on the fly (instruction records with their mask)."""
  items = getattr(p, split)
  if sources_lib.is_instruct(p.config):
    index = p.train.index
    instruct.check_tokenizer(p.name, getattr(index, "first_messages", None),
                             tokenizer_lib.load(tokenizer_path))
    to_example = InstructTokenize(tokenizer_path, p.domain_id, bos, eos, p.name, index,
                                  p.first_id)
  else:
    to_example = Tokenize(tokenizer_path, p.domain_id, bos, eos)
  return Stream(p.name, p.domain_id, p.weight, p.config, items, len(items), id_range(p),
                to_example)


def id_range(plan: SourcePlan) -> tuple[int, int]:
  """[lo, hi) of a planned source's doc ids (train and held out), read from
  the ids alone where the plan keeps them apart from the texts."""
  lo, hi = None, None
  for split in (plan.train, plan.heldout):
    ids = getattr(split, "doc_ids", None)
    ids = np.asarray(ids if ids is not None else [d for _, d in split], np.int64)
    if len(ids):
      lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
      hi = int(ids.max()) + 1 if hi is None else max(hi, int(ids.max()) + 1)
  return lo, hi


def source_rows(st: Stream, data_config, *, seq_len: int, seed: int) -> grain.IterDataset:
  """One source's endless (or epoch-capped) packed rows: the same stream on
  every host."""
  c, order_by = data_config, st.config.get("order_by", "")
  if not st.num_docs:
    raise ValueError(f"data.sources.{st.name}: no training documents")
  ds = grain.MapDataset.range(st.num_docs)
  if not order_by:
    ds = ds.shuffle(seed=_derive(seed, "shuffle", st.name))
  # A curriculum keeps its order, every epoch (no shuffle).
  ds = ds.repeat(st.config.get("max_epochs") or None)
  ds = ds.map(Gather(st.items)).map(st.to_example)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads,
                                            prefetch_buffer_size=4 * c.num_packing_bins))
  if c.get("worker_count", 0):
    # Reading and tokenizing run in worker processes. Worker k takes elements
    # k, k+n, ... of the map dataset and Grain interleaves them round-robin,
    # so the examples (and rows) come in the order of worker_count=0; mixing
    # stays in this process so the schedule sees the true step.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count))
  # Curriculum order must survive packing, so its bins are not shuffled.
  return packing.pack(it, packing=c.packing, seq_len=seq_len, num_bins=c.num_packing_bins,
                      seed=_derive(seed, "pack", st.name), long_doc_policy=c.long_doc_policy,
                      shuffle_bins=not order_by)


def make_train_iterator(data_config, *, tokenizer_path: str, seq_len: int,
                        global_batch: int, seed: int, process_index: int = 0,
                        process_count: int = 1,
                        keep_doc_ids: bool = False) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of per-host batches (see __init__).

  keep_doc_ids adds 'doc_ids' [b, T] (global document index, -1 on padding)
  for tests and audits; the driver leaves it off.
  """
  if global_batch % process_count:
    raise ValueError(f"global_batch={global_batch} is not divisible by "
                     f"process_count={process_count}")
  c = data_config
  sts = streams(c, tokenizer_path=tokenizer_path)
  # Sources that are off at step 0 may be switched on by the schedule, so all
  # sources are built; the mixer never pulls from a weight-0 source.
  rows = [source_rows(st, c, seq_len=seq_len, seed=seed) for st in sts]
  infos = [mixing.SourceInfo(st.name, st.num_docs) for st in sts]
  stages = mixing.make_stages([st.weight for st in sts], [st.name for st in sts],
                              online_mixing.schedule_for(c),  # data.schedule or a replay
                              tokens_per_step=global_batch * seq_len)
  mixed = mixing.ScheduledMixIterDataset(rows, infos, stages, rows_per_step=global_batch,
                                         reuse_decay=c.get("reuse_decay", 1.0))
  batched = mixed.batch(global_batch, drop_remainder=True)
  online = bool((c.get("online_mixing") or {}).get("rule"))
  if online and c.prefetch_batches:
    # Online weights apply from the next step; a batch drawn ahead would miss them.
    logging.info("data: online mixing is on, so batches are not prefetched by a thread")
  if c.prefetch_batches and not online:
    batched = grain.experimental.ThreadPrefetchIterDataset(
        batched, prefetch_buffer_size=c.prefetch_batches)
  return iter(reuse_lib.HostBatches(
      batched, [(st.name,) + tuple(st.id_range) for st in sts],
      process_index=process_index, process_count=process_count, keep_doc_ids=keep_doc_ids))


def make_eval_batches(data_config, *, tokenizer_path: str, seq_len: int,
                      global_batch: int, process_index: int = 0,
                      process_count: int = 1, num_batches: int | None = None,
                      keep_doc_ids: bool = False) -> dict[str, list[dict]]:
  """Fixed held-out batches per domain: {domain: [batch, ...]}.

  Held-out documents (never in training) of each domain, packed first-fit
  without shuffling, at most `num_batches` (default data.eval_batches) global
  batches; the last is filled with all-padding rows (loss_mask 0). Host p gets
  rows [p*b, (p+1)*b) of every global batch, b = global_batch // process_count.
  """
  c = data_config
  num_batches = c.eval_batches if num_batches is None else num_batches
  b = global_batch // process_count
  domains = config_lib.domain_names(c)
  out = {}
  held = streams(c, tokenizer_path=tokenizer_path, split="heldout")
  for dom_id, dom in enumerate(domains):
    parts = [grain.MapDataset.range(st.num_docs).map(Gather(st.items))
             .map(st.to_example) for st in held if st.domain_id == dom_id and st.num_docs]
    if not parts:
      continue
    ds = grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]
    packed = packing.pack(ds.to_iter_dataset(), packing="first_fit", seq_len=seq_len,
                          num_bins=c.num_packing_bins, seed=0, shuffle_bins=False,
                          long_doc_policy=c.long_doc_policy)
    rows = []
    for r in packed:
      if len(rows) >= num_batches * global_batch:
        break
      rows.append(packing.finalize(r, keep_doc_ids))
    while len(rows) % global_batch:  # all-padding rows: loss_mask 0
      rows.append({k: np.full_like(v, -1 if k == "doc_ids" else 0) for k, v in rows[0].items()})
    out[dom] = [
        {k: np.stack([r[k] for r in rows[i + process_index * b: i + (process_index + 1) * b]])
         for k in rows[0]}
        for i in range(0, len(rows), global_batch)]
  return out


def _derive(seed: int, *names: str) -> int:
  """A 31-bit seed from the run seed and stage names (stable across runs)."""
  h = hashlib.sha256(repr((int(seed),) + names).encode()).digest()
  return int.from_bytes(h[:4], "big") >> 1
