"""Loading a distillation teacher: a maxlm workdir or a Hugging Face Llama-family dir.

The teacher keeps its own ModelConfig and is placed with its own logical
shardings under the student's mesh and rules, so a larger teacher is split
over the same devices instead of replicated. The tokenizer must be the
student's: different ids would make the KL compare unrelated tokens.
"""

from __future__ import annotations

import json
import logging
import os

import flax.linen as nn
import jax
import numpy as np

from maxlm import checkpoint as checkpoint_lib
from maxlm.checkpoint import rundir
from maxlm.model import ModelConfig, init_params
from maxlm.sharding import logical_shardings

log = logging.getLogger("maxlm.distill")


def _abstract_params(cfg: ModelConfig, mesh, rules):
  boxed = jax.eval_shape(lambda r: init_params(cfg, r, boxed=True), jax.random.PRNGKey(0))
  shardings = logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      nn.meta.unbox(boxed), shardings)


def _check_tokenizer(teacher_tok: str, student_tok: str, path: str) -> None:
  from maxlm.data.tokenizer import tokenizer_hash  # pylint: disable=g-import-not-at-top
  if not os.path.exists(teacher_tok):  # a file, or an HF directory
    raise FileNotFoundError(f"distill.teacher={path}: no tokenizer at {teacher_tok}; the teacher"
                            " must share the student's tokenizer and maxlm checks it")
  if tokenizer_hash(teacher_tok) != tokenizer_hash(student_tok):
    raise ValueError(f"distill.teacher={path}: its tokenizer ({teacher_tok}) differs from the"
                     f" student's ({student_tok}). Distillation needs the same token ids: set"
                     f" data.tokenizer.path={teacher_tok}")


def load_teacher(path: str, *, mesh, rules, student_vocab: int, tokenizer_path: str,
                 compute_dtype: str | None = None):
  """(teacher ModelConfig, params placed on `mesh`)."""
  path = os.path.abspath(path)
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"distill.teacher={path!r} has no config.json")
  with open(cfg_path) as f:
    raw = json.load(f)
  overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
  if rundir.is_hf_dir(path):
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    cfg, host = hf_lib.import_checkpoint(path, model_overrides=overrides)
    _check_tokenizer(rundir.tokenizer_path(path), tokenizer_path, path)
    abstract = _abstract_params(cfg, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding),
                          host, abstract)
  else:
    cfg = ModelConfig.from_any({**raw["model"], **overrides})
    _check_tokenizer(rundir.tokenizer_path(path), tokenizer_path, path)
    abstract = _abstract_params(cfg, mesh, rules)
    # A bare params/ export counts as a teacher even without done.json (a model exported
    # by hand, not a finished run): looser than rundir.params_source on purpose.
    if os.path.isdir(os.path.join(path, rundir.PARAMS)):
      params = checkpoint_lib.load_params(os.path.join(path, rundir.PARAMS), abstract)
    else:
      try:
        source, _, _ = rundir.params_source(path)
      except FileNotFoundError:
        raise FileNotFoundError(f"distill.teacher={path!r} has neither params/ nor committed"
                                " checkpoints/") from None
      params = checkpoint_lib.load_state_params(source, abstract)
  if cfg.vocab_size != student_vocab:
    raise ValueError(f"distill.teacher={path}: vocab_size {cfg.vocab_size} != the student's"
                     f" model.vocab_size {student_vocab}")
  log.info("teacher %s: %s params", path, f"{cfg.param_counts()['total']:,}")
  return cfg, params
