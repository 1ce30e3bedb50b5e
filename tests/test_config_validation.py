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


# --- ranges (issue 17 item 6): every numeric field, one line naming field and value --------

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from configs import distill  # noqa: E402
from maxlm.train import validate as validate_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("field,value", [
    ("data.seq_len", -4),  # used to hang forever (and ignore SIGTERM)
    ("data.seq_len", 0), ("data.seq_len", 1),
    ("ckpt.every", 0),  # used to fail after compile with a bare ZeroDivisionError
    ("train.log_every", 0),  # same
    ("optim.peak_lr", -1.0),  # used to train
    ("ckpt.keep", 0),  # used to exit 0 with no checkpoint at all
    ("model.n_kv_heads", 0),  # used to be a ZeroDivisionError inside the divisibility check
    ("optim.b2", 1.0), ("data.heldout_fraction", 1.0),
])
def test_issue_ranges_fail_before_compiling_naming_field_and_value(field, value):
  with pytest.raises(ConfigError) as e:
    validate_config(_config(**{field: value}), 1)
  msg = str(e.value)
  assert msg.startswith(f"{field}={value}") and "\n" not in msg, msg


def _outside(kind, low, high):
  """A value just outside [low, high] of the field's kind (an open bound is itself outside)."""
  one = 1 if kind == "int" else 1.0
  if low is not None:
    return low[1] if isinstance(low, tuple) else low - one
  return high[1] if isinstance(high, tuple) else high + one


def test_every_ranged_field_is_checked():
  """Each field of RANGES that the pretrain or distill config has: an out-of-range value fails."""
  checked = set()
  for cfg_fn in (lambda: _config(), lambda: distill.get_config("tiny,teacher=/nonexistent")):
    for field, kind, low, high, _ in validate_lib.RANGES:
      c = cfg_fn()
      if validate_lib._get(c, field) is validate_lib._MISSING:
        continue
      bad = _outside(kind, low, high)
      set_dotted(c, {field: bad})
      with pytest.raises(ConfigError, match="^" + re.escape(f"{field}={bad!r} must be")):
        validate_config(c, 1)
      checked.add(field)
  # Fields no config here has (train.tokens_per_step is a long-context field) aside, all are seen.
  assert set(f for f, *_ in validate_lib.RANGES) - checked <= {"train.tokens_per_step"}


def test_values_on_the_bounds_pass():
  ok = {"data.seq_len": 2, "train.eval_every": 0, "optim.schedule.min_lr_ratio": 1.0,
        "optim.b1": 0.0, "ckpt.keep": 1, "monitor.spikes.k_grad": 0.0}
  assert validate_config(_config(**ok), 1) == (1, 1, 1)


# --- tokenizer vocabulary vs model.vocab_size (issue 18 item 3) ------------------------------

@pytest.fixture(scope="module")
def tokenizer_600(tmp_path_factory):
  """A real SentencePiece model with more ids (600) than the tiny model's 512."""
  import sentencepiece as spm
  import inspect
  out = tmp_path_factory.mktemp("tok")
  text = inspect.getsource(inspect).splitlines() + inspect.getsource(re).splitlines()
  spm.SentencePieceTrainer.train(sentence_iterator=iter([l for l in text if l.strip()]),
                                 model_prefix=str(out / "tok"), vocab_size=600,
                                 hard_vocab_limit=True, minloglevel=2)
  return str(out / "tok.model")


def test_tokenizer_larger_than_the_embedding_names_the_fix(tokenizer_600):
  c = _config(**{"data.tokenizer.path": tokenizer_600})
  with pytest.raises(ConfigError, match=re.escape(
      f"data.tokenizer.path={tokenizer_600!r} has 600 ids but model.vocab_size=512")) as e:
    validate_config(c, 1)
  assert "--config.model.vocab_size=640" in str(e.value)
  c.model.vocab_size = 640  # the fix it names passes
  assert validate_config(c, 1)


# --- the CLI: one line, no traceback; --debug / MAXLM_DEBUG=1 keep it ----------------------

def _train_cli(*overrides, env=None):
  cmd = [sys.executable, "-m", "maxlm.train", "--config=configs/pretrain.py:tiny",
         "--workdir=unused_never_created", *overrides]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


def test_cli_prints_a_config_error_in_one_line():
  r = _train_cli("--config.data.seq_len=-4")  # used to hang forever
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("config error: data.seq_len=-4 must be >= 2"), r.stderr
  assert not os.path.exists(os.path.join(ROOT, "unused_never_created"))


def test_cli_names_a_mistyped_field_in_one_line():
  r = _train_cli("--config.train.stpes=3")  # used to print 55 lines of chained tracebacks
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "--config.train.stpes" in lines[0] and 'Did you mean "steps"' in lines[0]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_debug_keeps_the_traceback(how):
  r = _train_cli("--config.ckpt.every=0", *(["--debug"] if how == "flag" else []),
                 env={"MAXLM_DEBUG": "1"} if how == "env" else None)
  assert r.returncode == 1 and "Traceback" in r.stderr
  assert "ConfigError: ckpt.every=0 must be >= 1" in r.stderr
