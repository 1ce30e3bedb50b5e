"""Loss-curve plots from metrics.jsonl.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so the
library works headless and never changes the backend a notebook chose.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def plot_loss_curve(rows: list[dict], out_png: str, title: str = "") -> str:
  """Writes loss_figure(rows) to `out_png`; returns the path."""
  loss_figure(rows, title).savefig(out_png, dpi=120)
  return out_png


def loss_figure(rows: list[dict], title: str = ""):
  """Train loss (and per-domain train / eval losses when present) against step."""
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  train = [r for r in rows if "loss" in r]
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=2)
  keys = sorted({k for r in rows for k in r if k.startswith(("train/", "eval/")) and k.endswith("/loss")})
  for k in keys:
    pts = [(r["step"], r[k]) for r in rows if k in r]
    ax.plot(*zip(*pts), label=k, lw=1, ls="--" if k.startswith("eval/") else "-")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(title or "training loss")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
