"""Which config changes a resumed run may carry.

Every checkpoint records the config it was written under. On resume the
current config is compared with it, field by field (dotted names):

- free: bookkeeping and execution that leave the trained model the same
  (checkpoint cadence, logging, evaluation, the mesh, remat, the attention
  kernel, input threads, `train.steps`: extending a run is the usual resume);
- mixture: source weights, the mixture schedule and epoch caps. Steering the
  mix mid-run is a documented use (the data pipeline logs "mixture schedule
  changed on resume"), so these pass with a warning;
- everything else (model, data, optim, seed, batch, init, distillation, and
  any field added later) changes the run: a difference refuses the resume
  unless `ckpt.allow_changes` names it (comma-separated dotted prefixes, e.g.
  "optim.peak_lr,train.seed", or "optim" for the whole sub-config).

A field the checkpoint's config does not have at all (code added it since)
is not a change, except under `data.sources`, where a new name is a new source.
"""

from __future__ import annotations

import dataclasses
import json
import re

FREE = ("ckpt", "monitor", "eval", "distributed", "mesh", "train.steps", "train.log_every",
        "train.eval_every", "train.microbatches", "model.remat", "model.attention_impl",
        "data.read_threads", "data.prefetch_batches", "data.eval_batches", "data.error_budget")
MIXTURE = (r"data\.sources\.[^.]+\.weight", r"data\.sources\.[^.]+\.max_epochs",
           r"data\.schedule(\..*)?", r"data\.reuse_decay")
# Fields that fix the parameter shapes: a checkpoint cannot be restored across them.
SHAPE = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads",
         "model.n_kv_heads", "model.head_dim", "model.d_ff", "model.tie_embeddings",
         "model.scan_layers", "model.param_dtype")


@dataclasses.dataclass(frozen=True)
class Change:
  field: str
  saved: object  # the checkpoint's value (None when absent)
  now: object

  def __str__(self):
    return f"{self.field} (checkpoint {_show(self.saved)}, this run {_show(self.now)})"


def _show(v):
  s = json.dumps(v) if not isinstance(v, str) else repr(v)
  return s if len(s) <= 60 else s[:57] + "..."


def flatten(d, prefix: str = "") -> dict:
  """{"model.d_model": 64, ...}; lists and tuples stay whole values."""
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, name + "."))
    else:
      out[name] = list(v) if isinstance(v, tuple) else v
  return out


def _under(field: str, prefixes) -> bool:
  return any(field == p or field.startswith(p + ".") for p in prefixes)


def diff(saved: dict, now: dict) -> list[Change]:
  """Fields whose values differ between two plain config dicts."""
  a, b = flatten(saved), flatten(now)
  out = []
  for k in sorted(set(a) | set(b)):
    if k not in a and not k.startswith("data.sources."):
      continue  # a field newer than the checkpoint: it had its default then
    if a.get(k) != b.get(k):
      out.append(Change(k, a.get(k), b.get(k)))
  return out


def allowed_prefixes(spec) -> tuple[str, ...]:
  """`ckpt.allow_changes` ("optim,train.seed" or a sequence) as a tuple of prefixes."""
  if isinstance(spec, str):
    spec = spec.split(",")
  return tuple(p.strip() for p in spec or () if p.strip())


@dataclasses.dataclass
class Classified:
  free: list[Change]
  mixture: list[Change]
  allowed: list[Change]  # run-changing, but named by ckpt.allow_changes
  refused: list[Change]

  @property
  def shape(self) -> list[Change]:
    return [c for c in self.allowed + self.refused if _under(c.field, SHAPE)]


def classify(changes: list[Change], allow=()) -> Classified:
  out = Classified([], [], [], [])
  allow = allowed_prefixes(allow)
  for c in changes:
    if _under(c.field, FREE):
      out.free.append(c)
    elif any(re.fullmatch(p, c.field) for p in MIXTURE):
      out.mixture.append(c)
    elif _under(c.field, allow):
      out.allowed.append(c)
    else:
      out.refused.append(c)
  return out
