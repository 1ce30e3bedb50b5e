"""Stage configs load the pretrain config beside them, through one loader (maxlm/config_files.py)."""
import os
import shutil

import pytest

from maxlm import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("anneal", "continued_pretrain", "distill", "long_context")
PEAK_LR_LINE = "  c.optim.peak_lr = 3e-3 if local else 3e-4"


def _copy_configs(dst) -> str:
  d = os.path.join(str(dst), "myconfigs")
  shutil.copytree(os.path.join(ROOT, "configs"), d)
  return d


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_builds_on_the_pretrain_config_beside_it(tmp_path, stage):
  """An edited copy of configs/ is used whole: its stages start from its own pretrain.py."""
  d = _copy_configs(tmp_path)
  path = os.path.join(d, "pretrain.py")
  with open(path) as f:
    text = f.read()
  assert text.count(PEAK_LR_LINE) == 1  # the line this test edits is still there
  with open(path, "w") as f:
    f.write(text.replace(PEAK_LR_LINE, "  c.optim.peak_lr = 1.25e-3"))
  copied = config_files.load(os.path.join(d, f"{stage}.py")).get_config("tiny")
  original = config_files.load(os.path.join(ROOT, "configs", f"{stage}.py")).get_config("tiny")
  assert copied.optim.peak_lr == 1.25e-3
  assert original.optim.peak_lr == 3e-3  # configs/pretrain.py's tiny rate


def test_each_load_is_a_fresh_module():
  """Stage configs never share (and so never see each other's changes to) one module."""
  a = config_files.pretrain(os.path.join(ROOT, "configs", "anneal.py"))
  b = config_files.pretrain(os.path.join(ROOT, "configs", "distill.py"))
  assert a is not b
  a.PRESETS["tiny"] = (1024,) + a.PRESETS["tiny"][1:]
  assert b.get_config("tiny").model.vocab_size == 512
  assert a.get_config("tiny").model.vocab_size == 1024


def test_a_missing_sibling_names_the_path(tmp_path):
  stage = tmp_path / "anneal.py"
  stage.write_text(open(os.path.join(ROOT, "configs", "anneal.py")).read())
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "pretrain.py")):
    config_files.load(str(stage)).get_config("tiny")
