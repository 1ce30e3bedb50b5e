"""Test setup: CPU only, with 8 fake devices so sharding tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere in the process.
"""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import pytest  # noqa: E402


def set_dotted(config, overrides: dict) -> None:
  """Sets {"train.steps": 3, ...} on a ConfigDict, like command-line overrides."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value


def tiny_test_config(**overrides):
  """configs/pretrain.py:tiny made smaller still for tests; dotted-key overrides."""
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)
  from configs import pretrain
  c = pretrain.get_config("tiny")
  c.data.seq_len = 64
  c.data.tokenizer.train_chars = 300_000
  c.data.eval_batches = 1
  c.train.global_batch = 8
  c.train.steps = 12
  c.train.log_every = 1
  c.train.eval_every = 0
  c.optim.schedule.warmup_steps = 2
  c.ckpt.every = 4
  c.ckpt.async_save = False
  c.ckpt.export_params = False
  c.monitor.tensorboard = False
  c.monitor.plot = False
  c.monitor.progress = "lines"
  set_dotted(c, overrides)
  c.lock()
  return c


def random_batch(seed: int, B: int, T: int, vocab: int, num_domains: int = 1) -> dict:
  """A training batch of random ids, one document per row, ~20% of targets masked out."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return dict(inputs=rng.integers(0, vocab, (B, T)).astype(np.int32),
              targets=rng.integers(0, vocab, (B, T)).astype(np.int32),
              segment_ids=np.ones((B, T), np.int32),
              positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
              loss_mask=(rng.random((B, T)) > 0.2).astype(np.float32),
              domain_ids=rng.integers(0, num_domains, (B, T)).astype(np.int32))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
  """One SentencePiece model for the whole session (training it takes seconds)."""
  from maxlm import data
  return data.build_tokenizer(tiny_test_config().data, str(tmp_path_factory.mktemp("tok")))
