"""Loss-curve plots from metrics.jsonl.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so the
library works headless and never changes the backend a notebook chose.
"""

from __future__ import annotations

from matplotlib.figure import Figure


_EVENT_COLORS = {"skip": "tab:orange", "rollback": "tab:red", "stop": "black", "log": "tab:gray"}


def plot_loss_curve(rows: list[dict], out_png: str, title: str = "",
                    events: list[dict] | None = None) -> str:
  """Writes loss_figure(rows, title, events) to `out_png`; returns the path."""
  loss_figure(rows, title, events).savefig(out_png, dpi=120)
  return out_png


def loss_figure(rows: list[dict], title: str = "", events: list[dict] | None = None):
  """Train loss (and per-domain train / eval losses when present) against step.

  `events` (rows of events.jsonl) are drawn as vertical lines at their step,
  coloured by action, with a marker at the spike's loss; a rollback also
  shades the steps it replayed (restore_step to the spike).
  """
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  train = [r for r in rows if "loss" in r]
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=2)
  keys = sorted({k for r in rows for k in r if k.startswith(("train/", "eval/")) and k.endswith("/loss")})
  for k in keys:
    pts = [(r["step"], r[k]) for r in rows if k in r]
    ax.plot(*zip(*pts), label=k, lw=1, ls="--" if k.startswith("eval/") else "-")
  seen = set()
  for e in events or ():
    action, color = e.get("action", "log"), _EVENT_COLORS.get(e.get("action"), "tab:gray")
    label = None if action in seen else f"spike: {action}"
    seen.add(action)
    ax.axvline(e["step"], color=color, lw=0.8, ls=":", label=label)
    loss = (e.get("values") or {}).get("loss")
    if loss is not None and loss == loss and abs(loss) != float("inf"):  # finite only
      ax.plot([e["step"]], [loss], marker="x", color=color, ms=6, ls="none")
    if action == "rollback" and e.get("restore_step") is not None:
      ax.axvspan(e["restore_step"], e["step"], color=color, alpha=0.08)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(title or "training loss")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
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
