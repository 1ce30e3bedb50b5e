"""Training: the pure step, sharded state, config validation and the driver."""
from maxlm.train.step import train_step, eval_step, loss_sums
from maxlm.train.validate import ConfigError, validate_config
