"""The loop's hooks for evaluation: held-out loss / perplexity / bits per byte, and probes.

Each is built once by the composition root (held-out batches drawn, probe
files parsed, so a bad file fails before any training) and returned as a
`maxlm.train.loop.Hook`.
"""

from __future__ import annotations

import functools

import jax

from maxlm.eval import perplexity
from maxlm.eval import probes as probes_lib
from maxlm.sharding import host_batch_to_global
from maxlm.train.loop import Hook
from maxlm.train.step import eval_step


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


def heldout_line(step: int, metrics: dict) -> str:
  """'eval step 100  code 2.912  docs 3.104  prose 3.387' (held-out loss per domain)."""
  doms = sorted(k.split("/")[1] for k in metrics if k.startswith("eval/") and k.endswith("/loss"))
  return f"eval step {step:6d}  " + "  ".join(
      f"{d} {metrics[f'eval/{d}/loss']:.4f}" for d in doms)


def heldout_evaluator(*, loss_fn, eval_batches, eval_bytes, shardings, batch_sh, rules):
  """params -> held-out metrics (compiled once; shared by the eval hook and online mixing)."""
  eval_fn = jax.jit(functools.partial(eval_step, loss_fn=loss_fn, rules=rules),
                    in_shardings=(shardings["params"], batch_sh))
  return lambda params: evaluate(eval_fn, params, eval_batches, batch_sh, eval_bytes)


def heldout_hook(heldout, *, every: int, console=None) -> Hook:
  """Held-out metrics (`heldout(params)`) every `every` steps and at the end, one line each."""

  def fn(step, state):
    m = heldout(state["params"])
    if console is not None and m:
      console.line(heldout_line(step, m))
    return m
  return Hook(every=every, fn=fn, name="heldout")


def before_first_update(hook: Hook, state, *, writer, mesh) -> dict:
  """Runs `hook` on the initial state and writes its metrics at step 0.

  A stage started from a parent logs the parent's held-out loss on this
  stage's data before any update: the baseline the stage is measured
  against (for an HF parent, what transformers computes on the same tokens).
  """
  with jax.set_mesh(mesh):
    metrics = hook.fn(0, state) or {}
  if metrics:
    writer.write(0, metrics)
  return metrics


def probe_hook(eval_cfg, *, model_config, tokenizer_path, seq_len: int) -> Hook | None:
  """Probes from `config.eval.probes` every `config.eval.probe_every` steps, or None."""
  if not (eval_cfg or {}).get("probes"):
    return None
  probes = probes_lib.load_probes(eval_cfg.probes)
  fn = lambda step, state: probes_lib.probe_metrics(model_config, state["params"], tokenizer_path,
                                                    probes, max_len=seq_len)
  return Hook(every=eval_cfg.get("probe_every", 0), fn=fn, name="probes")


def harness_hook(eval_cfg, *, model_config, tokenizer_path, seq_len: int,
                 workdir: str | None) -> Hook | None:
  """lm-evaluation-harness tasks from `config.eval.harness` every `.every` steps, or None."""
  harness_cfg = (eval_cfg or {}).get("harness")
  if not (harness_cfg and harness_cfg.get("tasks")):
    return None
  # Imported only when asked for: lm-eval is the optional `eval` extra.
  from maxlm.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from maxlm.eval.harness_hook import HarnessEvaluator  # pylint: disable=g-import-not-at-top
  fn = HarnessEvaluator(harness_cfg, model_config=model_config,
                        tokenizer=tokenizer_lib.load(tokenizer_path), max_length=seq_len,
                        workdir=workdir, progress=True)  # '[k/n] requests; ETA' on stderr, host 0
  return Hook(every=harness_cfg.every, fn=fn, name="harness")
