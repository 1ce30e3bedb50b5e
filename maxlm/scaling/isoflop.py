"""Chinchilla Approach 2: isoFLOP profiles -> N_opt(C) = A_N C^a, D_opt(C) = A_D C^b.

Hoffmann et al. 2022, section 3.2: for each compute budget C, fit a parabola
to final loss against log N over the runs at that budget; its vertex is the
loss-optimal model size N_opt(C). A straight line through (log C, log N_opt)
gives the power law N_opt = A_N C^a; the same through D_opt gives D_opt =
A_D C^b (a + b = 1 when D = C / (6N)). This is also how Llama 3 (section 3.2.1)
fitted N*(C) = A C^alpha. numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats


@dataclasses.dataclass
class Parabola:
  """loss = c2 x^2 + c1 x + c0 with x = log N, for one budget."""
  flops: float
  coef: tuple  # (c2, c1, c0), numpy.polyfit order
  n_opt: float
  d_opt: float
  loss_opt: float
  n_points: int
  label: object = None  # the budget label of its runs


@dataclasses.dataclass
class PowerLaw:
  """y = k x^p fitted as a line in log-log, with the OLS pieces kept for intervals."""
  k: float
  p: float
  p_se: float  # standard error of the exponent
  log_x_mean: float
  sxx: float  # sum (log x - mean)^2
  resid_var: float  # residual variance in log y (n - 2 dof)
  n: int

  def __call__(self, x):
    return self.k * np.asarray(x, float) ** self.p

  def interval(self, x, level=0.95):
    """Confidence interval of the fitted line at x (t-distribution, n - 2 dof)."""
    lx = np.log(np.asarray(x, float))
    if self.n <= 2:
      return self(x), self(x)
    se = np.sqrt(self.resid_var * (1 / self.n + (lx - self.log_x_mean) ** 2 / self.sxx))
    t = stats.t.ppf(0.5 + level / 2, self.n - 2)
    y = np.log(self(x))
    return np.exp(y - t * se), np.exp(y + t * se)

  def to_json(self, level=0.95):
    out = dict(k=self.k, exponent=self.p, exponent_se=self.p_se, n=self.n)
    if self.n > 2:
      t = stats.t.ppf(0.5 + level / 2, self.n - 2)
      out["exponent_ci"] = [self.p - t * self.p_se, self.p + t * self.p_se]
    return out


def fit_power_law(x, y):
  """Least squares of log y on log x: y = k x^p."""
  lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
  n = len(lx)
  if n < 2:
    raise ValueError(f"a power law needs at least 2 points, got {n}")
  p, logk = np.polyfit(lx, ly, 1)
  sxx = float(np.sum((lx - lx.mean()) ** 2))
  resid = ly - (logk + p * lx)
  resid_var = float(resid @ resid / (n - 2)) if n > 2 else 0.0
  p_se = float(np.sqrt(resid_var / sxx)) if n > 2 else float("nan")
  return PowerLaw(k=float(np.exp(logk)), p=float(p), p_se=p_se, log_x_mean=float(lx.mean()),
                  sxx=sxx, resid_var=resid_var, n=n)


def group_by_budget(c, rel_gap=0.1):
  """Budget labels 0, 1, ... for runs sorted by compute: a gap of more than
  rel_gap between neighbours starts a new budget. Compute read off a figure
  (Hoffmann et al.'s Figure 4) scatters by a few percent within a budget,
  while budgets are spaced by 1.6x or more."""
  c = np.asarray(c, float)
  order = np.argsort(c)
  labels = np.empty(len(c), int)
  group = 0
  for prev, i in zip(np.r_[order[:1], order[:-1]], order):
    if c[i] > c[prev] * (1 + rel_gap):
      group += 1
    labels[i] = group
  return labels


def fit_parabolas(n, d, loss, c, budget, min_points=3):
  """One parabola in log N per budget; budgets with too few points, a concave fit, or a
  vertex outside the sizes tried (no interior minimum) are skipped.

  D at the vertex comes from the line log D ~ log N through the budget's runs,
  so it is right whichever FLOP count (6ND or 6ND + attention) made the sweep.
  """
  n, d, loss, c, budget = (np.asarray(v, float) for v in (n, d, loss, c, budget))
  out = []
  for b in np.unique(budget):
    m = budget == b
    if m.sum() < min_points:
      continue
    x = np.log(n[m])
    c2, c1, c0 = np.polyfit(x, loss[m], 2)
    if c2 <= 0:  # concave or flat: no minimum to read off
      continue
    x_opt = -c1 / (2 * c2)
    if not x.min() <= x_opt <= x.max():
      # The vertex lies outside the sizes tried: an extrapolated minimum of a
      # quadratic is not a measurement; the sweep should be re-centred instead.
      continue
    flops = float(np.exp(np.mean(np.log(c[m]))))  # geometric mean: runs of a budget differ by rounding
    slope, icpt = np.polyfit(x, np.log(d[m]), 1)
    out.append(Parabola(flops=flops, coef=(c2, c1, c0), n_opt=float(np.exp(x_opt)),
                        d_opt=float(np.exp(icpt + slope * x_opt)),
                        loss_opt=float(np.polyval((c2, c1, c0), x_opt)), n_points=int(m.sum()), label=b))
  return out


@dataclasses.dataclass
class IsoFlopFit:
  parabolas: list
  n_opt: PowerLaw
  d_opt: PowerLaw

  def to_json(self, level=0.95):
    return dict(n_opt=self.n_opt.to_json(level), d_opt=self.d_opt.to_json(level),
                budgets=[dict(flops=p.flops, n_opt=p.n_opt, d_opt=p.d_opt, loss_opt=p.loss_opt, n_points=p.n_points)
                         for p in self.parabolas])

  def compute_optimal(self, flops, level=0.95):
    n, d = float(self.n_opt(flops)), float(self.d_opt(flops))
    return dict(flops=float(flops), n_opt=n, d_opt=d, tokens_per_param=d / n,
                n_opt_ci=[float(v) for v in self.n_opt.interval(flops, level)],
                d_opt_ci=[float(v) for v in self.d_opt.interval(flops, level)])


def fit(n, d, loss, c=None, budget=None, min_points=3):
  """Approach 2. `c`: compute per run (default 6ND); `budget` labels the runs of one
  isoFLOP profile (default: runs whose c agree within 5%)."""
  n, d = np.asarray(n, float), np.asarray(d, float)
  c = 6 * n * d if c is None else np.asarray(c, float)
  if budget is None:
    budget = group_by_budget(c)
  parabolas = fit_parabolas(n, d, loss, c, budget, min_points)
  if len(parabolas) < 2:
    raise ValueError(f"Approach 2 needs >= 2 budgets with a parabola minimum, got {len(parabolas)}")
  c = [p.flops for p in parabolas]
  return IsoFlopFit(parabolas, fit_power_law(c, [p.n_opt for p in parabolas]),
                    fit_power_law(c, [p.d_opt for p in parabolas]))
