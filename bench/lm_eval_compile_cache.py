r"""lm-eval's first call with jax's persistent compilation cache: cold, warm, and without it.

  nice python bench/lm_eval_compile_cache.py               # tiny preset, ~3 min on 2 cores
  nice python bench/lm_eval_compile_cache.py --threads=1

The model and requests are bench/lm_eval_throughput.py's (a random tiny model
exported to an HF directory, 800 loglikelihood and 50 rolling requests, batch
32, max_length 256). Each measurement is a fresh interpreter (jax's in-memory
cache would hide the disk cache) that builds the `maxlm` lm-eval model and
times its FIRST loglikelihood and loglikelihood_rolling calls, which compile
one scoring program per length bucket: without the cache (jax's default),
with an empty cache dir (cold: compiles and writes), then twice with the
filled dir (warm: reads), as `python -m maxlm.eval.harness` does by default
(maxlm/eval/compile_cache.py). A second call in the same process (no compile)
is timed too: the floor the first call could reach.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from maxlm.eval import compile_cache
if sys.argv[3] != "off":
  compile_cache.enable(sys.argv[3])
import jax
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from maxlm.eval.lm_eval_model import MaxlmLM
from bench.lm_eval_throughput import make_requests
ll, roll = make_requests(np.random.default_rng(0), 200, 50)
lm = MaxlmLM(pretrained=sys.argv[2], batch_size=32, max_length=256)
out = {}
for name, fn, reqs in (("loglikelihood", lm.loglikelihood, ll),
                       ("loglikelihood_rolling", lm.loglikelihood_rolling, roll)):
  t0 = time.perf_counter(); fn(reqs); first = time.perf_counter() - t0
  t0 = time.perf_counter(); fn(reqs); second = time.perf_counter() - t0
  out[name] = dict(first_s=first, second_s=second)
out["hits"] = events.count("/jax/compilation_cache/cache_hits")
out["misses"] = events.count("/jax/compilation_cache/cache_misses")
print(json.dumps(out))
"""


def _child(model_dir, cache, threads):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if threads == 1:  # as lm_eval_throughput --threads=1: XLA's CPU pool on one thread
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                        " intra_op_parallelism_threads=1").strip()
  res = subprocess.run([sys.executable, "-c", _CHILD, ROOT, model_dir, cache], env=env,
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
  if res.returncode:
    raise SystemExit(res.stderr[-3000:])
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--threads", type=int, default=0)
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  from bench.lm_eval_throughput import write_model  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix="maxlm_compile_cache_")
  model_dir, cache = os.path.join(root, "model"), os.path.join(root, "cache")
  write_model(a.preset, model_dir, 256)
  rows = []
  for label, where in (("no cache", "off"), ("cold cache", cache), ("warm cache", cache),
                       ("warm cache", cache)):
    r = _child(model_dir, where, a.threads)
    rows.append(dict(label=label, **r))
    print(f"{label:>10}: loglikelihood first {r['loglikelihood']['first_s']:6.2f} s"
          f" (second {r['loglikelihood']['second_s']:.2f} s), rolling first"
          f" {r['loglikelihood_rolling']['first_s']:6.2f} s"
          f" (second {r['loglikelihood_rolling']['second_s']:.2f} s);"
          f" disk cache {r['hits']} hits / {r['misses']} misses", flush=True)
  entries = [f for f in os.listdir(cache) if f.endswith("-cache")]
  size = sum(os.path.getsize(os.path.join(cache, f)) for f in entries)
  print(f"cache: {len(entries)} programs, {size / 2**20:.1f} MiB")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(args=vars(a), rows=rows, entries=len(entries), bytes=size), f, indent=2)


if __name__ == "__main__":
  main()
