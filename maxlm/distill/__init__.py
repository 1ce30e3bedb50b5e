"""Knowledge distillation: losses, the distillation step, teacher loading."""
from maxlm.distill.losses import afm_ce, forward_kl, teacher_topk, topk_kl
from maxlm.distill.teacher import load_teacher, make_distill_step
