"""Checkpointing with orbax's CheckpointManager.

One checkpoint holds two items: `state` (params, optimizer state, step, rng;
restored directly into its shardings) and `data` (the Grain iterator's
position, through grain's own orbax handler), so a resumed run sees the same
batches as an uninterrupted one.

Orbax writes each step into a temporary directory and renames it only once
every host has finished, so a half-written step is never listed. A committed
step can still be damaged later (a truncated file on a flaky disk); restore
then falls back to the previous step with a warning instead of failing the job.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

from maxlm.data import state as data_state  # iterator state restorable on any host count

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, restores the newest good one."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": data_state.CheckpointHandler()},
    )
    self._last_saved = self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved."""
    if step == self._last_saved:  # e.g. the final save landing on an interval step
      return False
    saved = self._mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=data_state.CheckpointSave(data_iter)),
        force=force)
    if saved:
      self._last_saved = step
    return saved

  def restore(self, step: int, abstract_state, data_iter):
    """Restores exactly `step` (no fallback): state, and the data iterator in place."""
    restored = self._mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=data_state.CheckpointRestore(data_iter)))
    return restored["state"]

  def delete_after(self, step: int) -> None:
    """Drops checkpoints newer than `step` (a rollback replays those steps on other data)."""
    self._mngr.wait_until_finished()
    for s in self.all_steps():
      if s > step:
        self._mngr.delete(s)
    self._last_saved = self._mngr.latest_step()

  def restore_latest(self, abstract_state, data_iter):
    """Restores the newest readable step into `abstract_state`'s shapes and shardings.

    Returns (state, step), or (None, None) when there is no checkpoint. The
    data iterator is restored in place.
    """
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, abstract_state, data_iter)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the"
                    " previous one", step, self.directory, type(e).__name__, e)
        continue
      return state, step
    return None, None

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def export_params(params, directory: str) -> None:
  """Writes a params-only checkpoint (no optimizer state), for later stages and eval."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(directory), params, force=True)
  ckptr.wait_until_finished()


def load_params(directory: str, abstract_params=None):
  """Loads a params-only export; `abstract_params` (with shardings) places it directly."""
  ckptr = ocp.StandardCheckpointer()
  return ckptr.restore(os.path.abspath(directory), abstract_params)


def load_state_params(state_dir: str, abstract_params):
  """Only the params of a full-state checkpoint (`checkpoints/<step>/state`).

  `abstract_params` (ShapeDtypeStructs with shardings) is an explicit target, so
  a checkpoint written on another device topology restores onto this one.
  """
  target = dict(params=abstract_params)
  return ocp.PyTreeCheckpointer().restore(
      os.path.abspath(state_dir),
      args=ocp.args.PyTreeRestore(item=target,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True))["params"]

