"""Grain input pipelines: training iterator and held-out eval batches.

Per source (all Grain):
  MapDataset.source(train documents)[process_index::process_count]
    .shuffle(seed).repeat()          # global shuffle, reshuffled every epoch
    .map(Tokenize)                   # on the fly, in read threads
    .to_iter_dataset()
  -> packing.pack(...)               # FirstFit or ConcatThenSplit rows
Then rows of all sources are mixed by weight (IterDataset.mix), batched,
converted to the driver's dict (packing.finalize) and prefetched.

Rows are packed per source, so a row holds one domain; mixing whole rows makes
the token share of a source equal its row share (rows are all T long, up to
padding) instead of depending on how long its documents are.

Every stage is a Grain iterator with get_state/set_state, so the returned
iterator is saved and restored by grain.checkpoint.CheckpointSave/Restore.
"""

from __future__ import annotations

import dataclasses
import hashlib

import grain
import numpy as np

from maxlm.data import config as config_lib
from maxlm.data import packing
from maxlm.data import sources as sources_lib
from maxlm.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class SourcePlan:
  """One source's documents after the held-out split, with global doc ids."""
  name: str
  domain_id: int
  weight: float
  train: list  # [(text, doc_id)]
  heldout: list  # [(text, doc_id)]


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
  """(text, doc_id) -> example dict of packing.FEATURES."""
  tokenizer_path: str
  domain_id: int
  add_bos: bool = True
  add_eos: bool = True

  def map(self, element):
    text, doc_id = element
    sp = tokenizer_lib.load(self.tokenizer_path)
    ids = sp.encode(text)
    ids = [tokenizer_lib.BOS_ID] * self.add_bos + ids + [tokenizer_lib.EOS_ID] * self.add_eos
    return packing.to_example(np.asarray(ids, np.int32), self.domain_id, doc_id)


def plan_sources(data_config) -> list[SourcePlan]:
  """Loads every source and splits it; doc ids are global and stable."""
  config_lib.validate(data_config)
  domains = config_lib.domain_names(data_config)
  plans, offset = [], 0
  for s in config_lib.iter_sources(data_config):
    docs = tokenizer_lib.cached_documents(s)
    if not docs:
      raise ValueError(f"data.sources.{s['name']}: no documents")
    ids = {d.key: offset + i for i, d in enumerate(docs)}
    offset += len(docs)
    train, held = sources_lib.split_heldout(docs, data_config.heldout_fraction)
    plans.append(SourcePlan(s["name"], domains.index(s["domain"]), s["weight"],
                            [(d.text, ids[d.key]) for d in train],
                            [(d.text, ids[d.key]) for d in held]))
  return plans


def host_documents(plan: SourcePlan, process_index: int, process_count: int) -> grain.MapDataset:
  """This host's disjoint, strided share of a source's training documents."""
  ds = grain.MapDataset.source(plan.train)[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"data.sources.{plan.name}: {len(plan.train)} training documents "
                     f"cannot be shared by {process_count} processes")
  return ds


def make_train_iterator(data_config, *, tokenizer_path: str, seq_len: int,
                        global_batch: int, seed: int, process_index: int = 0,
                        process_count: int = 1,
                        keep_doc_ids: bool = False) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of per-host batches (see __init__)."""
  if global_batch % process_count:
    raise ValueError(f"global_batch={global_batch} is not divisible by "
                     f"process_count={process_count}")
  c = data_config
  rows, weights = [], []
  for plan in plan_sources(c):
    if plan.weight <= 0:
      continue
    ds = host_documents(plan, process_index, process_count)
    ds = ds.shuffle(seed=_derive(seed, "shuffle", plan.name)).repeat()
    ds = ds.map(Tokenize(tokenizer_path, plan.domain_id, c.add_bos, c.add_eos))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads,
                                              prefetch_buffer_size=4 * c.num_packing_bins))
    rows.append(packing.pack(it, packing=c.packing, seq_len=seq_len,
                             num_bins=c.num_packing_bins,
                             seed=_derive(seed, "pack", plan.name),
                             long_doc_policy=c.long_doc_policy))
    weights.append(plan.weight)
  mixed = grain.IterDataset.mix(rows, weights) if len(rows) > 1 else rows[0]
  batched = mixed.batch(global_batch // process_count, drop_remainder=True)
  batched = batched.map(lambda b: packing.finalize(b, keep_doc_ids))
  if c.prefetch_batches:
    batched = grain.experimental.ThreadPrefetchIterDataset(
        batched, prefetch_buffer_size=c.prefetch_batches)
  return iter(batched)


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
  by_domain: dict[int, list] = {}
  for plan in plan_sources(c):
    by_domain.setdefault(plan.domain_id, []).extend(
        (text, doc_id, plan.domain_id) for text, doc_id in plan.heldout)
  out = {}
  for dom_id, docs in sorted(by_domain.items()):
    if not docs:
      continue
    ds = grain.MapDataset.source(docs).map(
        lambda e: Tokenize(tokenizer_path, e[2], c.add_bos, c.add_eos).map(e[:2]))
    rows = packing.pack(ds.to_iter_dataset(), packing="first_fit", seq_len=seq_len,
                        num_bins=c.num_packing_bins, seed=0, shuffle_bins=False,
                        long_doc_policy=c.long_doc_policy)
    rows = _take(rows, num_batches * global_batch, keep_doc_ids)
    while len(rows) % global_batch:
      rows.append({k: np.zeros_like(v) - (k == "doc_ids") for k, v in rows[0].items()})
    batches = []
    for i in range(0, len(rows), global_batch):
      host = rows[i + process_index * b: i + (process_index + 1) * b]
      batches.append({k: np.stack([r[k] for r in host]) for k in host[0]})
    out[domains[dom_id]] = batches
  return out


def _take(rows: grain.IterDataset, n: int, keep_doc_ids: bool) -> list[dict]:
  out = []
  for r in rows:
    if len(out) >= n:
      break
    out.append(packing.finalize(r, keep_doc_ids))
  return out


def _derive(seed: int, *names: str) -> int:
  """A 31-bit seed from the run seed and stage names (stable across runs)."""
  h = hashlib.sha256(repr((int(seed),) + names).encode()).digest()
  return int.from_bytes(h[:4], "big") >> 1

