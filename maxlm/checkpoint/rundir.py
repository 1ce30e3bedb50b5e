"""The layout of a run directory, in one place. Standard library only: configs import it.

  <workdir>/config.json           the run's whole config (model, data, train, ...)
            tokenizer/tokenizer.model   the SentencePiece model trained for the run
                                  (unless config.data.tokenizer.path names one)
            checkpoints/<step>/state    full train state (orbax); <step>/data the iterator
            params/               params-only export of the finished run
            done.json             summary of a finished run
            stage_manifest.json   lineage (maxlm/train/lineage.py)
            metrics.jsonl, events.jsonl, loss.png, ...

A Hugging Face checkpoint dir is a config.json with a `model_type` and no
maxlm layout. A *committed* step follows orbax's rule: orbax writes a step
into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only once
every host has finished, so a digit-named directory is committed; where
orbax marks commits with a file instead (`commit_success.txt`, on object
stores), a step directory holding one is committed too.
"""

from __future__ import annotations

import json
import os

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
PARAMS = "params"
DONE = "done.json"
COMMIT_FILE = "commit_success.txt"


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def is_hf_dir(path: str) -> bool:
  """An HF checkpoint: a config.json with a model_type, and no maxlm run layout."""
  cfg = os.path.join(path, CONFIG)
  return (os.path.isfile(cfg) and not os.path.isdir(os.path.join(path, CHECKPOINTS))
          and not os.path.isdir(os.path.join(path, PARAMS)) and "model_type" in _read_json(cfg))


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
  """(workdir, step) of `<workdir>/checkpoints/<step>`; (path, None) for anything else."""
  path = os.path.abspath(path)
  name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
  if name.isdigit() and parent == CHECKPOINTS:
    return os.path.dirname(os.path.dirname(path)), int(name)
  return path, None


def committed_steps(workdir: str) -> list[int]:
  """Steps under <workdir>/checkpoints/ that orbax has committed, ascending."""
  d = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(d):
    return []
  # A temporary step is "<step>.orbax-checkpoint-tmp-<n>": never all digits.
  return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n)))


def state_dir(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS, str(step), "state")


def read_config(workdir: str) -> dict:
  """The run's config.json, or a one-line error naming the path."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {workdir} is not a maxlm run directory")
  return _read_json(path)


def model_config(workdir: str) -> dict:
  """The `model` fields of a maxlm run (a dict for ModelConfig.from_any)."""
  return read_config(workdir)["model"]


def read_done(workdir: str) -> dict | None:
  path = os.path.join(workdir, DONE)
  return _read_json(path) if os.path.isfile(path) else None


def tokenizer_path(path: str) -> str:
  """The tokenizer a run (workdir or one of its checkpoints) or an HF dir was trained with."""
  path, _ = split_checkpoint_path(path)
  cfg = os.path.join(path, CONFIG)
  if os.path.isfile(cfg):
    raw = _read_json(cfg)
    if "model_type" in raw and not os.path.isdir(os.path.join(path, CHECKPOINTS)):
      # The directory itself: maxlm.data.tokenizer reads its tokenizer.json (or .model)
      # with the special ids its tokenizer_config.json gives, as transformers does.
      return path
    if raw.get("data", {}).get("tokenizer", {}).get("path"):
      return raw["data"]["tokenizer"]["path"]
  return os.path.join(path, "tokenizer", "tokenizer.model")


# The name stage configs have always used.
parent_tokenizer_path = tokenizer_path


def params_source(path: str, step: int | None = None, *,
                  prefer_export: bool = True) -> tuple[str, str, int | None]:
  """(directory, kind, step) holding the params of a run: kind 'params' (an export) or 'state'.

  `path` is a workdir or `<workdir>/checkpoints/<step>`. Without a step: the
  export of a finished run (params/ with done.json; its step is done.json's),
  unless `prefer_export` is False (a caller that needs the optimizer state too),
  else the newest committed checkpoint. Fails with one line naming what is there.
  """
  workdir, from_path = split_checkpoint_path(path)
  step = from_path if step is None else step
  export = os.path.join(workdir, PARAMS)
  if step is None and prefer_export and os.path.isdir(export):
    done = read_done(workdir)
    if done is not None:
      return export, "params", done.get("step")
  steps = committed_steps(workdir)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"{path} has neither params/ (with done.json) nor a committed"
                              " checkpoints/<step>/")
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"{path}: step {step} is not a committed checkpoint; {workdir} has"
                            f" {steps}")
  return state_dir(workdir, step), "state", step
