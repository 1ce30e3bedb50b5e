"""The functional Llama-family model: config, params init, forward, FLOP count."""
from maxlm.model.config import ModelConfig
from maxlm.model.transformer import Transformer, forward, init_params, lm_head_weights
from maxlm.model.flops import flops_per_token
