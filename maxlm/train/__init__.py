"""Training as a library: the pure step, the loss seam, sharded state, the loop with hooks,
lineage of stages and config validation. The composition root that wires them is maxlm.run.

Never imports maxlm.eval, maxlm.distill, maxlm.interop or maxlm.run (tests/test_imports.py).
"""
from maxlm.train.losses import loss_sums, next_token_loss
from maxlm.train.loop import Hook
from maxlm.train.step import eval_step, train_step
from maxlm.train.validate import ConfigError, validate_config
