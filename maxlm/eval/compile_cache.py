"""jax's persistent compilation cache for evaluation commands (the first call's compiles).

lm-eval's first call through the `maxlm` model compiles one scoring program
per length bucket it meets (seven shapes, ~16 s of XLA compile on a loaded
2-core CPU); the hf model has nothing to compile. The same command on the
next checkpoint of the same run compiles the very same programs again. With
this cache the second process reads them from disk (BENCHMARKS.md, "lm-eval
first call").

On by default for `python -m maxlm.eval.harness`, in
`$XDG_CACHE_HOME/maxlm/jax_compile` (~/.cache/maxlm/jax_compile): MaxText
does the same (`jax_cache_dir: "~/jax_cache"` in its base.yml), because an
evaluation is rerun on many checkpoints of one shape, and an entry is keyed by
the program, the jax/jaxlib version and the devices, so a stale or foreign
entry is a miss, never a wrong program. `--compilation_cache=DIR` moves it,
`--compilation_cache=off` turns it off (also MAXLM_COMPILATION_CACHE). The
size is capped (least recently used entries go first).
"""

from __future__ import annotations

import os

_FLAG = "--compilation_cache"
_ENV = "MAXLM_COMPILATION_CACHE"
_OFF = ("", "off", "none", "0", "false")
MAX_BYTES = 2 << 30  # 2 GiB: thousands of small-model programs; big ones evict the oldest


def default_dir() -> str:
  home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(home, "maxlm", "jax_compile")


def enable(cache_dir: str) -> str:
  """Points jax's persistent cache at `cache_dir` (created) with every program cached."""
  import jax  # pylint: disable=g-import-not-at-top
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  # jax's defaults skip programs that compile in under 1 s: each of the scorer's
  # CPU programs is ~1-3 s, some under, and together they are the whole wait.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return cache_dir


def from_argv(argv: list[str]) -> str | None:
  """Removes `--compilation_cache[=VALUE]` from argv and enables the cache it names.

  Default (no flag, no MAXLM_COMPILATION_CACHE): default_dir(). Returns the
  directory in use, or None when turned off.
  """
  value = os.environ.get(_ENV)
  value = default_dir() if value is None else value
  for arg in list(argv):
    if arg == _FLAG or arg.startswith(_FLAG + "="):
      argv.remove(arg)
      value = arg.partition("=")[2]
      if not value:
        raise ValueError(f"{_FLAG} needs a value: {_FLAG}=DIR or {_FLAG}=off")
  if value.strip().lower() in _OFF:
    return None
  return enable(value)
