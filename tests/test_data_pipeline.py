"""Tests of the first Grain pipeline (issue 2): packing, targets, resume, sharding.

References are independent of the pipeline: hand-computed golden arrays for
packing, and documents re-tokenized on their own for the target check.
"""
import os
import time

import grain
import numpy as np
import pytest

from maxlm import data
from maxlm.data import packing
from maxlm.data import pipeline
from maxlm.data import tokenizer as tokenizer_lib

T = 64
B = 4


def tiny_config():
  c = data.default_data_config()
  c.sources.shakespeare.max_docs = 40
  c.sources.stdlib.max_docs = 40
  c.tokenizer.train_chars = 200_000
  c.heldout_fraction = 0.05
  c.num_packing_bins = 8
  c.read_threads = 1
  return c


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, data.build_tokenizer(tiny_config(), workdir)


def _iter(tok_path, c=None, **kw):
  args = dict(tokenizer_path=tok_path, seq_len=T, global_batch=B, seed=0)
  args.update(kw)
  return data.make_train_iterator(c or tiny_config(), **args)


# ---------------------------------------------------------------- packing golden

# Documents as token ids, <s>=2 ... </s>=3 already added.
DOC_A = [2, 10, 11, 12, 3]  # 4 (input, target) pairs
DOC_B = [2, 20, 21, 3]  # 3 pairs
DOC_C = [2, 30, 31, 32, 33, 34, 3]  # 6 pairs
DOC_D = [2, 40, 3]  # 2 pairs
DOC_E = [2] + list(range(50, 60)) + [3]  # 11 pairs: longer than a row of 8


def _pack(docs, packing_kind, num_bins=2, policy="split"):
  exs = [packing.to_example(np.array(d), domain_id=i % 2, doc_id=i) for i, d in enumerate(docs)]
  ds = grain.MapDataset.source(exs).to_iter_dataset()
  rows = packing.pack(ds, packing=packing_kind, seq_len=8, num_bins=num_bins, seed=0,
                      shuffle_bins=False, long_doc_policy=policy)
  out = [packing.finalize(r, keep_doc_ids=True) for r in rows]
  return {k: np.stack([r[k] for r in out]) for k in out[0]}


def test_first_fit_golden():
  got = _pack([DOC_A, DOC_B, DOC_C, DOC_D, DOC_E], "first_fit")
  # Bins of 8: A(4)+B(3) -> row 0; C(6) -> row 1; D(2) fits row 1 exactly.
  # E's first piece (8) fits nowhere -> rows 0, 1 emitted; E = 8 + 3 -> rows 2, 3.
  np.testing.assert_array_equal(got["inputs"], [
      [2, 10, 11, 12, 2, 20, 21, 0],
      [2, 30, 31, 32, 33, 34, 2, 40],
      [2, 50, 51, 52, 53, 54, 55, 56],
      [57, 58, 59, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got["targets"], [
      [10, 11, 12, 3, 20, 21, 3, 0],
      [30, 31, 32, 33, 34, 3, 40, 3],
      [50, 51, 52, 53, 54, 55, 56, 57],
      [58, 59, 3, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got["segment_ids"], [
      [1, 1, 1, 1, 2, 2, 2, 0],
      [1, 1, 1, 1, 1, 1, 2, 2],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got["positions"], [
      [0, 1, 2, 3, 0, 1, 2, 0],
      [0, 1, 2, 3, 4, 5, 0, 1],
      [0, 1, 2, 3, 4, 5, 6, 7],
      [0, 1, 2, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got["loss_mask"], [
      [1, 1, 1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got["domain_ids"][:2], [
      [0, 0, 0, 0, 1, 1, 1, 0],
      [0, 0, 0, 0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(got["doc_ids"][1], [2, 2, 2, 2, 2, 2, 3, 3])
  assert got["loss_mask"].dtype == np.float32 and got["inputs"].dtype == np.int32


def test_concat_split_golden():
  got = _pack([DOC_A, DOC_B, DOC_C, DOC_D], "concat_split")
  # 4 + 3 + 6 + 2 = 15 pairs: row 0 = A, B, first pair of C; row 1 = rest of C
  # (positions restart at 0) and D, then one padding cell.
  np.testing.assert_array_equal(got["inputs"], [
      [2, 10, 11, 12, 2, 20, 21, 2],
      [30, 31, 32, 33, 34, 2, 40, 0]])
  np.testing.assert_array_equal(got["targets"], [
      [10, 11, 12, 3, 20, 21, 3, 30],
      [31, 32, 33, 34, 3, 40, 3, 0]])
  np.testing.assert_array_equal(got["segment_ids"], [
      [1, 1, 1, 1, 2, 2, 2, 3],
      [1, 1, 1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(got["positions"], [
      [0, 1, 2, 3, 0, 1, 2, 0],
      [0, 1, 2, 3, 4, 0, 1, 0]])
  np.testing.assert_array_equal(got["loss_mask"], [
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 1, 1, 0]])


def test_truncate_policy_drops_the_tail():
  got = _pack([DOC_E], "first_fit", num_bins=1, policy="truncate")
  assert got["inputs"].shape == (1, 8)
  np.testing.assert_array_equal(got["targets"][0], range(50, 58))


# ------------------------------------------------------------- real pipeline

def test_batch_format(tok):
  it = _iter(tok[1])
  b = next(it)
  assert set(b) == set(packing.BATCH_KEYS)
  for k in packing.BATCH_KEYS:
    assert b[k].shape == (B, T), k
  assert b["loss_mask"].dtype == np.float32
  for k in ("inputs", "targets", "segment_ids", "positions", "domain_ids"):
    assert b[k].dtype == np.int32, k
  np.testing.assert_array_equal(b["loss_mask"], b["segment_ids"] > 0)


def test_every_target_is_the_next_token_of_its_document(tok):
  c = tiny_config()
  sp = tokenizer_lib.load(tok[1])
  texts = {doc_id: text for p in pipeline.plan_sources(c) for text, doc_id in p.train}
  it = _iter(tok[1], c, keep_doc_ids=True)
  checked = 0
  for _ in range(6):
    b = next(it)
    for r in range(B):
      seg = b["segment_ids"][r]
      for s in np.unique(seg[seg > 0]):
        cols = np.nonzero(seg == s)[0]
        assert np.all(np.diff(cols) == 1), "a segment must be contiguous"
        np.testing.assert_array_equal(b["positions"][r, cols], np.arange(len(cols)))
        doc_id = b["doc_ids"][r, cols[0]]
        assert np.all(b["doc_ids"][r, cols] == doc_id)
        doc = [tokenizer_lib.BOS_ID] + sp.encode(texts[doc_id]) + [tokenizer_lib.EOS_ID]
        x, y = list(b["inputs"][r, cols]), list(b["targets"][r, cols])
        offsets = [k for k in range(len(doc) - len(x))
                   if doc[k:k + len(x)] == x and doc[k + 1:k + 1 + len(x)] == y]
        assert offsets, f"row {r} segment {s} is not a slice of document {doc_id}"
        checked += 1
  assert checked > 10


def test_checkpoint_restore_gives_identical_batches(tok, tmp_path):
  it = _iter(tok[1])
  for _ in range(3):
    next(it)
  handler = grain.checkpoint.CheckpointHandler()
  (tmp_path / "ckpt").mkdir()  # orbax creates it in a real run
  handler.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
  expected = [next(it) for _ in range(4)]

  fresh = _iter(tok[1])  # a new iterator, as in a resumed process
  handler.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(fresh))
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_deterministic_given_seed(tok):
  a, b, c = _iter(tok[1]), _iter(tok[1]), _iter(tok[1], seed=1)
  xa = [next(a)["inputs"] for _ in range(3)]
  xb = [next(b)["inputs"] for _ in range(3)]
  xc = [next(c)["inputs"] for _ in range(3)]
  np.testing.assert_array_equal(xa, xb)
  assert not np.array_equal(xa, xc)


def test_hosts_hold_disjoint_rows_of_the_same_global_batch(tok):
  c = tiny_config()
  one = _iter(tok[1], c, keep_doc_ids=True)
  hosts = [_iter(tok[1], c, process_index=p, process_count=2, keep_doc_ids=True)
           for p in range(2)]
  for _ in range(4):
    want, got = next(one), [next(h) for h in hosts]
    assert got[0]["inputs"].shape == (B // 2, T)
    for k in want:
      np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k], err_msg=k)
  with pytest.raises(ValueError, match="not divisible"):
    _iter(tok[1], c, process_index=0, process_count=3)


def test_tokenizer_is_built_once_and_reused(tok, monkeypatch):
  workdir, path = tok
  assert path == os.path.join(workdir, "tokenizer", "tokenizer.model")
  mtime = os.path.getmtime(path)

  def no_retrain(*a, **k):
    raise AssertionError("resume must not retrain the tokenizer")
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", no_retrain)
  assert data.build_tokenizer(tiny_config(), workdir) == path
  assert os.path.getmtime(path) == mtime

  c = tiny_config()
  c.tokenizer.path = path
  assert data.build_tokenizer(c, "/nonexistent") == path
  c.tokenizer.path = "/no/such/tokenizer.model"
  with pytest.raises(FileNotFoundError, match="data.tokenizer.path"):
    data.build_tokenizer(c, workdir)


def test_both_domains_with_their_ids(tok):
  c = tiny_config()
  names = data.domain_names(c)
  assert names == ["code", "prose"]
  domain_of = {d: p.domain_id for p in pipeline.plan_sources(c) for _, d in p.train}
  it = _iter(tok[1], c, keep_doc_ids=True)
  seen = set()
  for _ in range(4):
    b = next(it)
    m = b["segment_ids"] > 0
    for d, dom in zip(b["doc_ids"][m], b["domain_ids"][m]):
      assert domain_of[d] == dom
    seen |= set(b["domain_ids"][m].tolist())
  assert seen == {names.index("code"), names.index("prose")}


def test_eval_batches_are_heldout(tok):
  c = tiny_config()
  train = {d for p in pipeline.plan_sources(c) for _, d in p.train}
  ev = data.make_eval_batches(c, tokenizer_path=tok[1], seq_len=T, global_batch=B,
                              keep_doc_ids=True)
  assert set(ev) == {"code", "prose"}
  for dom, batches in ev.items():
    assert 1 <= len(batches) <= c.eval_batches
    for b in batches:
      assert b["inputs"].shape == (B, T)
      ids = set(b["doc_ids"][b["segment_ids"] > 0].tolist())
      assert ids and not ids & train
      assert np.all(b["domain_ids"][b["loss_mask"] > 0] == data.domain_names(c).index(dom))


def test_tokenizer_round_trips_prose_and_code(tok):
  sp = tokenizer_lib.load(tok[1])
  assert sp.vocab_size == 512
  for s in ["def f(x):\n    return x + 12345  # ü 中\n", "To be, or not to be:\n\tthat is"]:
    assert sp.decode(sp.encode(s)) == s
  assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]


def test_pipeline_is_fast_enough(tok):
  it = _iter(tok[1])
  next(it)
  t0 = time.perf_counter()
  for _ in range(20):
    next(it)
  rate = 20 * B * T / (time.perf_counter() - t0)
  assert rate > 5_000, f"{rate:.0f} tokens/s"
