"""Checkpoint interop with other ecosystems; Hugging Face Llama-family for now."""
from maxlm.interop.hf import (export_checkpoint, hf_config_from_model, import_checkpoint,
                              model_config_from_hf)

__all__ = ["export_checkpoint", "hf_config_from_model", "import_checkpoint",
           "model_config_from_hf"]
