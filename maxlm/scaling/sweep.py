"""Scaling sweeps: model shapes from a parameter count, isoFLOP and (N, D) grids.

A sweep point is one concrete pretraining run: a model shape, a token count,
a batch size and a learning rate, a deterministic name, and the command line
that trains it (`python -m maxlm.train --config=configs/pretrain.py:<variant>
--workdir=<root>/<name> --config.model.d_model=...`).

Aspect-ratio rule (shape from a target non-embedding N):
  per layer, with MHA and n_heads * head_dim = d_model, the block holds
  4 d^2 (attention) + 3 d F (SwiGLU) + 2 d (norms), F = mlp_ratio * d, so with
  n_layers = d / aspect, N ~ (4 + 3 mlp_ratio) d^3 / aspect. Solve for d, round
  it to a multiple of head_dim, then pick n_layers = round(N / per-layer params)
  (at least 1) so the realised N stays close to the target; d_ff is
  mlp_ratio * d rounded up to ff_multiple; n_kv_heads = n_heads / kv_group.
  Kaplan et al. 2020 (fig. 5) found loss nearly flat for d/L between ~20 and
  ~200, so rounding moves the aspect ratio without moving the law much.

FLOP accounting: "exact" (default) uses maxlm.model.flops_per_token, i.e.
C = D * (6 (N_nonemb + V d) + 12 L n_heads head_dim T): PaLM appendix B, the LM
head counted, attention's T x T square counted in full. "6nd" uses
Kaplan's C = 6 N_nonemb D. For an isoFLOP point D = C / (FLOPs per token),
then steps = round(D / (global_batch * seq_len)) and D, C are recomputed from
the integer step count, so the CSV holds what was actually trained.

The model is imported lazily and only for counting parameters and FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
import shlex

import numpy as np

DEFAULT_COMMAND = "python -m maxlm.train --config={pretrain}:{variant} --workdir={workdir} {overrides}"


def _round_to(x, m, up=False):
  return int(m * (math.ceil(x / m) if up else max(1, round(x / m))))


def shape_for_params(n_target, vocab_size, aspect=64.0, head_dim=64, mlp_ratio=8 / 3, ff_multiple=64, kv_group=1):
  """Model fields (dict for ModelConfig) whose non-embedding N is near n_target; see module docstring."""
  d = _round_to((aspect * n_target / (4 + 3 * mlp_ratio)) ** (1 / 3), head_dim)
  n_heads = d // head_dim
  if n_heads % kv_group:
    raise ValueError(f"n_heads={n_heads} (d_model={d}) is not divisible by kv_group={kv_group}")
  d_ff = _round_to(mlp_ratio * d, ff_multiple, up=True)
  per_layer = d * head_dim * (2 * n_heads + 2 * n_heads // kv_group) + 3 * d * d_ff + 2 * d
  n_layers = max(1, round(n_target / per_layer))
  return dict(vocab_size=int(vocab_size), d_model=d, n_layers=int(n_layers), n_heads=n_heads,
              n_kv_heads=n_heads // kv_group, head_dim=int(head_dim), d_ff=d_ff)


def _model_numbers(model, seq_len, flops_mode):
  """(non-embedding N, total N, FLOPs per token) for a dict of model fields."""
  from maxlm.model.config import ModelConfig  # pure python, but keep the import out of the fits' path
  from maxlm.model.flops import flops_per_token
  cfg = ModelConfig(**model)
  counts = cfg.param_counts()
  if flops_mode == "exact":
    fpt = flops_per_token(cfg, seq_len)
  elif flops_mode == "6nd":
    fpt = 6.0 * counts["non_embedding"]
  else:
    raise ValueError(f"flops={flops_mode!r} is not 'exact' or '6nd'")
  return counts["non_embedding"], counts["total"], float(fpt)


# Learning-rate and batch rules. "fixed" uses the config value. "kaplan" is
# Kaplan et al. 2020 eq. (D.1), lr(N) = 0.003239 - 0.0001395 log N. "deepseek"
# is DeepSeek LLM 2024 eq. (1), fitted to compute: lr = 0.3118 C^-0.125,
# batch = 0.2920 C^0.3271 tokens.
def _peak_lr(rule, base, n, flops):
  if rule == "fixed":
    return base
  if rule == "kaplan":
    return 0.003239 - 0.0001395 * math.log(n)
  if rule == "deepseek":
    return 0.3118 * flops ** -0.125
  raise ValueError(f"lr_rule={rule!r} is not 'fixed', 'kaplan' or 'deepseek'")


def _global_batch(rule, base, flops, seq_len):
  if rule == "fixed":
    return int(base)
  if rule == "deepseek":
    # Round to a power of two: batch sizes that divide the data-parallel mesh.
    return 2 ** max(0, round(math.log2(0.2920 * flops ** 0.3271 / seq_len)))
  raise ValueError(f"batch_rule={rule!r} is not 'fixed' or 'deepseek'")


def _fmt(x):
  """1.0e15 -> '1e15', 3.2e7 -> '3.2e7': short, filesystem-safe, stable."""
  m, e = f"{x:.1e}".split("e")
  return f"{m.rstrip('0').rstrip('.')}e{int(e)}"


@dataclasses.dataclass
class Point:
  name: str
  budget: float  # nominal compute of the isoFLOP profile (0 for a grid point)
  model: dict
  n_non_embedding: int
  n_total: int
  flops_per_token: float
  seq_len: int
  global_batch: int
  steps: int
  peak_lr: float
  tokens: int  # planned: steps * global_batch * seq_len
  flops: float  # planned: tokens * flops_per_token

  def overrides(self, extra=()):
    items = [f"--config.model.{k}={v}" for k, v in self.model.items()]
    items += [f"--config.train.steps={self.steps}", f"--config.train.global_batch={self.global_batch}",
              f"--config.data.seq_len={self.seq_len}", f"--config.optim.peak_lr={self.peak_lr:.6g}"]
    return items + list(extra)

  def command(self, root, pretrain, variant, template=DEFAULT_COMMAND, extra=()):
    return template.format(pretrain=pretrain, variant=variant, workdir=shlex.quote(f"{root}/{self.name}"),
                           overrides=" ".join(shlex.quote(o) for o in self.overrides(extra)))


def make_point(model, tokens, seq_len, global_batch, peak_lr, flops_mode, budget=0.0, prefix=""):
  """A point training `model` for about `tokens` tokens (rounded to whole steps)."""
  n_ne, n_tot, fpt = _model_numbers(model, seq_len, flops_mode)
  steps = max(1, round(tokens / (global_batch * seq_len)))
  d = steps * global_batch * seq_len
  tag = f"c{_fmt(budget)}_" if budget else ""
  name = f"{prefix}{tag}d{model['d_model']}_l{model['n_layers']}_t{_fmt(d)}"
  return Point(name=name, budget=float(budget), model=dict(model), n_non_embedding=int(n_ne), n_total=int(n_tot),
               flops_per_token=fpt, seq_len=int(seq_len), global_batch=int(global_batch), steps=int(steps),
               peak_lr=float(peak_lr), tokens=int(d), flops=d * fpt)


def isoflop_points(budgets, n_per_budget, n_span, tokens_per_param, shape, seq_len, global_batch, peak_lr,
                   lr_rule="fixed", batch_rule="fixed", flops_mode="exact", prefix=""):
  """For each budget C, n_per_budget sizes log-spaced over a factor n_span around
  the size that C buys at `tokens_per_param` (C = 6 N D with D = tpp * N);
  D follows from C and the exact FLOPs per token. Shapes that round to the same
  model are kept once."""
  points = []
  for c in budgets:
    centre = math.sqrt(c / (6 * tokens_per_param))
    seen = set()
    for n in np.geomspace(centre / math.sqrt(n_span), centre * math.sqrt(n_span), n_per_budget):
      model = shape_for_params(n, **shape)
      key = tuple(sorted(model.items()))
      if key in seen:
        continue
      seen.add(key)
      n_ne, _, fpt = _model_numbers(model, seq_len, flops_mode)
      batch = _global_batch(batch_rule, global_batch, c, seq_len)
      points.append(make_point(model, c / fpt, seq_len, batch, _peak_lr(lr_rule, peak_lr, n_ne, c),
                               flops_mode, budget=c, prefix=prefix))
  return points


def grid_points(n_values, tokens, shape, seq_len, global_batch, peak_lr, lr_rule="fixed", batch_rule="fixed",
                flops_mode="exact", prefix=""):
  """Every (N, D) pair of a grid; tokens are absolute counts."""
  points = []
  for n in n_values:
    model = shape_for_params(n, **shape)
    n_ne, _, fpt = _model_numbers(model, seq_len, flops_mode)
    for d in tokens:
      c = d * fpt
      batch = _global_batch(batch_rule, global_batch, c, seq_len)
      points.append(make_point(model, d, seq_len, batch, _peak_lr(lr_rule, peak_lr, n_ne, c), flops_mode,
                               prefix=prefix))
  return points


def points_from_config(config):
  """Points for a scaling-sweep ConfigDict (configs/scaling_sweep.py)."""
  shape = dict(config.shape)
  t = config.train
  common = dict(shape=shape, seq_len=t.seq_len, global_batch=t.global_batch, peak_lr=t.peak_lr, lr_rule=t.lr_rule,
                batch_rule=t.batch_rule, flops_mode=config.flops, prefix=config.prefix)
  if config.kind == "isoflop":
    points = isoflop_points(list(config.budgets), config.n_per_budget, config.n_span, config.tokens_per_param,
                            **common)
  elif config.kind == "grid":
    points = grid_points(list(config.n_values), list(config.tokens), **common)
  else:
    raise ValueError(f"sweep.kind={config.kind!r} is not 'isoflop' or 'grid'")
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError("two sweep points share a name; the sweep has duplicate (shape, tokens) pairs")
  return points
