"""D-CPT law (Que et al. 2024) fit and the constrained mixture ratio, on generated data.

No published D-CPT runs exist in this environment, so every check uses losses
generated from known parameters: exact recovery without noise, recovery within
stated tolerances with noise, the constrained optimum against brute force, and
the `mix-ratio` CLI round trip.
"""

import csv
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from maxlm.scaling import dcpt

# Domain loss falls with the domain share r; the general loss (fitted in 1 - r)
# rises as r takes tokens away from the general corpus.
TRUE_DOMAIN = dict(E=1.2, A=30.0, B=60.0, C=0.25, alpha=0.35, beta=0.3, eta=0.5, gamma=0.4, eps=0.02)
TRUE_GENERAL = dict(E=1.5, A=40.0, B=80.0, C=0.1, alpha=0.34, beta=0.28, eta=0.3, gamma=0.6, eps=0.05)
RATIOS = (0.0, 0.05, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0)


def _runs(noise=0.0, seed=0, ns=(1e7, 4e7, 1.6e8), ds=(1e9, 4e9, 1.6e10)):
  """Full grid N x D x r; multiplicative log-normal noise of relative size `noise`."""
  rng = np.random.default_rng(seed)
  n, d, r = (np.array(v, float) for v in zip(*itertools.product(ns, ds, RATIOS)))
  ld = dcpt.predict_loss(TRUE_DOMAIN, n, d, r) * np.exp(noise * rng.standard_normal(len(r)))
  lg = dcpt.predict_loss(TRUE_GENERAL, n, d, 1 - r) * np.exp(noise * rng.standard_normal(len(r)))
  return n, d, r, ld, lg


def test_gradient_matches_finite_differences():
  n, d, r, ld, _ = _runs(noise=0.01)
  design = dcpt._Design(np.log(n), np.log(d), np.log(np.maximum(r, dcpt.R_FLOOR)), r, np.log(ld))
  rng = np.random.default_rng(1)
  for _ in range(3):
    x = np.array([0.2, 4.0, -1.0, 0.5, 0.4, np.log(0.03), 3.0, 0.3, 0.3]) + 0.1 * rng.standard_normal(9)
    _, g = dcpt._objective_and_grad(x, design, None, delta=0.05)  # wide delta: smooth everywhere
    h = 1e-6
    num = [(dcpt._objective_and_grad(x + h * e, design, None, 0.05)[0]
            - dcpt._objective_and_grad(x - h * e, design, None, 0.05)[0]) / (2 * h) for e in np.eye(9)]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_exact_recovery_without_noise():
  n, d, r, ld, lg = _runs()
  fd = dcpt.fit(r, ld, n=n, d=d)
  fg = dcpt.fit(r, lg, n=n, d=d, ratio="1-r")
  for fit, true in ((fd, TRUE_DOMAIN), (fg, TRUE_GENERAL)):
    for k, v in true.items():
      assert fit.params[k] == pytest.approx(v, rel=2e-3), (k, fit.params, true)
  # And the fitted general law reproduces the data in the caller's r.
  np.testing.assert_allclose(fg.predict(n, d, r), lg, rtol=1e-6)


WIDE = dict(ns=(1e7, 3e7, 1e8, 3e8), ds=(1e9, 4e9, 1.6e10, 6.4e10))  # 160 runs


def test_recovery_with_noise_within_tolerances():
  """0.1% log-normal noise, 160 runs (N over 30x, D over 64x, 10 ratios). Stated
  tolerances: E +- 0.05, alpha, beta, eta, gamma +- 0.05, and the fitted loss within
  0.2% of the truth at N, D twice beyond the largest run (extrapolation). With 9
  parameters the law is sloppy: at 0.5% noise E and A trade off by ~0.1 while
  the predicted loss still lands within 0.5% (measured), so the parameter check
  uses the smaller noise and the 0.5% case is checked through the chosen ratio below."""
  n, d, r, ld, lg = _runs(noise=0.001, seed=3, **WIDE)
  for loss, true, ratio in ((ld, TRUE_DOMAIN, "r"), (lg, TRUE_GENERAL, "1-r")):
    fit = dcpt.fit(r, loss, n=n, d=d, ratio=ratio)
    p = fit.params
    assert abs(p["E"] - true["E"]) < 0.05, p
    for k in ("alpha", "beta", "gamma", "eta"):
      assert abs(p[k] - true[k]) < 0.05, (k, p)
    rr = np.linspace(0, 1, 11)
    truth = dcpt.predict_loss(true, 6e8, 1.3e11, rr if ratio == "r" else 1 - rr)
    np.testing.assert_allclose(fit.predict(6e8, 1.3e11, rr), truth, rtol=0.002)


def test_fixed_n_d_drops_their_terms():
  """One (N, D) varying only r: A/N^alpha folds into E and D^-beta into B; L(r) is still recovered."""
  n, d, r, ld, _ = _runs(noise=0.0, ns=(4e7,), ds=(4e9,))
  r = np.concatenate([r, [0.01, 0.02, 0.3, 0.4, 0.6]])
  ld = dcpt.predict_loss(TRUE_DOMAIN, 4e7, 4e9, r)
  fit = dcpt.fit(r, ld, n=np.full_like(r, 4e7), d=np.full_like(r, 4e9))
  assert not fit.has_n and not fit.has_d and fit.params["A"] == 0.0
  np.testing.assert_allclose(fit.predict(4e7, 4e9, r), ld, rtol=1e-5)
  assert fit.params["gamma"] == pytest.approx(TRUE_DOMAIN["gamma"], rel=0.01)


def _brute_force(fd, fg, n, d, t, baseline=None):
  rr = np.linspace(0, 1, 2_000_001)
  base = fg.predict(n, d, 0.0) if baseline is None else baseline
  ok = fg.predict(n, d, rr) <= (1 + t) * base
  ld = np.where(ok, fd.predict(n, d, rr), np.inf)
  i = int(np.argmin(ld))
  return rr[i], ld[i]


@pytest.mark.parametrize("t", [0.0, 0.005, 0.02, 0.05, 0.5])
def test_optimal_ratio_matches_brute_force(t):
  truth_d = dcpt.DcptFit(TRUE_DOMAIN, 0.0, 0, "r", True, True)
  truth_g = dcpt.DcptFit(TRUE_GENERAL, 0.0, 0, "1-r", True, True)
  res = dcpt.optimal_ratio(truth_d, truth_g, t, n=1e8, d=1e10)
  r_bf, ld_bf = _brute_force(truth_d, truth_g, 1e8, 1e10, t)
  assert res["feasible"]
  assert res["r"] == pytest.approx(r_bf, abs=2e-6)
  assert res["domain_loss"] <= ld_bf + 1e-9  # never worse than the 2e6-point grid
  assert res["general_loss"] <= res["general_bound"] * (1 + 1e-12)
  if 0 < r_bf < 1:  # the domain loss falls all the way to r = 1 here, so the bound binds
    assert res["constraint_active"]


def test_optimal_ratio_interior_minimum_and_baseline():
  """A domain law with an interior minimum in r (the B r^eta term grows): with a loose
  bound the optimum is that interior minimum; a measured baseline below the r = 0 loss
  makes the problem infeasible."""
  dom = dict(TRUE_DOMAIN, B=5e3, eta=1.5)  # B r^1.5 / D^beta outgrows C/(r+eps)^gamma near r = 1
  fd = dcpt.DcptFit(dom, 0.0, 0, "r", True, True)
  fg = dcpt.DcptFit(TRUE_GENERAL, 0.0, 0, "1-r", True, True)
  res = dcpt.optimal_ratio(fd, fg, 10.0, n=1e8, d=1e10)
  r_bf, _ = _brute_force(fd, fg, 1e8, 1e10, 10.0)
  assert 0.05 < r_bf < 0.95 and not res["constraint_active"]
  assert res["r"] == pytest.approx(r_bf, abs=2e-6)
  g0 = float(fg.predict(1e8, 1e10, 0.0))
  assert not dcpt.optimal_ratio(fd, fg, 0.01, n=1e8, d=1e10, baseline=0.9 * g0)["feasible"]
  res_b = dcpt.optimal_ratio(fd, fg, 0.01, n=1e8, d=1e10, baseline=1.01 * g0)
  r_bf_b, _ = _brute_force(fd, fg, 1e8, 1e10, 0.01, baseline=1.01 * g0)
  assert res_b["r"] == pytest.approx(r_bf_b, abs=2e-6)


def test_fitted_optimum_close_to_true_optimum():
  """End to end on noisy runs: the ratio chosen from the fits is within 0.02 of the
  ratio the true laws give (T = 2%, at an (N, D) beyond the runs), at 0.5% noise."""
  n, d, r, ld, lg = _runs(noise=0.005, seed=5, **WIDE)
  fd, fg = dcpt.fit(r, ld, n=n, d=d), dcpt.fit(r, lg, n=n, d=d, ratio="1-r")
  truth_d = dcpt.DcptFit(TRUE_DOMAIN, 0.0, 0, "r", True, True)
  truth_g = dcpt.DcptFit(TRUE_GENERAL, 0.0, 0, "1-r", True, True)
  got = dcpt.optimal_ratio(fd, fg, 0.02, n=6e8, d=1.3e11)
  want = dcpt.optimal_ratio(truth_d, truth_g, 0.02, n=6e8, d=1.3e11)
  assert abs(got["r"] - want["r"]) < 0.02, (got, want)


def test_mix_ratio_cli_json(tmp_path):
  n, d, r, ld, lg = _runs(noise=0.003, seed=7)
  path = tmp_path / "mix.csv"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["params", "tokens", "domain_ratio", "eval/code/loss", "eval/prose/loss"])
    w.writerows(zip(n, d, r, ld, lg))
  out = subprocess.run(
      [sys.executable, "-m", "maxlm.scaling", "mix-ratio", str(path), "--r-col", "domain_ratio",
       "--domain-loss-col", "eval/code/loss", "--general-loss-col", "eval/prose/loss", "--n-col", "params",
       "--d-col", "tokens", "--n", "3e8", "--d", "3e10", "--max-general-increase", "0.02", "--json"],
      capture_output=True, text=True, check=True, timeout=1800)
  res = json.loads(out.stdout)
  assert set(res) >= {"domain", "general", "optimum"}
  assert abs(res["domain"]["gamma"] - TRUE_DOMAIN["gamma"]) < 0.05
  assert 0 <= res["optimum"]["r"] <= 1
  assert res["optimum"]["general_increase"] <= 0.02 + 1e-9
