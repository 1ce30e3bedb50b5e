"""maxlm: JAX-native pretraining and what comes after it."""
from maxlm.model import ModelConfig, forward, init_params

__all__ = ["ModelConfig", "forward", "init_params"]
