"""Offline distillation: precomputed teacher top-k (tensorstore), read aligned by step.

Offline and online top-k give the same loss on the same batch; a rerun of the
precompute skips finished steps; a store written for other batches (another
seed) is refused at the first step, naming it.
"""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from conftest import set_dotted, tiny_test_config
from maxlm import data as data_lib
from maxlm.checkpoint import export_params
from maxlm.distill import offline
from maxlm.distill.precompute import precompute
from maxlm.distill.step import distill_sums
from maxlm.model import ModelConfig, init_params
from maxlm.monitor import read_jsonl
from maxlm.train.driver import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_path):
  """A randomly initialised tiny teacher as a maxlm dir (config.json + params/)."""
  d = tmp_path_factory.mktemp("teacher")
  cfg = ModelConfig.from_any(tiny_test_config().model)
  params = init_params(cfg, jax.random.PRNGKey(1))
  export_params(params, str(d / "params"))
  with open(d / "config.json", "w") as f:
    json.dump({"model": tiny_test_config().model.to_dict(),
               "data": {"tokenizer": {"path": tokenizer_path}}}, f)
  return str(d), cfg, params


def _config(teacher_dir, tokenizer_path, **overrides):
  spec = importlib.util.spec_from_file_location("distill_cfg", os.path.join(ROOT, "configs",
                                                                           "distill.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"tiny,teacher={teacher_dir},loss=topk")
  c.data.tokenizer.path = tokenizer_path
  c.data.seq_len, c.data.eval_batches = 32, 1
  c.train.global_batch, c.train.steps, c.train.log_every, c.train.eval_every = 8, 2, 1, 0
  c.optim.schedule.warmup_steps = 1
  c.distill.top_k, c.distill.alpha, c.distill.temperature = 8, 0.7, 2.0
  c.ckpt.every, c.ckpt.async_save, c.ckpt.export_params = 100, False, False
  c.monitor.tensorboard, c.monitor.plot, c.monitor.progress = False, False, "lines"
  set_dotted(c, overrides)
  c.lock()
  return c


def _batches(cfg, n):
  it = data_lib.make_train_iterator(cfg.data, tokenizer_path=cfg.data.tokenizer.path,
                                    seq_len=cfg.data.seq_len, global_batch=cfg.train.global_batch,
                                    seed=cfg.train.seed)
  out = [next(it) for _ in range(n)]
  if hasattr(it, "close"):
    it.close()
  return out


@pytest.fixture(scope="module")
def store(teacher, tokenizer_path, tmp_path_factory):
  cfg = _config(teacher[0], tokenizer_path)
  out = str(tmp_path_factory.mktemp("store"))
  result = precompute(cfg, out, steps=3)
  assert result["computed"] == [0, 1, 2]
  return cfg, out


def test_offline_topk_equals_online_on_the_same_batch(teacher, store):
  cfg, out = store
  _, t_cfg, t_params = teacher
  s_cfg = ModelConfig.from_any(cfg.model)
  s_params = init_params(s_cfg, jax.random.PRNGKey(2))
  reader = offline.OfflineTeacher(out, steps=3, global_batch=8, seq_len=32, top_k=8,
                                  tokenizer_path=cfg.data.tokenizer.path)
  kw = dict(model_config=s_cfg, num_domains=len(data_lib.domain_names(cfg.data)), loss="topk",
            temperature=2.0, top_k=8, afm_teacher_weight=0.9, alpha=0.7)
  for step, batch in enumerate(_batches(cfg, 3)):
    on, on_aux = distill_sums(s_params, batch, t_params, teacher_config=t_cfg, **kw)
    off, off_aux = distill_sums(s_params, reader.attach(step, batch), None, teacher_config=None,
                                **kw)
    np.testing.assert_allclose(float(off), float(on), rtol=1e-5)
    np.testing.assert_allclose(float(off_aux["distill_sum"]), float(on_aux["distill_sum"]),
                               rtol=1e-5)


@pytest.mark.slow  # two short end-to-end runs
def test_training_offline_matches_online(teacher, store, tmp_path):
  """The driver path: same init, same batches, losses equal step by step."""
  cfg, out = store
  on = train(_config(teacher[0], cfg.data.tokenizer.path), str(tmp_path / "on"))
  off = train(_config(teacher[0], cfg.data.tokenizer.path, **{"distill.offline_dir": out}),
              str(tmp_path / "off"))
  assert on["step"] == off["step"] == 2
  losses = lambda wd: [r["loss"] for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))
                       if "loss" in r]
  np.testing.assert_allclose(losses(str(tmp_path / "off")), losses(str(tmp_path / "on")),
                             rtol=1e-5)


def test_rerun_skips_finished_steps(teacher, tokenizer_path, tmp_path):
  cfg = _config(teacher[0], tokenizer_path)
  out = str(tmp_path / "s")
  assert precompute(cfg, out, steps=3)["computed"] == [0, 1, 2]
  st, _ = offline.open_store(out)
  before = np.asarray(st["logprobs"][1].read().result())
  st["done"][1].write(np.uint8(0)).result()  # as if interrupted while writing step 1
  assert precompute(cfg, out, steps=3)["computed"] == [1]
  np.testing.assert_array_equal(np.asarray(st["logprobs"][1].read().result()), before)
  assert precompute(cfg, out, steps=3) == dict(computed=[], skipped=3, dir=out)
  with pytest.raises(ValueError, match="another run"):
    precompute(_config(teacher[0], tokenizer_path, **{"distill.top_k": 4}), out, steps=3)


def test_misaligned_store_is_refused_naming_the_step(teacher, store, tmp_path):
  cfg, out = store
  other = _config(teacher[0], cfg.data.tokenizer.path, **{"train.seed": cfg.train.seed + 1})
  reader = offline.OfflineTeacher(out, steps=3, global_batch=8, seq_len=32, top_k=8)
  with pytest.raises(ValueError, match="misaligned at step 0"):
    reader.attach(0, _batches(other, 1)[0])
  # Through the driver: the run stops before its first update.
  with pytest.raises(ValueError, match="misaligned at step 0"):
    train(_config(teacher[0], cfg.data.tokenizer.path,
                  **{"train.seed": cfg.train.seed + 1, "distill.offline_dir": out}),
          str(tmp_path / "w"))
  # A store shorter than the run, or for another k, fails at setup.
  with pytest.raises(ValueError, match="holds 3 steps"):
    offline.OfflineTeacher(out, steps=5, global_batch=8, seq_len=32, top_k=8)
  with pytest.raises(ValueError, match="top_k"):
    offline.OfflineTeacher(out, steps=3, global_batch=8, seq_len=32, top_k=4)
