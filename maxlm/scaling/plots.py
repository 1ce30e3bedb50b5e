"""PNG plots of scaling fits: isoFLOP profiles with their minima, the
compute-optimal frontier, and Approach 3 residuals (the three views of
Hoffmann et al. 2022, figs. 3 and 4). matplotlib with the Agg backend only.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on TPU VMs or CI
import matplotlib.pyplot as plt
import numpy as np

from maxlm.scaling import chinchilla


def isoflop_profiles(n, loss, budget, iso_fit, path, ylabel="final loss"):
  """Loss vs N per budget, its parabola, and the vertex."""
  n, loss, budget = np.asarray(n, float), np.asarray(loss, float), np.asarray(budget)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  labels = np.unique(budget)
  colours = plt.cm.viridis(np.linspace(0, 0.9, len(labels)))
  parabolas = {p.label: p for p in (iso_fit.parabolas if iso_fit else [])}
  for lab, col in zip(labels, colours):
    m = budget == lab
    ax.scatter(n[m], loss[m], color=col, s=14)
    par = parabolas.get(lab)
    if par is not None:
      x = np.linspace(np.log(n[m].min()), np.log(n[m].max()), 100)
      ax.plot(np.exp(x), np.polyval(par.coef, x), color=col, lw=1, label=f"C={par.flops:.2g}")
      ax.scatter([par.n_opt], [par.loss_opt], color=col, marker="*", s=120, edgecolor="k", zorder=3)
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel(ylabel)
  ax.set_title("isoFLOP profiles (stars: parabola minima)")
  if iso_fit:
    ax.legend(fontsize=7)
  return _save(fig, path)


def frontier(path, iso_fit=None, fit3=None, flops_range=None):
  """N_opt(C): Approach 2 minima and power law, and Approach 3's closed form."""
  fig, ax = plt.subplots(figsize=(6, 4.5))
  if flops_range is None:
    c = [p.flops for p in iso_fit.parabolas] if iso_fit else [1e18, 1e24]
    flops_range = (min(c) / 3, max(c) * 100)
  cs = np.geomspace(*flops_range, 100)
  if iso_fit:
    ax.scatter([p.flops for p in iso_fit.parabolas], [p.n_opt for p in iso_fit.parabolas], color="C0", zorder=3,
               label="isoFLOP minima")
    lo, hi = iso_fit.n_opt.interval(cs)
    ax.plot(cs, iso_fit.n_opt(cs), color="C0", label=f"Approach 2: N_opt ∝ C^{iso_fit.n_opt.p:.3f}")
    ax.fill_between(cs, lo, hi, color="C0", alpha=0.2)
  if fit3:
    n_opt, _ = chinchilla.compute_optimal(fit3.params, cs)
    a = fit3.beta / (fit3.alpha + fit3.beta)
    ax.plot(cs, n_opt, color="C1", ls="--", label=f"Approach 3: N_opt ∝ C^{a:.3f}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("compute C (FLOPs)")
  ax.set_ylabel("compute-optimal N")
  ax.legend(fontsize=8)
  return _save(fig, path)


def residuals(fit3, n, d, loss, path):
  """log L - log L_hat against compute: structure here means the law's form is wrong."""
  n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
  r = np.log(loss) - np.log(fit3.predict(n, d))
  # A degenerate fit (too few points for five parameters: A or alpha overflow) predicts inf;
  # draw the finite residuals, as log axes over no data cannot be drawn at all.
  ok = np.isfinite(r)
  n, d, r = n[ok], d[ok], r[ok]
  fig, ax = plt.subplots(figsize=(6, 4))
  if not ok.all():
    ax.text(0.02, 0.95, f"{(~ok).sum()} run(s) with a non-finite prediction not drawn",
            transform=ax.transAxes, fontsize=8, va="top")
  sc = ax.scatter(6 * n * d, r, c=np.log10(n), s=12, cmap="viridis")
  fig.colorbar(sc, ax=ax, label="log10 N")
  ax.axhline(0, color="k", lw=0.8)
  if ok.any():
    ax.set_xscale("log")
  ax.set_xlabel("6ND")
  ax.set_ylabel("log L - log L_hat")
  rms = f"RMS {np.sqrt(np.mean(r ** 2)):.4f}" if ok.any() else "no finite prediction"
  ax.set_title(f"Approach 3 residuals ({rms})")
  return _save(fig, path)


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path

