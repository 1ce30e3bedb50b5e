"""Sweep bookkeeping on disk: write the manifest, run points, collect results.

Layout of a sweep root:
  points.jsonl   one JSON object per point (shape, N, tokens, FLOPs, command)
  manifest.txt   one command line per point, for a TPU VM / Slurm / XPK launcher
  <name>/        the point's workdir, written by `python -m maxlm.train`:
                 metrics.jsonl (a line per logged step, eval lines carry
                 'eval/<domain>/loss') and done.json at the end
                 ({"step", "final_loss", "tokens_seen", "wall_s"}).
A point is finished exactly when its done.json exists: running skips those,
collecting reads only those.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

POINTS = "points.jsonl"
MANIFEST = "manifest.txt"
DONE = "done.json"
METRICS = "metrics.jsonl"


def write_sweep(points, root, pretrain, variant, template, extra=()):
  """Writes points.jsonl and manifest.txt under root; returns the command lines."""
  os.makedirs(root, exist_ok=True)
  commands = [p.command(root, pretrain, variant, template, extra) for p in points]
  with open(os.path.join(root, POINTS), "w") as f:
    for p, cmd in zip(points, commands):
      f.write(json.dumps(dict(dataclasses.asdict(p), workdir=os.path.join(root, p.name), command=cmd)) + "\n")
  with open(os.path.join(root, MANIFEST), "w") as f:
    f.write("\n".join(commands) + "\n")
  return commands


def read_points(root):
  with open(os.path.join(root, POINTS)) as f:
    return [json.loads(line) for line in f if line.strip()]


def is_done(workdir):
  return os.path.exists(os.path.join(workdir, DONE))


def run(root, keep_going=True, log=print, progress_out=None):
  """Runs unfinished points one after another on this machine.

  `python` at the head of a command means this interpreter, so a manifest
  written for a TPU VM also runs from a virtual environment here. Each point's
  stdout and stderr go to <workdir>/run.log. After each point a progress line
  ([k/n], elapsed, ETA weighted by the points' FLOPs) goes to stderr; the
  summary is the last line. Returns {name: return code} for the points it ran.
  """
  from maxlm.monitor.progress import Progress, duration  # pylint: disable=g-import-not-at-top
  points = read_points(root)
  todo = [p for p in points if not is_done(p["workdir"])]
  for p in points:
    if is_done(p["workdir"]):
      log(f"skip {p['name']} (done)")
  cost = lambda p: float(p.get("flops") or 1.0)
  progress = Progress(len(todo), desc="sweep", total_cost=sum(map(cost, todo)), out=progress_out)
  codes = {}
  for p in todo:
    argv = shlex.split(p["command"])
    if argv[0] == "python":
      argv[0] = sys.executable
    os.makedirs(p["workdir"], exist_ok=True)
    t0 = time.time()
    with open(os.path.join(p["workdir"], "run.log"), "w") as logf:
      codes[p["name"]] = subprocess.call(argv, stdout=logf, stderr=subprocess.STDOUT)
    rc = codes[p["name"]]
    progress.update(f"{p['name']}: {'ok' if rc == 0 else f'FAILED rc={rc}'} in"
                    f" {time.time() - t0:.1f}s", cost=cost(p))
    if rc and not keep_going:
      break
  failed = [n for n, rc in codes.items() if rc]
  log(f"sweep: ran {len(codes)} of {len(todo)} point(s) in {duration(progress.elapsed)},"
      f" {len(codes) - len(failed)} ok" + (f", {len(failed)} failed ({', '.join(failed)};"
                                           " see <workdir>/run.log)" if failed else "")
      + (f"; {len(points) - len(todo)} were already done" if len(todo) < len(points) else ""))
  return codes


def _read_metrics(path):
  """Last value of every eval/<domain>/loss key, and the median tokens/s of train lines."""
  evals, tps = {}, []
  if not os.path.exists(path):
    return evals, None
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        m = json.loads(line)
      except ValueError:  # a torn line (an interrupted write): the rest of the file counts
        continue
      for k, v in m.items():
        if k.startswith("eval/") and k.endswith("/loss"):
          evals[k] = v
      if "tokens_per_s" in m:
        tps.append(m["tokens_per_s"])
  # Median, not the last value: the first logged steps include compilation.
  return evals, (sorted(tps)[len(tps) // 2] if tps else None)


BASE_COLUMNS = ("name", "budget", "n_non_embedding", "n_total", "d_model", "n_layers", "tokens", "flops",
                "flops_6nd", "steps", "global_batch", "peak_lr", "final_loss", "eval_loss", "tokens_per_s", "wall_s")


def collect(root):
  """One row per finished point. tokens = tokens_seen from done.json; flops is
  recomputed from it with the sweep's FLOPs per token; flops_6nd = 6 N_nonemb D.
  eval_loss = unweighted mean over domains of the last eval/<domain>/loss (not the
  training mix weights, so it does not move if the mix does): held-out and the same
  batches for every point, so it is far less noisy than final_loss, the loss
  of one training batch (+-0.1 nats at 4k tokens per batch)."""
  rows = []
  for p in read_points(root):
    done_path = os.path.join(p["workdir"], DONE)
    if not os.path.exists(done_path):
      continue
    with open(done_path) as f:
      done = json.load(f)
    evals, tps = _read_metrics(os.path.join(p["workdir"], METRICS))
    tokens = int(done.get("tokens_seen") or p["tokens"])
    rows.append(dict(name=p["name"], budget=p["budget"], n_non_embedding=p["n_non_embedding"], n_total=p["n_total"],
                     d_model=p["model"]["d_model"], n_layers=p["model"]["n_layers"], tokens=tokens,
                     flops=tokens * p["flops_per_token"], flops_6nd=6.0 * p["n_non_embedding"] * tokens,
                     steps=done.get("step", p["steps"]), global_batch=p["global_batch"], peak_lr=p["peak_lr"],
                     final_loss=done["final_loss"], eval_loss=(sum(evals.values()) / len(evals) if evals else None),
                     tokens_per_s=tps, wall_s=done.get("wall_s"), **evals))
  return rows


def write_csv(rows, path):
  evals = sorted({k for r in rows for k in r if k not in BASE_COLUMNS})
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(BASE_COLUMNS) + evals, restval="")
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if v is None else v) for k, v in r.items()})
