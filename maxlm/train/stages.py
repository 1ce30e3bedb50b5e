r"""Stage chaining: a run that starts from another run's checkpoint.

Modern base models are trained in stages (Llama 3: pretraining, six context
extension steps, an anneal; Gemma 2 / AFM: distillation into small models).
A stage config names its parent in `config.init`:

  init.from_checkpoint  ''                   a root run (pretraining from scratch)
                        <maxlm workdir>      its params/ export, else its newest checkpoint
                        <workdir>/checkpoints/<step>   that checkpoint
                        <Hugging Face dir>   a Llama-family checkpoint, via maxlm.interop
  init.carry            'params'  params only: fresh optimizer, the stage's own schedule
                        'full'    params and optimizer moments (Adam's own count too, so its
                                  bias correction stays right); the step counter and the
                                  learning-rate schedule restart at 0, so every stage's
                                  schedule is written in its own steps
  init.lr_from_parent   ''        optim.peak_lr as configured
                        'final'   the parent's learning rate at its last step (an anneal
                                  continues from where the parent was)
                        'peak'    the parent's peak learning rate
  init.lr_scale         multiplies the parent's rate (continued pretraining re-warms to a
                        fraction of the original peak)

The parent is read only when the stage has no checkpoint of its own: a
resumed stage restores its own newest checkpoint like any run.

Every run writes `stage_manifest.json` in its workdir: what it was started
from (path, kind, step), the parent's manifest chain, its config and the
tokens each stage in the chain has seen.

`run_stages` runs a sequence of sub-stages (the long-context length
schedule): each is an ordinary run in its own sub-workdir whose parent is the
previous one, so the training loop stays a single fixed-shape loop.

  python -m maxlm.train.stages --config=configs/long_context.py:tiny,parent=/tmp/pre \
      --workdir=/tmp/long
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os

import jax
import numpy as np
import optax

from maxlm import checkpoint as checkpoint_lib
from maxlm.model import ModelConfig

log = logging.getLogger("maxlm.train")

MANIFEST = "stage_manifest.json"
CARRY = ("params", "full")
LR_FROM_PARENT = ("", "final", "peak")
# Fields that define the parameter shapes; a stage must match its parent's.
_SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                 "d_ff", "tie_embeddings")
# Execution and RoPE fields a stage may change on an imported HF model.
_HF_OVERRIDES = ("compute_dtype", "param_dtype", "remat", "attention_impl", "scan_layers",
                 "rope_theta", "rope_scaling")


@dataclasses.dataclass
class Parent:
  """Where a stage starts: resolved once, before anything is loaded."""
  path: str  # what init.from_checkpoint named, absolute
  kind: str  # 'maxlm' | 'hf'
  carry: str  # 'params' | 'full'
  source: str  # the directory actually read (params/, checkpoints/<n>/state, or the HF dir)
  step: int | None  # the parent's step at that checkpoint (None for HF)
  workdir: str | None  # the parent's maxlm workdir (None for HF)
  model: dict  # the parent's model config (shape fields at least)
  config: dict | None  # the parent's full config.json (maxlm only)


# ----------------------------------------------------------------- resolving

def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(
      os.path.join(d, n, "state")))


def is_hf_dir(path: str) -> bool:
  """An HF checkpoint: a config.json with a model_type, and no maxlm run layout."""
  cfg = os.path.join(path, "config.json")
  return (os.path.isfile(cfg) and not os.path.isdir(os.path.join(path, "checkpoints"))
          and "model_type" in _read_json(cfg))


def resolve_parent(init_cfg) -> Parent | None:
  """The parent named by `config.init`, or None for a root run. Fails loudly on a bad path."""
  if init_cfg is None or not init_cfg.get("from_checkpoint"):
    return None
  path = os.path.abspath(init_cfg.from_checkpoint)
  carry = init_cfg.get("carry", "params")
  if carry not in CARRY:
    raise ValueError(f"init.carry={carry!r} is not one of {CARRY}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"init.from_checkpoint={path!r} does not exist")
  if is_hf_dir(path):
    if carry != "params":
      raise ValueError(f"init.carry={carry!r}: a Hugging Face checkpoint ({path}) holds no"
                       " optimizer state; use init.carry='params'")
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    model = dataclasses.asdict(hf_lib.model_config_from_hf(_read_json(
        os.path.join(path, "config.json"))))
    return Parent(path, "hf", carry, path, None, None, model, None)

  # A maxlm run, or one checkpoint of it (<workdir>/checkpoints/<step>).
  step = None
  workdir = path
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    workdir, step = os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"init.from_checkpoint={path!r} is neither a maxlm workdir (no"
                            " config.json) nor a Hugging Face checkpoint")
  config = _read_json(cfg_path)
  params_dir = os.path.join(workdir, "params")
  done = os.path.join(workdir, "done.json")
  if step is None and carry == "params" and os.path.isdir(params_dir) and os.path.isfile(done):
    return Parent(path, "maxlm", carry, params_dir, int(_read_json(done)["step"]), workdir,
                  config["model"], config)
  steps = _checkpoint_steps(workdir)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"init.from_checkpoint={path!r} has neither params/ (with"
                              " done.json) nor checkpoints/<step>/")
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"{path} is not a committed checkpoint; {workdir} has {steps}")
  source = os.path.join(workdir, "checkpoints", str(step), "state")
  return Parent(path, "maxlm", carry, source, step, workdir, config["model"], config)


def parent_tokenizer_path(path: str) -> str:
  """The tokenizer a parent (maxlm workdir, checkpoint dir or HF dir) was trained with."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    path = os.path.dirname(os.path.dirname(path))
  cfg = os.path.join(path, "config.json")
  if os.path.isfile(cfg):
    raw = _read_json(cfg)
    if "model_type" in raw:
      return os.path.join(path, "tokenizer.model")
    if raw.get("data", {}).get("tokenizer", {}).get("path"):
      return raw["data"]["tokenizer"]["path"]
  return os.path.join(path, "tokenizer", "tokenizer.model")


def check_compatible(parent: Parent, model_cfg: ModelConfig, tokenizer_path: str) -> None:
  """Same parameter shapes and the same tokenizer as the parent, or a clear error."""
  bad = [f"model.{f}: parent {parent.model.get(f)!r}, this stage {getattr(model_cfg, f)!r}"
         for f in _SHAPE_FIELDS if parent.model.get(f) != getattr(model_cfg, f)]
  if bad:
    raise ValueError(f"init.from_checkpoint={parent.path}: the model shape differs from the"
                     " parent's (set config.model to the parent's shape):\n  " + "\n  ".join(bad))
  from maxlm.data.tokenizer import tokenizer_hash  # pylint: disable=g-import-not-at-top
  if parent.kind == "maxlm":
    theirs = os.path.join(parent.workdir, "tokenizer", "tokenizer.model")
    if parent.config and parent.config["data"]["tokenizer"].get("path"):
      theirs = parent.config["data"]["tokenizer"]["path"]
  else:
    theirs = os.path.join(parent.path, "tokenizer.model")
  if not os.path.isfile(theirs):
    log.warning("init: the parent %s has no SentencePiece tokenizer.model to compare with; "
                "make sure data.tokenizer.path is the parent's tokenizer", parent.path)
    return
  if tokenizer_hash(theirs) != tokenizer_hash(tokenizer_path):
    raise ValueError(f"init.from_checkpoint={parent.path}: this stage's tokenizer"
                     f" ({tokenizer_path}) differs from the parent's ({theirs}); token ids would"
                     f" not mean the same thing. Set data.tokenizer.path={theirs}")


# ----------------------------------------------------------------- optimizer

def parent_lr(parent: Parent, which: str) -> float:
  """The parent's learning rate: its peak, or its schedule's value at its last step."""
  if parent.config is None:
    raise ValueError(f"init.lr_from_parent={which!r} needs a maxlm parent (its config.json);"
                     f" {parent.path} is a Hugging Face checkpoint: set optim.peak_lr instead"
                     " and init.lr_from_parent=''")
  optim = parent.config["optim"]
  peak = float(optim["peak_lr"])
  manifest = os.path.join(parent.workdir, MANIFEST)
  if os.path.isfile(manifest):  # the peak the parent really used (it may itself come from a parent)
    peak = float(_read_json(manifest).get("peak_lr", peak))
  if which == "peak":
    return peak
  from maxlm.optim import make_schedule  # pylint: disable=g-import-not-at-top
  schedule = make_schedule(peak_lr=peak,
                           total_steps=parent.config["train"]["steps"], **optim["schedule"])
  return float(schedule(parent.step))


def optim_kwargs(optim_cfg, init_cfg, parent: Parent | None) -> dict:
  """config.optim as keyword arguments, peak_lr taken from the parent if asked."""
  kwargs = optim_cfg.to_dict() if hasattr(optim_cfg, "to_dict") else dict(optim_cfg)
  which = init_cfg.get("lr_from_parent", "") if init_cfg is not None else ""
  if which not in LR_FROM_PARENT:
    raise ValueError(f"init.lr_from_parent={which!r} is not one of {LR_FROM_PARENT}")
  if which and parent is not None:
    kwargs["peak_lr"] = parent_lr(parent, which) * float(init_cfg.get("lr_scale", 1.0))
    log.info("init: peak_lr = %.3e (the parent's %s rate x %s)", kwargs["peak_lr"], which,
             init_cfg.get("lr_scale", 1.0))
    if kwargs["peak_lr"] <= 0:
      log.warning("init: the parent's %s learning rate is 0: this stage will not move", which)
  return kwargs


def _restart_counters(state):
  """Stage-local step and schedule counters; Adam's own count stays (bias correction)."""
  def reset(x):
    if isinstance(x, optax.ScaleByScheduleState):
      return x._replace(count=jax.device_put(np.zeros((), np.int32), x.count.sharding))
    return x
  opt_state = jax.tree.map(reset, state["opt_state"],
                           is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
  step = jax.device_put(np.zeros((), np.int32), state["step"].sharding)
  return dict(state, opt_state=opt_state, step=step)


# ----------------------------------------------------------------- loading

def init_from_parent(parent: Parent, abstract_state, create_fn, model_cfg: ModelConfig):
  """The stage's initial state, placed in abstract_state's shardings.

  `create_fn()` builds a fresh state (for carry='params': its optimizer state
  and rng are kept, its params replaced by the parent's).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  abstract_params = abstract_state["params"]
  if parent.kind == "hf":
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    overrides = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k in _HF_OVERRIDES}
    if overrides.get("rope_scaling") is not None:
      overrides["rope_scaling"] = model_cfg.rope_scaling_dict
    _, host_params = hf_lib.import_checkpoint(parent.source, model_overrides=overrides)
    _check_tree(host_params, abstract_params, parent)
    params = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding),
                          host_params, abstract_params)
  elif parent.source.endswith("params") and os.path.basename(parent.source) == "params":
    params = ocp.StandardCheckpointer().restore(parent.source, abstract_params)
  elif parent.carry == "full":
    return _restart_counters(ocp.StandardCheckpointer().restore(parent.source, abstract_state))
  else:  # params only out of a full state
    params = restore_params(parent.source, abstract_params)
  fresh = create_fn()
  return dict(fresh, params=params)


def restore_params(state_dir: str, abstract_params):
  """Only the params of a full-state checkpoint (see maxlm.checkpoint.load_state_params)."""
  return checkpoint_lib.load_state_params(state_dir, abstract_params)


def _check_tree(host, abstract, parent):
  hs = jax.tree_util.tree_structure(host)
  as_ = jax.tree_util.tree_structure(abstract)
  if hs != as_:
    raise ValueError(f"init.from_checkpoint={parent.path}: parameter tree differs from this"
                     f" model's ({hs} vs {as_}); check model.scan_layers / tie_embeddings")


# ----------------------------------------------------------------- manifest

def _tokens(config) -> int:
  return int(config["train"]["global_batch"]) * int(config["data"]["seq_len"])


def _root_entry(parent: Parent) -> list[dict]:
  """The chain above this stage: the parent's own manifest chain, or a one-entry root."""
  if parent.workdir is not None and os.path.isfile(os.path.join(parent.workdir, MANIFEST)):
    chain = _read_json(os.path.join(parent.workdir, MANIFEST))["chain"]
    if parent.step is not None and chain:  # the parent may have trained on past our fork point
      last = dict(chain[-1])
      if last.get("steps") and last["steps"] != parent.step and last.get("tokens_per_step"):
        last["tokens_seen"] = parent.step * last["tokens_per_step"]
      last["steps"] = parent.step
      chain = chain[:-1] + [last]
    return chain
  if parent.kind == "hf":
    return [dict(workdir=parent.path, kind="hf", steps=None, tokens_seen=None)]
  tps = _tokens(parent.config)
  return [dict(workdir=parent.workdir, kind="maxlm", steps=parent.step,
               tokens_per_step=tps, tokens_seen=parent.step * tps)]


def write_manifest(workdir: str, config, parent: Parent | None, *, step: int,
                   status: str) -> dict:
  """Writes (or updates) <workdir>/stage_manifest.json; returns it.

  A resumed stage keeps the parent record written when it first started:
  the parent may have moved on since, but this stage forked from that point.
  """
  path = os.path.join(workdir, MANIFEST)
  previous = _read_json(path) if os.path.isfile(path) else None
  cfg = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
      else dict(config)
  if previous is not None and previous.get("parent") is not None:
    parent_rec, chain = previous["parent"], previous["chain"][:-1]
  elif parent is not None:
    parent_rec = dict(path=parent.path, kind=parent.kind, carry=parent.carry,
                      source=parent.source, step=parent.step,
                      lr_from_parent=cfg.get("init", {}).get("lr_from_parent", ""))
    chain = _root_entry(parent)
  else:
    parent_rec, chain = None, []
  if previous is not None and "peak_lr" in previous:
    peak_lr = previous["peak_lr"]
  else:
    peak_lr = optim_kwargs(config.optim, config.get("init"), parent)["peak_lr"]
  tps = _tokens(cfg)
  me = dict(workdir=workdir, kind="maxlm", steps=step, tokens_per_step=tps,
            tokens_seen=step * tps, seq_len=cfg["data"]["seq_len"],
            global_batch=cfg["train"]["global_batch"])
  chain = chain + [me]
  manifest = dict(
      workdir=workdir, status=status, parent=parent_rec, peak_lr=peak_lr,
      tokens_seen=me["tokens_seen"],
      total_tokens_seen=sum(c["tokens_seen"] or 0 for c in chain),
      chain=chain, config=cfg)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2, default=str)
  os.replace(tmp, path)  # never a half-written manifest
  return manifest


# ----------------------------------------------------------------- reports

def _host_params(source: str, kind: str, model_cfg: ModelConfig):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if kind == "hf":
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    overrides = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k in _HF_OVERRIDES}
    overrides["rope_scaling"] = model_cfg.rope_scaling_dict
    return hf_lib.import_checkpoint(source, model_overrides=overrides)[1]
  # An explicit target: the checkpoint may come from another device topology.
  from maxlm.model import init_params  # pylint: disable=g-import-not-at-top
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(lambda r: init_params(model_cfg, r),
                                         jax.random.PRNGKey(0)))
  if os.path.basename(source) == "params":
    return ocp.StandardCheckpointer().restore(source, abstract)
  return restore_params(source, abstract)


def report_domain_losses(config, workdir: str) -> dict:
  """Held-out loss per domain of the parent's params ('before') and this stage's ('after').

  Both are evaluated under this stage's model config (a long-context stage's
  RoPE included) on this stage's held-out batches; written to
  <workdir>/domain_losses.json.
  """
  from maxlm import data as data_lib  # pylint: disable=g-import-not-at-top
  from maxlm.train.step import loss_sums  # pylint: disable=g-import-not-at-top
  model_cfg = ModelConfig.from_any(config.model)
  manifest = _read_json(os.path.join(workdir, MANIFEST))
  tok = data_lib.build_tokenizer(config.data, workdir)
  domains = data_lib.domain_names(config.data)
  batches = data_lib.make_eval_batches(config.data, tokenizer_path=tok,
                                       seq_len=config.data.seq_len,
                                       global_batch=config.train.global_batch)
  after_src = os.path.join(workdir, "params")
  if not os.path.isdir(after_src):
    after_src = os.path.join(workdir, "checkpoints", str(_checkpoint_steps(workdir)[-1]), "state")
  sources = dict(after=(after_src, "maxlm"))
  if manifest.get("parent"):
    sources["before"] = (manifest["parent"]["source"], manifest["parent"]["kind"])
  fn = jax.jit(lambda p, b: loss_sums(p, b, model_config=model_cfg,
                                      num_domains=len(domains))[1])
  out = {}
  for when, (src, kind) in sources.items():
    params = _host_params(src, kind, model_cfg)
    for name, bs in batches.items():
      sums = [jax.device_get(fn(params, b)) for b in bs]
      total = sum(float(a["domain_loss_sum"].sum()) for a in sums)
      count = sum(float(a["domain_count"].sum()) for a in sums)
      out.setdefault(name, {})[when] = total / max(count, 1.0)
  with open(os.path.join(workdir, "domain_losses.json"), "w") as f:
    json.dump(out, f, indent=2)
  for name, v in out.items():
    log.info("%-8s held-out loss  before %s  after %.4f", name,
             f"{v['before']:.4f}" if "before" in v else "-", v["after"])
  return out


def forgetting_plot(workdir: str, report: dict, target_domain: str | None = None) -> str:
  """Held-out loss per domain over the run, one panel per domain side by side.

  Step 0 is the parent's loss (domain_losses.json 'before'); later points
  are the run's periodic evaluations. A rising general-domain curve while
  the target domain falls is forgetting.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from maxlm.monitor import read_jsonl  # pylint: disable=g-import-not-at-top
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  names = sorted(report)
  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
  for ax, name in zip(axes[0], names):
    pts = {r["step"]: r[f"eval/{name}/loss"] for r in rows if f"eval/{name}/loss" in r}
    if "before" in report[name]:
      pts[0] = report[name]["before"]
    steps = sorted(pts)
    ax.plot(steps, [pts[s] for s in steps], marker="o")
    role = "target domain" if name == target_domain else "general / replay"
    ax.set_title(f"{name} ({role})")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, "forgetting.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def target_domain(config) -> str:
  """The domain with the largest source weight: what a continued-pretraining stage adapts to."""
  from maxlm.data.config import iter_sources  # pylint: disable=g-import-not-at-top
  srcs = iter_sources(config.data)
  return max(srcs, key=lambda s: s["weight"])["domain"]


# ----------------------------------------------------------------- sub-stages

def sub_stage_configs(config, workdir: str) -> list[tuple[object, str]]:
  """(config, sub-workdir) per entry of config.length_schedule.

  Each entry: dict(seq_len, steps). global_batch = train.tokens_per_step //
  seq_len keeps tokens per step constant across lengths (Llama 3.1, Qwen2).
  The first sub-stage starts from config.init; each later one from the
  previous sub-stage with carry='full' and no re-warmup.
  """
  schedule = [dict(e) for e in config.length_schedule]
  tokens_per_step = int(config.train.tokens_per_step)
  out = []
  for i, e in enumerate(schedule):
    seq_len, steps = int(e["seq_len"]), int(e["steps"])
    if tokens_per_step % seq_len:
      raise ValueError(f"length_schedule[{i}]: train.tokens_per_step={tokens_per_step} is not a"
                       f" multiple of seq_len={seq_len}")
    c = copy.deepcopy(config)
    c.unlock()
    c.data.seq_len = seq_len
    c.train.global_batch = tokens_per_step // seq_len
    c.train.steps = steps
    if i > 0:
      c.init.from_checkpoint = out[-1][1]
      c.init.carry = "full"
      c.init.lr_from_parent = "peak"  # the rate the previous sub-stage ran at
      c.init.lr_scale = 1.0
      c.optim.schedule.warmup_steps = 0
    c.lock()
    out.append((c, os.path.join(workdir, f"len_{seq_len}")))
  return out


def run_stages(config, workdir: str) -> list[dict]:
  """Runs the sub-stages of config.length_schedule in order; a finished one is skipped."""
  from maxlm.train.driver import train  # pylint: disable=g-import-not-at-top
  summaries = []
  for c, sub in sub_stage_configs(config, workdir):
    done = os.path.join(sub, "done.json")
    if os.path.isfile(done):
      log.info("sub-stage %s is done; skipping", sub)
      summaries.append(_read_json(done))
      continue
    log.info("sub-stage %s: seq_len %d, global_batch %d, %d steps", sub, c.data.seq_len,
             c.train.global_batch, c.train.steps)
    summary = train(c, sub)
    summaries.append(summary)
    if summary.get("preempted"):
      break  # run again to resume this sub-stage from its own checkpoint
  return summaries


def main(argv):
  """Entry point: one plain run, or the sub-stages of a length schedule."""
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from maxlm.train.driver import train  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("maxlm").setLevel(logging.INFO)
  config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
  if config.get("length_schedule"):
    run_stages(config, workdir)
    return
  summary = train(config, workdir)
  if not summary["preempted"] and jax.process_index() == 0:
    report = report_domain_losses(config, workdir)
    if config.train.eval_every:
      forgetting_plot(workdir, report, target_domain(config))


_FLAGS = {}

if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Stage config file[:arg].",
                                                     lock_config=True)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Run directory.")
  flags.mark_flags_as_required(["config", "workdir"])
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
