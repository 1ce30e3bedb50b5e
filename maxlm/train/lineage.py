r"""Lineage of a stage: the run it starts from, checked, loaded, and recorded.

Modern base models are trained in stages (Llama 3: pretraining, six context
extension steps, an anneal; Gemma 2 / AFM: distillation into small models).
A stage config names its parent in `config.init`:

  init.from_checkpoint  ''                   a root run (pretraining from scratch)
                        <maxlm workdir>      its params/ export, else its newest checkpoint
                        <workdir>/checkpoints/<step>   that checkpoint
                        <Hugging Face dir>   a Llama-family checkpoint (read through the
                                             callables the composition root passes in:
                                             maxlm.interop sits above this package)
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
from maxlm.checkpoint import rundir
from maxlm.model import ModelConfig
from maxlm.optim.config import OptimConfig
from maxlm.train.config import InitConfig

log = logging.getLogger("maxlm.train")

MANIFEST = "stage_manifest.json"
CARRY = ("params", "full")
LR_FROM_PARENT = ("", "final", "peak")
# Fields that define the parameter shapes (and, for the window, what they were trained
# to compute); a stage must match its parent's.
_SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                 "d_ff", "tie_embeddings", "qkv_bias", "sliding_window")
# Family fields newer than some saved configs: a parent without them had the default.
_FIELD_DEFAULTS = {"qkv_bias": False, "sliding_window": None}
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


def resolve_parent(init_cfg, *, read_hf_model=None) -> Parent | None:
  """The parent named by `config.init`, or None for a root run. Fails loudly on a bad path.

  `init_cfg`: an InitConfig, or `config.init` as a ConfigDict / dict (None: a
  root run). `read_hf_model(hf_config_json) -> dict` of ModelConfig fields: how
  an HF parent's shape is read (maxlm.interop; passed in by the composition root).
  """
  init = InitConfig.from_any(init_cfg)
  if not init.from_checkpoint:
    return None
  path = os.path.abspath(init.from_checkpoint)
  carry = init.carry
  if carry not in CARRY:
    raise ValueError(f"init.carry={carry!r} is not one of {CARRY}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"init.from_checkpoint={path!r} does not exist")
  if rundir.is_hf_dir(path):
    if carry != "params":
      raise ValueError(f"init.carry={carry!r}: a Hugging Face checkpoint ({path}) holds no"
                       " optimizer state; use init.carry='params'")
    if read_hf_model is None:
      raise ValueError(f"init.from_checkpoint={path} is a Hugging Face checkpoint; resolve it"
                       " through maxlm.run (which knows how to read one)")
    model = dict(read_hf_model(_read_json(os.path.join(path, "config.json"))))
    return Parent(path, "hf", carry, path, None, None, model, None)

  # A maxlm run, or one checkpoint of it (<workdir>/checkpoints/<step>).
  workdir, step = rundir.split_checkpoint_path(path)
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"init.from_checkpoint={path!r} is neither a maxlm workdir (no"
                            " config.json) nor a Hugging Face checkpoint")
  config = _read_json(cfg_path)
  try:
    source, _, step = rundir.params_source(path, step, prefer_export=carry == "params")
  except FileNotFoundError as e:
    raise FileNotFoundError(f"init.from_checkpoint: {e}") from None
  return Parent(path, "maxlm", carry, source, step, workdir, config["model"], config)


def check_compatible(parent: Parent, model_cfg: ModelConfig, tokenizer_path: str) -> None:
  """Same parameter shapes and the same tokenizer as the parent, or a clear error."""
  theirs_of = lambda f: parent.model.get(f, _FIELD_DEFAULTS.get(f))
  bad = [f"model.{f}: parent {theirs_of(f)!r}, this stage {getattr(model_cfg, f)!r}"
         for f in _SHAPE_FIELDS if theirs_of(f) != getattr(model_cfg, f)]
  if bad:
    raise ValueError(f"init.from_checkpoint={parent.path}: the model shape differs from the"
                     " parent's (set config.model to the parent's shape):\n  " + "\n  ".join(bad))
  from maxlm.data.tokenizer import tokenizer_hash  # pylint: disable=g-import-not-at-top
  theirs = rundir.tokenizer_path(parent.workdir if parent.kind == "maxlm" else parent.path)
  if not os.path.exists(theirs):  # a tokenizer file, or an HF directory
    log.warning("init: the parent %s has no tokenizer to compare with; "
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
  """config.optim as keyword arguments of make_optimizer, peak_lr taken from the parent if asked.

  `optim_cfg` / `init_cfg`: OptimConfig / InitConfig, or the ConfigDicts they are read from.
  """
  kwargs = OptimConfig.from_any(optim_cfg).kwargs()
  init = InitConfig.from_any(init_cfg)
  which = init.lr_from_parent
  if which not in LR_FROM_PARENT:
    raise ValueError(f"init.lr_from_parent={which!r} is not one of {LR_FROM_PARENT}")
  if which and parent is not None:
    kwargs["peak_lr"] = parent_lr(parent, which) * float(init.lr_scale)
    log.info("init: peak_lr = %.3e (the parent's %s rate x %s)", kwargs["peak_lr"], which,
             init.lr_scale)
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

def hf_overrides(model_cfg: ModelConfig) -> dict:
  """The execution and RoPE fields this stage sets on an imported HF model."""
  overrides = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k in _HF_OVERRIDES}
  if overrides.get("rope_scaling") is not None:
    overrides["rope_scaling"] = model_cfg.rope_scaling_dict
  return overrides


def init_from_parent(parent: Parent, abstract_state, create_fn, model_cfg: ModelConfig, *,
                     load_hf_params=None):
  """The stage's initial state, placed in abstract_state's shardings.

  `create_fn()` builds a fresh state (for carry='params': its optimizer state
  and rng are kept, its params replaced by the parent's).
  `load_hf_params(hf_dir, model_overrides) -> host params` reads an HF parent.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  abstract_params = abstract_state["params"]
  if parent.kind == "hf":
    host_params = load_hf_params(parent.source, hf_overrides(model_cfg))
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


