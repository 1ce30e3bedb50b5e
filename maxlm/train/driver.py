"""The training driver: the only code that sees the whole config.

`train(config, workdir)` reads as a straight sequence of sections: setup,
mesh, data, state (created sharded or restored), the jitted step, the loop
(metrics, evaluation, checkpoints, preemption), and the end of the run.
Every library below it receives only its own sub-config.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from maxlm import data as data_lib
from maxlm.data import online_mixing
from maxlm.checkpoint import Checkpointer, export_params
from maxlm.eval import perplexity
from maxlm.eval import probes as probes_lib
from maxlm.model import ModelConfig, flops_per_token
from maxlm.monitor import MetricWriter, mfu, plot_loss_curve, read_jsonl
from maxlm.optim import make_optimizer
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
from maxlm.train import stages
from maxlm.train.state import abstract_state, create_state, state_shardings
from maxlm.train.step import eval_step, train_step
from maxlm.train import rollback
from maxlm.train.validate import validate_config

log = logging.getLogger("maxlm.train")


class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can save before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _summarise(ms, domains, *, elapsed_s, tokens_per_step, fpt, n_devices):
  """Host-side means over a logging interval of host metrics `ms`."""
  out = {k: float(np.mean([m[k] for m in ms])) for k in ("loss", "grad_norm", "lr")}
  # Any other scalar the step reports (per-group grad norms, update ratio, max
  # logit, skipped, z_loss) is averaged too; `skipped` as a mean is the share skipped.
  known = ("loss", "grad_norm", "lr", "tokens", "domain_loss_sum", "domain_count")
  out.update({k: float(np.mean([m[k] for m in ms])) for k in ms[0]
              if k not in known and np.ndim(ms[0][k]) == 0})
  dsum = np.sum([m["domain_loss_sum"] for m in ms], axis=0)
  dcnt = np.sum([m["domain_count"] for m in ms], axis=0)
  for i, name in enumerate(domains):
    if dcnt[i] > 0:
      out[f"train/{name}/loss"] = float(dsum[i] / dcnt[i])
  step_s = elapsed_s / len(ms)
  out["step_s"] = step_s
  out["tokens_per_s"] = tokens_per_step / step_s
  u = mfu(out["tokens_per_s"], fpt, n_devices)
  if u is not None:
    out["mfu"] = u
  return out


def evaluate(eval_fn, params, eval_batches: dict, batch_sh, eval_bytes: dict) -> dict:
  """Held-out loss, perplexity and bits per byte per domain."""
  nats, tokens = {}, {}
  for name, batches in eval_batches.items():
    nats[name] = tokens[name] = 0.0
    for b in batches:
      aux = jax.device_get(eval_fn(params, host_batch_to_global(b, batch_sh)))
      nats[name] += float(aux["domain_loss_sum"].sum())
      tokens[name] += float(aux["domain_count"].sum())
  return perplexity.heldout_metrics(nats, tokens, eval_bytes)


def train(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint. Returns a summary."""
  # ------------------------------------------------------------------ setup
  if config.distributed.initialize:
    d = config.distributed
    kwargs = {}
    if d.coordinator_address:
      kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                    process_id=d.process_id)
    jax.distributed.initialize(**kwargs)
  mesh_shape = validate_config(config, jax.device_count())
  model_cfg = ModelConfig.from_any(config.model)
  rules = tuple(map(tuple, config.mesh.rules))
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  t_cfg = config.train
  seq_len = config.data.seq_len

  # ------------------------------------------------------------------ mesh
  mesh = make_mesh(*mesh_shape, context=config.mesh.get("context", 1))
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
  # Probes are parsed now, so a bad file fails before any training. Configs
  # without an `eval` sub-dict (older stages) have none.
  probe_cfg = config.get("eval") or {}
  probes = probes_lib.load_probes(probe_cfg.probes) if probe_cfg.get("probes") else []
  run_probes = lambda params: probes_lib.probe_metrics(model_cfg, params, tokenizer_path, probes,
                                                       max_len=seq_len)
  # Bits per byte compare runs with different tokenizers: bytes behind the scored targets.
  eval_bytes = perplexity.heldout_bytes(
      eval_batches, perplexity.token_byte_lengths(tokenizer_path, vocab_size=model_cfg.vocab_size))

  # ------------------------------------------------------------------ state
  # Stage chaining (maxlm/train/stages.py): config.init names a parent run or HF
  # checkpoint; it is read only when this run has no checkpoint of its own.
  parent = stages.resolve_parent(config.get("init"))
  if parent is not None:
    stages.check_compatible(parent, model_cfg, tokenizer_path)
  tx, schedule = make_optimizer(total_steps=t_cfg.steps,
                                **stages.optim_kwargs(config.optim, config.get("init"), parent))
  shardings = state_shardings(model_cfg, tx, mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=config.ckpt.every,
                      keep=config.ckpt.keep, async_save=config.ckpt.async_save)
  abstract = abstract_state(model_cfg, tx, t_cfg.seed, shardings)
  state, start_step = ckpt.restore_latest(abstract, train_iter)
  if state is None and parent is not None:
    state = stages.init_from_parent(
        parent, abstract, lambda: create_state(model_cfg, tx, t_cfg.seed, shardings), model_cfg)
    start_step = 0
    log.info("initialised from %s (%s, carry=%s, parent step %s)", parent.source, parent.kind,
             parent.carry, parent.step)
  elif state is None:
    state, start_step = create_state(model_cfg, tx, t_cfg.seed, shardings), 0
    log.info("initialised %s params", f"{model_cfg.param_counts()['total']:,}")
  else:
    log.info("resumed from step %d", start_step)
  if is_main:
    stages.write_manifest(workdir, config, parent, step=start_step, status="running")

  # ------------------------------------------------------------------ step
  offline_teacher = None  # offline distillation: adds the stored top-k to each host batch
  if config.get("distill") and (config.distill.teacher or config.distill.get("offline_dir")):
    # --- distillation (maxlm/distill, issue 5): the teacher's forward runs inside the jitted
    # step, or (distill.offline_dir) its top-k is read per step from a precomputed store.
    from maxlm.distill import make_distill_step  # pylint: disable=g-import-not-at-top
    distill_fn = make_distill_step(
        config.distill, model_config=model_cfg, tx=tx, schedule=schedule,
        microbatches=t_cfg.microbatches, num_domains=len(domains), total_steps=t_cfg.steps,
        rules=rules, mesh=mesh, shardings=shardings, batch_sh=batch_sh,
        tokenizer_path=tokenizer_path)
    step_fn = lambda st, batch, limits: distill_fn(st, batch)  # no in-step skip (yet)
    if config.distill.get("offline_dir"):
      from maxlm.distill.offline import OfflineTeacher  # pylint: disable=g-import-not-at-top
      offline_teacher = OfflineTeacher(
          config.distill.offline_dir, steps=t_cfg.steps, global_batch=t_cfg.global_batch,
          seq_len=seq_len, top_k=config.distill.top_k, tokenizer_path=tokenizer_path,
          process_count=jax.process_count())
  else:
    # `limits` (the spike band for action=skip) are replicated scalars, a fixed
    # pytree of float32 so that refreshing them never retraces.
    step_fn = jax.jit(
        functools.partial(train_step, model_config=model_cfg, tx=tx, schedule=schedule,
                          microbatches=t_cfg.microbatches, num_domains=len(domains), rules=rules),
        in_shardings=(shardings, batch_sh, shardings["step"]), out_shardings=(shardings, None),
        donate_argnums=0)
  skip_in_step = spikes is not None and spikes.cfg.action == "skip"
  limits = rollback.step_limits(spikes if skip_in_step else None)
  eval_fn = jax.jit(functools.partial(eval_step, model_config=model_cfg,
                                      num_domains=len(domains), rules=rules),
                    in_shardings=(shardings["params"], batch_sh))

  # ------------------------------------------------------------------ hooks
  # Online mixing (maxlm/data/online_mixing.py) and downstream evals (maxlm/eval/
  # harness_hook.py): (every, fn(step, state) -> metrics), called after the step.
  hooks = []
  heldout_losses = lambda p: (lambda m: {d: m[f"eval/{d}/loss"] for d in domains})(
      evaluate(eval_fn, p, eval_batches, batch_sh, eval_bytes))
  updater = online_mixing.make_updater(
      config.data, train_iter, vocab_size=model_cfg.vocab_size, domain_losses=heldout_losses,
      workdir=workdir if is_main else None)
  if updater is not None:
    hooks.append((config.data.online_mixing.update_every, updater))
  harness_cfg = (config.get("eval") or {}).get("harness")
  if harness_cfg and harness_cfg.get("tasks"):
    from maxlm.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    from maxlm.eval.harness_hook import HarnessEvaluator  # pylint: disable=g-import-not-at-top
    hooks.append((harness_cfg.every, HarnessEvaluator(
        harness_cfg, model_config=model_cfg, tokenizer=tokenizer_lib.load(tokenizer_path),
        max_length=seq_len, workdir=workdir if is_main else None)))

  # ------------------------------------------------------------------ loop
  writer = MetricWriter(workdir, tensorboard=config.monitor.tensorboard, enabled=is_main)
  tokens_per_step = t_cfg.global_batch * seq_len
  fpt = flops_per_token(model_cfg, seq_len)
  use_bar = config.monitor.progress == "bar" or (
      config.monitor.progress == "auto" and sys.stderr.isatty())
  bar = None
  if use_bar and is_main:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=t_cfg.steps, initial=start_step, desc="train", unit="step")
  t_run = time.time()
  pending, t_interval, last = [], time.time(), {}
  n_skipped = 0  # updates the step refused (non-finite, or outside the spike band)
  step = start_step
  with jax.set_mesh(mesh), _Preemption() as preempt:
    while step < t_cfg.steps:
      host_batch = next(train_iter)
      host_batch.pop("doc_ids", None)  # bookkeeping for rollback reports; not a model input
      if offline_teacher is not None:  # checks the batch is the one the teacher saw
        host_batch = offline_teacher.attach(step, host_batch)
      state, metrics = step_fn(state, host_batch_to_global(host_batch, batch_sh), limits)
      pending.append(metrics)
      step += 1
      if step % t_cfg.log_every == 0 or step == t_cfg.steps or preempt.requested:
        # One device_get for the interval; it waits for the last step, so the
        # elapsed time below covers the compute, not just the async dispatch.
        host_metrics = jax.device_get(pending)
        n_skipped += sum(int(m.get("skipped", 0)) for m in host_metrics)
        if skip_in_step:
          # The step already refused the bad updates; record them and move the band.
          for event in rollback.skip_events(spikes, host_metrics, last_step=step, limits=limits):
            log.warning(event["message"])
            if is_main:
              rollback.write_event(workdir, event)
          limits = rollback.step_limits(spikes)
        alarm = (spikes and not skip_in_step
                 and rollback.first_alarm(spikes, host_metrics, last_step=step))
        if alarm:
          event = alarm.event()
          log.warning(alarm.message or f"loss spike at step {alarm.step}: {alarm.reasons}")
          if alarm.action == "rollback":
            state, skipped = rollback.roll_back(alarm, ckpt=ckpt, abstract_state=abstract,
                                                train_iter=train_iter, domains=domains)
            event.update(skipped)
            spikes.rolled_back(alarm)
            step, pending, t_interval = alarm.restore_step, [], time.time()
          elif alarm.action == "stop":
            preempt.requested = True  # saves this step and exits like a preemption
          if is_main:
            rollback.write_event(workdir, event)
          if alarm.action == "rollback":
            if bar is not None:
              bar.n = step
            continue
        last = _summarise(host_metrics, domains, elapsed_s=time.time() - t_interval,
                          tokens_per_step=tokens_per_step, fpt=fpt, n_devices=jax.device_count())
        last.update(tokens_seen=step * tokens_per_step, wall_s=time.time() - t_run)
        writer.write(step, last)
        pending, t_interval = [], time.time()
        if bar is not None:
          bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
        elif is_main:
          print(f"step {step:6d}  loss {last['loss']:.4f}  grad_norm {last['grad_norm']:.3f}  "
                f"lr {last['lr']:.2e}  tok/s {last['tokens_per_s']:.0f}"
                + (f"  mfu {last['mfu']:.1%}" if "mfu" in last else ""), flush=True)
      if bar is not None:
        bar.update(1)
      if t_cfg.eval_every and step % t_cfg.eval_every == 0 and step < t_cfg.steps:
        writer.write(step, evaluate(eval_fn, state["params"], eval_batches, batch_sh, eval_bytes))
        t_interval = time.time()  # evaluation time is not training throughput
      if probes and probe_cfg.probe_every and step % probe_cfg.probe_every == 0 \
          and step < t_cfg.steps:
        writer.write(step, run_probes(state["params"]))
        t_interval = time.time()
      for every, hook_fn in hooks:
        if every and step % every == 0 and step < t_cfg.steps:
          writer.write(step, hook_fn(step, state))
          t_interval = time.time()  # hook time is not training throughput
      if ckpt.save(step, state, train_iter, force=preempt.requested) and spikes:
        spikes.saved(step)
      if preempt.requested:
        break

    # ---------------------------------------------------------------- end
    finished = step >= t_cfg.steps
    if finished:
      final_eval = evaluate(eval_fn, state["params"], eval_batches, batch_sh, eval_bytes)
      writer.write(step, final_eval)
      last.update(final_eval)
      if probes:
        writer.write(step, run_probes(state["params"]))
      ckpt.save(step, state, train_iter, force=True)
  ckpt.close()
  data_lib.write_reports(config.data, train_iter, workdir, process_index=jax.process_index())
  if hasattr(train_iter, "close"):  # stops Grain's prefetch threads before interpreter exit
    train_iter.close()
  if bar is not None:
    bar.close()
  writer.close()
  summary = dict(step=step, final_loss=last.get("loss"), tokens_seen=step * tokens_per_step,
                 wall_s=time.time() - t_run, preempted=not finished, skipped_steps=n_skipped,
                 **{k: v for k, v in last.items() if k.startswith("eval/")})
  if finished and config.ckpt.export_params:  # collective: every host calls it
    export_params(state["params"], os.path.join(workdir, "params"))
  if finished and is_main:
    if config.monitor.plot:
      events_path = os.path.join(workdir, "events.jsonl")
      plot_loss_curve(read_jsonl(writer.path), os.path.join(workdir, "loss.png"),
                      title=f"{os.path.basename(workdir)}",
                      events=read_jsonl(events_path) if os.path.exists(events_path) else None)
    with open(os.path.join(workdir, "done.json"), "w") as f:
      json.dump(summary, f, indent=2)
  if is_main:
    stages.write_manifest(workdir, config, parent, step=step,
                          status="done" if finished else "preempted")
  return summary
