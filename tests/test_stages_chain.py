"""Stage chaining end to end, "has a pulse" per stage, on the tiny model and real text.

One chain, built once per module: pretrain -> anneal -> continued pretraining
-> long context (two sub-stages), and a distillation from the pretrained
model into a smaller student. Each stage: loss finite, params really from the
parent (the first step's loss equals the parent's params' loss on the same
batch), a stage manifest with the chain and tokens per stage.
"""
import importlib.util
import json
import logging
import os

import jax
import numpy as np
import pytest

from conftest import set_dotted, tiny_test_config
from maxlm import data as data_lib
from maxlm.checkpoint import load_params
from maxlm.model import ModelConfig
from maxlm.monitor import read_jsonl
from maxlm.optim import make_schedule
from maxlm.train import stages
from maxlm.train.driver import train
from maxlm.train.step import loss_sums

pytestmark = pytest.mark.slow  # end-to-end runs, like test_train_e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage_config(name, arg, tokenizer_path, **overrides):
  """configs/<name>.py:<arg> shrunk like tiny_test_config, plus dotted overrides."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  small = tiny_test_config()
  c.data.tokenizer.path = tokenizer_path
  c.data.tokenizer.train_chars = small.data.tokenizer.train_chars
  c.data.eval_batches = 1
  for k in ("log_every", "eval_every"):
    c.train[k] = small.train[k]
  c.ckpt.every, c.ckpt.async_save, c.ckpt.export_params = 4, False, True
  c.monitor.tensorboard, c.monitor.plot, c.monitor.progress = False, False, "lines"
  set_dotted(c, overrides)
  c.lock()
  return c


def _losses(workdir, key="loss"):
  return {r["step"]: r[key] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if key in r}


def _first_batch_loss(config, params):
  """Loss of `params` on the first training batch `config` would draw."""
  tok = config.data.tokenizer.path
  it = data_lib.make_train_iterator(config.data, tokenizer_path=tok, seq_len=config.data.seq_len,
                                    global_batch=config.train.global_batch, seed=config.train.seed)
  batch = next(it)
  if hasattr(it, "close"):
    it.close()
  cfg = ModelConfig.from_any(config.model)
  total, aux = loss_sums(params, batch, model_config=cfg,
                         num_domains=len(data_lib.domain_names(config.data)))
  return float(total / aux["count"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tokenizer_path):
  root = tmp_path_factory.mktemp("chain")
  out = {}
  pre = tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "train.steps": 10,
                            "ckpt.export_params": True})
  out["pretrain"] = (pre, str(root / "pretrain"), train(pre, str(root / "pretrain")))

  anneal = _stage_config("anneal", f"tiny,parent={root / 'pretrain'}", tokenizer_path,
                         **{"data.seq_len": 64, "train.global_batch": 8, "train.steps": 6})
  out["anneal"] = (anneal, str(root / "anneal"), train(anneal, str(root / "anneal")))

  cpt = _stage_config("continued_pretrain", f"tiny,parent={root / 'anneal'}", tokenizer_path,
                      **{"data.seq_len": 64, "train.global_batch": 8, "train.steps": 6,
                         "optim.schedule.warmup_steps": 2, "train.eval_every": 3})
  out["cpt"] = (cpt, str(root / "cpt"), train(cpt, str(root / "cpt")))

  long_cfg = _stage_config("long_context", f"tiny,parent={root / 'cpt'},orig=64,lengths=64/128,"
                           "steps=3", tokenizer_path,
                           **{"train.tokens_per_step": 1024, "train.global_batch": 16,
                              "data.seq_len": 64})
  out["long"] = (long_cfg, str(root / "long"), stages.run_stages(long_cfg, str(root / "long")))
  return out


def _manifest(workdir):
  with open(os.path.join(workdir, stages.MANIFEST)) as f:
    return json.load(f)


def test_pretrain_writes_a_root_manifest(chain):
  cfg, wd, summary = chain["pretrain"]
  m = _manifest(wd)
  assert m["status"] == "done" and m["parent"] is None
  assert [c["tokens_seen"] for c in m["chain"]] == [10 * 8 * 64] == [summary["tokens_seen"]]


def test_anneal_from_pretrain(chain, monkeypatch):
  pre_cfg, pre_wd, _ = chain["pretrain"]
  cfg, wd, summary = chain["anneal"]
  assert np.isfinite(summary["final_loss"])
  # Params come from the parent: step 1's logged loss is the parent's loss on that batch.
  parent_params = load_params(os.path.join(pre_wd, "params"))
  np.testing.assert_allclose(_losses(wd)[1], _first_batch_loss(cfg, parent_params), rtol=1e-5)
  # LR starts at the parent's last rate and decays linearly to exactly 0.
  pre_sched = make_schedule(peak_lr=pre_cfg.optim.peak_lr, total_steps=pre_cfg.train.steps,
                            **pre_cfg.optim.schedule)
  lrs = _losses(wd, "lr")
  np.testing.assert_allclose(lrs[1], float(pre_sched(10)), rtol=1e-6)
  assert all(lrs[s + 1] < lrs[s] for s in range(1, 6))
  m = _manifest(wd)
  sched = make_schedule(peak_lr=m["peak_lr"], total_steps=6, **cfg.optim.schedule)
  assert float(sched(6)) == 0.0
  # The mixture moves to the high-quality source, and per-domain loss before/after is reported.
  # A relative workdir (the README's form) works: orbax is handed absolute paths.
  monkeypatch.chdir(os.path.dirname(wd))
  report = stages.report_domain_losses(cfg, os.path.basename(wd))
  assert set(report) == {"code", "docs", "prose"}
  assert all(np.isfinite([v["before"], v["after"]]).all() for v in report.values())
  assert m["parent"]["carry"] == "full" and m["parent"]["step"] == 10
  assert [c["tokens_seen"] for c in m["chain"]] == [10 * 512, 6 * 512]


def test_resuming_a_finished_stage_uses_its_own_checkpoint(chain, caplog):
  cfg, wd, _ = chain["anneal"]
  n_lines = len(read_jsonl(os.path.join(wd, "metrics.jsonl")))
  with caplog.at_level(logging.INFO, logger="maxlm.train"):
    again = train(cfg, wd)
  assert any("resumed from step 6" in r.getMessage() for r in caplog.records)
  assert not any("initialised from" in r.getMessage() for r in caplog.records)
  assert again["step"] == 6
  assert len([r for r in read_jsonl(os.path.join(wd, "metrics.jsonl")) if "loss" in r]) == len(
      [r for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))[:n_lines] if "loss" in r])
  assert _manifest(wd)["parent"]["step"] == 10  # the fork point, not re-resolved


def test_continued_pretraining_carries_params_with_a_fresh_optimizer(chain):
  _, anneal_wd, _ = chain["anneal"]
  cfg, wd, summary = chain["cpt"]
  assert np.isfinite(summary["final_loss"])
  np.testing.assert_allclose(_losses(wd)[1], _first_batch_loss(
      cfg, load_params(os.path.join(anneal_wd, "params"))), rtol=1e-5)
  lrs = _losses(wd, "lr")
  assert lrs[1] == 0.0  # a fresh schedule: re-warmup from init_lr
  m = _manifest(wd)
  assert m["parent"]["carry"] == "params" and m["parent"]["source"].endswith("params")
  # Re-warm to half the parent's peak (the anneal's peak is the pretrain's final rate).
  assert m["peak_lr"] == pytest.approx(0.5 * _manifest(anneal_wd)["peak_lr"])
  assert len(m["chain"]) == 3 and m["total_tokens_seen"] == (10 + 6 + 6) * 512
  # Adam restarted: its count is this stage's steps, not the chain's.
  state = __import__("orbax.checkpoint", fromlist=["x"]).StandardCheckpointer().restore(
      os.path.join(wd, "checkpoints", "6", "state"))
  counts = [int(x) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) == 0]
  assert counts and max(counts) == 6
  report = stages.report_domain_losses(cfg, wd)
  png = stages.forgetting_plot(wd, report, stages.target_domain(cfg))
  assert stages.target_domain(cfg) == "code" and os.path.getsize(png) > 0


def test_long_context_sub_stages_keep_tokens_per_step(chain):
  _, cpt_wd, _ = chain["cpt"]
  cfg, wd, summaries = chain["long"]
  assert [s["step"] for s in summaries] == [3, 3]
  assert all(np.isfinite(s["final_loss"]) for s in summaries)
  subs = [os.path.join(wd, "len_64"), os.path.join(wd, "len_128")]
  for sub, (T, B) in zip(subs, [(64, 16), (128, 8)]):
    with open(os.path.join(sub, "config.json")) as f:
      c = json.load(f)
    assert (c["data"]["seq_len"], c["train"]["global_batch"]) == (T, B)
    assert c["model"]["rope_scaling"]["rope_type"] == "yarn"
    assert c["model"]["rope_scaling"]["factor"] == 2.0
  m = _manifest(subs[1])
  assert m["parent"]["carry"] == "full" and m["parent"]["path"] == subs[0]
  assert [c["tokens_seen"] for c in m["chain"]] == [10 * 512, 6 * 512, 6 * 512, 3 * 1024, 3 * 1024]
  # The first sub-stage's params came from the continued-pretraining stage.
  first_cfg = stages.sub_stage_configs(cfg, wd)[0][0]
  np.testing.assert_allclose(_losses(subs[0])[1], _first_batch_loss(
      first_cfg, load_params(os.path.join(cpt_wd, "params"))), rtol=1e-5)
  # Running again skips the finished sub-stages.
  assert [s["step"] for s in stages.run_stages(cfg, wd)] == [3, 3]


def test_distillation_into_a_smaller_student(chain, tmp_path, tokenizer_path):
  _, pre_wd, _ = chain["pretrain"]
  cfg = _stage_config("distill", f"tiny,teacher={pre_wd}", tokenizer_path,
                      **{"data.seq_len": 64, "train.global_batch": 8, "train.steps": 12,
                         "optim.schedule.warmup_steps": 2, "distill.alpha": 1.0})
  summary = train(cfg, str(tmp_path))
  losses = _losses(str(tmp_path))
  assert np.isfinite(list(losses.values())).all()
  # alpha=1: the loss is the KL to the teacher alone; the student closes most of it.
  assert np.mean([losses[s] for s in (10, 11, 12)]) < 0.5 * np.mean([losses[s] for s in (1, 2, 3)])
  assert summary["step"] == 12


def test_a_mismatched_tokenizer_or_shape_fails_loudly(chain, tmp_path):
  _, pre_wd, _ = chain["pretrain"]
  other_tok = data_lib.build_tokenizer(tiny_test_config(**{
      "data.tokenizer.train_chars": 200_000}).data, str(tmp_path / "tok"))
  cfg = _stage_config("anneal", f"tiny,parent={pre_wd}", other_tok, **{"data.seq_len": 64})
  with pytest.raises(ValueError, match="tokenizer"):
    train(cfg, str(tmp_path / "a"))
  cfg = _stage_config("anneal", f"tiny,parent={pre_wd}", chain["pretrain"][0].data.tokenizer.path,
      **{"model.d_ff": 256})
  with pytest.raises(ValueError, match="model.d_ff"):
    train(cfg, str(tmp_path / "b"))
