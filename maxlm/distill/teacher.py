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
  if not os.path.isfile(teacher_tok):
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
  if "model_type" in raw and not os.path.isdir(os.path.join(path, "checkpoints")):
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    cfg, host = hf_lib.import_checkpoint(path, model_overrides=overrides)
    _check_tokenizer(os.path.join(path, "tokenizer.model"), tokenizer_path, path)
    abstract = _abstract_params(cfg, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding),
                          host, abstract)
  else:
    cfg = ModelConfig.from_any({**raw["model"], **overrides})
    teacher_tok = raw["data"]["tokenizer"].get("path") or os.path.join(
        path, "tokenizer", "tokenizer.model")
    _check_tokenizer(teacher_tok, tokenizer_path, path)
    abstract = _abstract_params(cfg, mesh, rules)
    if os.path.isdir(os.path.join(path, "params")):
      params = checkpoint_lib.load_params(os.path.join(path, "params"), abstract)
    else:
      ckpts = os.path.join(path, "checkpoints")
      steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit()) if os.path.isdir(
          ckpts) else []
      if not steps:
        raise FileNotFoundError(f"distill.teacher={path!r} has neither params/ nor checkpoints/")
      params = checkpoint_lib.load_state_params(os.path.join(ckpts, str(steps[-1]), "state"),
                                                abstract)
  if cfg.vocab_size != student_vocab:
    raise ValueError(f"distill.teacher={path}: vocab_size {cfg.vocab_size} != the student's"
                     f" model.vocab_size {student_vocab}")
  log.info("teacher %s: %s params", path, f"{cfg.param_counts()['total']:,}")
  return cfg, params


def make_distill_step(distill_cfg, *, model_config, tx, schedule, microbatches, num_domains,
                      total_steps, rules, mesh, shardings, batch_sh, tokenizer_path):
  """The driver's step function for a distillation run: (state, batch) -> (state, metrics)."""
  import functools  # pylint: disable=g-import-not-at-top
  from maxlm.distill.step import distill_step  # pylint: disable=g-import-not-at-top
  d = distill_cfg.to_dict() if hasattr(distill_cfg, "to_dict") else dict(distill_cfg)
  step_fn = functools.partial(
      distill_step, model_config=model_config, tx=tx, schedule=schedule,
      microbatches=microbatches, num_domains=num_domains, total_steps=total_steps,
      loss=d["loss"], temperature=d["temperature"], top_k=d["top_k"],
      afm_teacher_weight=d["afm_teacher_weight"], alpha=d["alpha"], alpha_end=d["alpha_end"],
      rules=rules)
  if d.get("offline_dir"):
    # Offline: no teacher; the batch carries the stored top-k (maxlm.distill.offline).
    if d["loss"] != "topk":
      raise ValueError(f"distill.offline_dir is set: the store holds the teacher's top-k, so"
                       f" distill.loss must be 'topk', not {d['loss']!r}")
    jitted = jax.jit(functools.partial(step_fn, teacher_params=None, teacher_config=None),
                     in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                     donate_argnums=0)
    return jitted
  t_cfg, t_params = load_teacher(d["teacher"], mesh=mesh, rules=rules,
                                 student_vocab=model_config.vocab_size,
                                 tokenizer_path=tokenizer_path,
                                 compute_dtype=model_config.compute_dtype)
  t_shardings = jax.tree.map(lambda x: x.sharding, t_params)
  jitted = jax.jit(functools.partial(step_fn, teacher_config=t_cfg),
                   in_shardings=(shardings, batch_sh, t_shardings),
                   out_shardings=(shardings, None), donate_argnums=0)
  return lambda state, batch: jitted(state, batch, t_params)
