"""Every config mistake named in the foundation issue fails before compiling, naming the field."""
import pytest

from conftest import set_dotted
from configs import pretrain
from maxlm.train.validate import ConfigError, validate_config


def _config(**overrides):
  c = pretrain.get_config("tiny")
  set_dotted(c, overrides)
  return c


@pytest.mark.parametrize("overrides,n_devices,message", [
    (dict(**{"model.n_heads": 6, "model.n_kv_heads": 4}), 1,
     "model.n_heads=6 is not divisible by model.n_kv_heads=4"),
    (dict(**{"model.vocab_size": 510, "data.tokenizer.vocab_size": 500, "mesh.tensor": 4}), 8,
     "model.vocab_size=510 is not divisible by 4"),
    (dict(**{"train.global_batch": 12}), 8,
     "train.global_batch=12 is not divisible by the data-parallel size 8"),
    (dict(**{"mesh.data": 16}), 8, "needs 16 devices but only 8 are available"),
    (dict(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}), 8, "set one axis to -1"),
    (dict(**{"optim.schedule.name": "cosin"}), 1, "optim.schedule.name='cosin' is not one of"),
    (dict(**{"train.microbatches": 3}), 1, "train.microbatches=3"),
    (dict(**{"data.tokenizer.vocab_size": 1024}), 1,
     "data.tokenizer.vocab_size=1024 exceeds model.vocab_size=512"),
    (dict(**{"model.remat": "everything"}), 1, "model.remat='everything'"),
])
def test_validation_errors_name_the_field(overrides, n_devices, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate_config(_config(**overrides), n_devices)


def test_good_configs_pass_and_resolve_the_mesh():
  assert validate_config(_config(), 1) == (1, 1, 1)
  assert validate_config(_config(**{"mesh.tensor": 2}), 8) == (4, 1, 2)
  for size in pretrain.PRESETS:
    c = pretrain.get_config(size)
    assert validate_config(c, 8)  # every preset is valid on an 8-device data mesh


def test_locked_config_rejects_a_mistyped_override():
  c = pretrain.get_config("tiny")
  c.lock()
  with pytest.raises(AttributeError):
    c.train.stpes = 10  # typo of `steps`
  c.train.steps = 10  # a known field still works
