r"""Vocabulary extension of a Hugging Face parent: new tokens, new embedding and head rows.

  python -m maxlm.interop.vocab --parent=HF_DIR --tokens=new_tokens.txt --out=EXT_DIR [--special]
  python -m maxlm.train.stages --config=configs/continued_pretrain.py:tiny,parent=EXT_DIR ...

`--tokens` is a UTF-8 file, one token per line (domain words, chat markers such
as <|im_start|>). EXT_DIR is a complete HF model directory: the parent's
config.json with the new vocab_size, its weights with the embedding (and an
untied LM head) grown, and its tokenizer with the tokens added, so continued
pretraining, maxlm.interop.export and transformers all read the extension
like any model.

- Tokens go in as added tokens of the tokenizer.json (matched whole in text, as
  transformers' `add_tokens` does); `--special` makes them special (skipped by
  decode(skip_special_tokens=True), never split). Tokens already in the
  vocabulary keep their id. A parent with only a SentencePiece tokenizer.model
  is converted first (maxlm.interop.tokenizer_json), the stale .model dropped.
- New ids follow the tokenizer's vocabulary. A model vocabulary padded past
  the tokenizer (Qwen2.5: 151,936 rows for 151,665 ids) gives new tokens its
  unused rows first; the model grows only when the ids run past it.
- Each new token's embedding row (and head column) is the mean of the old
  tokens' rows (Hewitt 2021, "Initializing new word embeddings for pretrained
  language models"): the new tokens start near the average token instead of
  at random, and every other row is carried bit for bit, so the logits of old
  tokens on old text are unchanged (tests/test_interop_vocab.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil

import numpy as np

from maxlm.data import tokenizer_io
from maxlm.interop import hf as hf_lib
from maxlm.interop import model_dir
from maxlm.interop import tokenizer_json
from maxlm.model import ModelConfig

# The parent's tokenizer-side files carried as they are (tokenizer.json is rewritten,
# a tokenizer.model would no longer match it and is dropped).
_COPIED = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
           "chat_template.json", "generation_config.json")


def read_tokens(path: str) -> list[str]:
  """One token per line (trailing newline stripped, blank lines skipped); duplicates refused."""
  with open(path, encoding="utf-8") as f:
    tokens = [line.rstrip("\n").rstrip("\r") for line in f]
  tokens = [t for t in tokens if t.strip()]
  if not tokens:
    raise ValueError(f"{path}: no tokens (one per line)")
  seen = set()
  for i, t in enumerate(tokens):
    if t in seen:
      raise ValueError(f"{path}: token {t!r} is listed twice (line {i + 1})")
    seen.add(t)
  return tokens


def extend_tokenizer(parent_dir: str, tokens: list[str], out_dir: str, *,
                     special: bool = False) -> tuple[int, dict[str, int]]:
  """Writes the parent's tokenizer plus `tokens` to out_dir.

  Returns (the old tokenizer's vocabulary size, {token: id} for every token).
  """
  from tokenizers import AddedToken  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer as RustTokenizer  # pylint: disable=g-import-not-at-top
  tok = tokenizer_io.load(parent_dir)
  file, _ = tokenizer_io.resolve(parent_dir)
  for name in _COPIED:
    if os.path.isfile(os.path.join(parent_dir, name)):
      shutil.copyfile(os.path.join(parent_dir, name), os.path.join(out_dir, name))
  if file.endswith(".json"):
    tk = RustTokenizer.from_file(file)
  else:  # SentencePiece only: as a tokenizer.json with its specials (and no stale .model)
    tokenizer_json.write_hf_tokenizer(file, out_dir, bos=tok.bos_id, eos=tok.eos_id,
                                      pad=tok.pad_id, add_bos=tok.add_bos)
    tk = RustTokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
  old_size = tk.get_vocab_size(with_added_tokens=True)
  added = [AddedToken(t, special=special, normalized=False) for t in tokens
           if tk.token_to_id(t) is None]
  if special:
    tk.add_special_tokens(added)
  else:
    tk.add_tokens(added)
  tk.save(os.path.join(out_dir, "tokenizer.json"))
  ids = {t: tk.token_to_id(t) for t in tokens}
  _list_in_tokenizer_config(out_dir, tk, [t.content for t in added], special)
  return old_size, ids


def _list_in_tokenizer_config(out_dir: str, tk, added: list[str], special: bool) -> None:
  """transformers also reads added tokens from tokenizer_config.json's added_tokens_decoder."""
  path = os.path.join(out_dir, "tokenizer_config.json")
  if not added or not os.path.isfile(path):
    return
  with open(path) as f:
    cfg = json.load(f)
  if "added_tokens_decoder" in cfg:
    for t in added:
      cfg["added_tokens_decoder"][str(tk.token_to_id(t))] = dict(
          content=t, lstrip=False, normalized=False, rstrip=False, single_word=False,
          special=special)
  with open(path, "w") as f:
    json.dump(cfg, f, indent=2, ensure_ascii=False)
    f.write("\n")


def extend_params(cfg: ModelConfig, params: dict, new_ids: list[int], *,
                  old_rows: int) -> tuple[ModelConfig, dict]:
  """(cfg, params) with rows for `new_ids`: the embedding (and untied head) grown to cover
  them, each new row the mean of rows [0, old_rows). Host numpy params (hf.import_checkpoint)."""
  V = cfg.vocab_size
  new_V = max([V] + [i + 1 for i in new_ids])
  old_rows = min(old_rows, V)

  def grow(table_vd):  # [V, D] -> [new_V, D], new ids set to the old rows' mean
    out = np.concatenate([table_vd, np.zeros((new_V - V,) + table_vd.shape[1:], table_vd.dtype)])
    out[new_ids] = table_vd[:old_rows].mean(axis=0, dtype=np.float64).astype(table_vd.dtype)
    return out

  params = dict(params, embedding_vd=grow(np.asarray(params["embedding_vd"])))
  if not cfg.tie_embeddings:
    params["lm_head_dv"] = np.ascontiguousarray(grow(np.asarray(params["lm_head_dv"]).T).T)
  return dataclasses.replace(cfg, vocab_size=new_V), params


def extend_hf_dir(parent_dir: str, tokens: list[str], out_dir: str, *,
                  special: bool = False) -> dict[str, int]:
  """Writes the extended model directory (see the module docstring); returns {token: id}."""
  parent_dir = os.path.abspath(parent_dir)
  out_dir = model_dir.refuse_non_empty(out_dir, "pick a new directory")
  with open(os.path.join(parent_dir, "config.json")) as f:
    hf_config = json.load(f)
  cfg, params = hf_lib.import_checkpoint(parent_dir)
  with model_dir.writing(out_dir) as tmp:
    old_size, ids = extend_tokenizer(parent_dir, tokens, tmp, special=special)
    new_ids = sorted({i for i in ids.values() if i >= old_size})
    cfg, params = extend_params(cfg, params, new_ids, old_rows=old_size)
    hf_lib.export_checkpoint(cfg, params, tmp)
    # The parent's own config.json (its ids, context length, window...), resized.
    hf_config.pop("torch_dtype", None)
    hf_config.update(vocab_size=cfg.vocab_size, dtype="float32")
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
      f.write("\n")
  return ids


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m maxlm.interop.vocab",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--parent", required=True, help="the HF model directory to extend")
  p.add_argument("--tokens", required=True, help="UTF-8 file, one new token per line")
  p.add_argument("--out", required=True, help="the extended HF directory (new or empty)")
  p.add_argument("--special", action="store_true", help="add them as special tokens")
  args = p.parse_args(argv)
  from maxlm.checkpoint import rundir  # pylint: disable=g-import-not-at-top
  if not rundir.is_hf_dir(args.parent):
    raise ValueError(f"--parent={args.parent} is not a Hugging Face model directory"
                     " (config.json with a model_type); export a maxlm run first"
                     " (python -m maxlm.interop.export)")
  ids = extend_hf_dir(args.parent, read_tokens(args.tokens), args.out, special=args.special)
  for t, i in ids.items():
    print(f"{i}\t{t}")
  print(f"wrote {os.path.abspath(args.out)}", flush=True)
  return 0


if __name__ == "__main__":
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(main)
