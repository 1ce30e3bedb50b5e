r"""Probability probes: what a model believes, tracked across checkpoints.

  python -m maxlm.eval.probes --checkpoints=/tmp/run1,/tmp/run2/checkpoints/500 \
      --probes=configs/probes/example.jsonl --out=/tmp/probes

A probe file is JSONL, one probe per line:
  {"id": "capital_fr", "type": "completion", "prompt": "The capital of France is",
   "target": " Paris", "tags": ["facts"]}
      -> log p(target | prompt) in nats (total and per token), each target
         token's log-prob and rank (1 = the model's first choice).
  {"id": "cmp_9.9_9.11", "type": "contrastive", "prompt": "",
   "texts": ["9.9 is larger than 9.11", "9.11 is larger than 9.9"], "score": "mean"}
      -> the first text should be the most probable. Each text is scored as
         log p(text | prompt), by per-token mean ("mean", the default: texts
         of different lengths compare) or by total ("sum"). pass = first >
         every other; margin = first - best other (nats).
Prompts are preceded by BOS. A workdir given to --checkpoints stands for all
its checkpoints in step order (a run's history); a `checkpoints/<step>` dir
for itself. The report lists, between the first and the last checkpoint,
which probes improved and which regressed (forgetting in continued
pretraining shows here), and plots each probe's value over the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

from maxlm.eval import scoring

_TYPES = ("completion", "contrastive")


@dataclasses.dataclass(frozen=True)
class Probe:
  id: str
  type: str  # completion | contrastive
  prompt: str = ""
  target: str = ""  # completion
  texts: tuple = ()  # contrastive; the first should win
  score: str = "mean"  # contrastive: mean | sum
  tags: tuple = ()


def load_probes(path: str) -> list[Probe]:
  """Parses a probe JSONL file; errors name the file, line and field."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"probe file {path!r} does not exist")
  out, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip() or line.lstrip().startswith("//"):
        continue
      where = f"{path}:{n}"
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(d, dict):
        raise ValueError(f"{where}: a probe must be a JSON object")
      out.append(_parse(d, where))
      if out[-1].id in seen:
        raise ValueError(f"{where}: duplicate probe id {out[-1].id!r}")
      seen.add(out[-1].id)
  if not out:
    raise ValueError(f"{path}: no probes")
  return out


def _parse(d: dict, where: str) -> Probe:
  def need(field, kind):
    if field not in d:
      raise ValueError(f"{where}: field {field!r} is missing")
    if not isinstance(d[field], kind):
      raise ValueError(f"{where}: field {field!r} must be a {kind.__name__}")
    return d[field]
  known = {f.name for f in dataclasses.fields(Probe)}
  extra = set(d) - known
  if extra:
    raise ValueError(f"{where}: unknown field(s) {sorted(extra)}; fields are {sorted(known)}")
  pid, typ = need("id", str), need("type", str)
  if typ not in _TYPES:
    raise ValueError(f"{where}: field 'type' is {typ!r}, not one of {_TYPES}")
  prompt = d.get("prompt", "")
  if not isinstance(prompt, str):
    raise ValueError(f"{where}: field 'prompt' must be a str")
  tags = tuple(d.get("tags", ()))
  if typ == "completion":
    target = need("target", str)
    if not target:
      raise ValueError(f"{where}: field 'target' is empty: there is nothing to score")
    return Probe(pid, typ, prompt, target=target, tags=tags)
  texts = need("texts", list)
  if len(texts) < 2 or not all(isinstance(t, str) and t for t in texts):
    raise ValueError(f"{where}: field 'texts' needs two or more non-empty strings")
  score = d.get("score", "mean")
  if score not in ("mean", "sum"):
    raise ValueError(f"{where}: field 'score' is {score!r}, not 'mean' or 'sum'")
  return Probe(pid, typ, prompt, texts=tuple(texts), score=score, tags=tags)


def run_probes(model_config, params, tokenizer, probes: Sequence[Probe], *,
               max_len: int | None = None, batch_size: int = 8) -> list[dict]:
  """One result dict per probe (see the module docstring for the fields)."""
  requests, owners = [], []
  for p in probes:
    # BOS when the tokenizer has one, else EOS: the first token needs a condition.
    prefix = [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]
    for t in ([p.target] if p.type == "completion" else p.texts):
      # Encoded with the prompt, as lm-eval does: a text's ids are those it has in context.
      ctx, ids = scoring.encode_pair(tokenizer.encode, p.prompt, t, prefix)
      if not ids:
        raise ValueError(f"probe {p.id!r}: {t!r} encodes to no tokens")
      if max_len is not None and len(ctx) + len(ids) - 1 > max_len:
        raise ValueError(f"probe {p.id!r}: prompt + text are {len(ctx) + len(ids) - 1} tokens,"
                         f" longer than the model's context of {max_len}")
      requests.append((ctx, ids))
      owners.append(p.id)
  scores = scoring.score_continuations(model_config, params, requests, batch_size=batch_size)
  by_probe: dict[str, list] = {}
  for pid, s in zip(owners, scores):
    by_probe.setdefault(pid, []).append(s)
  out = []
  for p in probes:
    ss = by_probe[p.id]
    if p.type == "completion":
      s = ss[0]
      out.append(dict(id=p.id, type=p.type, tags=list(p.tags), logprob=s.total,
                      mean_logprob=s.mean, token_logprobs=s.logprobs.tolist(),
                      ranks=s.ranks.tolist(), greedy=s.greedy,
                      tokens=[tokenizer.decode([i]) for i in
                              scoring.encode_pair(tokenizer.encode, p.prompt, p.target, prefix)[1]]))
    else:
      vals = [s.mean if p.score == "mean" else s.total for s in ss]
      margin = vals[0] - max(vals[1:])
      out.append(dict(id=p.id, type=p.type, tags=list(p.tags), score=p.score, scores=vals,
                      margin=margin, passed=bool(margin > 0)))
  return out


def probe_metrics(model_config, params, tokenizer_path: str, probes: Sequence[Probe], *,
                  max_len: int | None = None, batch_size: int = 8) -> dict[str, float]:
  """Scalars for a training run's metrics.jsonl: `probe/<id>/<field>` per probe.

  completion: logp (total nats) and mean_logp; contrastive: margin (nats) and
  pass (1.0 / 0.0); and probe/pass_frac over the contrastive probes. The
  driver loads `probes` once (a bad file fails before training starts); the
  tokenizer is loaded once per path.
  """
  results = run_probes(model_config, params, _tokenizer(tokenizer_path), probes,
                       max_len=max_len, batch_size=batch_size)
  out = {}
  for r in results:
    key = f"probe/{r['id']}"
    if r["type"] == "completion":
      out[f"{key}/logp"], out[f"{key}/mean_logp"] = float(r["logprob"]), float(r["mean_logprob"])
    else:
      out[f"{key}/margin"], out[f"{key}/pass"] = float(r["margin"]), float(r["passed"])
  passes = [v for k, v in out.items() if k.endswith("/pass")]
  if passes:
    out["probe/pass_frac"] = sum(passes) / len(passes)
  return out


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
  from maxlm.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return tokenizer_lib.load(path)


def probe_value(result: dict) -> float:
  """The one number tracked over training: log-prob (completion) or margin (contrastive)."""
  return result["logprob"] if result["type"] == "completion" else result["margin"]


def compare(history: list[tuple[str, list[dict]]], tol: float = 0.05) -> list[dict]:
  """Per probe: first and last value, change, and improved / regressed / unchanged.

  `history` is [(checkpoint label, run_probes results)] in training order.
  `tol` (nats) is the change below which a probe counts as unchanged.
  """
  first, last = history[0][1], history[-1][1]
  rows = []
  for a, b in zip(first, last):
    delta = probe_value(b) - probe_value(a)
    status = "improved" if delta > tol else "regressed" if delta < -tol else "unchanged"
    if a["type"] == "contrastive" and a["passed"] != b["passed"]:
      status += " (now passes)" if b["passed"] else " (now fails)"
    rows.append(dict(id=a["id"], type=a["type"], first=probe_value(a), last=probe_value(b),
                     delta=delta, status=status,
                     values=[probe_value(r[i]) for _, r in history
                             for i in range(len(r)) if r[i]["id"] == a["id"]]))
  return rows


def format_report(history: list[tuple[str, list[dict]]], rows: list[dict]) -> str:
  """Markdown: one table across checkpoints, then the improved / regressed summary."""
  labels = [lab for lab, _ in history]
  lines = [f"# Probes over {len(labels)} checkpoint(s): {labels[0]} -> {labels[-1]}", "",
           "Completion: log p(target | prompt) in nats. Contrastive: margin of the first text"
           " over the best other (nats; > 0 passes).", "",
           "| probe | type | " + " | ".join(labels) + " | change | status |",
           "|---|---|" + "---:|" * len(labels) + "---:|---|"]
  for r in rows:
    lines.append(f"| {r['id']} | {r['type']} | " + " | ".join(f"{v:.3f}" for v in r["values"])
                 + f" | {r['delta']:+.3f} | {r['status']} |")
  for kind in ("improved", "regressed"):
    ids = [r["id"] for r in rows if r["status"].startswith(kind)]
    lines += ["", f"**{kind}** ({len(ids)}): " + (", ".join(ids) or "none")]
  passed = [sum(r["passed"] for r in res if r["type"] == "contrastive") for _, res in history]
  n_con = sum(r["type"] == "contrastive" for r in history[0][1])
  if n_con:
    lines += ["", "contrastive passed: " + ", ".join(f"{lab} {p}/{n_con}"
                                                     for lab, p in zip(labels, passed))]
  return "\n".join(lines) + "\n"


def plot_history(rows: list[dict], labels: list[str], out_png: str) -> str:
  """Each probe's value over the checkpoints: completions left, contrastive margins right."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax, kind, ylabel in ((axes[0], "completion", "log p(target | prompt) (nats)"),
                           (axes[1], "contrastive", "margin (nats; > 0 passes)")):
    for r in rows:
      if r["type"] == kind:
        ax.plot(range(len(labels)), r["values"], marker="o", lw=1, label=r["id"])
    if kind == "contrastive":
      ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel(ylabel)
    ax.set_title(kind)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png


_YLABEL = {"completion": "log p(target | prompt) (nats)", "contrastive": "margin (nats; > 0 passes)"}


def plot_each(rows: list[dict], labels: list[str], out_dir: str) -> list[str]:
  """One figure per probe, `<out_dir>/<probe id>.png`: its value over the checkpoints."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for r in rows:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.plot(range(len(labels)), r["values"], marker="o", lw=1)
    if r["type"] == "contrastive":
      ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel(_YLABEL[r["type"]])
    ax.set_title(f"{r['id']} ({r['type']}): {r['status']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(r["id"]))
    paths.append(os.path.join(out_dir, f"{safe}.png"))
    fig.savefig(paths[-1], dpi=100)
  return paths


def expand_checkpoints(spec: str) -> list[tuple[str, str, int | None]]:
  """DIR[,DIR...] -> [(label, path, step)]: a workdir expands to all its checkpoints."""
  from maxlm.generate import checkpoint_steps  # pylint: disable=g-import-not-at-top
  out = []
  for d in filter(None, (s.strip() for s in spec.split(","))):
    d = os.path.abspath(d)
    if not os.path.isdir(d):
      raise FileNotFoundError(f"--checkpoints: {d!r} does not exist")
    steps = checkpoint_steps(d)
    if steps:
      out.extend((f"{os.path.basename(d)}@{s}", d, s) for s in steps)
    elif os.path.basename(os.path.dirname(d)) == "checkpoints":
      out.append((f"{os.path.basename(os.path.dirname(os.path.dirname(d)))}@{os.path.basename(d)}",
                  d, None))
    else:
      out.append((os.path.basename(d), d, None))  # params/ export or an HF directory
  return out


def probe_checkpoints(spec: str, probes_path: str, out_dir: str, *, max_len: int | None = None
                      ) -> list[dict]:
  """The CLI's work: run the probes on every checkpoint, write report.md, probes.jsonl,
  probes.png (all probes) and probes/<id>.png (one figure per probe)."""
  from maxlm.generate import load_model  # pylint: disable=g-import-not-at-top
  probes = load_probes(probes_path)
  history = []
  for label, path, step in expand_checkpoints(spec):
    cfg, params, tok = load_model(path, step=step)
    history.append((label, run_probes(cfg, params, tok, probes, max_len=max_len)))
  rows = compare(history)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "probes.jsonl"), "w") as f:
    for label, res in history:
      for r in res:
        f.write(json.dumps(dict(checkpoint=label, **r)) + "\n")
  report = format_report(history, rows)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(report)
  plot_history(rows, [lab for lab, _ in history], os.path.join(out_dir, "probes.png"))
  plot_each(rows, [lab for lab, _ in history], os.path.join(out_dir, "probes"))  # one per probe
  print(report)
  return rows


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  probe_checkpoints(f.checkpoints, f.probes, f.out, max_len=f.max_len)


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoints", None, "DIR[,DIR...]: workdirs (all their checkpoints),"
                      " checkpoints/<step> dirs or HF dirs, in training order", required=True)
  flags.DEFINE_string("probes", "configs/probes/example.jsonl", "probe JSONL file")
  flags.DEFINE_string("out", "probes_report", "directory for report.md, probes.jsonl, probes.png")
  flags.DEFINE_integer("max_len", None, "model context; longer probes are an error")
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
