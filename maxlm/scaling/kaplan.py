"""Kaplan compute law L(C) = (C_c / C)^alpha_C, for when only compute is known.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. (1.3)
(their L(C_min) form). log L = alpha_C log C_c - alpha_C log C is a line in
log-log, so the fit is ordinary least squares and the interval at a new budget
is the OLS confidence band of that line. With losses that approach an
irreducible floor the pure power law bends away at large C; fit it over the
frontier (the lowest loss per budget), as Kaplan did. numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maxlm.scaling import isoflop


@dataclasses.dataclass
class KaplanFit:
  c_c: float  # C_c in the same unit as the input compute
  alpha_c: float
  line: isoflop.PowerLaw  # L = k C^p with p = -alpha_C, k = C_c^alpha_C

  def predict(self, flops):
    return self.line(flops)

  def predict_interval(self, flops, level=0.95):
    return self.line.interval(flops, level)

  def to_json(self, level=0.95):
    out = dict(C_c=self.c_c, alpha_C=self.alpha_c, alpha_C_se=self.line.p_se, n_points=self.line.n)
    if "exponent_ci" in (j := self.line.to_json(level)):
      out["alpha_C_ci"] = sorted(-v for v in j["exponent_ci"])
    return out


def frontier(c, loss, budget=None):
  """Lowest loss per budget (budgets grouped within 5% of compute when not given)."""
  c, loss = np.asarray(c, float), np.asarray(loss, float)
  budget = isoflop.group_by_budget(c) if budget is None else np.asarray(budget)
  keep = [np.flatnonzero(budget == b)[np.argmin(loss[budget == b])] for b in np.unique(budget)]
  return c[keep], loss[keep]


def fit(c, loss, use_frontier=True):
  if use_frontier:
    c, loss = frontier(c, loss)
  line = isoflop.fit_power_law(c, loss)
  alpha_c = -line.p
  return KaplanFit(c_c=float(line.k ** (1 / alpha_c)), alpha_c=float(alpha_c), line=line)
