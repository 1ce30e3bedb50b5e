"""maxlm.interop.model_dir: a model directory appears whole or not at all."""

import os
import stat

import pytest

from maxlm.interop import model_dir


def test_success_renames_into_place_with_shared_modes(tmp_path):
  out = str(tmp_path / "hf")
  with model_dir.writing(out) as tmp:
    assert os.path.dirname(tmp) == str(tmp_path) and not os.path.exists(out)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write("{}")
  assert os.listdir(out) == ["config.json"]
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
  assert stat.S_IMODE(os.stat(os.path.join(out, "config.json")).st_mode) == 0o644
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary left beside it


@pytest.mark.parametrize("existing", [False, True])
def test_an_error_leaves_nothing_and_keeps_an_empty_target(tmp_path, existing):
  out = str(tmp_path / "hf")
  if existing:
    os.mkdir(out)
  with pytest.raises(RuntimeError, match="half way"):
    with model_dir.writing(out) as tmp:
      with open(os.path.join(tmp, "model.safetensors"), "w") as f:
        f.write("x")
      raise RuntimeError("half way")
  assert sorted(os.listdir(tmp_path)) == (["hf"] if existing else [])
  if existing:
    assert os.listdir(out) == []


def test_refuses_a_non_empty_target_naming_it(tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty; pick another") as e:
    model_dir.refuse_non_empty(str(tmp_path / "hf"), "pick another")
  assert str(tmp_path / "hf") in str(e.value)
  assert model_dir.refuse_non_empty(str(tmp_path / "new"), "x") == str(tmp_path / "new")
  (tmp_path / "file").write_text("")
  with pytest.raises(FileExistsError):
    model_dir.refuse_non_empty(str(tmp_path / "file"), "x")
