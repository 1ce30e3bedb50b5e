"""maxlm: JAX-native pretraining and what comes after it.

`maxlm.forward`, `maxlm.init_params` and `maxlm.ModelConfig` are loaded on first
use, so processes that only need a light subpackage (Beam curation workers,
scaling-law fits) do not pay for importing jax and flax.
"""

__all__ = ["ModelConfig", "forward", "init_params", "lm_head_weights"]


def __getattr__(name):
  if name in __all__:
    from maxlm import model  # pylint: disable=g-import-not-at-top
    return getattr(model, name)
  raise AttributeError(f"module 'maxlm' has no attribute {name!r}")
