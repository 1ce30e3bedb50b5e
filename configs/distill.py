r"""Distillation of a smaller student from a teacher (online: the teacher's forward
runs inside the jitted step).

  python -m maxlm.train --config=configs/distill.py:tiny,teacher=/tmp/maxlm_tiny \
      --workdir=/tmp/maxlm_student

The teacher is a maxlm workdir or a Hugging Face Llama-family dir; it may be
larger and is sharded by the same rules. Its tokenizer is required to be the
student's (checked). Losses (maxlm/distill/losses.py): forward KL on full
logits at a temperature (Gemma 2), sparse top-k teacher logits, or the AFM
target (label / teacher top-1 mix, teacher weight 0.9); each mixed with the
plain next-token loss by `alpha`, optionally ramped linearly to `alpha_end`.

`arg`: a teacher-sized pretrain preset for the data/optimizer defaults,
`teacher=<dir>`, `student=tiny_student|tiny|10m|...`, `loss=kl|topk|afm`,
`offline_dir=<dir>` (offline top-k, see maxlm/distill/precompute.py).
"""

from maxlm import config_files
from maxlm.checkpoint.rundir import parent_tokenizer_path

import ml_collections


# A student smaller than `tiny` (V, D, L, N, K, H, F): half the width, one layer.
STUDENTS = {"tiny_student": (512, 32, 1, 2, 1, 16, 96)}


def get_config(arg: str = "tiny"):
  pretrain = config_files.pretrain(__file__)
  opts = pretrain.parse(arg)
  c = pretrain.get_config(arg)
  student = opts.get("student", "tiny_student" if opts["size"] == "tiny" else opts["size"])
  if student in STUDENTS:
    V, D, L, N, K, H, F = STUDENTS[student]
    c.model.update(dict(vocab_size=V, d_model=D, n_layers=L, n_heads=N, n_kv_heads=K,
                        head_dim=H, d_ff=F))
  else:
    c.model = pretrain.model_config(student)
  teacher = opts.get("teacher", "")
  if teacher:
    c.data.tokenizer.path = parent_tokenizer_path(teacher)

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = teacher  # maxlm workdir or HF dir; '' = plain training
  c.distill.loss = opts.get("loss", "kl")  # kl | topk | afm
  c.distill.temperature = 1.0  # softens both distributions; the KL is scaled by T^2
  c.distill.top_k = 64  # 'topk': teacher tokens kept per position
  c.distill.afm_teacher_weight = 0.9  # 'afm': weight of the teacher's top-1 in the target
  c.distill.alpha = 0.5  # weight of the distillation term; 1 - alpha on the next-token loss
  c.distill.alpha_end = -1.0  # < 0: constant alpha; else linear from alpha to this over the run
  # Offline 'topk': a store written by `python -m maxlm.distill.precompute`; the run then
  # reads the teacher's top-k per step (checked against each batch) and loads no teacher.
  c.distill.offline_dir = opts.get("offline_dir", "")
  return c
