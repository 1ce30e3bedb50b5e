"""End-to-end runs of the training driver on the tiny config and real text.

Kill-and-resume is checked three ways: a SIGTERM (preemption) mid-run, a
SIGKILL of a subprocess (resume from the last periodic checkpoint), and a
corrupted newest checkpoint (fall back to the previous one).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import tiny_test_config
from maxlm.monitor import read_jsonl
from maxlm.train.driver import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  """step -> loss, the last logged value winning (a resumed run re-logs steps)."""
  return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tokenizer_path):
  workdir = str(tmp_path_factory.mktemp("ref"))
  summary = train(tiny_test_config(**{"data.tokenizer.path": tokenizer_path}), workdir)
  return workdir, summary


@pytest.mark.slow
def test_tiny_config_trains_and_loss_falls(tmp_path, tokenizer_path, capsys):
  cfg = tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "train.steps": 40,
                            "ckpt.export_params": True, "monitor.plot": True,
                            "train.log_every": 5})
  summary = train(cfg, str(tmp_path))
  losses = _losses(str(tmp_path))
  assert np.isfinite(list(losses.values())).all()
  assert losses[40] < losses[5] - 0.5, losses  # starts near ln(512) = 6.24
  assert os.path.exists(tmp_path / "loss.png") and os.path.isdir(tmp_path / "params")
  done = json.loads((tmp_path / "done.json").read_text())
  assert done["step"] == 40 and done["tokens_seen"] == 40 * 8 * 64
  # Three domains in the tiny config: every one has held-out loss and perplexity.
  assert {k for k in summary if k.endswith(("/loss", "/ppl"))} == {
      f"eval/{d}/{m}" for d in ("code", "docs", "prose") for m in ("loss", "ppl")}
  # Held-out losses are printed at each evaluation (here the final one), one line.
  line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("eval step"))
  assert line.split()[2:] == ["40"] + [x for d in ("code", "docs", "prose")
                                      for x in (d, f"{summary[f'eval/{d}/loss']:.4f}")]


@pytest.mark.slow
def test_rerun_of_a_finished_run_says_so_and_changes_nothing(reference_run, tokenizer_path,
                                                             capsys):
  ref_dir, summary = reference_run
  before = open(os.path.join(ref_dir, "metrics.jsonl")).read()
  again = train(tiny_test_config(**{"data.tokenizer.path": tokenizer_path}), ref_dir)
  assert "already finished at step 12 (done.json)" in capsys.readouterr().out
  assert again == json.loads(open(os.path.join(ref_dir, "done.json")).read())
  assert again["step"] == summary["step"] == 12
  assert open(os.path.join(ref_dir, "metrics.jsonl")).read() == before


@pytest.mark.slow
def test_sigterm_saves_and_resume_is_bit_identical(tmp_path, tokenizer_path, reference_run):
  ref_dir, _ = reference_run
  cfg = tiny_test_config(**{"data.tokenizer.path": tokenizer_path})
  metrics = os.path.join(tmp_path, "metrics.jsonl")

  def preempt_after_step_6():
    while not (os.path.exists(metrics) and max(_losses(str(tmp_path)) or [0]) >= 6):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  t = threading.Thread(target=preempt_after_step_6, daemon=True)
  t.start()
  first = train(cfg, str(tmp_path))
  t.join()
  assert first["preempted"] and 6 <= first["step"] < 12
  assert not os.path.exists(tmp_path / "done.json")
  # The preemption save is at the step it stopped, not only at the interval (4, 8).
  assert first["step"] in [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  second = train(cfg, str(tmp_path))
  assert second["step"] == 12 and not second["preempted"]
  assert _losses(str(tmp_path)) == _losses(ref_dir)  # exact equality, every step


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_loss_curve(tmp_path, tokenizer_path, reference_run):
  ref_dir, _ = reference_run
  overrides = [f"--config.data.tokenizer.path={tokenizer_path}"]
  # The same config as tiny_test_config, spelled as command-line overrides.
  cfg = tiny_test_config()
  for key in ("data.seq_len", "data.tokenizer.train_chars", "data.eval_batches",
              "train.global_batch", "train.steps", "train.log_every", "train.eval_every",
              "optim.schedule.warmup_steps", "ckpt.every", "ckpt.async_save",
              "ckpt.export_params", "monitor.tensorboard", "monitor.plot", "monitor.progress"):
    node = cfg
    for part in key.split("."):
      node = node[part]
    overrides.append(f"--config.{key}={node}")
  cmd = [sys.executable, "-m", "maxlm.train", "--config=configs/pretrain.py:tiny",
         f"--workdir={tmp_path}"] + overrides
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = tmp_path / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once step 8's checkpoint is committed
    if (ckpt_dir / "8").is_dir() or proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  assert not os.path.exists(tmp_path / "done.json"), "the run finished before it was killed"
  rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed from step" in rerun.stderr
  assert _losses(str(tmp_path)) == _losses(ref_dir)


def test_corrupted_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  import grain
  import jax
  import jax.numpy as jnp
  from maxlm.checkpoint import Checkpointer
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  ckpt = Checkpointer(str(tmp_path), every=1, keep=5, async_save=False)
  states = {}
  for step in (1, 2):
    next(it)
    states[step] = {"w": jnp.full((4,), float(step)), "step": jnp.asarray(step)}
    ckpt.save(step, states[step], it)
  ckpt.wait()
  # Damage every array file of the newest step (a truncated write on a flaky disk).
  for root, _, files in os.walk(tmp_path / "2" / "state"):
    for f in files:
      if "manifest" in f or f.startswith("d") or f.endswith(".zarray") or "ocdbt" in root:
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"\0garbage")
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[1])
  it2 = iter(grain.MapDataset.range(100).to_iter_dataset())
  with caplog.at_level("WARNING"):
    state, step = Checkpointer(str(tmp_path), every=1, keep=5).restore_latest(target, it2)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full((4,), 1.0))
  assert next(it2) == 1  # the data iterator resumed after the one element step 1 had used
  assert any("unreadable" in r.message for r in caplog.records)


@pytest.mark.slow
def test_pallas_attention_trains_like_xla(tmp_path, tokenizer_path, reference_run):
  """The whole driver with model.attention_impl='pallas' (interpret mode on CPU)."""
  ref_dir, _ = reference_run
  cfg = tiny_test_config(**{"data.tokenizer.path": tokenizer_path,
                            "model.attention_impl": "pallas"})
  train(cfg, str(tmp_path))
  got, want = _losses(str(tmp_path)), _losses(ref_dir)
  assert got.keys() == want.keys()
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=2e-4)


class _Poisoned:
  """The driver's data iterator with batches [a, b) replaced by uniform random tokens.

  A stand-in for a corrupt shard: its loss is far above the curve. The
  position is part of the checkpointed state, so a rollback replays it.
  """

  def __init__(self, inner, a, b, vocab):
    self.inner, self.a, self.b, self.vocab, self.pos = inner, a, b, vocab, 0

  def __iter__(self):
    return self

  def __next__(self):
    rows, i = dict(next(self.inner)), self.pos
    self.pos += 1
    if self.a <= i < self.b:
      rng = np.random.default_rng(i)
      for k in ("inputs", "targets"):
        rows[k] = rng.integers(0, self.vocab, rows[k].shape).astype(np.int32)
    return rows

  def get_state(self):  # a JSON-ready dict, as maxlm's iterators give (maxlm/data/state.py)
    return {"inner": self.inner.get_state(), "pos": self.pos}

  def set_state(self, state):
    self.inner.set_state(state["inner"])
    self.pos = state["pos"]

  def start_prefetch(self):
    pass


@pytest.mark.slow
def test_loss_spike_rolls_back_and_skips_the_bad_window(tmp_path, tokenizer_path, monkeypatch):
  from maxlm.train import driver
  make = driver.data_lib.make_train_iterator
  poisoned = []

  def make_poisoned(*args, **kwargs):
    poisoned.append(_Poisoned(make(*args, **kwargs), 24, 27, 512))
    return poisoned[-1]

  monkeypatch.setattr(driver.data_lib, "make_train_iterator", make_poisoned)
  monkeypatch.setattr(driver.data_lib, "write_reports", lambda *a, **k: None)
  cfg = tiny_test_config(**{
      "data.tokenizer.path": tokenizer_path, "train.steps": 40, "ckpt.keep": 20,
      "monitor.spikes.warmup": 10, "monitor.spikes.window": 20,
      "monitor.spikes.good_after": 4, "monitor.spikes.margin_steps": 2})
  summary = train(cfg, str(tmp_path))
  assert summary["step"] == 40 and not summary["preempted"]
  events = read_jsonl(os.path.join(tmp_path, "events.jsonl"))
  assert [e["action"] for e in events] == ["rollback"], events
  e = events[0]
  assert e["step"] == 25 and e["values"]["loss"] > 6.0  # batch 24 is the first poisoned one
  assert e["restore_step"] <= 24 and e["skip_batches"][0] == e["restore_step"]
  assert e["skip_batches"][1] >= 27  # the whole bad window was skipped
  assert sum(e["skipped_tokens"].values()) > 0
  # After the rollback no poisoned batch reached the model: every final loss is on the curve.
  losses = _losses(str(tmp_path))
  assert sorted(losses) == list(range(1, 41))
  assert max(losses[s] for s in range(e["restore_step"] + 1, 41)) < 5.5, losses


@pytest.mark.slow
def test_skip_action_refuses_the_poisoned_updates_in_the_step(tmp_path, tokenizer_path,
                                                              monkeypatch):
  """action=skip: the jitted step refuses the poisoned batches; the run goes on without them."""
  from maxlm.train import driver
  make = driver.data_lib.make_train_iterator
  monkeypatch.setattr(driver.data_lib, "make_train_iterator",
                      lambda *a, **k: _Poisoned(make(*a, **k), 24, 27, 512))
  monkeypatch.setattr(driver.data_lib, "write_reports", lambda *a, **k: None)
  cfg = tiny_test_config(**{
      "data.tokenizer.path": tokenizer_path, "train.steps": 32, "monitor.plot": True,
      "monitor.spikes.warmup": 10, "monitor.spikes.window": 20,
      "monitor.spikes.action": "skip"})
  summary = train(cfg, str(tmp_path))
  assert summary["step"] == 32 and not summary["preempted"] and summary["skipped_steps"] == 3
  events = read_jsonl(os.path.join(tmp_path, "events.jsonl"))
  skipped = [e["step"] for e in events if e["action"] == "skip"]
  assert skipped == [25, 26, 27], events  # batches 24..26 are updates 25..27
  rows = {r["step"]: r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
          if "loss" in r}
  assert [s for s, r in rows.items() if r["skipped"] == 1.0] == [25, 26, 27]
  # The new per-step metrics reach the JSONL lines.
  assert {"grad_norm/attention", "grad_norm/embedding", "grad_norm/lm_head", "grad_norm/mlp",
          "grad_norm/norms", "update_rms_ratio", "max_abs_logit"} <= set(rows[32])
  assert max(rows[s]["loss"] for s in range(28, 33)) < 5.5  # no poisoned update got in
  assert os.path.exists(tmp_path / "loss.png")
