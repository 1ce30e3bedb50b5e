r"""A maxlm run as a Hugging Face model directory: weights, config and the run's tokenizer.

  python -m maxlm.interop.export --workdir=/tmp/maxlm_cpt --out=/tmp/cpt_hf [--step=N]

Writes into `--out` (which must not exist, or be empty):
  config.json, model.safetensors   maxlm.interop.hf.export_checkpoint (the family the
                                   model's options call for), with the tokenizer's
                                   bos/eos/pad ids added
  the tokenizer                    a run from an HF parent: the parent's tokenizer files
                                   as they were (tokenizer.json, tokenizer_config.json,
                                   chat template, ...); a bare tokenizer.json: it, with a
                                   tokenizer_config.json naming its specials; maxlm's own
                                   SentencePiece model: a tokenizer.json converted by
                                   maxlm.interop.tokenizer_json
so that `AutoModelForCausalLM.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)` give maxlm's ids and logits. Every file is
written mode 0644 (readable by the serving user, whatever the umask), into a
temporary sibling renamed into place at the end: a failed export leaves no
half-written model directory behind.

Without --step: the finished run's params/ export, else its newest committed
checkpoint (maxlm.checkpoint.rundir.params_source).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import jax

from maxlm import checkpoint as checkpoint_lib
from maxlm.checkpoint import rundir
from maxlm.data import tokenizer_io
from maxlm.interop import hf as hf_lib
from maxlm.interop import model_dir
from maxlm.interop import tokenizer_json
from maxlm.model import ModelConfig, init_params

# What an HF model directory holds about its tokenizer; copied as found, nothing else
# (not config.json or the weights, which the export writes itself).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


def load_run(workdir: str, step: int | None = None):
  """(ModelConfig, host params, tokenizer path, run config) of a maxlm run at `step`."""
  workdir = os.path.abspath(workdir)
  if rundir.is_hf_dir(workdir):
    raise ValueError(f"--workdir={workdir} is a Hugging Face directory already, not a maxlm run")
  run_config = rundir.read_config(workdir)
  cfg = ModelConfig.from_any(run_config["model"])
  source, kind, _ = rundir.params_source(workdir, step)
  # An explicit single-device target, so a checkpoint saved on any mesh restores here.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
  if kind == "params":
    params = checkpoint_lib.load_params(source, abstract)
  else:
    params = checkpoint_lib.load_state_params(source, abstract)
  tok_path = rundir.tokenizer_path(workdir)
  if not os.path.exists(tok_path):
    raise FileNotFoundError(f"{workdir}: its tokenizer {tok_path} does not exist (the run's"
                            " data.tokenizer.path, or <workdir>/tokenizer/tokenizer.model)")
  return cfg, jax.device_get(params), tok_path, run_config


def write_tokenizer(tok_path: str, out_dir: str, *, model_max_length: int) -> tokenizer_io.Tokenizer:
  """The tokenizer at `tok_path` as HF tokenizer files in out_dir; returns it (loaded by maxlm)."""
  tok = tokenizer_io.load(tok_path)
  file, hf_dir = tokenizer_io.resolve(tok_path)
  if hf_dir is not None:  # an HF parent: its files as they were, ids and template included
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(hf_dir, name)):
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, name))
    return tok
  if file.endswith(".json"):  # a bare tokenizer.json: its specials said in a config beside it
    shutil.copyfile(file, os.path.join(out_dir, "tokenizer.json"))
    piece = lambda i: None if i is None else tok.id_to_piece(i)
    cfg = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=piece(tok.bos_id),
               eos_token=piece(tok.eos_id), pad_token=piece(tok.pad_id),
               add_bos_token=tok.add_bos, add_eos_token=False,
               model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
      json.dump(cfg, f, indent=2)
      f.write("\n")
    return tok
  tokenizer_json.write_hf_tokenizer(file, out_dir, bos=tok.bos_id, eos=tok.eos_id,
                                    pad=tok.pad_id, add_bos=tok.add_bos,
                                    model_max_length=model_max_length)
  return tok


def _max_positions(tok_path: str, run_config: dict) -> int:
  """The parent's max_position_embeddings when it was an HF model, else the run's seq_len."""
  _, hf_dir = tokenizer_io.resolve(tok_path)
  if hf_dir is not None:
    parent = os.path.join(hf_dir, "config.json")
    if os.path.isfile(parent):
      with open(parent) as f:
        n = json.load(f).get("max_position_embeddings")
      if isinstance(n, int):
        return max(n, int(run_config["data"]["seq_len"]))
  return int(run_config["data"]["seq_len"])


def export_run(workdir: str, out_dir: str, *, step: int | None = None,
               dtype: str = "float32") -> str:
  """Writes the HF directory of `workdir` (at `step`) to out_dir; returns its path."""
  out_dir = model_dir.refuse_non_empty(
      out_dir, "export refuses to overwrite a model directory (remove it or pick another)")
  cfg, params, tok_path, run_config = load_run(workdir, step)
  max_positions = _max_positions(tok_path, run_config)
  with model_dir.writing(out_dir) as tmp:
    hf_lib.export_checkpoint(cfg, params, tmp, dtype=dtype, max_position_embeddings=max_positions)
    tok = write_tokenizer(tok_path, tmp, model_max_length=max_positions)
    if tok.vocab_size > cfg.vocab_size:
      raise ValueError(f"the tokenizer {tok_path} has {tok.vocab_size} ids but the model"
                       f" vocabulary is {cfg.vocab_size}")
    path = os.path.join(tmp, "config.json")
    with open(path) as f:
      hf = json.load(f)
    # pad_token_id only when it is a token of its own: transformers makes it the
    # embedding's padding_idx, whose row then never trains (EOS must keep learning).
    pad = tok.pad_id if tok.pad_id not in (tok.eos_id, tok.bos_id) else None
    hf.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=pad)
    with open(path, "w") as f:
      json.dump(hf, f, indent=2, sort_keys=True)
      f.write("\n")
  return out_dir


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m maxlm.interop.export",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the maxlm run directory")
  p.add_argument("--out", required=True, help="the HF model directory to write (new or empty)")
  p.add_argument("--step", type=int, default=None,
                 help="a committed checkpoint step (default: params/ export, else the newest)")
  p.add_argument("--dtype", default="float32", choices=hf_lib.SAVE_DTYPES,
                 help="tensor dtype on disk (float32 is exact)")
  args = p.parse_args(argv)
  out = export_run(args.workdir, args.out, step=args.step, dtype=args.dtype)
  print(f"wrote {out}", flush=True)
  return 0


if __name__ == "__main__":
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(main)
