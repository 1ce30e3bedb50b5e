"""Every PNG the README mentions, rendered and checked (issue 18.5).

Each figure is caught as it is saved; every panel must have both axes
labelled and non-empty data, a colour bar must name its metric, a series of
one point must carry a marker (a lone point drawn as a line is invisible),
and a distillation objective never shares an axis with a cross-entropy.
"""
import json
import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from maxlm.monitor import loss_figure, plot_loss_curve


@pytest.fixture
def saved(monkeypatch):
  """[(path, Figure)] for every figure saved while the test runs."""
  figs, real = [], Figure.savefig

  def save(self, path, *args, **kwargs):
    figs.append((str(path), self))
    return real(self, path, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", save)
  return figs


def _data_axes(fig):
  return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _check(path, fig):
  """The rules every README figure obeys; returns the data axes."""
  assert os.path.getsize(path) > 0, path
  axes = _data_axes(fig)
  assert axes, path
  for ax in axes:
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (path, ax.get_title())
    lines = [l for l in ax.get_lines() if len(np.atleast_1d(l.get_xdata())) > 0]
    points = sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))
    bars = [b for b in ax.patches if b.get_height() or b.get_width()]
    assert lines or points or bars or ax.images, (path, ax.get_ylabel())
    for l in lines:  # (axvline / axhline are two-point lines: not caught here)
      if len(np.atleast_1d(l.get_xdata())) == 1:
        assert l.get_marker() not in ("None", None, ""), (path, l.get_label())
  for cb in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
    assert (cb.get_ylabel() or cb.get_xlabel()).strip(), f"{path}: colour bar without a label"
  return axes


def _rows(steps, distill=False):
  rows = []
  for s in range(1, steps + 1):
    ce = 4.0 - s * 0.05
    row = {"step": s, "loss": (0.5 * ce + 0.5 * 0.3) if distill else ce,
           "train/prose/loss": ce, "train/code/loss": ce - 0.3}
    if distill:
      row.update(distill=0.3, alpha=0.5)
    rows.append(row)
  rows.append({"step": steps, "eval/prose/loss": 3.6, "eval/code/loss": 3.4})  # one eval, at the end
  return rows


def test_loss_png_of_a_pretraining_run(tmp_path, saved):
  plot_loss_curve(_rows(20), str(tmp_path / "loss.png"), title="tiny",
                  events=[{"step": 12, "action": "rollback", "restore_step": 8,
                           "values": {"loss": 9.0}}])
  (path, fig), = saved
  ax, = _check(path, fig)  # plain CE: one panel, one quantity
  assert ax.get_ylabel() == "cross-entropy (nats/token)"
  labels = {l.get_label(): l for l in ax.get_lines()}
  assert {"train", "train/prose/loss", "eval/code/loss"} <= set(labels)
  assert labels["eval/code/loss"].get_marker() == "o"  # the single eval point is visible


def test_distillation_objective_and_cross_entropy_get_separate_axes(tmp_path, saved):
  plot_loss_curve(_rows(30, distill=True), str(tmp_path / "loss.png"))
  (path, fig), = saved
  top, bottom = _check(path, fig)
  assert top.get_ylabel() == "objective (nats/token)" and "distillation" in top.get_title()
  assert bottom.get_ylabel() == "cross-entropy (nats/token)"
  assert [l.get_label() for l in top.get_lines()] == ["train objective"]
  assert all(l.get_label().endswith("/loss") for l in bottom.get_lines())
  # The objective (0.5 CE + 0.5 KL ~ 2.1) is nowhere drawn against the CE (~3.5).
  top_y = np.concatenate([l.get_ydata() for l in top.get_lines()])
  np.testing.assert_allclose(top_y, [r["loss"] for r in _rows(30, distill=True) if "loss" in r])


def test_loss_figure_is_returned_for_notebooks():
  fig = loss_figure(_rows(5))
  assert isinstance(fig, Figure) and _data_axes(fig)[0].get_lines()


def test_needle_heatmaps_name_their_metric(tmp_path, saved):
  from maxlm.eval import needle
  results = [dict(length=L, depth=d, greedy_correct=float(L < 256), answer_loglik=-0.5 * d,
                  teacher_forced_correct=1.0) for L in (128, 256) for d in (0.0, 0.5, 1.0)]
  needle.heatmap(results, str(tmp_path / "heatmap.png"))
  needle.heatmap(results, str(tmp_path / "heatmap_loglik.png"), key="answer_loglik")
  for (path, fig), metric in zip(saved, ("greedy_correct", "answer_loglik")):
    _check(path, fig)
    cb, = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert metric in cb.get_ylabel()


def test_probes_make_one_figure_per_probe_and_an_overview(tmp_path, saved):
  from maxlm.eval import probes
  rows = [dict(id="capital", type="completion", values=[-3.0, -1.5], delta=1.5, status="improved"),
          dict(id="agreement", type="contrastive", values=[0.2, -0.1], delta=-0.3,
               status="regressed")]
  probes.plot_history(rows, ["step 4", "step 8"], str(tmp_path / "probes.png"))
  paths = probes.plot_each(rows, ["step 4", "step 8"], str(tmp_path / "probes"))
  assert [os.path.basename(p) for p in paths] == ["capital.png", "agreement.png"]
  assert [os.path.basename(p) for p, _ in saved] == ["probes.png", "capital.png", "agreement.png"]
  for path, fig in saved:
    _check(path, fig)
  assert "log p(target | prompt)" in _data_axes(saved[1][1])[0].get_ylabel()
  assert "margin" in _data_axes(saved[2][1])[0].get_ylabel()


def test_forgetting_png(tmp_path, saved):
  from maxlm.train import stages
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for s, (code, prose) in {3: (3.0, 3.9), 6: (2.8, 4.0)}.items():
      f.write(json.dumps({"step": s, "eval/code/loss": code, "eval/prose/loss": prose}) + "\n")
  report = {"code": {"before": 3.2, "after": 2.8}, "prose": {"before": 3.8, "after": 4.0}}
  stages.forgetting_plot(str(tmp_path), report, "code")
  (path, fig), = saved
  assert len(_check(path, fig)) == 2


def test_scaling_pngs(tmp_path, saved):
  from maxlm.scaling import chinchilla, isoflop, plots
  n, d, c, budget = [], [], [], []
  for C in (1e15, 1e16, 1e17):
    for N in np.geomspace(2e5, 2e7, 5):
      n.append(N), d.append(C / (6 * N)), c.append(C), budget.append(C)
  n, d = np.array(n), np.array(d)
  loss = 1.7 + 400 / n ** 0.34 + 410 / d ** 0.28
  fit2 = isoflop.fit(n, d, loss, c=np.array(c), budget=np.array(budget))
  fit3 = chinchilla.fit(n, d, loss, grid=chinchilla.coarse_grid())
  plots.isoflop_profiles(n, loss, np.array(budget), fit2, str(tmp_path / "isoflop.png"),
                         ylabel="eval_loss")
  plots.frontier(str(tmp_path / "frontier.png"), fit2, fit3)
  plots.residuals(fit3, n, d, loss, str(tmp_path / "residuals.png"))
  assert len(saved) == 3
  for path, fig in saved:
    _check(path, fig)


def test_harness_and_online_mixing_pngs(tmp_path, saved):
  """harness.png (the in-training lm-eval hook) and mixing.png (online mixing) are both
  `plot_prefix` figures; the first eval is a single point, which must still be drawn."""
  from maxlm.monitor.plots import plot_prefix
  rows = [{"step": 10, "harness/arc_easy/acc": 0.31}, {"step": 10, "harness/hellaswag/acc": 0.27},
          {"step": 20, "harness/hellaswag/acc": 0.29}]
  plot_prefix(rows, "harness/", str(tmp_path / "harness.png"), title="downstream evals",
              ylabel="metric")
  mix = [{"step": s, "mix/prose": w, "mix/code": 1 - w} for s, w in ((0, 0.5), (50, 0.6))]
  plot_prefix(mix, "mix/", str(tmp_path / "mixing.png"), title="online mixing (odm)",
              ylabel="source weight")
  assert [os.path.basename(p) for p, _ in saved] == ["harness.png", "mixing.png"]
  for path, fig in saved:
    (ax,) = _check(path, fig)
    assert len(ax.get_lines()) == 2, path  # one line per task / per source


def test_curation_report_pngs(tmp_path, saved):
  """docs/curate.md's four charts, from a report summary of two stages and two sources."""
  from maxlm.curate import report
  summary = {
      "stages": [{"stage": "rules", "docs_out": 80, "removed": {"too_short": 15, "symbols": 5}},
                 {"stage": "dedup", "docs_out": 60, "removed": {"near_duplicate": 20}}],
      "sources": {"raw/a.jsonl": {"rules": {"docs_out": 50}, "dedup": {"docs_out": 35}},
                  "raw/b.jsonl": {"rules": {"docs_out": 30}, "dedup": {"docs_out": 25}}},
      "duplicate_cluster_sizes": {"2": 12, "3": 4}, "languages": {"en": 58, "fr": 2},
      "score_histograms": {}}
  names = report.charts(summary, str(tmp_path))
  assert names == ["stages.png", "rules.png", "sources.png", "distributions.png"]
  assert [os.path.basename(p) for p, _ in saved] == names
  for path, fig in saved:
    _check(path, fig)
