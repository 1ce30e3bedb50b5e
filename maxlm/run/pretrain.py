"""The composition root of a training run: the only code that reads the whole config.

`train(config, workdir)` reads as a straight sequence of sections: setup,
mesh, data, state (created sharded, restored, or taken from a parent stage),
the loss and the jitted step, the hooks, the loop (maxlm/train/loop.py), and
the end of the run. Every library below receives only its own sub-config.
Pretraining, the later stages (anneal, continued pretraining, long context)
and distillation all run through here; maxlm/run/stages.py adds the
sub-stage schedule and the stage reports around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time

import jax
from jax.experimental import multihost_utils

from maxlm import data as data_lib
from maxlm.data import online_mixing
from maxlm.checkpoint import Checkpointer, export_params, workdir_lock
from maxlm.checkpoint.config import CkptConfig
from maxlm.eval import perplexity
from maxlm.interop import hf as hf_lib
from maxlm.model import ModelConfig, flops_per_token
from maxlm.monitor import MetricWriter, plot_loss_curve, read_jsonl, write_json_atomic
from maxlm.optim import make_optimizer
from maxlm.optim.config import OptimConfig
from maxlm.run import distill as distill_run
from maxlm.run import evaluators
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.sharding.config import MeshConfig
from maxlm.train import lineage, loop, rollback
from maxlm.train.loop import Hook
from maxlm.train.config import InitConfig, TrainConfig
from maxlm.train.console import Console
from maxlm.train.losses import next_token_loss
from maxlm.train.metrics import interval_summary
from maxlm.train.state import abstract_state, create_state, state_shardings
from maxlm.train.step import train_step
from maxlm.train.validate import validate_config

log = logging.getLogger("maxlm.train")


def z_loss_weight(config) -> float:
  """config.train.z_loss, or the deprecated config.model.z_loss when only that is set."""
  t = float(config.train.get("z_loss", 0.0) or 0.0)
  m = float(config.model.get("z_loss", 0.0) or 0.0)
  if m and not t:
    log.warning("model.z_loss is deprecated (z-loss is a training objective): set"
                " train.z_loss=%s instead", m)
    return m
  if m and t and m != t:
    raise ValueError(f"train.z_loss={t} and the deprecated model.z_loss={m} disagree; set only"
                     " train.z_loss")
  return t


def _hf_model(raw_config: dict) -> dict:
  return dataclasses.asdict(hf_lib.model_config_from_hf(raw_config))


def _hf_params(source: str, overrides: dict):
  return hf_lib.import_checkpoint(source, model_overrides=overrides)[1]


def _already_done(workdir: str, steps: int) -> dict | None:
  """done.json of a run that already reached `steps`, else None."""
  path = os.path.join(workdir, "done.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    done = json.load(f)
  return done if int(done.get("step", -1)) >= steps else None


def train(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint. Returns a summary."""
  with contextlib.ExitStack() as run_guard:  # run safety: holds the workdir lock until return
    return _train(config, workdir, run_guard)


def _train(config, workdir: str, run_guard) -> dict:
  # ------------------------------------------------------------------ setup
  # The sections the run reads, typed once: an unknown or missing field is one line here,
  # before anything compiles (maxlm/config_types.py), not a default picked deep inside.
  t_cfg = TrainConfig.from_any(config.train)
  mesh_cfg = MeshConfig.from_any(config.mesh)
  ckpt_cfg = CkptConfig.from_any(config.ckpt)
  optim_cfg = OptimConfig.from_any(config.optim)
  init_cfg = InitConfig.from_any(config.get("init"))  # absent: a root run
  if config.distributed.initialize:
    d = config.distributed
    kwargs = {}
    if d.coordinator_address:
      kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                    process_id=d.process_id)
    jax.distributed.initialize(**kwargs)
  mesh_shape = validate_config(config, jax.device_count())
  model_cfg = ModelConfig.from_any(config.model)
  rules = mesh_cfg.rules
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)  # orbax and the manifests want absolute paths
  os.makedirs(workdir, exist_ok=True)
  run_guard.enter_context(workdir_lock(workdir, enabled=is_main))  # a second run refuses
  seq_len = config.data.seq_len

  # ------------------------------------------------------------------ mesh
  mesh = make_mesh(*mesh_shape, context=mesh_cfg.context)
  batch_sh = batch_sharding(mesh, rules)
  log.info("mesh %s over %d devices (%s)", dict(mesh.shape), jax.device_count(),
           jax.devices()[0].device_kind)

  # ------------------------------------------------------------------ data
  if is_main:
    tokenizer_path = data_lib.build_tokenizer(config.data, workdir)
  multihost_utils.sync_global_devices("tokenizer")  # other hosts reuse host 0's file
  tokenizer_path = data_lib.build_tokenizer(config.data, workdir)
  domains = data_lib.domain_names(config.data)
  spikes = rollback.make_monitor(config.monitor.get("spikes"))
  train_iter = data_lib.make_train_iterator(
      config.data, tokenizer_path=tokenizer_path, seq_len=seq_len,
      global_batch=t_cfg.global_batch, seed=t_cfg.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      keep_doc_ids=spikes is not None)  # a rollback records which documents it skipped
  eval_batches = data_lib.make_eval_batches(
      config.data, tokenizer_path=tokenizer_path, seq_len=seq_len,
      global_batch=t_cfg.global_batch, process_index=jax.process_index(),
      process_count=jax.process_count())
  # Bits per byte compare runs with different tokenizers: bytes behind the scored targets.
  eval_bytes = perplexity.heldout_bytes(
      eval_batches, perplexity.token_byte_lengths(tokenizer_path, vocab_size=model_cfg.vocab_size))

  # ------------------------------------------------------------------ state
  # Stage chaining (maxlm/train/lineage.py): config.init names a parent run or HF
  # checkpoint; it is read only when this run has no checkpoint of its own.
  parent = lineage.resolve_parent(init_cfg, read_hf_model=_hf_model)
  if parent is not None:
    lineage.check_compatible(parent, model_cfg, tokenizer_path)
  tx, schedule = make_optimizer(total_steps=t_cfg.steps,
                                **lineage.optim_kwargs(optim_cfg, init_cfg, parent))
  shardings = state_shardings(model_cfg, tx, mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=ckpt_cfg.every,
                      keep=ckpt_cfg.keep, async_save=ckpt_cfg.async_save,
                      run_config=json.loads(config.to_json_best_effort()),
                      allow_changes=ckpt_cfg.allow_changes)
  abstract = abstract_state(model_cfg, tx, t_cfg.seed, shardings)
  state, start_step = ckpt.restore_or_fail(abstract, train_iter)  # refuses, never restarts
  if is_main:  # only once the resume is accepted: a refused config must not replace it
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if state is None and parent is not None:
    state = lineage.init_from_parent(
        parent, abstract, lambda: create_state(model_cfg, tx, t_cfg.seed, shardings), model_cfg,
        load_hf_params=_hf_params)
    start_step = 0
    log.info("initialised from %s (%s, carry=%s, parent step %s)", parent.source, parent.kind,
             parent.carry, parent.step)
  elif state is None:
    state, start_step = create_state(model_cfg, tx, t_cfg.seed, shardings), 0
    log.info("initialised %s params", f"{model_cfg.param_counts()['total']:,}")
  else:
    log.info("resumed from step %d", start_step)
    done = _already_done(workdir, t_cfg.steps)
    if done is not None:  # nothing to train, evaluate or rewrite
      ckpt.close()
      if hasattr(train_iter, "close"):
        train_iter.close()
      msg = f"{workdir}: already finished at step {done['step']} (done.json)"
      log.info(msg)
      if is_main:
        print(msg, flush=True)
      return done
  if is_main:
    lineage.write_manifest(workdir, config, parent, step=start_step, status="running")

  # ------------------------------------------------------------------ loss and step
  # The loss is a seam (maxlm/train/losses.py): the next-token loss, or distillation's.
  loss_fn = next_token_loss(model_cfg, len(domains), z_loss=z_loss_weight(config))
  attach = None  # offline distillation: adds the stored top-k to each host batch
  if distill_run.is_distillation(config):
    step_fn, attach = distill_run.make_step(
        config, model_config=model_cfg, tx=tx, schedule=schedule, num_domains=len(domains),
        rules=rules, mesh=mesh, shardings=shardings, batch_sh=batch_sh,
        tokenizer_path=tokenizer_path, process_count=jax.process_count())
  else:
    # `limits` (the spike band for action=skip) are replicated scalars, a fixed
    # pytree of float32 so that refreshing them never retraces.
    step_fn = jax.jit(
        functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule,
                          microbatches=t_cfg.microbatches, rules=rules),
        in_shardings=(shardings, batch_sh, shardings["step"]), out_shardings=(shardings, None),
        donate_argnums=0)

  def next_batch(step):
    host_batch = next(train_iter)
    host_batch.pop("doc_ids", None)  # bookkeeping for rollback reports; not a model input
    if attach is not None:  # checks the batch is the one the teacher saw
      host_batch = attach(step, host_batch)
    return host_batch_to_global(host_batch, batch_sh)

  # ------------------------------------------------------------------ hooks
  writer = MetricWriter(workdir, tensorboard=config.monitor.tensorboard, enabled=is_main)
  console = Console(total=t_cfg.steps, initial=start_step, mode=config.monitor.progress,
                    enabled=is_main)
  # Held-out evaluation is always plain cross entropy (comparable across stages and losses).
  heldout = evaluators.heldout_evaluator(
      loss_fn=next_token_loss(model_cfg, len(domains), with_mtp=False), eval_batches=eval_batches,
      eval_bytes=eval_bytes, shardings=shardings, batch_sh=batch_sh, rules=rules)
  hooks = [evaluators.heldout_hook(heldout, every=t_cfg.eval_every, console=console)]
  if parent is not None and start_step == 0:  # the parent's held-out loss, logged at step 0
    evaluators.before_first_update(hooks[0], state, writer=writer, mesh=mesh)
  probes = evaluators.probe_hook(config.get("eval"), model_config=model_cfg,
                                 tokenizer_path=tokenizer_path, seq_len=seq_len)
  if probes is not None:
    hooks.append(probes)
  # Online mixing (maxlm/data/online_mixing.py) re-weights domains from held-out losses.
  updater = online_mixing.make_updater(
      config.data, train_iter, vocab_size=model_cfg.vocab_size,
      domain_losses=lambda p: (lambda m: {d: m[f"eval/{d}/loss"] for d in domains})(heldout(p)),
      workdir=workdir if is_main else None)
  if updater is not None:
    hooks.append(Hook(every=config.data.online_mixing.update_every, fn=updater,
                      name="online_mixing", at_end=False))
  harness = evaluators.harness_hook(config.get("eval"), model_config=model_cfg,
                                    tokenizer_path=tokenizer_path, seq_len=seq_len,
                                    workdir=workdir if is_main else None)
  if harness is not None:
    hooks.append(harness)
  guard = rollback.SpikeGuard(spikes, ckpt=ckpt, abstract_state=abstract, train_iter=train_iter,
                              domains=domains, workdir=workdir, is_main=is_main)

  # ------------------------------------------------------------------ loop
  tokens_per_step = t_cfg.global_batch * seq_len
  fpt = flops_per_token(model_cfg, seq_len)
  t_run = time.time()

  def summarise(host_metrics, step, elapsed_s):
    out = interval_summary(host_metrics, domains, elapsed_s=elapsed_s,
                           tokens_per_step=tokens_per_step, fpt=fpt,
                           n_devices=jax.device_count())
    out.update(tokens_seen=step * tokens_per_step, wall_s=time.time() - t_run)
    return out

  out = loop.train(loop.Run(
      state=state, start_step=start_step, steps=t_cfg.steps, step_fn=step_fn,
      next_batch=next_batch, save=lambda s, st, force: ckpt.save(s, st, train_iter, force=force),
      summarise=summarise, writer=writer, console=console, guard=guard, mesh=mesh,
      log_every=t_cfg.log_every, hooks=hooks))

  # ------------------------------------------------------------------ end
  state, step, finished, last = out.state, out.step, out.finished, out.last
  ckpt.close()
  data_lib.write_reports(config.data, train_iter, workdir, process_index=jax.process_index())
  if hasattr(train_iter, "close"):  # stops Grain's prefetch threads before interpreter exit
    train_iter.close()
  console.close()
  writer.close()
  summary = dict(step=step, final_loss=last.get("loss"), tokens_seen=step * tokens_per_step,
                 wall_s=time.time() - t_run, preempted=not finished,
                 skipped_steps=out.skipped_steps,
                 **{k: v for k, v in last.items() if k.startswith("eval/")})
  if out.stopped:
    summary["stopped"] = out.stopped
  if finished and ckpt_cfg.export_params:  # collective: every host calls it
    export_params(state["params"], os.path.join(workdir, "params"))
  if finished and is_main:
    if config.monitor.plot:
      events_path = os.path.join(workdir, "events.jsonl")
      plot_loss_curve(read_jsonl(writer.path), os.path.join(workdir, "loss.png"),
                      title=f"{os.path.basename(workdir)}",
                      events=read_jsonl(events_path) if os.path.exists(events_path) else None)
    write_json_atomic(os.path.join(workdir, "done.json"), summary, indent=2)
  if is_main:
    lineage.write_manifest(workdir, config, parent, step=step,
                           status="done" if finished else
                           ("stopped" if out.stopped else "preempted"))
  return summary
