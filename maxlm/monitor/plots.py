"""Loss-curve plots from metrics.jsonl.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so the
library works headless and never changes the backend a notebook chose.

One quantity per y-axis: when the training objective is not the plain
cross-entropy (distillation mixes in a KL term; MTP adds future-token
losses), the objective gets its own panel and the per-domain cross-entropy
another, so a distillation objective of ~2 is never read against a
cross-entropy of ~4 on one unlabelled axis. Series with few points (an eval
at the end only) are drawn with markers, so a single point is visible.
"""

from __future__ import annotations

from matplotlib.figure import Figure


_EVENT_COLORS = {"skip": "tab:orange", "rollback": "tab:red", "stop": "black", "log": "tab:gray"}
# Keys whose presence means "loss" is an objective other than the cross-entropy.
_OBJECTIVE_TERMS = {"distill": "distillation: (1 - alpha) CE + alpha distill term",
                    "mtp": "CE + multi-token-prediction terms"}
_MARKER_BELOW = 25  # series with fewer points than this get markers


def plot_loss_curve(rows: list[dict], out_png: str, title: str = "",
                    events: list[dict] | None = None) -> str:
  """Writes loss_figure(rows, title, events) to `out_png`; returns the path."""
  loss_figure(rows, title, events).savefig(out_png, dpi=120)
  return out_png


def _objective_kind(rows) -> str | None:
  """What the logged `loss` is, when it is not the cross-entropy (None: it is)."""
  for key, what in _OBJECTIVE_TERMS.items():
    if any(key in r or f"{key}_sum" in r for r in rows):
      return what
  return None


def _series(ax, pts, **kw):
  if not pts:
    return
  xs, ys = zip(*pts)
  if len(pts) < _MARKER_BELOW:
    kw.setdefault("marker", "o")
    kw.setdefault("ms", 4)
  ax.plot(xs, ys, **kw)


def _draw_events(ax, events, with_values: bool):
  seen = set()
  for e in events or ():
    action, color = e.get("action", "log"), _EVENT_COLORS.get(e.get("action"), "tab:gray")
    label = None if action in seen else f"spike: {action}"
    seen.add(action)
    ax.axvline(e["step"], color=color, lw=0.8, ls=":", label=label)
    loss = (e.get("values") or {}).get("loss")
    if with_values and loss is not None and loss == loss and abs(loss) != float("inf"):
      ax.plot([e["step"]], [loss], marker="x", color=color, ms=6, ls="none")
    if action == "rollback" and e.get("restore_step") is not None:
      ax.axvspan(e["restore_step"], e["step"], color=color, alpha=0.08)


def loss_figure(rows: list[dict], title: str = "", events: list[dict] | None = None):
  """Train loss (and per-domain train / eval losses when present) against step.

  `events` (rows of events.jsonl) are drawn as vertical lines at their step,
  coloured by action, with a marker at the spike's loss; a rollback also
  shades the steps it replayed (restore_step to the spike).
  """
  objective = _objective_kind(rows)
  train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
  keys = sorted({k for r in rows for k in r if k.startswith(("train/", "eval/"))
                 and k.endswith("/loss")})
  per_domain = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
  fig = Figure(figsize=(7, 4 if objective is None or not keys else 6.5))
  if objective is None or not keys:
    ax_obj = ax_ce = fig.add_subplot()
    ax_obj.set_ylabel("cross-entropy (nats/token)" if objective is None
                      else f"objective (nats/token): {objective}")
  else:
    ax_obj, ax_ce = fig.subplots(2, 1, sharex=True)
    ax_obj.set_ylabel("objective (nats/token)")
    ax_obj.set_title(f"training objective: {objective}", fontsize=9)
    ax_ce.set_ylabel("cross-entropy (nats/token)")
    ax_ce.set_title("cross-entropy per domain (train and held-out)", fontsize=9)
  _series(ax_obj, train, label="train objective" if objective else "train", lw=2)
  for k, pts in per_domain.items():
    _series(ax_ce, pts, label=k, lw=1, ls="--" if k.startswith("eval/") else "-")
  for ax in {id(ax_obj): ax_obj, id(ax_ce): ax_ce}.values():
    _draw_events(ax, events, with_values=ax is ax_obj)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.suptitle(title or "training loss")
  fig.tight_layout()
  return fig


def plot_prefix(rows: list[dict], prefix: str, out_png: str, *, title: str, ylabel: str) -> str:
  """Every `prefix*` key of metrics rows against step, one line each (headless matplotlib)."""
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  for k in sorted({k for r in rows for k in r if k.startswith(prefix)}):
    pts = [(r["step"], r[k]) for r in rows if k in r]
    ax.plot(*zip(*pts), marker="o", ms=3, label=k[len(prefix):])
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  return out_png
