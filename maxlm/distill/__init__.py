"""Knowledge distillation: losses, the distillation loss_fn, teacher loading, offline top-k."""
from maxlm.distill.losses import afm_ce, forward_kl, teacher_topk, topk_kl
from maxlm.distill.step import distill_loss, distill_sums
from maxlm.distill.teacher import load_teacher
