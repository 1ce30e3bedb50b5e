"""Offline distillation: the teacher's top-k per token, stored once, read by step.

The store (a directory, written by maxlm.distill.precompute) holds, for the
training steps [0, N) of one run configuration:

  ids/          zarr int32   [N, B, T, K]  the teacher's top-k token ids
  logprobs/     zarr float32 [N, B, T, K]  their log-probs (tau = 1)
  fingerprint/  zarr uint32  [N, B]        crc32 of each row's inputs/segments/positions
  done/         zarr uint8   [N]           1 once step's rows are fully written
  meta.json                                steps, global_batch, seq_len, top_k, seed,
                                           teacher, tokenizer sha256

One chunk is one step, so steps are written independently and a step is
marked done only after its arrays are on disk: a rerun skips finished steps
(resumable), and a crash mid-step recomputes only that step.

Alignment: the precompute draws batches from the same train iterator the
student run builds (same data config, seq_len, global batch, seed), so row
`step` belongs to the student's step `step` (also after a resume, which
restores the iterator with the checkpoint). The student checks every batch's
fingerprint against the stored one and refuses to train on a mismatch,
naming the step. Single-process only for now (per-host iterators shard the
data differently from the one the precompute drew).
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import tensorstore as ts

META = "meta.json"


def batch_fingerprint(batch) -> np.ndarray:
  """crc32 per row [B] of the teacher's inputs (tokens, segment ids, positions)."""
  keys = ("inputs", "segment_ids", "positions")
  arrs = [np.ascontiguousarray(np.asarray(batch[k], np.int32)) for k in keys if k in batch]
  out = np.empty(arrs[0].shape[0], np.uint32)
  for i in range(out.shape[0]):
    crc = 0
    for a in arrs:
      crc = zlib.crc32(a[i].tobytes(), crc)
    out[i] = crc
  return out


def _spec(path, shape, chunks, dtype):
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": path},
          "metadata": {"shape": list(shape), "chunks": list(chunks), "dtype": dtype,
                       "fill_value": 0, "compressor": {"id": "zlib", "level": 1}}}


def open_store(directory: str, meta: dict | None = None):
  """{name: tensorstore} for the store; `meta` given: create or check it, else read it."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, META)
  if meta is None:
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"distill.offline_dir={directory!r} has no {META}; write it with"
                              " `python -m maxlm.distill.precompute`")
    with open(meta_path) as f:
      meta = json.load(f)
    create = False
  else:
    if os.path.isfile(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      if old != meta:
        diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta)
                if old.get(k) != meta.get(k)}
        raise ValueError(f"offline store {directory} was written for another run (stored vs now:"
                         f" {diff}); use a fresh directory")
    create = True
  n, b, t, k = meta["steps"], meta["global_batch"], meta["seq_len"], meta["top_k"]
  arrays = {
      "ids": ((n, b, t, k), (1, b, t, k), "<i4"),
      "logprobs": ((n, b, t, k), (1, b, t, k), "<f4"),
      "fingerprint": ((n, b), (1, b), "<u4"),
      "done": ((n,), (1,), "|u1"),
  }
  out = {}
  for name, (shape, chunks, dtype) in arrays.items():
    spec = _spec(os.path.join(directory, name), shape, chunks, dtype)
    if create:
      out[name] = ts.open(spec, create=True, open=True).result()
    else:
      out[name] = ts.open({k: v for k, v in spec.items() if k != "metadata"}, open=True).result()
  if create and not os.path.isfile(meta_path):
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=2)
    os.replace(tmp, meta_path)
  return out, meta


def write_step(store, step: int, ids_btk, logprobs_btk, fingerprint_b) -> None:
  """Writes one step's rows, then marks it done (after the data is on disk)."""
  futures = [store["ids"][step].write(np.asarray(ids_btk, np.int32)),
             store["logprobs"][step].write(np.asarray(logprobs_btk, np.float32)),
             store["fingerprint"][step].write(np.asarray(fingerprint_b, np.uint32))]
  for fut in futures:
    fut.result()
  store["done"][step].write(np.uint8(1)).result()


def done_steps(store) -> np.ndarray:
  return np.asarray(store["done"].read().result()).astype(bool)


class OfflineTeacher:
  """Reads the stored top-k for the student's batch at `step`, checking alignment."""

  def __init__(self, directory: str, *, steps: int, global_batch: int, seq_len: int, top_k: int,
               tokenizer_path: str | None = None, process_count: int = 1):
    if process_count != 1:
      raise ValueError("distill.offline_dir: offline distillation reads whole global batches and"
                       f" supports one process only (process_count={process_count})")
    self.directory = os.path.abspath(directory)
    self.store, meta = open_store(self.directory)
    want = dict(global_batch=global_batch, seq_len=seq_len, top_k=top_k)
    bad = {k: (meta[k], v) for k, v in want.items() if meta[k] != v}
    if bad:
      raise ValueError(f"distill.offline_dir={self.directory}: stored for {bad} (stored, run)")
    if meta["steps"] < steps:
      raise ValueError(f"distill.offline_dir={self.directory} holds {meta['steps']} steps; the run"
                       f" trains {steps}: precompute with --steps={steps}")
    if tokenizer_path is not None and meta.get("tokenizer_sha256"):
      from maxlm.data.tokenizer import tokenizer_hash  # pylint: disable=g-import-not-at-top
      if tokenizer_hash(tokenizer_path) != meta["tokenizer_sha256"]:
        raise ValueError(f"distill.offline_dir={self.directory}: written with another tokenizer"
                         f" than the student's ({tokenizer_path})")
    done = done_steps(self.store)
    if not done[:steps].all():
      missing = np.flatnonzero(~done[:steps])
      raise ValueError(f"distill.offline_dir={self.directory}: steps {missing[:8].tolist()}"
                       f"{'...' if len(missing) > 8 else ''} ({len(missing)} in all) are not"
                       " precomputed; rerun `python -m maxlm.distill.precompute` (it resumes)")
    self.meta = meta

  def read(self, step: int, host_batch) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, T, K] int32, logprobs [B, T, K] float32) for `host_batch` at `step`."""
    if not 0 <= step < self.meta["steps"]:
      raise ValueError(f"offline distillation: step {step} is outside the store's"
                       f" {self.meta['steps']} steps ({self.directory})")
    ids_f = self.store["ids"][step].read()
    lps_f = self.store["logprobs"][step].read()
    stored = np.asarray(self.store["fingerprint"][step].read().result())
    got = batch_fingerprint(host_batch)
    if not np.array_equal(stored, got):
      rows = np.flatnonzero(stored != got)
      raise ValueError(
          f"offline distillation misaligned at step {step}: rows {rows[:8].tolist()} of the"
          f" student's batch differ from those the teacher saw (store {self.directory}); the"
          " store was written for another data config, seed, batch size or data order")
    return np.asarray(ids_f.result()), np.asarray(lps_f.result())

  def attach(self, step: int, host_batch: dict) -> dict:
    """host_batch plus 'teacher_ids' and 'teacher_logprobs' for the jitted step."""
    ids, lps = self.read(step, host_batch)
    return {**host_batch, "teacher_ids": ids, "teacher_logprobs": lps}
