"""What a stage did to each domain: held-out loss before (the parent) and after, and its plot.

`report_domain_losses` evaluates the parent's params and this stage's under
this stage's model config (a long-context stage's RoPE included) on this
stage's held-out batches; `forgetting_plot` draws each domain's held-out loss
over the run, the parent's as step 0: a rising general-domain curve while the
target domain falls is forgetting (Ibrahim et al. 2024, "Simple and Scalable
Strategies to Continually Pre-train LLMs").
"""

from __future__ import annotations

import json
import logging
import os

import jax

from maxlm import checkpoint as checkpoint_lib
from maxlm import data as data_lib
from maxlm.checkpoint import rundir
from maxlm.data.config import iter_sources
from maxlm.model import ModelConfig
from maxlm.monitor import read_jsonl
from maxlm.train import lineage
from maxlm.train.losses import loss_sums

log = logging.getLogger("maxlm.eval")


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _host_params(source: str, kind: str, model_cfg: ModelConfig):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if kind == "hf":
    from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
    return hf_lib.import_checkpoint(source, model_overrides=lineage.hf_overrides(model_cfg))[1]
  # An explicit target: the checkpoint may come from another device topology.
  from maxlm.model import init_params  # pylint: disable=g-import-not-at-top
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(lambda r: init_params(model_cfg, r),
                                         jax.random.PRNGKey(0)))
  if os.path.basename(source) == "params":
    return ocp.StandardCheckpointer().restore(source, abstract)
  return checkpoint_lib.load_state_params(source, abstract)


def report_domain_losses(config, workdir: str) -> dict:
  """Held-out loss per domain of the parent's params ('before') and this stage's ('after').

  Both are evaluated under this stage's model config (a long-context stage's
  RoPE included) on this stage's held-out batches; written to
  <workdir>/domain_losses.json.
  """
  workdir = os.path.abspath(workdir)  # orbax restores only absolute paths
  model_cfg = ModelConfig.from_any(config.model)
  manifest = _read_json(os.path.join(workdir, lineage.MANIFEST))
  tok = data_lib.build_tokenizer(config.data, workdir)
  domains = data_lib.domain_names(config.data)
  batches = data_lib.make_eval_batches(config.data, tokenizer_path=tok,
                                       seq_len=config.data.seq_len,
                                       global_batch=config.train.global_batch)
  after_src = os.path.join(workdir, "params")
  if not os.path.isdir(after_src):
    steps = rundir.committed_steps(workdir)
    after_src = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
  sources = dict(after=(after_src, "maxlm"))
  if manifest.get("parent"):
    sources["before"] = (manifest["parent"]["source"], manifest["parent"]["kind"])
  fn = jax.jit(lambda p, b: loss_sums(p, b, model_config=model_cfg,
                                      num_domains=len(domains), with_mtp=False)[1])
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
  srcs = iter_sources(config.data)
  return max(srcs, key=lambda s: s["weight"])["domain"]
