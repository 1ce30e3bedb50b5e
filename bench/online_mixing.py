r"""Online data mixing against the fixed mixture: final held-out loss averaged over domains.

  python bench/online_mixing.py                    # tiny config, 3 seeds, fixed / doremi / odm
  python bench/online_mixing.py --steps=100 --seeds=0

Each seed trains configs/pretrain.py:tiny three times on the same token budget
(same steps, batch and seq_len): the fixed mixture (the config's source
weights; the late anneal schedule is removed so only the mixing rule differs),
DoReMi (reference = that seed's fixed run, its final held-out losses) and ODM.
Prints the final held-out loss per domain and its mean over domains per run,
and the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import pretrain  # noqa: E402
from maxlm.train.driver import train  # noqa: E402

DOMAINS = ("code", "docs", "prose")


def _config(seed: int, steps: int, tokenizer: str, rule: str = "", reference: str = "", every=20):
  c = pretrain.get_config("tiny")
  c.train.seed = seed
  c.train.steps = steps
  c.train.eval_every = 0
  c.data.schedule = ()  # the fixed mixture is the source weights throughout
  c.data.tokenizer.path = tokenizer
  c.ckpt.every = steps
  c.ckpt.async_save = False
  c.ckpt.export_params = False
  c.monitor.tensorboard = False
  c.monitor.progress = "lines"
  if rule:
    c.data.online_mixing.rule = rule
    c.data.online_mixing.update_every = every
    c.data.online_mixing.reference_metrics = reference
  c.lock()
  return c


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--update_every", type=int, default=20)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  root = tempfile.mkdtemp(prefix="maxlm_online_mixing_")
  results = {}
  tokenizer = ""
  for seed in [int(s) for s in a.seeds.split(",")]:
    fixed_dir = os.path.join(root, f"fixed_{seed}")
    summaries = dict(fixed=train(_config(seed, a.steps, tokenizer), fixed_dir))
    if not tokenizer:  # every run uses the first run's tokenizer: same tokens
      tokenizer = os.path.join(fixed_dir, "tokenizer", "tokenizer.model")
    for rule in ("doremi", "odm"):
      summaries[rule] = train(_config(seed, a.steps, tokenizer, rule,
                                      os.path.join(fixed_dir, "metrics.jsonl"), a.update_every),
                              os.path.join(root, f"{rule}_{seed}"))
    for name, done in summaries.items():
      losses = {dom: done[f"eval/{dom}/loss"] for dom in DOMAINS}
      results.setdefault(name, []).append(dict(seed=seed, mean=sum(losses.values()) / 3, **losses))
      print(f"seed {seed} {name:7s} " + "  ".join(f"{k} {v:.4f}" for k, v in losses.items())
            + f"  mean {results[name][-1]['mean']:.4f}", flush=True)
  print("\nmean over seeds of the domain-averaged final held-out loss:")
  for name, rows in results.items():
    m = [r["mean"] for r in rows]
    print(f"  {name:7s} {sum(m) / len(m):.4f}   per seed {['%.4f' % x for x in m]}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main()
