"""A run is never silently restarted, mixed, torn or fed damaged arrays (issue 17.3-17.5).

Checkpointer-level tests use a two-leaf state and a Grain range iterator (fast);
driver-level tests copy one finished tiny run and restart it changed or damaged
(slow-marked, like test_train_e2e).
"""
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_test_config
from maxlm.checkpoint import (Checkpointer, CheckpointSaveError, RestoreRefused, WorkdirLocked,
                              integrity, workdir_lock)
from maxlm.monitor import MetricWriter, MetricsWriteError, read_jsonl, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENOSPC_TEXT = ("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database: Failed to write"
               " 5307 bytes to file 7: No space left on device [os_error_code='28']")


def _range_iter():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _state(step, seed=0):
  rng = np.random.default_rng(seed + step)
  return {"w": jnp.asarray(rng.normal(size=(64, 48)).astype(np.float32)),
          "b": jnp.asarray(rng.normal(size=(48,)).astype(np.float32)).astype(jnp.bfloat16),
          "step": jnp.asarray(step, jnp.int32)}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _saved(directory, steps, **kw):
  """A Checkpointer that has saved `steps` (the iterator advanced once per step)."""
  it = _range_iter()
  ckpt = Checkpointer(str(directory), every=1, keep=kw.pop("keep", 10), async_save=False, **kw)
  for s in steps:
    next(it)
    ckpt.save(s, _state(s), it)
  ckpt.wait()
  return ckpt


def _tree_hash(directory):
  """Every file's relative path and content digest: "nothing was changed" made checkable."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _largest_array_file(step_dir):
  """The biggest OCDBT data file of a step's state (where array bytes live)."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.path.basename(r) == "d" and "ocdbt.process" in r]
  return max(files, key=os.path.getsize)


def _flip_8_bytes(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    old = f.read(8)
    f.seek(size // 2)
    f.write(bytes(b ^ 0x5A for b in old))


# ------------------------------------------------------------------ integrity

def _numpy_digest(x: np.ndarray) -> str:
  """integrity.py's formula, written independently in NumPy (uint64 then mod 2**32)."""
  w = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint64)
  w = w.reshape(-1)
  i = np.arange(w.size, dtype=np.uint64)
  m = np.uint64(2**32 - 1)
  h1 = int(np.sum((w * (2 * i + 1)) & m) & m)
  v = (w + i * np.uint64(0x9E3779B9)) & m
  v ^= v >> np.uint64(16)
  v = (v * np.uint64(0x85EBCA6B)) & m
  v ^= v >> np.uint64(13)
  v = (v * np.uint64(0xC2B2AE35)) & m
  v ^= v >> np.uint64(16)
  h2 = int(np.sum(v) & m)
  return f"{h1:08x}{h2:08x}"


def test_digest_matches_a_numpy_reference_and_ignores_sharding():
  rng = np.random.default_rng()
  tree = {"f32": rng.normal(size=(16, 24)).astype(np.float32),
          "i32": rng.integers(-2**31, 2**31, size=(5, 3, 2), dtype=np.int64).astype(np.int32),
          "u8": rng.integers(0, 256, size=(7,), dtype=np.uint8),
          "scalar": np.asarray(rng.normal(), np.float32)}
  got = integrity.digest(jax.tree.map(jnp.asarray, tree))
  assert got == {f"['{k}']": _numpy_digest(v) for k, v in tree.items()}
  # The same global array, sharded over 8 devices in two ways, has the same digest.
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = jax.device_put(jnp.asarray(tree["f32"]), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("a", "b")))
  assert integrity.digest({"f32": sharded})["['f32']"] == got["['f32']"]
  # One ulp in one element changes it.
  nudged = tree["f32"].copy()
  nudged[3, 5] = np.nextafter(nudged[3, 5], np.inf)
  assert integrity.mismatches({"f32": jnp.asarray(nudged)}, {"['f32']": got["['f32']"]}) == [
      "['f32']"]


def test_damaged_array_bytes_are_detected_and_the_previous_step_is_used(tmp_path, caplog):
  _saved(tmp_path, [1, 2])
  _flip_8_bytes(_largest_array_file(tmp_path / "2"))
  # Without the digest this restores silently (orbax and TensorStore check no data bytes):
  raw = ocp.StandardCheckpointer().restore(tmp_path / "2" / "state", _abstract(_state(2)))
  assert not np.array_equal(np.asarray(raw["w"]), np.asarray(_state(2)["w"]))
  it = _range_iter()
  ckpt = Checkpointer(str(tmp_path), every=1, keep=10, async_save=False)
  with caplog.at_level("WARNING"):
    state, step = ckpt.restore_or_fail(_abstract(_state(1)), it)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(1)["w"]))
  assert next(it) == 1  # the iterator resumed after the one element step 1 had used
  assert "array data is damaged" in caplog.text and "['w']" in caplog.text
  # The damaged step is kept aside, not deleted, and step 2 can be written again.
  assert ckpt.all_steps() == [1]
  assert os.path.isdir(str(tmp_path) + "-unreadable/2/state")
  assert ckpt.save(2, _state(2), it)
  assert ckpt.all_steps() == [1, 2]


def test_every_checkpoint_unreadable_refuses_and_changes_nothing(tmp_path):
  _saved(tmp_path, [1, 2, 3])
  _flip_8_bytes(_largest_array_file(tmp_path / "3"))  # silent damage: the digest names it
  shutil.rmtree(tmp_path / "2" / "state" / "ocdbt.process_0")  # lost array files
  for root, _, files in os.walk(tmp_path / "1" / "data"):  # a garbled iterator state
    for f in files:
      if f.endswith(".json"):
        with open(os.path.join(root, f), "w") as fh:
          fh.write("{not json")
  before = _tree_hash(tmp_path)
  ckpt = Checkpointer(str(tmp_path), every=1, keep=10, async_save=False)
  with pytest.raises(RestoreRefused) as e:
    ckpt.restore_or_fail(_abstract(_state(1)), _range_iter())
  msg = str(e.value)
  lines = msg.splitlines()
  assert "no checkpoint" in lines[0] and "step 0" in lines[0]
  assert [l.split(":")[0].strip() for l in lines[1:]] == ["step 3", "step 2", "step 1"]
  assert "array data is damaged" in lines[1]
  assert "state is unreadable" in lines[2]
  assert "data-iterator state is unreadable" in lines[3]
  assert ckpt.all_steps() == [1, 2, 3] and _tree_hash(tmp_path) == before


def test_per_host_data_state_of_another_host_count_is_named_as_such(tmp_path):
  _saved(tmp_path, [1])
  # What a 2-process run leaves: one iterator file per process, and meta saying 2.
  data_dir = tmp_path / "1" / "data"
  os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
  shutil.copy(data_dir / "process_0-of-2.json", data_dir / "process_1-of-2.json")
  meta_file = tmp_path / "1" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta["process_count"] = 2
  meta_file.write_text(json.dumps(meta))
  ckpt = Checkpointer(str(tmp_path), every=1, keep=10, async_save=False)
  with pytest.raises(RestoreRefused) as e:
    ckpt.restore_or_fail(_abstract(_state(1)), _range_iter())
  assert "data-state mismatch" in str(e.value) and "saved by 2 processes" in str(e.value)
  assert "unreadable" not in str(e.value) and ckpt.all_steps() == [1]


def test_run_config_changes_are_refused_unless_allowed(tmp_path, caplog):
  saved = tiny_test_config().to_dict()
  _saved(tmp_path, [1, 2], run_config=json.loads(json.dumps(saved, default=list)))

  def restore(allow="", **changes):
    cfg = json.loads(json.dumps(saved, default=list))
    for k, v in changes.items():
      node = cfg
      *parents, leaf = k.split("__")
      for p in parents:
        node = node[p]
      node[leaf] = v
    ckpt = Checkpointer(str(tmp_path), every=1, keep=10, async_save=False, run_config=cfg,
                        allow_changes=allow)
    return ckpt.restore_or_fail(_abstract(_state(1)), _range_iter())

  with pytest.raises(RestoreRefused) as e:
    restore(train__seed=1, optim__peak_lr=1e-4)
  assert "optim.peak_lr (checkpoint 0.003, this run 0.0001)" in str(e.value)
  assert "train.seed (checkpoint 0, this run 1)" in str(e.value)
  assert "--config.ckpt.allow_changes=optim.peak_lr,train.seed" in str(e.value)
  with pytest.raises(RestoreRefused, match=r"model.n_layers \(checkpoint 2, this run 3\)"):
    restore(allow="model", model__n_layers=3)  # a shape cannot be allowed: it cannot restore
  with caplog.at_level("WARNING"):
    assert restore(allow="optim,train.seed", train__seed=1, optim__peak_lr=1e-4)[1] == 2
    # Free fields and the mixture pass; a mixture change is logged.
    assert restore(train__steps=99, ckpt__every=7,
                   data__sources__stdlib__weight=0.1)[1] == 2
  assert "changed data mixture: data.sources.stdlib.weight" in caplog.text
  assert "allowed by ckpt.allow_changes" in caplog.text


def test_keep_must_be_at_least_one(tmp_path):
  with pytest.raises(ValueError, match=r"ckpt.keep=0: must be an int >= 1"):
    Checkpointer(str(tmp_path), every=1, keep=0)


async def _raise_enospc(*args, **kwargs):
  raise ValueError(ENOSPC_TEXT)  # what TensorStore raises on a full disk (seen on a tmpfs)


def test_a_save_that_runs_out_of_disk_keeps_the_older_checkpoint(tmp_path, monkeypatch):
  ckpt = _saved(tmp_path, [1], keep=1)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", _raise_enospc)
  it = _range_iter()
  with pytest.raises(CheckpointSaveError) as e:
    ckpt.save(2, _state(2), it)
  msg = str(e.value)
  assert "\n" not in msg and f"checkpoint step 2 was not saved to {tmp_path}" in msg
  assert "no space left on device" in msg and "bytes free" in msg
  assert "older checkpoints kept: [1]" in msg
  assert sorted(os.listdir(tmp_path)) == ["1"]  # keep=1 did not delete it; no temporary files
  monkeypatch.undo()
  state, step = Checkpointer(str(tmp_path), every=1, keep=1).restore_or_fail(
      _abstract(_state(1)), it)
  assert step == 1 and np.array_equal(np.asarray(state["w"]), np.asarray(_state(1)["w"]))


# ------------------------------------------------------------------ metrics.jsonl

def test_metrics_lines_are_whole_or_absent(tmp_path, monkeypatch, caplog):
  w = MetricWriter(str(tmp_path), tensorboard=False)
  w.write(1, {"loss": 2.5})
  real_write = os.write

  def half_then_enospc(fd, data):
    if b'"step": 2' in data:
      real_write(fd, data[:len(data) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, data)

  monkeypatch.setattr(writers.os, "write", half_then_enospc)
  with pytest.raises(MetricsWriteError, match="no space left on device .* bytes free"):
    w.write(2, {"loss": 2.25})
  monkeypatch.undo()
  w.write(3, {"loss": 2.0})
  w.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  assert [json.loads(l) for l in text.splitlines()] == [{"step": 1, "loss": 2.5},
                                                        {"step": 3, "loss": 2.0}]
  # A torn last line left by an older writer: the reader skips and reports it ...
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "lo')
  with caplog.at_level("WARNING"):
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 3]
  assert "line 3" in caplog.text and "torn" in caplog.text
  # ... and the next writer drops it before appending, so it never merges with a new line.
  w = MetricWriter(str(tmp_path), tensorboard=False)
  w.write(4, {"loss": 1.9})
  w.close()
  assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 3, 4]
  assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")


# ------------------------------------------------------------------ lock

_HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from maxlm.checkpoint import workdir_lock
    with workdir_lock({wd!r}):
      print("locked", flush=True)
      sys.stdin.read()
""")


def test_a_second_process_on_a_locked_workdir_refuses(tmp_path):
  wd = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, wd=wd)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirLocked, match=f"pid {holder.pid} on host {socket.gethostname()}"):
      with workdir_lock(wd):
        pass
    # The CLI says it in one line and exits non-zero, before building anything.
    cli = subprocess.run([sys.executable, "-m", "maxlm.train", "--config=configs/pretrain.py:tiny",
                          f"--workdir={wd}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert cli.returncode != 0
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {wd} is in use by another run (pid {holder.pid}"), last
    assert not os.path.exists(os.path.join(wd, "checkpoints"))
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  with workdir_lock(wd) as lock:  # released on the holder's exit
    assert json.loads(open(lock.path).read())["pid"] == os.getpid()
  assert open(lock.path).read() == ""  # and on ours


def test_stale_lock_is_taken_over_but_another_hosts_is_not(tmp_path, caplog):
  wd = str(tmp_path)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_file = os.path.join(wd, "run.lock")
  with open(lock_file, "w") as f:  # what a kill -9 leaves: the record, no flock
    json.dump(dict(pid=dead.pid, host=socket.gethostname(), since=0), f)
  with caplog.at_level("WARNING"):
    with workdir_lock(wd):
      pass
  assert f"left by pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
  with open(lock_file, "w") as f:
    json.dump(dict(pid=12345, host="other-host", since=0), f)
  with pytest.raises(WorkdirLocked, match=f"pid 12345 on host other-host.*delete {lock_file}"):
    with workdir_lock(wd):
      pass


# ------------------------------------------------------------------ the driver, end to end

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer_path):
  """A finished 12-step tiny run: checkpoints 4, 8, 12 (keep 3)."""
  from maxlm.train.driver import train
  wd = str(tmp_path_factory.mktemp("finished"))
  train(tiny_test_config(**{"data.tokenizer.path": tokenizer_path}), wd)
  return wd


def _copy(src, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


def _losses(wd):
  return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))
          if "loss" in r}


@pytest.mark.slow
def test_restart_with_a_changed_shape_refuses_with_checkpoints_unchanged(
    finished_run, tmp_path, tokenizer_path):
  from maxlm.train.driver import train
  wd = _copy(finished_run, tmp_path)
  before = _tree_hash(wd)
  with pytest.raises(RestoreRefused) as e:
    train(tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "model.n_layers": 3}), wd)
  lines = str(e.value).splitlines()
  assert "the model's shape changed" in lines[0]
  assert lines[1:] == [f"  step {s}: its parameters have another shape: model.n_layers"
                       " (checkpoint 2, this run 3)" for s in (12, 8, 4)]
  after = _tree_hash(wd)
  after.pop("run.lock")  # emptied: released
  before.pop("run.lock", None)
  assert after == before  # checkpoints, metrics, config.json: all as they were


@pytest.mark.slow
def test_restart_over_unreadable_checkpoints_refuses(finished_run, tmp_path, tokenizer_path):
  from maxlm.train.driver import train
  wd = _copy(finished_run, tmp_path)
  for s in (4, 8, 12):
    _flip_8_bytes(_largest_array_file(os.path.join(wd, "checkpoints", str(s))))
  before = _tree_hash(os.path.join(wd, "checkpoints"))
  with pytest.raises(RestoreRefused) as e:
    train(tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "train.steps": 16}), wd)
  lines = str(e.value).splitlines()
  assert [l.split(":")[0].strip() for l in lines[1:]] == ["step 12", "step 8", "step 4"]
  # Flipped bytes read back as other numbers (the digest says so) or fail to decompress.
  assert all("array data is damaged" in l or "state is unreadable" in l for l in lines[1:])
  assert _tree_hash(os.path.join(wd, "checkpoints")) == before
  assert max(_losses(wd)) == 12  # it did not train from step 0


@pytest.mark.slow
def test_a_changed_seed_and_lr_resume_only_when_allowed(finished_run, tmp_path, tokenizer_path):
  from maxlm.train.driver import train
  wd = _copy(finished_run, tmp_path)
  changed = {"data.tokenizer.path": tokenizer_path, "train.steps": 14, "train.seed": 5,
             "optim.peak_lr": 1e-3}
  with pytest.raises(RestoreRefused, match="allow_changes=optim.peak_lr,train.seed"):
    train(tiny_test_config(**changed), wd)
  summary = train(tiny_test_config(**changed, **{"ckpt.allow_changes": "optim.peak_lr,train.seed"}),
                  wd)
  assert summary["step"] == 14 and sorted(_losses(wd)) == list(range(1, 15))
  with open(os.path.join(wd, "config.json")) as f:  # the config now on record is the new one
    assert json.load(f)["train"]["seed"] == 5


@pytest.mark.slow
def test_disk_full_keeps_checkpoints_and_metrics_and_the_rerun_finishes(
    finished_run, tmp_path, tokenizer_path, monkeypatch):
  from maxlm.train.driver import train
  wd = str(tmp_path / "run")
  cfg = tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "ckpt.keep": 1,
                            "monitor.plot": True})
  real_save = ocp.StandardCheckpointHandler.async_save

  async def enospc_from_step_8(self, directory, *args, **kwargs):
    if "/8.orbax-checkpoint-tmp" in str(directory):
      await _raise_enospc()
    return await real_save(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", enospc_from_step_8)
  with pytest.raises(CheckpointSaveError) as e:
    train(cfg, wd)
  assert "\n" not in str(e.value) and "no space left on device" in str(e.value)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]  # keep=1 deleted nothing
  monkeypatch.undo()

  # Then the disk fills while a metrics line is half written (step 6 of the resumed run).
  real_write = os.write

  def torn_write(fd, data):
    if b'"step": 6,' in data and b'"loss"' in data:
      real_write(fd, data[:20])
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, data)

  monkeypatch.setattr(writers.os, "write", torn_write)
  with pytest.raises(MetricsWriteError):
    train(cfg, wd)
  monkeypatch.undo()
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    assert all(json.loads(line) for line in f)  # every line whole

  summary = train(cfg, wd)  # space is back: the rerun finishes
  assert summary["step"] == 12 and os.path.exists(os.path.join(wd, "done.json"))
  assert os.path.exists(os.path.join(wd, "loss.png"))
  assert _losses(wd) == _losses(finished_run)  # exactly the uninterrupted run's curve
