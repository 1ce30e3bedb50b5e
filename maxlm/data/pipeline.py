"""Grain input pipelines: training iterator and held-out eval batches.

Per source (all Grain), from raw text or from prepared token shards:
  MapDataset.source(this host's document indices)  # disjoint host shard
    .shuffle(seed)                   # global shuffle, reseeded every epoch
                                     # (skipped for a curriculum order)
    .repeat(max_epochs or forever)   # a finite repeat is the epoch cap
    .map(Gather).map(Tokenize | DecodeRecord)   # in read threads
    .to_iter_dataset()
  -> packing.pack(...)               # FirstFit or ConcatThenSplit rows
  [.mp_prefetch(workers)]            # optional worker processes
Then the rows of all sources go through mixing.ScheduledMixIterDataset (token
shares on a step schedule, reuse counts), and are batched, converted to the
driver's dict (packing.finalize) and prefetched by a thread.

Rows are packed per source, so a row holds one domain, and mixing whole rows
makes a source's token share its weight regardless of its document lengths.
Every stage is a Grain iterator with get_state/set_state, so the returned
iterator is saved and restored by grain.checkpoint.CheckpointSave/Restore.
"""

from __future__ import annotations

import dataclasses
import hashlib

import grain
import numpy as np

from maxlm.data import config as config_lib
from maxlm.data import mixing
from maxlm.data import ordering
from maxlm.data import packing
from maxlm.data import sources as sources_lib
from maxlm.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class SourcePlan:
  """One source's documents after the held-out split, with global doc ids."""
  name: str
  domain_id: int
  weight: float
  config: dict  # the source's entry from config.iter_sources
  train: list  # [(text, doc_id)] in curriculum order (or file order)
  heldout: list  # [(text, doc_id)]


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
  """(text, doc_id) -> example dict of packing.FEATURES."""
  tokenizer_path: str
  domain_id: int
  add_bos: bool = True
  add_eos: bool = True

  def map(self, element):
    text, doc_id = element[:2]
    ids = tokenizer_lib.load(self.tokenizer_path).encode(text)
    bos, eos = tokenizer_lib.special_ids(self.tokenizer_path)  # the tokenizer's, not maxlm's
    ids = [bos] * (self.add_bos and bos is not None) + ids + [eos] * (self.add_eos and eos is not None)
    return packing.to_example(np.asarray(ids, np.int32), self.domain_id, doc_id)


def plan_sources(data_config) -> list[SourcePlan]:
  """Loads every source and splits it; doc ids are global and stable."""
  config_lib.validate(data_config)
  domains = config_lib.domain_names(data_config)
  budget = data_config.get("error_budget", -1)
  plans, offset, bad = [], 0, 0
  for s in config_lib.iter_sources(data_config):
    docs, errors = sources_lib.cached_documents(s, budget)
    bad += errors.total
    if 0 <= budget < bad:
      raise sources_lib.DataErrorBudgetExceeded(
          f"data error budget exceeded: {bad} bad inputs over all sources > "
          f"data.error_budget={budget}; see data.error_report(config)")
    if not docs:
      raise ValueError(f"data.sources.{s['name']}: no documents")
    ids = {d.key: offset + i for i, d in enumerate(docs)}
    offset += len(docs)
    train, held = sources_lib.split_heldout(docs, data_config.heldout_fraction)
    train = ordering.order_documents(train, s.get("order_by", ""), s.get("order_desc", False))
    plans.append(SourcePlan(s["name"], domains.index(s["domain"]), s["weight"], s,
                            [(d.text, ids[d.key]) for d in train],
                            [(d.text, ids[d.key]) for d in held]))
  return plans


# Similarity-ordered sources are shared between hosts in runs of this many
# neighbouring documents, so a host's documents still sit next to their kin.
_SIMILARITY_RUN = 16


def host_indices(n: int, order_by: str, process_index: int, process_count: int) -> list[int]:
  """This host's disjoint share of n documents: strided (so every host walks
  the same curriculum at the same pace), or in runs for similarity order."""
  if order_by == "similarity":
    runs = [range(i, min(n, i + _SIMILARITY_RUN)) for i in range(0, n, _SIMILARITY_RUN)]
    return [i for run in runs[process_index::process_count] for i in run]
  return list(range(process_index, n, process_count))


def host_docs(plan: SourcePlan, process_index: int, process_count: int) -> list:
  """host_indices applied to a raw source's training documents."""
  idx = host_indices(len(plan.train), plan.config.get("order_by", ""), process_index,
                     process_count)
  return [plan.train[i] for i in idx]


@dataclasses.dataclass(frozen=True)
class Stream:
  """What the pipeline reads for one source and split: raw texts (tokenized
  on the fly) or records of prepared shards (already tokens)."""
  name: str
  domain_id: int
  weight: float
  config: dict
  items: object  # indexable: [(text, doc_id)] or an ArrayRecordDataSource
  doc_ids: list  # global doc id of each item
  to_example: grain.transforms.Map  # item -> packing.FEATURES dict


@dataclasses.dataclass(frozen=True)
class Gather(grain.transforms.Map):
  """Index -> item of a stream (a host's documents in any order)."""
  items: object

  def map(self, i):
    return self.items[int(i)]


def streams(data_config, *, tokenizer_path: str, split: str = "train") -> list[Stream]:
  """One Stream per configured source, from data.prepared_dir if set."""
  c = data_config
  if c.get("prepared_dir"):
    from maxlm.data import prepare  # pylint: disable=g-import-not-at-top
    config_lib.validate(c)
    manifest = prepare.load_manifest(c.prepared_dir, tokenizer_path)
    domains = config_lib.domain_names(c)
    out = []
    for s in config_lib.iter_sources(c):
      items, ids = prepare.split_source(c.prepared_dir, manifest, s["name"], split)
      dom = domains.index(s["domain"])
      out.append(Stream(s["name"], dom, s["weight"], s, items, ids,
                        prepare.DecodeRecord(manifest["dtype"], dom, c.add_bos, c.add_eos,
                                             tokenizer_path)))
    return out
  return [Stream(p.name, p.domain_id, p.weight, p.config, getattr(p, split),
                 [d for _, d in getattr(p, split)],
                 Tokenize(tokenizer_path, p.domain_id, c.add_bos, c.add_eos))
          for p in plan_sources(c)]


def source_rows(st: Stream, data_config, *, seq_len: int, seed: int, process_index: int,
                process_count: int) -> tuple[grain.IterDataset, list[int]]:
  """One source's endless (or epoch-capped) packed rows on this host, and the
  doc ids of the host's documents."""
  c, order_by = data_config, st.config.get("order_by", "")
  idx = host_indices(len(st.doc_ids), order_by, process_index, process_count)
  if not idx:
    raise ValueError(f"data.sources.{st.name}: {len(st.doc_ids)} training documents "
                     f"cannot be shared by {process_count} processes")
  ds = grain.MapDataset.source(idx)
  if not order_by:
    ds = ds.shuffle(seed=_derive(seed, "shuffle", st.name))
  # A curriculum keeps its order, every epoch (no shuffle).
  ds = ds.repeat(st.config.get("max_epochs") or None)
  ds = ds.map(Gather(st.items)).map(st.to_example)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads,
                                            prefetch_buffer_size=4 * c.num_packing_bins))
  # Curriculum order must survive packing, so its bins are not shuffled.
  rows = packing.pack(it, packing=c.packing, seq_len=seq_len, num_bins=c.num_packing_bins,
                      seed=_derive(seed, "pack", st.name), long_doc_policy=c.long_doc_policy,
                      shuffle_bins=not order_by)
  if c.get("worker_count", 0):
    # Reading, tokenizing and packing run in worker processes (each takes a
    # strided part of the host's documents); mixing stays in this process so
    # the schedule sees the true step and reuse counts see every row. The row
    # order differs from worker_count=0 but is deterministic and resumable.
    rows = rows.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count))
  return rows, [st.doc_ids[i] for i in idx]


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
  b = global_batch // process_count
  sts = streams(c, tokenizer_path=tokenizer_path)
  # Sources that are off at step 0 may be switched on by the schedule, so all
  # sources are built; the mixer never pulls from a weight-0 source.
  rows, infos = [], []
  for st in sts:
    r, ids = source_rows(st, c, seq_len=seq_len, seed=seed, process_index=process_index,
                         process_count=process_count)
    rows.append(r)
    infos.append(mixing.SourceInfo(st.name, tuple(ids)))
  stages = mixing.make_stages([st.weight for st in sts], [st.name for st in sts],
                              c.get("schedule", ()), tokens_per_step=global_batch * seq_len)
  mixed = mixing.ScheduledMixIterDataset(rows, infos, stages, rows_per_step=b,
                                         reuse_decay=c.get("reuse_decay", 1.0))
  batched = mixed.batch(b, drop_remainder=True)
  batched = batched.map(Finalize(keep_doc_ids))
  if c.prefetch_batches:
    batched = grain.experimental.ThreadPrefetchIterDataset(
        batched, prefetch_buffer_size=c.prefetch_batches)
  return iter(batched)


@dataclasses.dataclass(frozen=True)
class Finalize(grain.transforms.Map):
  keep_doc_ids: bool = False

  def map(self, element):
    return packing.finalize(element, self.keep_doc_ids)


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
    parts = [grain.MapDataset.source(list(range(len(st.doc_ids)))).map(Gather(st.items))
             .map(st.to_example) for st in held if st.domain_id == dom_id and st.doc_ids]
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
