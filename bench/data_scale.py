"""The data path at scale: prepare and training-from-shards cost vs corpus size.

  .venv/bin/python bench/data_scale.py                       # 5k / 20k / 80k docs, minutes
  .venv/bin/python bench/data_scale.py --docs=100000,400000,1600000   # the issue's sizes

For each size it generates a JSONL corpus (pseudo-English, ~30-120 words a
document), then in subprocesses:
  prepare   python -m maxlm.data.prepare (in-process runner, one core, unless
            --workers): wall time, tokens/s per core, peak RSS of the whole
            process tree (sampled from /proc every 0.1 s)
  encode    the tokenizer's own batch encode on the same texts, one core
            (SentencePiece encode(list, num_threads=1); tokenizers'
            encode_batch_fast): prepare's tokens/s as a ratio to it, by wall
            time and by CPU seconds
  startup   make_train_iterator + the first batch + make_eval_batches from the
            shards: seconds and peak RSS (what a training host pays before step 1)
  train     the tiny model for --steps steps from the shards with the raw
            corpus deleted: peak RSS, seconds to the first logged step (includes
            jit compilation), bytes of data state in the last checkpoint
            (the Grain JSON and the reuse-count array beside it)
Targets (issue 13): peak RSS flat in corpus size (largest <= 1.3x smallest,
prepare <= 1.5 GB), prepare >= 3M tokens/s per core, startup <= 10 s at 1.6M
documents, data state <= 1 MB.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_WORDS = ("the of and to in is was that for it with as his on be at by had not are but from or "
          "have an they which one you were her all she there would their we him been has when "
          "who will more no if out so said what up its about into than them can only other new "
          "some could time these two may then do first any my now such like our over man me even "
          "most made after also did many before must through back years where much your way well "
          "down should because each just those people how too little state good very make world "
          "still own see men work long get here between both life being under never day same "
          "another know while last might us great old year off come since against go came right "
          "used take three").split()

_CONFIG = '''
from maxlm.data import config as config_lib

def get_config():
  c = config_lib.default_data_config()
  c.sources = dict(web=config_lib.source(kind="jsonl", domain="web", paths=({glob!r},)))
  c.error_budget = -1
  return c
'''

# Inlined into the measured scripts (they run as `python -c`).
_PEAK_RSS = '''def _peak_rss_mb():
  # VmHWM: the high-water mark of this process's own address space. ru_maxrss is
  # not: Linux carries it across execve, so a child of a 2 GB pytest worker
  # reports the worker's 2 GB (tests/test_data_scale.py failed on that noise).
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
'''

_STARTUP = r'''
import json, resource, sys, time
{peak_rss}t0 = time.time()
sys.path.insert(0, {root!r})
sys.path.insert(0, {cfgdir!r})
import data_cfg
from maxlm import data
c = data_cfg.get_config()
c.prepared_dir = {shards!r}
it = data.make_train_iterator(c, tokenizer_path={tok!r}, seq_len=256, global_batch=16, seed=0)
next(it)
data.make_eval_batches(c, tokenizer_path={tok!r}, seq_len=256, global_batch=16)
print(json.dumps(dict(startup_s=time.time() - t0,
                      rss_mb=_peak_rss_mb())))
'''

_TRAIN = r'''
import json, os, resource, sys
{peak_rss}sys.path.insert(0, {root!r})
sys.path.insert(0, {cfgdir!r})
import data_cfg
from configs import pretrain
from maxlm.train.driver import train
c = pretrain.get_config("tiny")
c.data.sources = data_cfg.get_config().sources
c.data.schedule = ()
c.data.prepared_dir = {shards!r}
c.data.tokenizer.path = {tok!r}
c.data.seq_len = 256
c.train.steps = {steps}
c.train.global_batch = 16
c.train.log_every = 1
c.train.eval_every = 0
c.optim.schedule.warmup_steps = 1
c.ckpt.every = {steps}
c.ckpt.async_save = False
c.monitor.tensorboard = False
c.monitor.plot = False
c.monitor.progress = "lines"
train(c, {workdir!r})
print(json.dumps(dict(rss_mb=_peak_rss_mb())))
'''


# The tokenizer's own batch encode speed on the corpus' texts, one core: the
# reference prepare's tokens/s is a ratio to (issue 13: "SentencePiece's own
# encode speed here"). Only the encode calls are timed (wall and CPU); the
# texts are read and parsed in batches around them (constant memory).
_ENCODE_SPEED = r'''
import json, os, sys, time
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizers backend: one core too
sys.path.insert(0, {root!r})
from maxlm.data import tokenizer_io
tok = tokenizer_io.load({tok!r})
wall = cpu = 0.0
n = 0
def run(batch):
  global wall, cpu, n
  t, c = time.perf_counter(), time.process_time()
  if tok.sp is not None:  # SentencePiece's batch API, one thread
    out = tok.sp.encode(batch, num_threads=1)
    n += sum(map(len, out))
  else:  # the tokenizers backend's batch API
    out = tok._hf.encode_batch_fast(batch, add_special_tokens=False)
    n += sum(len(e.ids) for e in out)
  wall += time.perf_counter() - t
  cpu += time.process_time() - c
batch = []
with open({corpus!r}) as f:
  for line in f:
    batch.append(json.loads(line)["text"])
    if len(batch) == {batch}:
      run(batch)
      batch = []
if batch:
  run(batch)
print(json.dumps(dict(tokens=n, wall_s=wall, cpu_s=cpu,
                      backend="sentencepiece" if tok.sp is not None else "tokenizers")))
'''


def encode_speed(corpus: str, tok: str, env=None, batch: int = 512) -> dict:
  """The tokenizer's own batch encode on the corpus' texts, one core, in a subprocess:
  {tokens, wall_s, cpu_s, backend}."""
  res, _, _ = run_measured([sys.executable, "-c", _ENCODE_SPEED.format(
      root=ROOT, tok=tok, corpus=corpus, batch=batch)], env)
  return _last_json(res.stdout)


def generate(path: str, n_docs: int, seed: int = 0) -> int:
  """n_docs JSONL lines; returns bytes written."""
  rng = np.random.default_rng(seed)
  words = np.array(_WORDS)
  with open(path, "w") as f:
    for start in range(0, n_docs, 10_000):
      k = min(10_000, n_docs - start)
      lens = rng.integers(30, 120, k)
      picks = rng.integers(0, len(words), int(lens.sum()))
      ends = np.cumsum(lens)
      lines = []
      for i in range(k):
        text = " ".join(words[picks[ends[i] - lens[i]:ends[i]]])
        lines.append(json.dumps({"text": text, "id": start + i}))
      f.write("\n".join(lines) + "\n")
  return os.path.getsize(path)


def _tree_rss_kb(pid: int) -> int:
  """RSS of pid and all its descendants, from /proc (Linux)."""
  children = {}
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        with open(f"/proc/{d}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
      except (OSError, IndexError, ValueError):
        pass
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    todo += children.get(p, [])
    try:
      with open(f"/proc/{p}/status") as f:
        total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
      pass
  return total


def run_measured(cmd, env=None, cpu=None) -> tuple[subprocess.CompletedProcess, float, float]:
  """(result, wall seconds, peak RSS of the process tree in MB); cpu: a list that gets
  the CPU seconds (user + system) of the command's process tree."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  peak = [0]
  done = threading.Event()

  def sample():
    while not done.wait(0.1):
      peak[0] = max(peak[0], _tree_rss_kb(proc.pid))

  t = threading.Thread(target=sample, daemon=True)
  t.start()
  out, err = proc.communicate()
  done.set()
  t.join()
  if cpu is not None:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
  res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
  if res.returncode:
    raise RuntimeError(f"{cmd[:4]} failed:\n{err[-3000:]}")
  return res, time.time() - t0, peak[0] / 1024


def _last_json(stdout: str) -> dict:
  return json.loads([l for l in stdout.splitlines() if l.startswith("{")][-1])


def measure(n_docs: int, root: str, tok: str, steps: int, workers: int,
            shard_tokens: int = 0, encode_ref: bool = True) -> dict:
  """One corpus size; shard_tokens: prepare's target per shard (0 = its default);
  encode_ref: also time the tokenizer alone on the same texts (the ratio's reference)."""
  d = os.path.join(root, f"n{n_docs}")
  shutil.rmtree(d, ignore_errors=True)
  os.makedirs(os.path.join(d, "raw"))
  corpus_bytes = generate(os.path.join(d, "raw", "corpus.jsonl"), n_docs)
  with open(os.path.join(d, "data_cfg.py"), "w") as f:
    f.write(_CONFIG.format(glob=os.path.join(d, "raw", "*.jsonl")))
  shards = os.path.join(d, "shards")
  # RAYON_NUM_THREADS: a tokenizer.json's batch encode on one core too (prepare's per-core figure)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, d]), JAX_PLATFORMS="cpu",
             RAYON_NUM_THREADS="1")
  corpus = os.path.join(d, "raw", "corpus.jsonl")
  ref = encode_speed(corpus, tok, env) if encode_ref else None
  prep_cpu = []
  res, prep_s, prep_rss = run_measured(
      [sys.executable, "-m", "maxlm.data.prepare", "--config=" + os.path.join(d, "data_cfg.py"),
       f"--tokenizer={tok}", f"--out={shards}", f"--workers={workers}", "--noprogress"]
      + ([f"--shard_tokens={shard_tokens}"] if shard_tokens else []), env, cpu=prep_cpu)
  with open(os.path.join(shards, "manifest.json")) as f:
    manifest = json.load(f)
  tokens = sum(s[k]["tokens"] for s in manifest["sources"].values() for k in ("train", "heldout"))
  n_shards = sum(len(s[k]["shards"]) for s in manifest["sources"].values()
                 for k in ("train", "heldout"))
  shutil.rmtree(os.path.join(d, "raw"))  # training must not need the raw corpus
  res, _, _ = run_measured([sys.executable, "-c", _STARTUP.format(peak_rss=_PEAK_RSS,
      root=ROOT, cfgdir=d, shards=shards, tok=tok)], env)
  startup = _last_json(res.stdout)
  out = dict(docs=n_docs, corpus_mb=corpus_bytes / 2**20, tokens=tokens, shards=n_shards,
             prepare_s=prep_s, prepare_tok_s_core=tokens / prep_s / max(1, workers),
             prepare_cpu_s=prep_cpu[0],
             encode_tok_s=ref and ref["tokens"] / ref["wall_s"],
             encode_tok_cpu_s=ref and ref["tokens"] / ref["cpu_s"],
             encode_backend=ref and ref["backend"],
             # prepare vs the tokenizer alone, by wall (the figure, one core) and by
             # CPU seconds (steadier on a shared box: another process's time is not counted)
             ratio_wall=ref and tokens / prep_s / max(1, workers) / (ref["tokens"] / ref["wall_s"]),
             ratio_cpu=ref and tokens / prep_cpu[0] / (ref["tokens"] / ref["cpu_s"]),
             prepare_rss_mb=prep_rss, startup_s=startup["startup_s"],
             startup_rss_mb=startup["rss_mb"], train_s=None, train_rss_mb=None,
             state_json_bytes=None, state_counts_bytes=None)
  if steps:
    workdir = os.path.join(d, "run")
    res, out["train_s"], _ = run_measured([sys.executable, "-c", _TRAIN.format(peak_rss=_PEAK_RSS,
        root=ROOT, cfgdir=d, shards=shards, tok=tok, steps=steps, workdir=workdir)], env)
    out["train_rss_mb"] = _last_json(res.stdout)["rss_mb"]
    state_dir = os.path.join(workdir, "checkpoints", str(steps), "data")
    state = {f: os.path.getsize(os.path.join(state_dir, f)) for f in os.listdir(state_dir)}
    out["state_json_bytes"] = sum(v for k, v in state.items() if k.endswith(".json"))
    out["state_counts_bytes"] = sum(v for k, v in state.items() if k.endswith(".npz"))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--docs", default="5000,20000,80000")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--workers", type=int, default=1, help="prepare processes (1 = in-process)")
  ap.add_argument("--workdir", default="")
  ap.add_argument("--tokenizer", default="", help="a .model / tokenizer.json / HF directory "
                  "(default: maxlm's own, trained on the default data config)")
  args = ap.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="data_scale_")
  os.makedirs(root, exist_ok=True)
  from maxlm import data  # pylint: disable=g-import-not-at-top
  tok = args.tokenizer or data.build_tokenizer(data.default_data_config(), root)
  rows = [measure(int(n), root, tok, args.steps, args.workers) for n in args.docs.split(",")]
  cols = ("docs", "corpus_mb", "tokens", "shards", "prepare_s", "prepare_tok_s_core",
          "encode_tok_s", "ratio_wall", "ratio_cpu", "prepare_rss_mb", "startup_s", "startup_rss_mb", "train_rss_mb", "state_json_bytes",
          "state_counts_bytes")
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join((f"{r[c]:.2f}" if c.startswith("ratio") else f"{r[c]:.1f}")
                            if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
  print(json.dumps(rows))
  if len(rows) > 1:
    for k in ("prepare_rss_mb", "startup_rss_mb", "train_rss_mb"):
      if rows[0][k]:
        print(f"{k}: largest / smallest = {rows[-1][k] / rows[0][k]:.2f}")


if __name__ == "__main__":
  main()
