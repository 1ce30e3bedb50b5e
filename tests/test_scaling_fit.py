"""Scaling-law fits on generated data: Approach 3 (objective, gradient,
parameter recovery, bootstrap, compute-optimal split), Approach 2, Kaplan's
L(C), the `fit` CLI's --json, and the plots. Published data is not read here
(see bench/validate_chinchilla.py)."""

import csv
import json
import os

import numpy as np
import pytest

from maxlm.scaling import chinchilla, cli, isoflop, kaplan

TRUE = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)


def _synthetic(rng, sigma, n_n=8, n_d=8):
  """An N x D grid from the law, with multiplicative log-normal noise of scale sigma."""
  n, d = np.meshgrid(np.geomspace(5e7, 1.6e10, n_n), np.geomspace(2e8, 3e11, n_d))
  n, d = n.ravel(), d.ravel()
  loss = chinchilla.predict_loss(TRUE, n, d) * np.exp(sigma * rng.standard_normal(n.size))
  return n, d, loss


def _direct_objective(x, n, d, loss, delta):
  """The objective written out term by term, with no shared code."""
  a, b, e, alpha, beta = x
  total = 0.0
  for ni, di, li in zip(n, d, loss):
    pred = np.log(np.exp(a - alpha * np.log(ni)) + np.exp(b - beta * np.log(di)) + np.exp(e))
    r = pred - np.log(li)
    total += 0.5 * r * r if abs(r) <= delta else delta * (abs(r) - 0.5 * delta)
  return total


def test_objective_matches_direct_numpy():
  rng = np.random.default_rng()
  n, d, loss = _synthetic(rng, 0.02)
  for _ in range(5):
    x = rng.uniform([0, 0, -1, 0, 0], [25, 25, 1, 2, 2])
    want = _direct_objective(x, n, d, loss, 1e-3)
    ln = (np.log(n), np.log(d), np.log(loss))
    np.testing.assert_allclose(chinchilla.objective(x, *ln), want, rtol=1e-10)
    f, _ = chinchilla._objective_and_grad(x, *ln, 1e-3)
    np.testing.assert_allclose(f, want, rtol=1e-10)
  # Both branches of the Huber loss are exercised: large residuals above, tiny ones at the truth.
  x_true = [np.log(TRUE["A"]), np.log(TRUE["B"]), np.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]]
  clean = chinchilla.predict_loss(TRUE, n, d) * np.exp(1e-4 * rng.standard_normal(n.size))
  np.testing.assert_allclose(chinchilla.objective(x_true, np.log(n), np.log(d), np.log(clean)),
                             _direct_objective(x_true, n, d, clean, 1e-3), rtol=1e-10)


def _central_differences(f, x, h):
  """Central differences: truncation error O(h^2 f'''), where forward differences
  (scipy's approx_fprime) carry O(h f''), which at this objective's curvature is
  ~1e-6 and broke a 1e-4 relative tolerance on one seed in CI."""
  g = np.zeros_like(x)
  for i in range(x.size):
    e = np.zeros_like(x)
    e[i] = h
    g[i] = (f(x + e) - f(x - e)) / (2 * h)
  return g


@pytest.mark.parametrize("delta", [1e-3, 0.02])
def test_gradient_matches_finite_differences(delta):
  rng = np.random.default_rng()
  n, d, loss = _synthetic(rng, 0.02)
  args = (np.log(n), np.log(d), np.log(loss))
  h = 1e-6
  # Far from the truth (delta 1e-3) every residual is on the linear branch; near it with
  # delta 0.02 (the noise scale: a third of |r| above it) both branches are exercised.
  x = np.array([6.0, 7.5, 0.6, 0.3, 0.4] if delta < 0.01 else
               [np.log(TRUE["A"]), np.log(TRUE["B"]), np.log(TRUE["E"]), 0.35, 0.37])
  # Huber's second derivative jumps at |r| = delta, so a quotient that straddles the kink
  # is not a derivative: move the point (deterministically) until every residual is
  # farther from the kink than a step can move it.
  reach = 2 * h * (1 + np.abs(args[0]).max() + np.abs(args[1]).max())
  residual = lambda p: chinchilla.log_predict(p, *args[:2]) - args[2]
  while np.abs(np.abs(residual(x)) - delta).min() < reach:
    x[2] += 10 * reach
  if delta > 0.01:
    assert (np.abs(residual(x)) < delta).any() and (np.abs(residual(x)) > delta).any()
  _, g = chinchilla._objective_and_grad(x, *args, delta)
  objective = lambda p: chinchilla.objective(p, *args, delta)
  fd = _central_differences(objective, x, h)
  # Round-off in the quotient is ~ eps |f| / h; truncation is O(h^2). Both are far below
  # 1e-5 of the gradient's own scale.
  scale = np.abs(g).max() + np.finfo(float).eps * objective(x) / h
  np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * scale)


def test_hoffmann_grid_is_the_papers():
  g = chinchilla.hoffmann_grid()
  assert g.shape == (4500, 5)
  for col, want in zip(g.T, ([0, 5, 10, 15, 20, 25], [0, 5, 10, 15, 20, 25], [-1, -0.5, 0, 0.5, 1],
                             [0, 0.5, 1, 1.5, 2], [0, 0.5, 1, 1.5, 2])):
    np.testing.assert_allclose(np.unique(col), want)


def test_recovers_exact_parameters_without_noise():
  n, d, loss = _synthetic(np.random.default_rng(0), 0.0)
  fit = chinchilla.fit(n, d, loss, grid=chinchilla.coarse_grid())
  for k, v in TRUE.items():
    assert getattr(fit, k) == pytest.approx(v, rel=1e-3), k


def test_recovers_parameters_with_noise_and_bootstrap_covers_them():
  # 1% multiplicative noise on 80 runs, the scatter of real sweeps (Epoch's RMS residual is ~2%).
  n, d, loss = _synthetic(np.random.default_rng(1), 0.01, 10, 8)
  fit = chinchilla.fit(n, d, loss, grid=chinchilla.coarse_grid(), n_boot=25, seed=0, boot_starts=1)
  assert fit.E == pytest.approx(TRUE["E"], abs=0.05)
  assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
  assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
  ci = fit.to_json()["ci"]
  for k in ("E", "alpha", "beta"):
    lo, hi = ci[k]
    # Tolerances: a 95% interval misses 5% of the time; widen it by half its width so the test is not flaky.
    pad = 0.5 * (hi - lo)
    assert lo - pad <= TRUE[k] <= hi + pad, (k, lo, hi)
  # The loss predicted well outside the data stays close to the law, and its interval covers it.
  want = chinchilla.predict_loss(TRUE, 7e10, 1.4e12)
  lo, hi = fit.predict_interval(7e10, 1.4e12)
  assert lo - 0.02 <= want <= hi + 0.02
  assert fit.predict(7e10, 1.4e12) == pytest.approx(want, rel=0.01)


def test_compute_optimal_closed_form_minimises_loss_on_the_budget():
  flops = 5.88e23
  n_opt, d_opt = chinchilla.compute_optimal(TRUE, flops)
  assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-9)
  # Brute force over N on the constraint 6ND = C.
  ns = np.geomspace(n_opt / 10, n_opt * 10, 20001)
  best = ns[np.argmin(chinchilla.predict_loss(TRUE, ns, flops / (6 * ns)))]
  assert best == pytest.approx(n_opt, rel=1e-3)


def _isoflop_data(rng, a_true=0.5, sigma=0.0):
  """Runs whose loss is a parabola in log N around N_opt = 0.1 C^a_true, D = C / (6N)."""
  n, d, loss, budget = [], [], [], []
  for i, c in enumerate(np.geomspace(1e18, 1e21, 6)):
    n_opt = 0.1 * c ** a_true
    for ni in n_opt * np.geomspace(0.2, 5, 9):
      n.append(ni)
      d.append(c / (6 * ni))
      loss.append(3.0 - 0.1 * np.log10(c) + 0.05 * np.log(ni / n_opt) ** 2 + sigma * rng.standard_normal())
      budget.append(i)
  return map(np.array, (n, d, loss, budget))


def test_approach2_recovers_the_exponent():
  n, d, loss, budget = _isoflop_data(np.random.default_rng(), a_true=0.46)
  fit = isoflop.fit(n, d, loss, budget=budget)
  assert fit.n_opt.p == pytest.approx(0.46, abs=1e-6)
  assert fit.n_opt.k == pytest.approx(0.1, rel=1e-4)
  assert fit.d_opt.p == pytest.approx(0.54, abs=1e-6)  # a + b = 1 when D = C / (6N)
  # Noisy losses: the exponent within 0.03, and its interval brackets the truth.
  n, d, loss, budget = _isoflop_data(np.random.default_rng(3), a_true=0.46, sigma=0.003)
  fit = isoflop.fit(n, d, loss)  # budgets found from 6ND alone
  assert len(fit.parabolas) == 6
  assert fit.n_opt.p == pytest.approx(0.46, abs=0.03)
  lo, hi = fit.n_opt.to_json()["exponent_ci"]
  assert lo < 0.46 < hi
  co = fit.compute_optimal(1e23)
  assert co["n_opt_ci"][0] < co["n_opt"] < co["n_opt_ci"][1]


def test_kaplan_power_law_recovers_exponent():
  rng = np.random.default_rng()
  c = np.geomspace(1e15, 1e21, 12)
  loss = (2.3e8 / c) ** 0.05 * np.exp(0.002 * rng.standard_normal(c.size))
  fit = kaplan.fit(c, loss, use_frontier=False)
  assert fit.alpha_c == pytest.approx(0.05, abs=0.003)
  lo, hi = fit.predict_interval(1e23)
  assert lo < fit.predict(1e23) < hi


def _write_csv(path, cols):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols.keys())
    w.writerows(zip(*cols.values()))


def test_fit_cli_json_round_trip(tmp_path, capsys):
  n, d, loss = _synthetic(np.random.default_rng(2), 0.005, 6, 6)
  path = tmp_path / "runs.csv"
  # Published-data layout: N and compute columns with spaces in their names, D = C / (6N).
  # Three junk points with huge loss are dropped by --drop-highest 3.
  c = np.r_[6 * n * d, 1e20, 2e20, 3e20]
  _write_csv(path, {"Model Size": np.r_[n, 1e8, 1e8, 1e8], "Training FLOP": c, "loss": np.r_[loss, 50, 60, 70]})
  cli.main(["fit", str(path), "--n-col", "Model Size", "--c-col", "Training FLOP", "--loss-col", "loss",
            "--drop-highest", "3", "--grid", "coarse", "--predict-flops", "1e23", "--json"])
  out = json.loads(capsys.readouterr().out)
  direct = chinchilla.fit(n, d, loss, grid=chinchilla.coarse_grid())
  assert out["n_points"] == len(n)
  for k in ("E", "A", "B", "alpha", "beta", "objective"):
    assert out[k] == pytest.approx(getattr(direct, k), rel=1e-6), k
  assert out["compute_optimal"][0]["n_opt"] == pytest.approx(chinchilla.compute_optimal(direct.params, 1e23)[0])


def test_fit_cli_all_methods_and_plots(tmp_path, capsys):
  # isoFLOP profiles of the Approach 3 law itself: Approach 2 must find its
  # frontier exponent beta / (alpha + beta), and Approach 3 the law.
  n, d, budget = [], [], []
  for i, c in enumerate(np.geomspace(1e18, 1e21, 5)):
    n_opt, _ = chinchilla.compute_optimal(TRUE, c)
    n.extend(n_opt * np.geomspace(0.25, 4, 7))
    d.extend(c / (6 * n_opt * np.geomspace(0.25, 4, 7)))
    budget.extend([i] * 7)
  n, d = np.array(n), np.array(d)
  loss = chinchilla.predict_loss(TRUE, n, d) * np.exp(0.002 * np.random.default_rng().standard_normal(n.size))
  path = tmp_path / "results.csv"
  _write_csv(path, {"n_non_embedding": n, "tokens": d, "final_loss": loss, "budget": budget})
  cli.main(["fit", str(path), "--method", "all", "--grid", "coarse", "--budget-col", "budget",
            "--plot-dir", str(tmp_path / "plots"), "--json"])
  out = json.loads(capsys.readouterr().out)
  a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
  assert out["approach2"]["n_opt"]["exponent"] == pytest.approx(a_true, abs=0.03)
  assert out["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
  assert "alpha_C" in out["kaplan"]
  for p in out["plots"]:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert {os.path.basename(p) for p in out["plots"]} == {"isoflop.png", "frontier.png", "residuals.png"}


def test_residual_plot_of_a_degenerate_fit_is_still_drawn(tmp_path):
  """Six points cannot pin five parameters: A and alpha overflow, predictions are inf/nan.
  The residual plot draws what is finite instead of failing on log axes over no data."""
  from maxlm.scaling import plots
  n, d = [856, 3376, 12640], [1.2e6, 5.3e5, 2.3e5]
  degenerate = chinchilla.ChinchillaFit(E=3.3, A=np.inf, B=607.0, alpha=3027.0, beta=0.53,
                                        objective=4e-5, n_points=3)
  sane = chinchilla.ChinchillaFit(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28, objective=1e-3,
                                  n_points=3)
  with np.errstate(all="ignore"):
    assert not np.isfinite(degenerate.predict(np.asarray(n, float), np.asarray(d, float))).any()
    for name, fit, loss in (("none.png", degenerate, [3.9, 3.8, 4.1]),
                            ("some.png", sane, [3.9, float("nan"), 4.1])):
      path = plots.residuals(fit, n, d, loss, str(tmp_path / name))
      assert os.path.getsize(path) > 1000


def test_fit_cli_warns_when_the_runs_do_not_pin_the_law(tmp_path, capsys):
  """A law whose exponent lies outside the grid's (0, 2] is reported with a warning on stderr
  (and in --json); the published-range law fitted from the same grid gives none."""
  n, d = np.meshgrid(np.geomspace(5e7, 1.6e10, 8), np.geomspace(2e8, 3e11, 8))
  n, d = n.ravel(), d.ravel()
  for law, warned in ((TRUE, False), (dict(TRUE, alpha=2.6, A=4.8e17), True)):
    path = tmp_path / "runs.csv"
    _write_csv(path, {"n_non_embedding": n, "tokens": d,
                      "final_loss": chinchilla.predict_loss(law, n, d)})
    cli.main(["fit", str(path), "--method", "approach3", "--grid", "coarse", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["alpha"] == pytest.approx(law["alpha"], rel=1e-3)
    assert ("warning: approach 3 on 64 runs: alpha=2.6" in captured.err) == warned, captured.err
    assert bool(out.get("warnings")) == warned
