"""Mixtures, schedules, reuse accounting, epoch caps and exact resume (issue 3)."""
import json
import logging
import os
import subprocess
import sys
import sysconfig

import grain
import numpy as np
import pytest

from maxlm import data
from maxlm.data import config as config_lib
from maxlm.data import mixing
from maxlm.data import pipeline
from maxlm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def three_domain_config():
  c = data.default_data_config()
  c.sources.shakespeare.max_docs = 30
  c.sources.stdlib.max_docs = 30
  c.sources.email = config_lib.source(
      kind="text_files", domain="email", weight=0.2,
      paths=(os.path.join(sysconfig.get_paths()["stdlib"], "email", "*.py"),))
  c.sources.shakespeare.weight = 0.5
  c.sources.stdlib.weight = 0.3
  c.tokenizer.train_chars = 200_000
  c.num_packing_bins = 8
  c.read_threads = 1
  return c


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return data.build_tokenizer(three_domain_config(), str(tmp_path_factory.mktemp("run")))


def _domain_tokens(batches, names):
  counts = np.zeros(len(names))
  for b in batches:
    np.add.at(counts, b["domain_ids"][b["loss_mask"] > 0], 1)
  return counts


def _synthetic_rows(source: int, seq_len: int = 32, seed: int = 0):
  """Endless packed rows of one source with 1..seq_len real tokens each (the
  rest padding), so token share and row share differ."""
  rng = np.random.default_rng(seed + source)
  pool = []
  for k in range(64):
    n = int(rng.integers(1, seq_len + 1))
    seg = np.zeros(seq_len, np.int32)
    seg[:n] = 1
    doc = 1000 * source + k
    pool.append(dict(inputs_segment_ids=seg, doc_ids=np.full(seq_len, doc, np.int32),
                     doc_offsets=np.zeros(seq_len, np.int32)))
  return grain.MapDataset.range(1 << 40).map(lambda i: pool[i % 64]).to_iter_dataset(
      grain.ReadOptions(num_threads=0))


def test_mixer_token_shares_within_2_percent_over_10k_rows():
  weights = [0.5, 0.3, 0.15, 0.05]
  names = ["a", "b", "c", "d"]
  infos = [mixing.SourceInfo(n, 64) for n in names]
  mixed = mixing.ScheduledMixIterDataset(
      [_synthetic_rows(i) for i in range(4)], infos,
      mixing.make_stages(weights, names, (), 1), rows_per_step=100)
  tokens = np.zeros(4)
  for row in _first(mixed, 10_000):
    tokens[int(row["doc_ids"][0]) // 1000] += row["inputs_segment_ids"].sum()
  np.testing.assert_allclose(tokens / tokens.sum(), weights, atol=0.02)
  # Largest-deficit selection is in fact exact to about one row.
  np.testing.assert_allclose(tokens / tokens.sum(), weights, atol=32 / tokens.sum() * 2)


def _first(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_pipeline_token_shares_match_weights(tok):
  c = three_domain_config()
  names = data.domain_names(c)  # code, email, prose
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=100, seed=0)
  counts = _domain_tokens((next(it) for _ in range(15)), names)
  share = dict(zip(names, counts / counts.sum()))
  for name, want in [("prose", 0.5), ("code", 0.3), ("email", 0.2)]:
    assert abs(share[name] - want) < 0.02, share
  # The mixer's own token counts agree with the brute-force count.
  rep = data.reuse_report(it)
  by_source = {"shakespeare": "prose", "stdlib": "code", "email": "email"}
  for src, dom in by_source.items():
    assert rep[src]["tokens"] == counts[names.index(dom)]


def test_weights_at_switch_and_linear_midpoints():
  names = ["a", "b"]
  stages = mixing.make_stages([1.0, 0.0], names, [
      dict(start=10, weights=dict(b=1.0)),
      dict(start=30, weights=dict(a=0.2, b=0.8), transition="linear"),
      dict(start=4000, unit="tokens", weights=dict(a=1.0)),
  ], tokens_per_step=100)
  np.testing.assert_allclose(mixing.weights_at(stages, 9), [1, 0])
  np.testing.assert_allclose(mixing.weights_at(stages, 10), [0, 1])  # hard switch
  np.testing.assert_allclose(mixing.weights_at(stages, 20), [0.1, 0.9])  # midpoint
  np.testing.assert_allclose(mixing.weights_at(stages, 15), [0.05, 0.95])
  np.testing.assert_allclose(mixing.weights_at(stages, 30), [0.2, 0.8])
  np.testing.assert_allclose(mixing.weights_at(stages, 39), [0.2, 0.8])
  np.testing.assert_allclose(mixing.weights_at(stages, 40), [1, 0])  # 4000 tokens = step 40
  with pytest.raises(ValueError, match="unknown sources"):
    mixing.make_stages([1, 1], names, [dict(start=5, weights=dict(c=1.0))], 1)
  with pytest.raises(ValueError, match="increasing"):
    mixing.make_stages([1, 1], names, [dict(start=0, weights=dict(a=1.0))], 1)


def test_schedule_switches_at_the_declared_step(tok):
  c = three_domain_config()
  c.sources.email.weight = 0.0
  c.schedule = (dict(start=3, weights=dict(email=1.0)),
                dict(start=6, weights=dict(shakespeare=1.0, email=1.0), transition="linear"))
  names = data.domain_names(c)
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=8, seed=0)
  batches = [next(it) for _ in range(6)]
  for step, b in enumerate(batches):
    doms = set(b["domain_ids"][b["loss_mask"] > 0].tolist())
    assert ("email" in [names[d] for d in doms]) == (step >= 3), (step, doms)
  # Steps 3..5 ramp email from 1 towards 0.5 and prose from 0 upwards.
  assert _domain_tokens(batches[3:4], names)[names.index("prose")] == 0
  assert _domain_tokens(batches[5:6], names)[names.index("prose")] > 0


def test_reuse_counts_match_brute_force_and_epoch_cap_holds(tok):
  c = three_domain_config()
  c.sources.email.max_docs = 4
  c.sources.email.max_doc_chars = 2000
  c.sources.email.max_epochs = 2
  c.sources.email.weight = 0.6
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=64, global_batch=8, seed=0,
                                keep_doc_ids=True)
  brute = {}
  for _ in range(60):
    b = next(it)
    seg = b["segment_ids"]
    # A document is served when the segment holding its first token (<s>) is.
    firsts = (b["positions"] == 0) & (seg > 0) & (b["inputs"] == tokenizer_lib.BOS_ID)
    for d in b["doc_ids"][firsts]:
      brute[int(d)] = brute.get(int(d), 0) + 1
  rep = data.reuse_report(it)
  for p in pipeline.plan_sources(c):
    r = rep[p.name]
    train = np.array([d for _, d in p.train])
    want = np.array([brute.get(int(d), 0) for d in train])
    np.testing.assert_array_equal(r["doc_counts"][train - r["doc_id_lo"]], want, err_msg=p.name)
    assert r["doc_counts"].sum() == want.sum() == r["docs_served"]  # held-out ids stay 0
  assert rep["email"]["exhausted"]
  assert rep["email"]["max_doc_count"] <= 2
  email = np.array([d for p in pipeline.plan_sources(c) if p.name == "email" for _, d in p.train])
  np.testing.assert_array_equal(rep["email"]["doc_counts"][email - rep["email"]["doc_id_lo"]], 2)


def test_iterator_state_is_o_sources_and_counts_travel_beside_it(tok, tmp_path):
  # The JSON state holds no per-document data; the handler saves the counts
  # as an array beside it and a resumed iterator continues them.
  from maxlm.data import state as data_state
  c = three_domain_config()
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  for _ in range(5):
    next(it)
  small = len(json.dumps(it.get_state()))
  c.sources.shakespeare.max_docs = 300
  big = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  for _ in range(5):
    next(big)
  assert abs(len(json.dumps(big.get_state())) - small) < 200  # 10x the documents
  (tmp_path / "ck").mkdir()
  data_state.CheckpointHandler().save(tmp_path / "ck", data_state.CheckpointSave(big))
  for _ in range(3):
    next(big)
  fresh = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  data_state.CheckpointHandler().restore(tmp_path / "ck", data_state.CheckpointRestore(fresh))
  for _ in range(3):
    next(fresh)
  a, b = data.reuse_report(big), data.reuse_report(fresh)
  for name in a:
    np.testing.assert_array_equal(a[name]["doc_counts"], b[name]["doc_counts"], err_msg=name)
    assert a[name]["docs_served"] == b[name]["docs_served"] == a[name]["doc_counts"].sum()


def test_reuse_decay_downweights_a_reused_source(tok):
  c = three_domain_config()
  c.sources.email.max_docs = 3
  c.sources.email.max_doc_chars = 2000
  c.reuse_decay = 0.25
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=64, global_batch=8, seed=0)
  for _ in range(40):
    next(it)
  rep = data.reuse_report(it)
  share = rep["email"]["tokens"] / sum(r["tokens"] for r in rep.values())
  assert rep["email"]["epochs"] >= 1
  assert share < 0.2 - 0.02, share  # without decay it would be 0.2


_RESUME_SCRIPT = r"""
import sys, numpy as np, grain
sys.path.insert(0, {root!r})
from tests.test_data_mixing import three_domain_config
from maxlm import data
it = data.make_train_iterator(three_domain_config(), tokenizer_path={tok!r}, seq_len=32,
                              global_batch=4, seed=7)
grain.checkpoint.CheckpointHandler().restore(__import__('etils.epath').epath.Path({ckpt!r}),
                                             args=grain.checkpoint.CheckpointRestore(it))
rows = [next(it) for _ in range(25)]
np.savez({out!r}, **{{k: np.concatenate([r[k] for r in rows]) for k in rows[0]}})
"""


def test_resume_in_a_new_process_sees_the_next_100_rows(tok, tmp_path):
  it = data.make_train_iterator(three_domain_config(), tokenizer_path=tok, seq_len=32,
                                global_batch=4, seed=7)
  for _ in range(13):
    next(it)
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  grain.checkpoint.CheckpointHandler().save(ckpt, args=grain.checkpoint.CheckpointSave(it))
  want = [next(it) for _ in range(25)]  # 100 rows
  out = tmp_path / "rows.npz"
  script = _RESUME_SCRIPT.format(root=ROOT, tok=tok, ckpt=str(ckpt), out=str(out))
  subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=1800)
  got = np.load(out)
  for k in want[0]:
    np.testing.assert_array_equal(got[k], np.concatenate([w[k] for w in want]), err_msg=k)


def test_changed_weights_on_resume_are_logged_and_used(tok, caplog):
  c = three_domain_config()
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  c.sources.email.weight = 0.0
  fresh = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  with caplog.at_level(logging.WARNING):
    fresh.set_state(state)
  assert "mixture schedule changed on resume" in caplog.text
  names = data.domain_names(c)
  counts = _domain_tokens((next(fresh) for _ in range(5)), names)
  assert counts[names.index("email")] == 0


def test_each_process_gets_its_rows_of_the_one_process_batch(tok):
  # The global batch does not depend on the process count: host p holds rows
  # [p*b, (p+1)*b) of what a single process sees.
  c = three_domain_config()
  one = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=8, seed=0,
                                 keep_doc_ids=True)
  want = [next(one) for _ in range(5)]
  for n in (2, 4):
    hosts = [data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=8,
                                      seed=0, process_index=p, process_count=n,
                                      keep_doc_ids=True) for p in range(n)]
    for w in want:
      got = [next(h) for h in hosts]
      for k in w:
        np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), w[k], err_msg=k)


def test_reports_are_written(tok, tmp_path):
  c = three_domain_config()
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0)
  for _ in range(3):
    next(it)
  table = data.write_reports(c, it, str(tmp_path))
  assert "shakespeare" in table and "epochs" in table
  rep = json.loads((tmp_path / "data_reuse.json").read_text())
  assert set(rep) == {"shakespeare", "stdlib", "email"}
  assert (tmp_path / "data_errors.txt").read_text().strip() == "no bad input"


@pytest.mark.slow
def test_worker_processes_resume_exactly_and_count_every_row(tok):
  from absl import flags  # Grain's worker processes read absl flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  c = three_domain_config()
  c.worker_count = 1
  it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0,
                                keep_doc_ids=True)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  fresh = data.make_train_iterator(c, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0,
                                   keep_doc_ids=True)
  fresh.set_state(state)
  # Worker processes do not change the data order.
  c0 = three_domain_config()
  plain = data.make_train_iterator(c0, tokenizer_path=tok, seq_len=32, global_batch=4, seed=0,
                                   keep_doc_ids=True)
  for _ in range(3):
    next(plain)
  for w in want:
    got = next(plain)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k], err_msg=k)
  for w in want:
    got = next(fresh)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k], err_msg=k)
  rep = data.reuse_report(fresh)
  assert sum(r["tokens"] for r in rep.values()) == sum(
      int(b["loss_mask"].sum()) for b in want) + sum(
          r["tokens"] for r in mixing.reuse_report(state).values())
