"""Tiny Hugging Face fixtures the reference tests build (no hub, no network).

One home for what the interop, generation and CPT tests all need: random-weight
transformers models whose logits are O(1), a byte-level BPE `tokenizer.json` with
BOS/EOS at the top of the vocabulary, random maxlm params, and the logit-scale
relative error those tests compare by. torch, transformers and tokenizers are the
test-only `reference` extra, so they are imported inside the functions: importing
this module costs nothing on the Python 3.12 stack, which runs without torch.
"""
from __future__ import annotations

import os

import numpy as np


def randomize(model, seed: int = 0, scale: float = 0.2):
  """Fills every parameter in place: N(0, scale), norm weights 1 + N(0, 0.2); returns it in eval mode.

  Larger-than-init weights give O(1) logits, so greedy paths are not one token
  repeated and argmax margins dwarf float32 noise; norms off 1 so a dropped or
  swapped norm shows; biases (Qwen2) are drawn too, so a dropped bias moves the logits.
  """
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else scale * noise)
  return model.eval()


def hf_logits(model, tokens_bt) -> np.ndarray:
  """float32 [B, T, V] logits of a transformers causal LM on int tokens [B, T]."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens_bt), dtype=torch.long)).logits.float().numpy()


def rel_err(a, b) -> float:
  """max|a - b| / max|b|: relative to the logit scale (elementwise relative error is
  meaningless near zero logits)."""
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def byte_level_bpe(text: str, vocab_size: int, bos: str, eos: str):
  """A `tokenizers` byte-level BPE trained on `text`, with bos/eos added last (the
  top of the vocabulary, as Llama 3's are) and BOS prepended by its post-processor."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # pylint: disable=g-import-not-at-top,g-multiple-import
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator([text], trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tk.add_special_tokens([bos, eos])
  tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                    special_tokens=[(bos, tk.token_to_id(bos))])
  return tk


def save_hf_tokenizer(tk, root: str, bos: str, eos: str, **kwargs) -> None:
  """tokenizer.json plus the tokenizer_config.json / special_tokens_map.json an HF
  directory carries, as `PreTrainedTokenizerFast.save_pretrained` writes them."""
  import transformers  # pylint: disable=g-import-not-at-top
  os.makedirs(root, exist_ok=True)
  tk.save(os.path.join(root, "tokenizer.json"))
  transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(root, "tokenizer.json"),
                                       bos_token=bos, eos_token=eos,
                                       **kwargs).save_pretrained(root)


def random_maxlm_params(cfg, seed: int = 0):
  """maxlm-layout float32 params with N(0, 0.2) values; norm scales near 1 but not 1."""
  import jax  # pylint: disable=g-import-not-at-top
  import maxlm  # pylint: disable=g-import-not-at-top
  # eval_shape traces init without compiling it: seconds saved per test on CPU.
  shapes = jax.eval_shape(lambda: maxlm.init_params(cfg, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    is_scale = jax.tree_util.keystr(path).endswith("['scale_d']")
    return (float(is_scale) + rng.normal(0.0, 0.2, s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)
