"""Orbax checkpoints of the train state and the Grain iterator position."""
from maxlm.checkpoint.manager import Checkpointer, export_params, load_params, load_state_params
