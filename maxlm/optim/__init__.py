"""Optimizer (optax AdamW with clipping) and learning-rate schedules."""
from maxlm.optim.schedules import make_schedule
from maxlm.optim.optimizer import make_optimizer, weight_decay_mask
from maxlm.optim.guarded import update_unless_skipped
