"""Checkpoint interop with Hugging Face: Llama / Mistral / Qwen2 import and export (hf),
a run exported with its tokenizer (export), vocabulary extension (vocab), and
SentencePiece as tokenizer.json (tokenizer_json)."""
from maxlm.interop.hf import (export_checkpoint, hf_config_from_model, hf_family,
                              import_checkpoint, model_config_from_hf)

__all__ = ["export_checkpoint", "hf_config_from_model", "hf_family", "import_checkpoint",
           "model_config_from_hf"]
