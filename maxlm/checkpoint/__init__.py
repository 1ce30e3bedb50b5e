"""Orbax checkpoints of the train state and the Grain iterator position, and run safety.

Names are imported on first use (PEP 562), so `maxlm.checkpoint.rundir` (the
run-directory layout, standard library only) loads without orbax and jax:
stage configs import it.
"""
import importlib

_WHERE = {
    "Checkpointer": "manager", "CheckpointDamaged": "manager", "CheckpointSaveError": "manager",
    "RestoreRefused": "manager", "export_params": "manager", "load_params": "manager",
    "load_state_params": "manager", "WorkdirLocked": "lock", "workdir_lock": "lock",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
  if name not in _WHERE:
    raise AttributeError(f"module 'maxlm.checkpoint' has no attribute {name!r}")
  return getattr(importlib.import_module(f"maxlm.checkpoint.{_WHERE[name]}"), name)
