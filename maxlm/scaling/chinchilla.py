"""Chinchilla Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
section 3.3 and appendix D.2, eq. (2) for the law and the compute-optimal
split (their eq. 4). With a = log A, b = log B, e = log E the law in log space
is a log-sum-exp,

  log L_hat(N, D) = LSE(a - alpha log N, b - beta log D, e),

and the fit minimises the SUM over runs of Huber_delta(log L_hat - log L),
delta = 1e-3, with L-BFGS started from every point of a grid (alpha, beta in
{0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}) and keeps
the best. Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt")
show the sum matters: the mean is a 1/n smaller loss scale and L-BFGS stops
before it converges. numpy and scipy only; never the model or jax.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import numpy as np
from scipy import optimize, special

try:
  import threadpoolctl
except ImportError:  # optional: only a speed-up, see _one_blas_thread
  threadpoolctl = None

HUBER_DELTA = 1e-3
PARAM_NAMES = ("a", "b", "e", "alpha", "beta")  # order of the vector L-BFGS sees


def hoffmann_grid():
  """The 5 * 5 * 5 * 6 * 6 = 4,500 starts of Hoffmann et al., as (a, b, e, alpha, beta) rows."""
  ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
  e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
  ex = np.arange(0.0, 2.0 + 1e-9, 0.5)
  return np.array(list(itertools.product(ab, ab, e, ex, ex)))


def coarse_grid():
  """A 2^5 = 32-start subset spanning the same box; for tests and quick looks."""
  return np.array(list(itertools.product([0.0, 10.0], [0.0, 10.0], [-1.0, 0.5], [0.5, 1.5], [0.5, 1.5])))


def log_predict(params, log_n, log_d):
  """LSE(a - alpha log N, b - beta log D, e): log of the predicted loss."""
  a, b, e, alpha, beta = params
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, np.shape(log_n))])
  return special.logsumexp(terms, axis=0)


def huber(r, delta=HUBER_DELTA):
  """Huber loss, quadratic within delta: r^2/2, else delta (|r| - delta/2) (PyTorch's HuberLoss)."""
  return special.huber(delta, r)


def objective(params, log_n, log_d, log_loss, delta=HUBER_DELTA):
  """Sum of Huber(LSE(...) - log L) over runs: the quantity Hoffmann et al. minimise."""
  return float(np.sum(huber(log_predict(params, log_n, log_d) - log_loss, delta)))


def _objective_and_grad(params, log_n, log_d, log_loss, delta):
  a, b, e, alpha, beta = params
  t_a = a - alpha * log_n
  t_b = b - beta * log_d
  # Stable LSE by hand so the same softmax weights give the gradient.
  m = np.maximum(np.maximum(t_a, t_b), e)
  x_a, x_b, x_e = np.exp(t_a - m), np.exp(t_b - m), np.exp(e - m)
  s = x_a + x_b + x_e
  r = m + np.log(s) - log_loss
  abs_r = np.abs(r)
  f = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
  g = np.clip(r, -delta, delta) / s  # dHuber/dr times the softmax normaliser
  ga, gb, ge = (g * x_a), (g * x_b), (g * x_e)
  grad = np.array([ga.sum(), gb.sum(), ge.sum(), -(ga * log_n).sum(), -(gb * log_d).sum()])
  return f, grad


@dataclasses.dataclass
class ChinchillaFit:
  """Best fit, its objective, and (if bootstrapped) parameter samples for intervals."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  n_points: int
  samples: np.ndarray | None = None  # (n_boot, 5) rows of (E, A, B, alpha, beta)

  @property
  def params(self):
    return dict(E=self.E, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta)

  def to_json(self, level=0.95):
    out = dict(self.params, objective=self.objective, n_points=self.n_points)
    if self.samples is not None:
      lo, hi = _percentiles(self.samples, level)
      out["ci"] = {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(("E", "A", "B", "alpha", "beta"))}
      out["ci_level"] = level
      out["n_boot"] = int(len(self.samples))
    return out

  def predict(self, n, d):
    """L(N, D) at the best fit."""
    return predict_loss(self.params, n, d)

  def predict_interval(self, n, d, level=0.95):
    """(lo, hi) of L(N, D) over the bootstrap samples."""
    vals = np.array([predict_loss(_row_params(s), n, d) for s in self._need_samples()])
    return _percentiles(vals, level)

  def compute_optimal(self, flops, level=0.95):
    """N_opt, D_opt and D/N for budget C = 6 N D, with bootstrap intervals if sampled."""
    n, d = compute_optimal(self.params, flops)
    out = dict(flops=float(flops), n_opt=float(n), d_opt=float(d), tokens_per_param=float(d / n))
    if self.samples is not None:
      nd = np.array([compute_optimal(_row_params(s), flops) for s in self.samples])
      for key, vals in (("n_opt", nd[:, 0]), ("d_opt", nd[:, 1]), ("tokens_per_param", nd[:, 1] / nd[:, 0])):
        lo, hi = _percentiles(vals, level)
        out[key + "_ci"] = [float(lo), float(hi)]
    return out

  def _need_samples(self):
    if self.samples is None:
      raise ValueError("no bootstrap samples: fit with n_boot > 0 for intervals")
    return self.samples


def _row_params(row):
  return dict(zip(("E", "A", "B", "alpha", "beta"), row))


def _percentiles(x, level):
  q = 100 * (1 - level) / 2
  return np.percentile(x, q, axis=0), np.percentile(x, 100 - q, axis=0)


def predict_loss(p, n, d):
  """E + A / N^alpha + B / D^beta."""
  n, d = np.asarray(n, float), np.asarray(d, float)
  return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def compute_optimal(p, flops):
  """Minimise L(N, D) subject to 6 N D = C (Hoffmann et al. eq. 4).

  N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
  G = (alpha A / (beta B))^(1/(alpha+beta)).
  """
  s = p["alpha"] + p["beta"]
  g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)
  c6 = np.asarray(flops, float) / 6
  return g * c6 ** (p["beta"] / s), c6 ** (p["alpha"] / s) / g


def _one_blas_thread():
  """scipy's L-BFGS-B update calls BLAS on 5-vectors; a multi-threaded OpenBLAS
  spends ~9 ms per iteration waking its threads (measured: 15x slower on a
  busy 2-core machine), so the fit pins BLAS to one thread while it runs."""
  if threadpoolctl is None:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1, user_api="blas")


def _minimise(x0, log_n, log_d, log_loss, delta, options):
  res = optimize.minimize(_objective_and_grad, x0, args=(log_n, log_d, log_loss, delta),
                          jac=True, method="L-BFGS-B", options=options)
  return res.fun, res.x


# Tighter than scipy's defaults: the objective is ~1e-3 in size, so the default
# gtol of 1e-5 is a large fraction of it and can stop a start early.
LBFGS_OPTIONS = dict(maxiter=2000, gtol=1e-12, ftol=1e-15)


def fit(n, d, loss, grid=None, delta=HUBER_DELTA, n_boot=0, seed=0, boot_starts=2, options=None,
        progress=None):
  """Fit Approach 3 from every start of `grid` (default: Hoffmann's 4,500) and keep the best.

  Bootstrap: `n_boot` resamples of the runs with replacement. Each refit starts
  from the full-data optimum and the next `boot_starts - 1` best grid optima
  (re-running all 4,500 starts per resample would cost n_boot times the fit;
  the resampled optimum lies near the full-data one).

  `progress` (e.g. maxlm.monitor.Progress over len(grid) + n_boot items) gets
  `update(what, cost=k, n=k)` after each batch of starts and each resample.
  """
  log_n, log_d, log_loss = np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(np.asarray(loss, float))
  options = dict(LBFGS_OPTIONS, **(options or {}))
  grid = hoffmann_grid() if grid is None else np.asarray(grid, float)
  with _one_blas_thread():
    return _fit(log_n, log_d, log_loss, grid, delta, n_boot, seed, boot_starts, options, progress)


def _fit(log_n, log_d, log_loss, grid, delta, n_boot, seed, boot_starts, options, progress=None):
  results = []
  batch = max(1, len(grid) // 10)  # ten progress lines over the starts
  for i in range(0, len(grid), batch):
    results += [_minimise(x0, log_n, log_d, log_loss, delta, options) for x0 in grid[i:i + batch]]
    if progress is not None:
      k = len(results) - i
      progress.update(f"starts {len(results)}/{len(grid)}, best objective"
                      f" {min(f for f, _ in results):.4e}", cost=k, n=k)
  order = np.argsort([f for f, _ in results])
  best_f, best_x = results[order[0]]
  samples = None
  if n_boot:
    rng = np.random.default_rng(seed)
    starts = [results[i][1] for i in order[:boot_starts]]
    rows = []
    for _ in range(n_boot):
      idx = rng.integers(0, len(log_n), len(log_n))
      _, x = min((_minimise(x0, log_n[idx], log_d[idx], log_loss[idx], delta, options) for x0 in starts),
                 key=lambda fx: fx[0])
      rows.append(_to_natural(x))
      if progress is not None:
        progress.update(f"bootstrap {len(rows)}/{n_boot}")
    samples = np.array(rows)
  E, A, B, alpha, beta = _to_natural(best_x)
  return ChinchillaFit(E=E, A=A, B=B, alpha=alpha, beta=beta, objective=float(best_f),
                       n_points=len(log_n), samples=samples)


def _to_natural(x):
  a, b, e, alpha, beta = x
  return [float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta)]
