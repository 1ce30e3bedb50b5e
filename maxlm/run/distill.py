"""Wiring a distillation run: the teacher (online) or its stored top-k (offline), as a loss.

Distillation has no step of its own: `train_step` runs with the distillation
`loss_fn` (maxlm/distill/step.py), so it gains the skip guard and the step
metrics. The teacher's params are an argument of the jitted step (not a
constant folded into it), placed with their own shardings.
"""

from __future__ import annotations

import functools

import jax

from maxlm.distill import distill_loss, load_teacher
from maxlm.distill.losses import alpha_at
from maxlm.distill.offline import OfflineTeacher
from maxlm.train.config import TrainConfig
from maxlm.train.step import train_step

_LOSS_KEYS = ("loss", "temperature", "top_k", "afm_teacher_weight")


def is_distillation(config) -> bool:
  d = config.get("distill")
  return bool(d and (d.teacher or d.get("offline_dir")))


def _step(state, batch, limits, teacher_params, *, loss_kw, alpha, alpha_end, total_steps,
          **step_kw):
  """train_step with the distillation loss at this step's alpha."""
  a = alpha_at(state["step"], alpha, alpha_end, total_steps)
  return train_step(state, batch, limits, loss_fn=distill_loss(teacher_params, alpha=a, **loss_kw),
                    **step_kw)


def make_step(config, *, model_config, tx, schedule, num_domains, rules, mesh, shardings,
              batch_sh, tokenizer_path, process_count: int = 1):
  """(step_fn(state, batch, limits) -> (state, metrics), attach(step, host_batch) or None)."""
  d, train_cfg = config.distill, TrainConfig.from_any(config.train)
  offline = bool(d.get("offline_dir"))
  if offline and d.loss != "topk":
    raise ValueError(f"distill.offline_dir is set: the store holds the teacher's top-k, so"
                     f" distill.loss must be 'topk', not {d.loss!r}")
  attach = None
  if offline:  # no teacher: each batch gets the stored top-k, checked against the batch
    t_cfg, t_params, t_shardings = None, None, None
    attach = OfflineTeacher(d.offline_dir, steps=train_cfg.steps,
                            global_batch=train_cfg.global_batch, seq_len=config.data.seq_len,
                            top_k=d.top_k, tokenizer_path=tokenizer_path,
                            process_count=process_count).attach
  else:
    t_cfg, t_params = load_teacher(d.teacher, mesh=mesh, rules=rules,
                                   student_vocab=model_config.vocab_size,
                                   tokenizer_path=tokenizer_path,
                                   compute_dtype=model_config.compute_dtype)
    t_shardings = jax.tree.map(lambda x: x.sharding, t_params)
  fn = functools.partial(
      _step, loss_kw=dict(model_config=model_config, teacher_config=t_cfg,
                          num_domains=num_domains, **{k: d[k] for k in _LOSS_KEYS}),
      alpha=d.alpha, alpha_end=d.alpha_end, total_steps=train_cfg.steps, tx=tx,
      schedule=schedule, microbatches=train_cfg.microbatches, rules=rules)
  jitted = jax.jit(fn, in_shardings=(shardings, batch_sh, shardings["step"], t_shardings),
                   out_shardings=(shardings, None), donate_argnums=0)
  return (lambda state, batch, limits: jitted(state, batch, limits, t_params)), attach
