"""jax's persistent compilation cache for the harness CLI (maxlm/eval/compile_cache.py)."""
import json
import os
import subprocess
import sys

import pytest

from maxlm.eval import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh interpreter scores a few requests with the cache in argv[1] and reports jax's own
# cache events (jax.monitoring): a second process must hit for every program the first wrote.
_CHILD = r"""
import json, sys
import jax
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from maxlm.eval import compile_cache, scoring
from maxlm.model import ModelConfig, init_params
compile_cache.enable(sys.argv[1])
cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                  d_ff=64)
params = init_params(cfg, jax.random.PRNGKey(0))
reqs = [([1] + [5] * n, [6, 7]) for n in (3, 40, 70)]  # three length buckets
s = scoring.score_continuations(cfg, params, reqs, batch_size=8)
print(json.dumps(dict(hits=events.count("/jax/compilation_cache/cache_hits"),
                      misses=events.count("/jax/compilation_cache/cache_misses"),
                      totals=[x.total for x in s])))
"""


def _child(cache_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _CHILD, cache_dir], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)  # a hang guard
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_every_scoring_program_from_the_cache(tmp_path):
  cache = str(tmp_path / "cache")
  cold = _child(cache)
  # At least one program per bucket; a cold process may already hit programs it compiled
  # twice (the same HLO from two jit wrappers, e.g. eager ops in init).
  assert cold["misses"] >= 3
  entries = [f for f in os.listdir(cache) if f.endswith("-cache")]
  assert len(entries) >= 3  # small CPU programs are written (thresholds lowered)
  warm = _child(cache)
  assert warm["misses"] == 0 and warm["hits"] == cold["misses"] + cold["hits"]
  assert warm["totals"] == cold["totals"]  # the same programs: the same numbers


def test_flag_env_and_default(monkeypatch, tmp_path):
  enabled = []
  monkeypatch.setattr(compile_cache, "enable", lambda d: enabled.append(d) or d)
  monkeypatch.delenv("MAXLM_COMPILATION_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  argv = ["x", "--tasks", "t"]
  assert compile_cache.from_argv(argv) == str(tmp_path / "maxlm" / "jax_compile")
  argv = ["x", f"--compilation_cache={tmp_path / 'c'}", "--tasks", "t"]
  assert compile_cache.from_argv(argv) == str(tmp_path / "c") and argv == ["x", "--tasks", "t"]
  argv = ["x", "--compilation_cache=off"]
  assert compile_cache.from_argv(argv) is None and argv == ["x"]
  monkeypatch.setenv("MAXLM_COMPILATION_CACHE", "off")
  assert compile_cache.from_argv(["x"]) is None
  assert enabled == [str(tmp_path / "maxlm" / "jax_compile"), str(tmp_path / "c")]
  with pytest.raises(ValueError, match="--compilation_cache needs a value"):
    compile_cache.from_argv(["x", "--compilation_cache"])
