"""Online mixing rules (maxlm/data/online_mixing.py) against hand-computed updates."""

import json
import math

import numpy as np
import pytest

from maxlm.data import online_mixing as om

DOMAINS = ("code", "docs", "prose")


def _doremi(**kw):
  kw.setdefault("reference", dict(code=2.0, docs=3.0, prose=1.0))
  return om.MixingConfig(rule="doremi", domains=DOMAINS, **kw)


def test_doremi_first_update_by_hand():
  cfg = _doremi(eta=1.0)
  cfg.validate()
  state = om.initial_state(cfg, [0.5, 0.25, 0.25])
  # docs is "easy": its loss is below the reference, so its excess is 0.
  new = om.update(cfg, state, dict(code=2.5, docs=2.0, prose=2.0))
  # excess = (0.5, 0, 1.0); a = w * exp(excess) normalised.
  a = np.array([0.5 * math.exp(0.5), 0.25, 0.25 * math.e])
  np.testing.assert_allclose(new["weights"], a / a.sum(), rtol=1e-12)
  np.testing.assert_allclose(new["weights"], [0.470007, 0.142537, 0.387456], atol=1e-6)
  np.testing.assert_allclose(new["excess"], [0.5, 0.0, 1.0])
  assert new["updates"] == 1 and state["updates"] == 0  # the input state is not mutated


def test_doremi_smoothing_and_floor_by_hand():
  cfg = _doremi(eta=2.0, smoothing=0.5, floor=0.1)
  new = om.update(cfg, om.initial_state(cfg, [1, 1, 1]), dict(code=2.5, docs=2.0, prose=2.0))
  a = np.array([math.exp(1.0), 1.0, math.exp(2.0)])
  w = 0.5 * np.full(3, 1 / 3) + 0.5 * a / a.sum()
  np.testing.assert_allclose(new["weights"], 0.1 + 0.7 * w, rtol=1e-12)
  assert min(new["weights"]) >= 0.1 and math.isclose(sum(new["weights"]), 1.0)


def test_doremi_accumulates_over_updates():
  cfg = _doremi(eta=0.5)
  s = om.initial_state(cfg, [1, 1, 1])
  for _ in range(3):
    s = om.update(cfg, s, dict(code=2.5, docs=2.0, prose=2.0))
  a = np.exp(0.5 * 3 * np.array([0.5, 0.0, 1.0]))  # three identical steps add up in log space
  np.testing.assert_allclose(s["weights"], a / a.sum(), rtol=1e-12)


def test_odm_first_update_by_hand():
  V = 512
  cfg = om.MixingConfig(rule="odm", domains=DOMAINS, eta=1.0, beta=0.5, exploration=0.05,
                        initial_loss=math.log(V))
  cfg.validate()
  s = om.initial_state(cfg, [1, 1, 1])
  new = om.update(cfg, s, dict(code=5.0, docs=3.0, prose=6.0))
  gain = math.log(V) - np.array([5.0, 3.0, 6.0])  # loss reduction since the uniform model
  reward = 0.5 * gain / (1 / 3)  # importance-weighted by the arm's probability 1/3
  p = np.exp(reward) / np.exp(reward).sum()
  np.testing.assert_allclose(new["weights"], 0.85 * p + 0.05, rtol=1e-12)
  assert np.argmax(new["weights"]) == DOMAINS.index("docs")  # fastest-falling loss wins
  # The second update's gain is measured from the first update's losses.
  new2 = om.update(cfg, new, dict(code=4.0, docs=3.0, prose=6.0))
  np.testing.assert_allclose(new2["gain"], [1.0, 0.0, 0.0])
  reward2 = 0.5 * reward + 0.5 * np.array([1.0, 0.0, 0.0]) / np.asarray(new["weights"])
  np.testing.assert_allclose(new2["reward"], reward2, rtol=1e-12)


def test_source_weights_split_within_domain():
  w = om.source_weights([0.2, 0.8], ["code", "prose"], ["prose", "code", "prose"], [3.0, 1.0, 1.0])
  np.testing.assert_allclose(w, [0.6, 0.2, 0.2])
  w = om.source_weights([0.5, 0.5], ["a", "b"], ["a", "a", "b"], [0.0, 0.0, 1.0])
  np.testing.assert_allclose(w, [0.25, 0.25, 0.5])


def test_reference_losses_and_recorded_schedule(tmp_path):
  rows = [dict(step=10, loss=3.0),
          {"step": 50, "eval/code/loss": 2.5, "eval/docs/loss": 2.9, "eval/prose/loss": 3.3},
          {"step": 50, "mix/a": 0.7, "mix/b": 0.3},
          {"step": 100, "eval/code/loss": 2.1, "eval/docs/loss": 2.6, "eval/prose/loss": 3.0},
          {"step": 100, "mix/a": 0.4, "mix/b": 0.6}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ref = om.reference_losses(str(tmp_path), DOMAINS)
  assert ref == dict(code=2.1, docs=2.6, prose=3.0)  # the last complete record
  sched = om.recorded_schedule(str(tmp_path / "metrics.jsonl"), ["a", "b"])
  assert sched == (dict(start=50, unit="step", transition="switch", weights=dict(a=0.7, b=0.3)),
                   dict(start=100, unit="step", transition="switch", weights=dict(a=0.4, b=0.6)))


def test_bad_inputs_fail_with_the_field_named(tmp_path):
  with pytest.raises(ValueError, match="reference_metrics has no loss for domains"):
    _doremi(reference=dict(code=1.0)).validate()
  with pytest.raises(ValueError, match=r"data.online_mixing.floor=0.4"):
    _doremi(floor=0.4).validate()
  with pytest.raises(ValueError, match="rule='sgd'"):
    om.MixingConfig(rule="sgd", domains=DOMAINS).validate()
  with pytest.raises(ValueError, match="no finite loss for domains"):
    cfg = _doremi()
    om.update(cfg, om.initial_state(cfg, [1, 1, 1]), dict(code=1.0, docs=float("nan"), prose=1.0))
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
    om.reference_losses(str(tmp_path), DOMAINS)


def _rows(source: int, seq_len: int = 8):
  """Endless rows of one source, each with a new document (doc id 1000*source + k)."""
  import grain
  def row(i):
    n = 1 + i % seq_len
    seg = np.zeros(seq_len, np.int32)
    seg[:n] = 1
    return dict(inputs_segment_ids=seg, doc_ids=np.full(seq_len, 1000 * source + i % 50, np.int32),
                doc_offsets=np.zeros(seq_len, np.int32))
  return grain.MapDataset.range(1 << 30).map(row).to_iter_dataset(grain.ReadOptions(num_threads=0))


def _mixer():
  from maxlm.data import mixing
  infos = [mixing.SourceInfo(n, 50) for n in "ab"]
  ds = mixing.ScheduledMixIterDataset([_rows(0), _rows(1)], infos,
                                      mixing.make_stages([0.5, 0.5], ["a", "b"], (), 1),
                                      rows_per_step=10)
  return iter(ds.batch(10))


def _sources(batch):
  return (np.asarray(batch["doc_ids"])[:, 0] // 1000).tolist()


def test_mixer_online_weights_apply_from_their_step_and_resume():
  from maxlm.data import mixing
  it = _mixer()
  first = [_sources(next(it)) for _ in range(2)]
  assert all(0 in s and 1 in s for s in first)  # 50/50 before any update
  mixer = mixing.find_mixer(it)
  mixer.set_online(2, [0.0, 1.0], rule_state=dict(updates=1))
  assert _sources(next(it)) == [1] * 10  # step 2 follows the online weights
  saved = it.get_state()
  want = [next(it)["doc_ids"] for _ in range(2)]
  fresh = _mixer()
  fresh.set_state(saved)
  assert mixing.find_mixer(fresh).online_state() == dict(entries=[[2, [0.0, 1.0]]],
                                                         rule_state=dict(updates=1))
  for w in want:
    np.testing.assert_array_equal(next(fresh)["doc_ids"], w)
  with pytest.raises(ValueError, match="arrive after the mixer served rows of step 5"):
    mixer.set_online(4, [1.0, 1.0])


def test_updater_hands_the_mixer_the_rule_weights():
  from maxlm.data import mixing
  it = _mixer()
  next(it)
  cfg = om.MixingConfig(rule="doremi", domains=("x", "y"), eta=1.0,
                        reference=dict(x=1.0, y=1.0))
  seen = []
  upd = om.Updater(cfg, mixing.find_mixer(it), source_names=("a", "b"), source_domains=("x", "y"),
                   base_weights=(0.5, 0.5),
                   domain_losses=lambda params: (seen.append(params), dict(x=1.0, y=1.0 + math.log(3)))[1])
  m = upd(1, dict(params="live"))
  assert seen == ["live"]
  # excess = (0, log 3): weights 0.5 : 0.5 * 3 -> 1/4, 3/4.
  np.testing.assert_allclose([m["mix/a"], m["mix/b"]], [0.25, 0.75], rtol=1e-12)
  assert m["mix_loss/y"] == pytest.approx(1.0 + math.log(3))
  entries = mixing.find_mixer(it).online_state()["entries"]
  assert entries[0][0] == 1 and np.allclose(entries[0][1], [0.25, 0.75])
  tokens = np.zeros(2)
  for _ in range(40):
    b = next(it)
    np.add.at(tokens, _sources(b), np.asarray(b["inputs_segment_ids"]).sum(1))
  assert abs(tokens[1] / tokens.sum() - 0.75) < 0.01  # token shares follow within a row
