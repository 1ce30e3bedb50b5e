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


def test_jsonl_option_puts_your_files_in_place_of_the_built_in_corpus(tmp_path):
  """`jsonl=GLOB;GLOB` (README "Your own corpus"): one JSONL source with those globs, in the data
  config and the pretrain config alike, and no schedule naming the built-in sources."""
  from maxlm.data import config as config_lib
  from maxlm.data import sources as sources_lib
  from maxlm.data.readers import ErrorLog
  for i in range(2):
    with open(tmp_path / f"part{i}.jsonl", "w") as f:
      f.write("".join(f'{{"body": "document {i}-{j}"}}\n' for j in range(3)))
  spec = f"jsonl={tmp_path}/part0.jsonl;{tmp_path}/part1.jsonl,text_field=body,domain=news"
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  mixture = config_files.load(os.path.join(root, "data_mixture.py")).get_config(spec)
  pretrain = config_files.load(os.path.join(root, "pretrain.py")).get_config("tiny," + spec)
  for data in (mixture, pretrain.data):
    (src,) = config_lib.iter_sources(data)
    assert (src["name"], src["kind"], src["domain"], src["text_field"]) == ("news", "jsonl", "news", "body")
    assert not data.schedule
    config_lib.validate(data)
    texts = [d.text for d in sources_lib.load_documents(src, ErrorLog())]
    assert sorted(texts) == sorted(f"document {i}-{j}" for i in range(2) for j in range(3))
  with pytest.raises(ValueError, match="no path glob"):
    config_files.load(os.path.join(root, "data_mixture.py")).get_config("jsonl=")
  with pytest.raises(ValueError, match="no path glob"):
    config_files.load(os.path.join(root, "pretrain.py")).get_config("tiny,jsonl=")
