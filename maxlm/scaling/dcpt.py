"""D-CPT law: domain loss and general loss as functions of N, D and the domain ratio r.

Que et al. 2024, "D-CPT Law: Domain-specific Continual Pre-Training Scaling
Law for Large Language Models", section 3 (their preferred parameterisation,
the law below), fitted separately to the domain-corpus and the general-corpus
validation loss of runs that vary the mixture ratio r (share of domain tokens):

  L(N, D, r) = E + A / N^alpha + B r^eta / D^beta + C / (r + eps)^gamma.

Fitting follows chinchilla.py (Hoffmann et al. 2022, app. D.2): with
e, a, b, c the logs of E, A, B, C, the law in log space is a log-sum-exp

  log L_hat = LSE(e, a - alpha log N, b + eta log r - beta log D, c - gamma log(r + eps)),

and the fit minimises the SUM over runs of Huber_delta(log L_hat - log L),
delta = 1e-3, with L-BFGS-B (analytic gradient) from many starts and keeps the
best. The starts: for each point of a grid over the exponents and eps the law
is linear in (E, A, B, C), so non-negative least squares gives the
coefficients (variable projection); the best-scoring of those starts are then
refined with every parameter free. eps is fitted (in log space) unless fixed.

Which ratio each loss sees (stated choice): the domain loss is fitted in the
domain share r, the general loss in the general share 1 - r (`general_r`),
so in both fits the C / (ratio + eps)^gamma term says what the paper's
constraints say: a corpus's own loss falls as its share of the mix grows.

Degenerate designs: when every run has the same N (or D) the A / N^alpha (or
the D^-beta factor) cannot be told apart from E (or B), so that term is
dropped (N or D given as None): the fit is then of L(r) at that N, D.

Usage (paper section 4.3, "trade-off between general and domain-specific
abilities"): at a target (N, D), find the r that minimises the domain loss
subject to L_general(r) <= (1 + T) L_base. L_base defaults to the fitted
general loss at r = 0 (no domain data) at the same N and D; a measured
baseline (e.g. the base model's general loss before CPT) can be given instead.

numpy and scipy only; never the model or jax.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import optimize

from maxlm.scaling.chinchilla import HUBER_DELTA, _one_blas_thread, _percentiles

NAMES = ("E", "A", "B", "C", "alpha", "beta", "eta", "gamma", "eps")
# r^eta is evaluated at max(r, R_FLOOR) so that log r stays finite at r = 0 (no
# domain data): 1e-12^eta is ~0 for any eta not itself ~0, which is 0^eta.
R_FLOOR = 1e-12
_EXP_BOUNDS = (0.0, 4.0)  # alpha, beta, eta, gamma: the paper's law has them positive
_LOG_EPS_BOUNDS = (np.log(1e-6), np.log(1.0))
_LOG_COEF_BOUNDS = (-30.0, 30.0)  # e, a, b, c: keeps exp() finite on the way
LBFGS_OPTIONS = dict(maxiter=3000, gtol=1e-12, ftol=1e-15)  # as chinchilla.py: objective ~1e-3


def predict_loss(p, n, d, r):
  """E + A/N^alpha + B r^eta / D^beta + C/(r+eps)^gamma; N or D None drops its factor."""
  r = np.asarray(r, float)
  out = p["E"] + p["C"] / (r + p["eps"]) ** p["gamma"]
  b_term = p["B"] * np.maximum(r, R_FLOOR) ** p["eta"]
  if d is not None:
    b_term = b_term / np.asarray(d, float) ** p["beta"]
  out = out + b_term
  if n is not None:
    out = out + p["A"] / np.asarray(n, float) ** p["alpha"]
  return out


@dataclasses.dataclass
class _Design:
  """Logs of the inputs and which terms the data can identify."""
  log_n: np.ndarray | None
  log_d: np.ndarray | None
  log_r: np.ndarray  # log max(r, R_FLOOR)
  r: np.ndarray
  log_loss: np.ndarray

  @property
  def free(self):
    """Names of the parameters L-BFGS moves, in vector order."""
    names = ["E", "B", "C", "eta", "gamma", "eps"]
    if self.log_n is not None:
      names += ["A", "alpha"]
    if self.log_d is not None:
      names += ["beta"]
    return names


def _unpack(x, design, eps_fixed):
  """Vector -> dict in the fit's space (log coefficients, exponents, log eps)."""
  v = dict(zip(design.free if eps_fixed is None else [k for k in design.free if k != "eps"], x))
  if eps_fixed is not None:
    v["eps"] = np.log(eps_fixed)
  v.setdefault("A", -np.inf)
  v.setdefault("alpha", 0.0)
  v.setdefault("beta", 0.0)
  return v


def _objective_and_grad(x, design, eps_fixed, delta):
  v = _unpack(x, design, eps_fixed)
  eps = np.exp(v["eps"])
  log_c_arg = np.log(design.r + eps)
  t_e = np.full_like(design.log_r, v["E"])
  t_b = v["B"] + v["eta"] * design.log_r - (v["beta"] * design.log_d if design.log_d is not None else 0.0)
  t_c = v["C"] - v["gamma"] * log_c_arg
  terms = [t_e, t_b, t_c]
  if design.log_n is not None:
    terms.append(v["A"] - v["alpha"] * design.log_n)
  t = np.stack(terms)
  m = t.max(axis=0)
  w = np.exp(t - m)
  s = w.sum(axis=0)
  res = m + np.log(s) - design.log_loss
  abs_r = np.abs(res)
  f = np.where(abs_r <= delta, 0.5 * res * res, delta * (abs_r - 0.5 * delta)).sum()
  g = np.clip(res, -delta, delta) / s  # dHuber/dres times the softmax normaliser
  g_e, g_b, g_c = g * w[0], g * w[1], g * w[2]
  grads = dict(E=g_e.sum(), B=g_b.sum(), C=g_c.sum(), eta=(g_b * design.log_r).sum(),
               gamma=-(g_c * log_c_arg).sum(), eps=-(g_c * v["gamma"] * eps / (design.r + eps)).sum())
  if design.log_n is not None:
    g_a = g * w[3]
    grads["A"] = g_a.sum()
    grads["alpha"] = -(g_a * design.log_n).sum()
  if design.log_d is not None:
    grads["beta"] = -(g_b * design.log_d).sum()
  names = design.free if eps_fixed is None else [k for k in design.free if k != "eps"]
  return f, np.array([grads[k] for k in names])


def _bounds(names):
  table = dict(E=_LOG_COEF_BOUNDS, A=_LOG_COEF_BOUNDS, B=_LOG_COEF_BOUNDS, C=_LOG_COEF_BOUNDS,
               alpha=_EXP_BOUNDS, beta=_EXP_BOUNDS, eta=_EXP_BOUNDS, gamma=_EXP_BOUNDS, eps=_LOG_EPS_BOUNDS)
  return [table[k] for k in names]


def _columns(design, alpha, beta, eta, gamma, eps):
  """Basis functions of the law for fixed exponents: L = X @ (E, B, C[, A])."""
  n_runs = len(design.r)
  b_col = np.exp(eta * design.log_r - (beta * design.log_d if design.log_d is not None else 0.0))
  cols = [np.ones(n_runs), b_col, (design.r + eps) ** -gamma]
  if design.log_n is not None:
    cols.append(np.exp(-alpha * design.log_n))
  return np.stack(cols, axis=1)


def default_starts():
  """Exponent / eps grid of the variable-projection starts: (alpha, beta, eta, gamma, eps) rows."""
  ex = (0.1, 0.4, 1.0)
  return list(itertools.product(ex, ex, ex, ex, (1e-3, 1e-2, 1e-1)))


def _starts(design, eps_fixed, delta, n_refine):
  """Best n_refine starts: NNLS for the coefficients at each exponent point, scored by the objective."""
  loss = np.exp(design.log_loss)
  names = design.free if eps_fixed is None else [k for k in design.free if k != "eps"]
  seen, scored = set(), []
  for alpha, beta, eta, gamma, eps in default_starts():
    if design.log_n is None:
      alpha = 0.0
    if design.log_d is None:
      beta = 0.0
    if eps_fixed is not None:
      eps = eps_fixed
    key = (alpha, beta, eta, gamma, eps)
    if key in seen:
      continue
    seen.add(key)
    x_mat = _columns(design, alpha, beta, eta, gamma, eps)
    # Scale columns so NNLS sees comparable magnitudes (N^-alpha can be 1e-6).
    scale = np.maximum(np.abs(x_mat).max(axis=0), 1e-300)
    coef, _ = optimize.nnls(x_mat / scale, loss)
    coef = coef / scale
    # A zero coefficient would be log 0: start it small instead, L-BFGS may grow it.
    floor = 1e-6 * loss.mean() / scale
    logs = np.log(np.maximum(coef, floor))
    v = dict(E=logs[0], B=logs[1], C=logs[2], eta=eta, gamma=gamma, eps=np.log(eps), beta=beta)
    if design.log_n is not None:
      v.update(A=logs[3], alpha=alpha)
    x0 = np.clip(np.array([v[k] for k in names]), *np.array(_bounds(names)).T)
    f, _ = _objective_and_grad(x0, design, eps_fixed, delta)
    scored.append((f, x0))
  scored.sort(key=lambda fx: fx[0])
  return [x for _, x in scored[:n_refine]]


def _minimise(x0, design, eps_fixed, delta, options):
  names = design.free if eps_fixed is None else [k for k in design.free if k != "eps"]
  res = optimize.minimize(_objective_and_grad, x0, args=(design, eps_fixed, delta), jac=True,
                          method="L-BFGS-B", bounds=_bounds(names), options=options)
  return float(res.fun), res.x


@dataclasses.dataclass
class DcptFit:
  """Best fit of one loss, its objective, and (if bootstrapped) parameter samples."""
  params: dict  # E, A, B, C, alpha, beta, eta, gamma, eps (A = 0 when N is constant)
  objective: float
  n_points: int
  ratio: str  # "r" or "1-r": which share the law's r is (module docstring)
  has_n: bool
  has_d: bool
  samples: list | None = None  # bootstrap param dicts

  def predict(self, n, d, r):
    """Loss at domain ratio r (the caller's r; the 1 - r of a general fit is applied here)."""
    r_law = 1.0 - np.asarray(r, float) if self.ratio == "1-r" else np.asarray(r, float)
    return predict_loss(self.params, n if self.has_n else None, d if self.has_d else None, r_law)

  def to_json(self, level=0.95):
    out = dict(self.params, objective=self.objective, n_points=self.n_points, ratio=self.ratio)
    if self.samples:
      arr = np.array([[s[k] for k in NAMES] for s in self.samples])
      lo, hi = _percentiles(arr, level)
      out["ci"] = {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(NAMES)}
    return out


def fit(r, loss, n=None, d=None, ratio="r", eps=None, delta=HUBER_DELTA, n_refine=12, n_boot=0, seed=0,
        options=None):
  """Fits the D-CPT law to one loss. r: domain ratio per run in [0, 1]; ratio="1-r" fits
  the law in the general share (for the general loss). n, d: per-run arrays, or None
  (or constant) to drop their terms. eps: fixed value, or None to fit it."""
  r = np.asarray(r, float)
  if np.any((r < 0) | (r > 1)):
    raise ValueError("domain ratios must lie in [0, 1]")
  if ratio not in ("r", "1-r"):
    raise ValueError(f"ratio={ratio!r} is not 'r' or '1-r'")
  r_law = 1.0 - r if ratio == "1-r" else r
  has_n = n is not None and np.ptp(np.log(np.asarray(n, float))) > 1e-9
  has_d = d is not None and np.ptp(np.log(np.asarray(d, float))) > 1e-9
  design = _Design(log_n=np.log(np.asarray(n, float)) if has_n else None,
                   log_d=np.log(np.asarray(d, float)) if has_d else None,
                   log_r=np.log(np.maximum(r_law, R_FLOOR)), r=r_law, log_loss=np.log(np.asarray(loss, float)))
  options = dict(LBFGS_OPTIONS, **(options or {}))
  with _one_blas_thread():
    results = [_minimise(x0, design, eps, delta, options) for x0 in _starts(design, eps, delta, n_refine)]
    results.sort(key=lambda fx: fx[0])
    best_f, best_x = results[0]
    samples = None
    if n_boot:
      # As chinchilla.fit: resample runs, refit from the two best full-data optima.
      rng = np.random.default_rng(seed)
      samples = []
      for _ in range(n_boot):
        idx = rng.integers(0, len(r), len(r))
        sub = _Design(log_n=None if design.log_n is None else design.log_n[idx],
                      log_d=None if design.log_d is None else design.log_d[idx],
                      log_r=design.log_r[idx], r=design.r[idx], log_loss=design.log_loss[idx])
        _, x = min((_minimise(x0, sub, eps, delta, options) for _, x0 in results[:2]), key=lambda fx: fx[0])
        samples.append(_natural(x, design, eps))
  return DcptFit(params=_natural(best_x, design, eps), objective=best_f, n_points=len(r), ratio=ratio,
                 has_n=has_n, has_d=has_d, samples=samples)


def _natural(x, design, eps_fixed):
  v = _unpack(x, design, eps_fixed)
  return dict(E=float(np.exp(v["E"])), A=float(np.exp(v["A"])), B=float(np.exp(v["B"])), C=float(np.exp(v["C"])),
              alpha=float(v["alpha"]), beta=float(v["beta"]), eta=float(v["eta"]), gamma=float(v["gamma"]),
              eps=float(np.exp(v["eps"])))


def optimal_ratio(domain_fit, general_fit, max_increase, n=None, d=None, baseline=None, r_max=1.0):
  """argmin_r L_domain(N, D, r) subject to L_general(N, D, r) <= (1 + T) L_base, r in [0, r_max].

  L_base: `baseline` if given, else the general fit at r = 0 (same N, D). A dense
  grid (linear, plus log-spaced near 0 where (r + eps)^-gamma is steep) finds the
  best feasible point; it is then refined by Brent's method, either on the
  constraint boundary (when the neighbouring grid point is infeasible) or on
  the domain loss between its neighbours.
  """
  base = float(general_fit.predict(n, d, 0.0)) if baseline is None else float(baseline)
  bound = (1 + max_increase) * base
  grid = np.unique(np.concatenate([np.linspace(0, r_max, 20001), np.geomspace(1e-7, r_max, 4001), [0.0]]))
  ld, lg = domain_fit.predict(n, d, grid), general_fit.predict(n, d, grid)
  feasible = lg <= bound
  out = dict(max_general_increase=float(max_increase), baseline=base,
             baseline_source="given" if baseline is not None else "general fit at r=0", general_bound=bound)
  if not feasible.any():
    return dict(out, r=None, feasible=False, domain_loss=None, general_loss=None, constraint_active=None)
  i = int(np.argmin(np.where(feasible, ld, np.inf)))
  r_best, active = grid[i], False
  g = lambda x: float(general_fit.predict(n, d, x)) - bound
  f = lambda x: float(domain_fit.predict(n, d, x))
  for j in (i - 1, i + 1):
    if 0 <= j < len(grid) and not feasible[j] and ld[j] < ld[i]:
      # The domain loss keeps falling past the boundary: the optimum is on it.
      lo, hi = sorted((grid[i], grid[j]))
      root = optimize.brentq(g, lo, hi, xtol=1e-14, rtol=1e-14)
      # brentq's root may sit a hair on the infeasible side; step back to the feasible end.
      r_best, active = (root if g(root) <= 0 else grid[i]), True
      break
  else:
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if hi > lo:
      res = optimize.minimize_scalar(f, bounds=(lo, hi), method="bounded", options=dict(xatol=1e-12))
      if res.fun <= ld[i] and g(res.x) <= 0:
        r_best = float(res.x)
  return dict(out, r=float(r_best), feasible=True, domain_loss=f(r_best), general_loss=float(g(r_best) + bound),
              general_increase=float((g(r_best) + bound) / base - 1), constraint_active=active,
              domain_loss_at_r1=f(r_max), domain_loss_at_r0=f(0.0))
