r"""Precomputes the teacher's top-k for offline distillation (maxlm.distill.offline).

  python -m maxlm.distill.precompute \
      --config=configs/distill.py:tiny,teacher=/tmp/maxlm_tiny,loss=topk \
      --out=/tmp/maxlm_topk [--steps=N]

  python -m maxlm.train \
      --config=configs/distill.py:tiny,teacher=/tmp/maxlm_tiny,loss=topk,offline_dir=/tmp/maxlm_topk \
      --workdir=/tmp/maxlm_student

Give it the student run's config (same data, data.seq_len, train.global_batch,
train.seed, distill.top_k): it draws the same training batches the student
will, runs the teacher (distill.teacher) on steps [0, N) (N = --steps, default
train.steps) and writes the top-k ids and log-probs with tensorstore. --out
defaults to distill.offline_dir. Run it again to resume: finished steps are
skipped (their batches are still drawn, to keep the order). The training run
then loads no teacher (distill.teacher there only picks the shared tokenizer);
it checks each batch against the stored fingerprint and the tokenizer hash.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import flax.linen as nn
import jax
import numpy as np

from maxlm import data as data_lib
from maxlm.distill import losses, offline
from maxlm.distill.teacher import load_teacher
from maxlm.model import ModelConfig, forward
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.sharding.config import MeshConfig
from maxlm.train.config import TrainConfig
from maxlm.train.validate import validate_config

log = logging.getLogger("maxlm.distill")


def _teacher_topk(params, batch, *, teacher_config, k, rules):
  with nn.logical_axis_rules(rules):
    logits = forward(teacher_config, params, batch["inputs"], batch["segment_ids"],
                     batch["positions"])
  return losses.teacher_topk(logits, k)


def precompute(config, out_dir: str | None = None, *, steps: int | None = None) -> dict:
  """Writes steps [0, steps) to out_dir; returns dict(computed=[steps], skipped=n, dir=...)."""
  if jax.process_count() != 1:
    raise ValueError("maxlm.distill.precompute runs on one process")
  d = config.distill
  out_dir = os.path.abspath(out_dir or d.get("offline_dir") or "")
  if not out_dir or out_dir == os.path.abspath(""):
    raise ValueError("give --out or distill.offline_dir")
  if not d.teacher:
    raise ValueError("distill.teacher is empty: the precompute needs the teacher")
  t_cfg, mesh_cfg = TrainConfig.from_any(config.train), MeshConfig.from_any(config.mesh)
  steps = int(steps if steps is not None else t_cfg.steps)
  seq_len = config.data.seq_len
  # The same mesh as the student run (maxlm/run/pretrain.py), context axis included,
  # so the teacher's params are placed as the validated mesh shape says.
  mesh = make_mesh(*validate_config(config, jax.device_count()), context=mesh_cfg.context)
  rules = mesh_cfg.rules
  batch_sh = batch_sharding(mesh, rules)
  os.makedirs(out_dir, exist_ok=True)
  tokenizer_path = data_lib.build_tokenizer(config.data, out_dir)
  student_cfg = ModelConfig.from_any(config.model)
  from maxlm.data.tokenizer import tokenizer_hash  # pylint: disable=g-import-not-at-top
  meta = dict(steps=steps, global_batch=t_cfg.global_batch, seq_len=seq_len, top_k=d.top_k,
              seed=t_cfg.seed, teacher=os.path.abspath(d.teacher),
              tokenizer_sha256=tokenizer_hash(tokenizer_path))
  store, meta = offline.open_store(out_dir, meta)
  done = offline.done_steps(store)
  if done.all():
    log.info("offline store %s: all %d steps done", out_dir, steps)
    return dict(computed=[], skipped=steps, dir=out_dir)
  t_model, t_params = load_teacher(d.teacher, mesh=mesh, rules=rules,
                                   student_vocab=student_cfg.vocab_size,
                                   tokenizer_path=tokenizer_path,
                                   compute_dtype=student_cfg.compute_dtype)
  fn = jax.jit(functools.partial(_teacher_topk, teacher_config=t_model, k=d.top_k, rules=rules),
               in_shardings=(jax.tree.map(lambda x: x.sharding, t_params), batch_sh))
  it = data_lib.make_train_iterator(config.data, tokenizer_path=tokenizer_path, seq_len=seq_len,
                                    global_batch=t_cfg.global_batch, seed=t_cfg.seed)
  computed, t0 = [], time.time()
  try:
    with jax.set_mesh(mesh):
      for step in range(steps):
        batch = next(it)
        batch.pop("doc_ids", None)
        if done[step]:
          continue
        ids, lps = jax.device_get(fn(t_params, host_batch_to_global(batch, batch_sh)))
        offline.write_step(store, step, ids, lps, offline.batch_fingerprint(batch))
        computed.append(step)
        if len(computed) % 100 == 0:
          log.info("precompute: step %d/%d (%.1f s/step)", step + 1, steps,
                   (time.time() - t0) / len(computed))
  finally:
    if hasattr(it, "close"):
      it.close()
  log.info("offline store %s: computed %d steps, skipped %d", out_dir, len(computed),
           steps - len(computed))
  return dict(computed=computed, skipped=steps - len(computed), dir=out_dir)


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("maxlm").setLevel(logging.INFO)
  out = precompute(_CONFIG.value, _OUT.value, steps=_STEPS.value)
  print(f"{out['dir']}: computed {len(out['computed'])} steps, skipped {out['skipped']}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The student run's config[:arg].",
                                            lock_config=True)
  _OUT = flags.DEFINE_string("out", None, "Store directory (default distill.offline_dir).")
  _STEPS = flags.DEFINE_integer("steps", None, "Steps to precompute (default train.steps).")
  flags.mark_flags_as_required(["config"])
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
