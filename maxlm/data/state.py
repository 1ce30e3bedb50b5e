"""Saving the training iterator in a checkpoint, restorable on any host count.

Grain's own orbax handler writes `process_<i>-of-<n>.json` and on restore
reads exactly that name, so a run checkpointed by 2 processes cannot restore
on 1. maxlm's iterator state is the same on every host (pipeline.py: every
host runs the global row stream), so this handler writes the same files and,
when this host's own file is missing, reads process 0's of any count, after
checking the state says it is topology-independent. Process 0 also writes the
per-document reuse counts (reuse.COUNTS_FILE) beside it.

An iterator that is not topology-independent (a plain Grain pipeline) keeps
Grain's behaviour, with an error that names the mismatch.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from maxlm.data import reuse


class DataStateMismatch(ValueError):
  """The saved data state cannot be mapped onto this run (not corruption)."""


def _saved_count(path: str) -> str:
  """The process count in a 'process_<i>-of-<n>.json' name."""
  return os.path.basename(path)[:-len(".json")].rsplit("-of-", 1)[-1]


def _is_global(state) -> bool:
  return isinstance(state, dict) and state.get(reuse.STATE_KEY, {}).get(
      "topology_independent", False)


class CheckpointHandler(ocp.CheckpointHandler):
  """Orbax handler for maxlm training iterators (and plain Grain iterators)."""

  def save(self, directory: epath.Path, args: "CheckpointSave"):
    it = args.item
    p, n = jax.process_index(), jax.process_count()
    state = it.get_state()
    path = epath.Path(directory) / f"process_{p}-of-{n}.json"
    path.write_text(json.dumps(state, indent=1))
    if p == 0 and hasattr(it, "save_counts"):
      it.save_counts(os.fspath(directory))

  def restore(self, directory: epath.Path, args: "CheckpointRestore"):
    it = args.item
    p, n = jax.process_index(), jax.process_count()
    directory = os.fspath(directory)
    own = os.path.join(directory, f"process_{p}-of-{n}.json")
    if os.path.exists(own):
      path = own
    else:
      saved = sorted(glob.glob(os.path.join(directory, "process_0-of-*.json")))
      if not saved:
        raise FileNotFoundError(f"{directory} holds no data iterator state (process_*.json)")
      path = saved[0]
    with open(path) as f:
      state = json.load(f)
    if path != own and not _is_global(state):
      raise DataStateMismatch(
          f"data state in {directory} was saved by {_saved_count(path)} processes "
          f"and is per-host; it cannot be mapped onto {n} processes")
    it.set_state(state)
    if hasattr(it, "load_counts"):
      it.load_counts(directory)
    if hasattr(it, "start_prefetch"):
      it.start_prefetch()
    return it

  def metadata(self, directory):
    del directory
    return None

  def structure(self, directory):
    del directory
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass

  @classmethod
  def typestr(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(CheckpointHandler, for_save=True)
@dataclasses.dataclass
class CheckpointSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(CheckpointHandler, for_restore=True)
@dataclasses.dataclass
class CheckpointRestore(ocp.args.CheckpointArgs):
  item: Any
