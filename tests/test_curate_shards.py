"""Curate -> shards in one pipeline (issue 13.1): the shards hold exactly the
documents of the curated output, tokenized as prepare tokenizes them, with
dense doc ids, and training reads them as a data.prepared_dir."""

import collections
import glob
import json
import os

import numpy as np
import pytest

from configs import curate as curate_config
from maxlm import data
from maxlm.curate import pipeline
from maxlm.curate import to_shards  # noqa: F401  (the --shards_out writer tested here)
from maxlm.data import config as config_lib
from maxlm.data import prepare as prepare_lib
from maxlm.data import shards as shards_lib
from maxlm.data.doc_index import unit_hash

import test_curate_pipeline as tcp  # noqa: E402  (prose that passes every rule)


def _records(prepared_dir, manifest, name):
  """{split: [(doc_id, tokens tuple)]} of one source's shards."""
  out = {}
  for split in ("train", "heldout"):
    recs, n = shards_lib.split_source(prepared_dir, manifest, name, split)
    out[split] = [shards_lib.decode_record(recs[i], manifest["dtype"]) for i in range(n)]
    out[split] = [(d, tuple(t.tolist())) for d, t in out[split]]
  return out


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tokenizer_path):
  root = tmp_path_factory.mktemp("cs")
  (root / "in").mkdir()
  recs = [{"id": f"p{i:02d}", "text": tcp._prose(i, 4), "domain": "prose"} for i in range(30)]
  recs += [{"id": f"c{i:02d}", "text": tcp._prose(i + 30, 3), "domain": "plays"} for i in range(12)]
  recs.append({"id": "zcopy", "text": recs[3]["text"], "domain": "prose"})  # removed by exact dedup
  tcp._write_jsonl(root / "in" / "a.jsonl", recs)
  c = curate_config.get_config("dedup,runlocal,prepare")
  shards = str(root / "shards")
  summary = pipeline.run(c, [str(root / "in" / "a.jsonl")], str(root / "out"),
                         ["--direct_running_mode=in_memory"],
                         shards=dict(out=shards, tokenizer=tokenizer_path, shard_tokens=800,
                                     heldout_fraction=0.2))
  return root, shards, summary


def test_shards_hold_the_curated_documents_as_prepare_tokenizes_them(curated, tokenizer_path):
  root, shards, summary = curated
  manifest = json.load(open(os.path.join(shards, "manifest.json")))
  assert set(manifest["sources"]) == {"prose", "plays"}
  kept = summary["stages"][-1]["docs_out"]
  assert summary["stages"][0]["docs_out"] == 43 and 30 <= kept < 43  # the planted copy removed
  # prepare on curate's own output (one jsonl source per partition) is the reference.
  c = data.default_data_config()
  c.sources = {p: config_lib.source(kind="jsonl", domain=p,
                                    paths=(str(root / "out" / "docs" / f"{p}-*.jsonl"),))
               for p in ("prose", "plays")}
  c.schedule = ()
  ref = str(root / "prepared")
  want = prepare_lib.prepare(c, tokenizer_path, ref, docs_per_shard=8, progress=False)
  ids = []
  for name in ("prose", "plays"):
    got_recs = _records(shards, manifest, name)
    want_recs = _records(ref, want, name)
    got = collections.Counter(t for s in got_recs.values() for _, t in s)
    assert got == collections.Counter(t for s in want_recs.values() for _, t in s), name
    entry = manifest["sources"][name]
    assert entry["train"]["docs"] + entry["heldout"]["docs"] == sum(got.values())
    assert entry["train"]["tokens"] == sum(len(t) for _, t in got_recs["train"])
    lo, hi = entry["doc_id_range"]
    src_ids = [d for s in got_recs.values() for d, _ in s]
    assert lo == min(src_ids) and hi == max(src_ids) + 1 == lo + len(src_ids)
    ids += src_ids
    # Held out: the curated documents whose id hashes below the fraction.
    curated_ids = [json.loads(l)["id"] for f in glob.glob(str(root / "out" / "docs" / f"{name}-*"))
                   for l in open(f)]
    assert entry["heldout"]["docs"] == sum(unit_hash(i) < 0.2 for i in curated_ids), name
  assert sum(manifest["sources"][n]["heldout"]["docs"] for n in ("prose", "plays")) > 0
  assert sorted(ids) == list(range(kept))  # dense and unique over all partitions
  # Shards near the token target: ceil(tokens / 800) per split, none above 2.5x it.
  prose = manifest["sources"]["prose"]["train"]
  assert len(prose["shards"]) >= 2 and max(prose["shard_tokens"]) <= 2.5 * 800


def test_training_reads_the_shards(curated, tokenizer_path):
  _, shards, summary = curated
  kept = summary["stages"][-1]["docs_out"]
  c = data.default_data_config()
  c.sources = {p: config_lib.source(kind="jsonl", domain=p, paths=("unused/*.jsonl",))
               for p in ("prose", "plays")}
  c.schedule = ()
  c.prepared_dir = shards
  it = data.make_train_iterator(c, tokenizer_path=tokenizer_path, seq_len=32, global_batch=4,
                                seed=0, keep_doc_ids=True)
  batch = next(it)
  assert batch["inputs"].shape == (4, 32)
  doc_ids = np.asarray(batch["doc_ids"])
  assert ((doc_ids >= 0) & (doc_ids < kept) | (doc_ids < 0)).all() and (doc_ids >= 0).any()


def test_shards_out_must_be_empty(curated, tokenizer_path):
  root, shards, _ = curated
  c = curate_config.get_config("dedup,runlocal,prepare")
  with pytest.raises(FileExistsError, match="not empty"):
    pipeline.run(c, [str(root / "in" / "a.jsonl")], str(root / "out2"),
                 ["--direct_running_mode=in_memory"],
                 shards=dict(out=shards, tokenizer=tokenizer_path))
  assert not glob.glob(str(root / "out2" / "docs" / "*"))
