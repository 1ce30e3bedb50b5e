"""Loading stage config files by path. Standard library only: stage configs import it.

A stage config (configs/anneal.py, long_context.py, continued_pretrain.py,
distill.py) starts from the pretrain config *beside it*, not from an installed
`configs` package: a copy of configs/ edited elsewhere then builds its stages
on its own pretrain.py, as `--config=<path>` leads one to expect. Each call
executes the file afresh (like ml_collections' `--config=path`), so two stage
configs never share a mutated module.
"""

from __future__ import annotations

import importlib.util
import os
import types


def load(path: str, name: str | None = None) -> types.ModuleType:
  """The config file at `path` as a fresh module (not registered in sys.modules)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  name = name or "maxlm_configs_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> types.ModuleType:
  """configs/<name>.py from the directory of `config_file` (a stage config's `__file__`)."""
  return load(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def pretrain(config_file: str) -> types.ModuleType:
  """The pretrain config beside `config_file`: what every stage config starts from."""
  return sibling(config_file, "pretrain")
