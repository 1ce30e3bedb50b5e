"""Orbax checkpoints of the train state and the Grain iterator position, and run safety."""
from maxlm.checkpoint.manager import (Checkpointer, CheckpointDamaged, CheckpointSaveError,
                                      RestoreRefused, export_params, load_params,
                                      load_state_params)
from maxlm.checkpoint.lock import WorkdirLocked, workdir_lock
