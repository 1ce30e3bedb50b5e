r"""Running a stage: one run, or the sub-stages of a length schedule, then the stage report.

  python -m maxlm.train.stages --config=configs/long_context.py:tiny,parent=/tmp/pre \
      --workdir=/tmp/long

A stage is an ordinary run (maxlm/run/pretrain.py) whose `config.init` names
its parent (maxlm/train/lineage.py). `run_stages` runs a sequence of
sub-stages (the long-context length schedule): each is an ordinary run in its
own sub-workdir whose parent is the previous one, so the training loop stays
a single fixed-shape loop. After a single finished stage, the command writes
domain_losses.json (and forgetting.png when the stage evaluated during the
run) with maxlm/eval/stage_report.py.
"""

from __future__ import annotations

import copy
import json
import logging
import os

from maxlm.eval import stage_report
from maxlm.run import pretrain
from maxlm.train import lineage

log = logging.getLogger("maxlm.train")


def resolve_parent(init_cfg):
  """lineage.resolve_parent, able to read a Hugging Face parent."""
  return lineage.resolve_parent(init_cfg, read_hf_model=pretrain._hf_model)  # pylint: disable=protected-access


def init_from_parent(parent, abstract_state, create_fn, model_cfg):
  """lineage.init_from_parent, able to load a Hugging Face parent."""
  return lineage.init_from_parent(parent, abstract_state, create_fn, model_cfg,
                                  load_hf_params=pretrain._hf_params)  # pylint: disable=protected-access


def sub_stage_configs(config, workdir: str) -> list[tuple[object, str]]:
  """(config, sub-workdir) per entry of config.length_schedule.

  Each entry: dict(seq_len, steps). global_batch = train.tokens_per_step //
  seq_len keeps tokens per step constant across lengths (Llama 3.1, Qwen2).
  The first sub-stage starts from config.init; each later one from the
  previous sub-stage with carry='full' and no re-warmup.
  """
  workdir = os.path.abspath(workdir)
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
  summaries = []
  for c, sub in sub_stage_configs(config, workdir):
    done = os.path.join(sub, "done.json")
    if os.path.isfile(done):
      log.info("sub-stage %s is done; skipping", sub)
      with open(done) as f:
        summaries.append(json.load(f))
      continue
    log.info("sub-stage %s: seq_len %d, global_batch %d, %d steps", sub, c.data.seq_len,
             c.train.global_batch, c.train.steps)
    summary = pretrain.train(c, sub)
    summaries.append(summary)
    if summary.get("preempted"):
      break  # run again to resume this sub-stage from its own checkpoint
  return summaries


def run_stage(config, workdir: str) -> list[dict]:
  """The stage command: sub-stages, or one run followed by its domain-loss report.

  Returns the runs' summaries (one per sub-stage, or one).
  """
  import jax  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  if config.get("length_schedule"):
    return run_stages(config, workdir)
  summary = pretrain.train(config, workdir)
  if not summary["preempted"] and jax.process_index() == 0:
    report = stage_report.report_domain_losses(config, workdir)
    if config.train.eval_every:
      stage_report.forgetting_plot(workdir, report, stage_report.target_domain(config))
  return [summary]
