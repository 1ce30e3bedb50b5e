"""Typed sub-configs (maxlm/config_types.py): train, init, ckpt, optim, mesh read once, checked."""
import dataclasses
import json
import os

import pytest

from conftest import tiny_test_config
from maxlm import config_files
from maxlm.checkpoint.config import CkptConfig
from maxlm.cli import UsageError
from maxlm.optim.config import OptimConfig
from maxlm.sharding.config import MeshConfig
from maxlm.train import lineage
from maxlm.train.config import InitConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = {"train": TrainConfig, "init": InitConfig, "ckpt": CkptConfig, "optim": OptimConfig,
            "mesh": MeshConfig}
CONFIGS = [("pretrain", "tiny"), ("pretrain", "125m"), ("pretrain", "1b"),
           ("pretrain", "shakespeare_char"), ("anneal", "tiny"), ("continued_pretrain", "tiny"),
           ("distill", "tiny"), ("long_context", "tiny"), ("long_context", "1b")]


def _config(name, arg):
  return config_files.load(os.path.join(ROOT, "configs", f"{name}.py")).get_config(arg)


@pytest.mark.parametrize("name, arg", CONFIGS)
def test_every_stage_config_reads_into_the_typed_sections_unchanged(name, arg):
  c = _config(name, arg)
  as_json = json.loads(c.to_json_best_effort())  # what a run's config.json holds
  for section, cls in SECTIONS.items():
    typed = cls.from_any(c[section])
    want = c[section].to_dict()
    got = dataclasses.asdict(typed)
    if section == "mesh":  # rules come back as tuples of pairs whatever they were stored as
      want["rules"] = tuple(tuple(r) for r in want["rules"])
    assert {k: got[k] for k in want} == want, section
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert {k: got[k] for k in set(got) - set(want)} == {
        k: defaults[k] for k in set(got) - set(want)}, section  # a field left out: its default
    assert cls.from_any(as_json[section]) == typed, section  # config.json reads the same
    assert cls.from_any(typed) is typed


def test_optimizer_kwargs_are_the_config_dict():
  """make_optimizer receives exactly what it received when config.optim was splatted in."""
  c = _config("pretrain", "tiny")
  assert OptimConfig.from_any(c.optim).kwargs() == c.optim.to_dict()
  assert lineage.optim_kwargs(c.optim, c.init, None) == c.optim.to_dict()


@pytest.mark.parametrize("cls, raw, message", [
    (TrainConfig, dict(steps=3, global_batch=8, stpes=3), "train.stpes is not a field of train"),
    (TrainConfig, dict(steps=3), "train.global_batch is missing"),
    (CkptConfig, dict(keep=2), "ckpt.every is missing"),
    (OptimConfig, dict(peak_lr=1e-3, schedule=dict(warmup_steps=2)),
     "optim.schedule.name is missing"),
    (OptimConfig, dict(peak_lr=1e-3, schedule=dict(name="wsd", decay=0.2)),
     "optim.schedule.decay is not a field of optim.schedule"),
    (MeshConfig, dict(data=2, experts=4), "mesh.experts is not a field of mesh"),
    (InitConfig, dict(parent="/tmp/x"), "init.parent is not a field of init"),
])
def test_a_wrong_field_is_one_line_naming_it(cls, raw, message):
  with pytest.raises(UsageError) as e:
    cls.from_any(raw)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_defaults_and_frozen():
  assert InitConfig.from_any(None) == InitConfig("", "params", "", 1.0)  # no init: a root run
  assert MeshConfig.from_any({}).context == 1
  mesh = MeshConfig.from_any(dict(rules=[["batch", ["data", "fsdp"]], ["embed", None]]))
  assert mesh.rules == (("batch", ("data", "fsdp")), ("embed", None))
  with pytest.raises(dataclasses.FrozenInstanceError):
    mesh.data = 4


def test_a_run_with_a_missing_field_stops_before_it_starts(tmp_path):
  from maxlm.run import pretrain  # pylint: disable=g-import-not-at-top
  c = tiny_test_config()
  c.unlock()
  del c.ckpt["every"]
  workdir = tmp_path / "run"
  with pytest.raises(UsageError, match="ckpt.every is missing"):
    pretrain.train(c, str(workdir))
  assert not workdir.exists()  # nothing written, no lock taken
