"""`python -m maxlm.scaling <command>`: sweep, run, collect, fit, mix-ratio.

  sweep   --config=configs/scaling_sweep.py:tiny --root=DIR [--run]
          writes DIR/points.jsonl and DIR/manifest.txt (one launch line per point)
  run     DIR                 trains unfinished points one after another here
  collect DIR --out=R.csv     one CSV row per finished point
  fit     R.csv [--n-col N] [--d-col D | --c-col C] [--loss-col L]
          [--drop-highest K] [--method approach3|approach2|kaplan|all]
          [--flops-col F] [--bootstrap B] [--predict-flops C ...] [--predict-nd N:D ...]
          [--plot-dir DIR] [--json]
  mix-ratio R.csv --r-col R --domain-loss-col LD --general-loss-col LG
          --max-general-increase T [--n-col N --d-col D] [--n N --d D]
          [--baseline-loss L] [--general-ratio 1-r|r] [--bootstrap B] [--json]
          fits the D-CPT law to both losses and solves for the domain ratio r
          minimising the domain loss with L_general(r) <= (1 + T) * baseline
          (baseline: the general fit at r = 0, unless --baseline-loss)

The logic lives in importable modules (chinchilla, isoflop, kaplan, sweep,
runs, plots); this file only parses flags and prints.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import json
import math
import os
import sys

import numpy as np

from maxlm import cli
from maxlm.cli import UsageError
from maxlm.scaling import chinchilla, dcpt, isoflop, kaplan, runs, sweep


def load_config(spec, sets=()):
  """'path/to/file.py:arg' -> get_config(arg), then apply 'a.b=value' overrides (values parsed as Python literals)."""
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("_sweep_config", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  config = mod.get_config(arg) if arg else mod.get_config()
  for item in sets:
    key, _, raw = item.partition("=")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:  # a mistyped key must fail, not add a field nobody reads
      raise KeyError(f"unknown sweep config field {key!r}")
    node[leaf] = value
  return config


def _read_rows(path, need, loss_col, skip_incomplete=False):
  """CSV rows with a loss, as dicts of floats over the `need` columns.

  Errors name the file: a missing column lists the CSV's columns, a non-number names its line.
  """
  need = list(dict.fromkeys([c for c in need if c] + [loss_col]))
  try:
    f = open(path, newline="")
  except OSError as e:
    raise UsageError(f"{path}: cannot read the results CSV ({e.strerror})") from None
  with f:
    reader = csv.DictReader(f)
    have = reader.fieldnames or []
    missing = [c for c in need if c not in have]
    if missing:
      raise UsageError(f"{path}: no column {', '.join(map(repr, missing))}; the CSV has"
                       f" {', '.join(have) if have else 'no header'} (choose with --n-col/--d-col/"
                       f"--c-col/--loss-col/...)")
    rows = []
    for line, r in enumerate(reader, 2):
      if r.get(loss_col, "") in ("", None):
        continue  # an unfinished run has no loss yet
      if skip_incomplete and any(r.get(k, "") in ("", None) for k in need):
        continue
      try:
        rows.append({k: float(r[k]) for k in need})
      except (TypeError, ValueError):
        bad = next(k for k in need if not _is_float(r[k]))
        raise UsageError(f"{path}:{line}: column {bad!r} is {r[bad]!r}, not a number") from None
  return rows


def _is_float(v) -> bool:
  try:
    float(v)
    return True
  except (TypeError, ValueError):
    return False


def _need_points(path, n, n_params, what):
  if n < n_params:
    raise UsageError(f"{path}: {n} run(s) with a loss, but {what} has {n_params} parameters;"
                     f" it needs at least {n_params} points")


def read_table(path, n_col, loss_col, d_col=None, c_col=None, budget_col=None, drop_highest=0):
  """Columns as float arrays: n, d, c (6ND when only D given), loss, budget. Rows with no loss are skipped.

  drop_highest=K drops every row whose loss is >= the K-th largest loss (Epoch's
  rule: keep loss < 5th-largest loss), i.e. the K highest-loss points.
  """
  if (d_col is None) == (c_col is None):
    raise UsageError("give exactly one of --d-col and --c-col")
  rows = _read_rows(path, [n_col, d_col, c_col, budget_col], loss_col)
  col = lambda k: np.array([r[k] for r in rows])
  n, loss = col(n_col), col(loss_col)
  if d_col is not None:
    d = col(d_col)
    c = 6 * n * d
  else:
    c = col(c_col)
    d = c / (6 * n)  # Hoffmann et al.'s C = 6ND, as Epoch use for the Figure 4 data
  budget = col(budget_col) if budget_col else None
  if drop_highest:
    keep = loss < np.sort(loss)[-drop_highest]
    n, d, c, loss = n[keep], d[keep], c[keep], loss[keep]
    budget = None if budget is None else budget[keep]
  return dict(n=n, d=d, c=c, loss=loss, budget=budget)


def _column(path, name, loss_col, drop_highest=0):
  """One float column, with the same rows read_table keeps (loss present, K highest dropped)."""
  rows = _read_rows(path, [name], loss_col)
  x, loss = np.array([r[name] for r in rows]), np.array([r[loss_col] for r in rows])
  return x[loss < np.sort(loss)[-drop_highest]] if drop_highest else x


def _fit(args):
  t = read_table(args.csv, args.n_col, args.loss_col, args.d_col, args.c_col, args.budget_col, args.drop_highest)
  out, fit3, fit2 = {}, None, None
  # --flops-col: each run's compute as the sweep counted it (the results CSV's exact
  # `flops`) for Approach 2 and Kaplan; 6ND with non-embedding N undercounts tiny
  # models several-fold (their LM head and attention), which would bend N_opt(C).
  c_run = t["c"] if args.flops_col is None else _column(args.csv, args.flops_col, args.loss_col, args.drop_highest)
  methods = ("approach3", "approach2", "kaplan") if args.method == "all" else (args.method,)
  n_points = len(t["loss"])
  # Parameters per law: approach 3 fits E, A, B, alpha, beta; approach 2 a parabola per budget
  # (3) and then a power law across budgets; Kaplan's L(C) = (C_c / C)^alpha has two.
  for method, n_params in (("approach3", 5), ("approach2", 3), ("kaplan", 2)):
    if method in methods:
      _need_points(args.csv, n_points, n_params, method)
  if "approach3" in methods:
    grid = chinchilla.hoffmann_grid() if args.grid == "hoffmann" else chinchilla.coarse_grid()
    from maxlm.monitor.progress import Progress  # pylint: disable=g-import-not-at-top
    fit3 = chinchilla.fit(t["n"], t["d"], t["loss"], grid=grid, n_boot=args.bootstrap, seed=args.seed,
                          progress=Progress(len(grid) + args.bootstrap, desc="approach 3 fit"))
    out.update(fit3.to_json())
    warning = implausible_exponents(fit3)
    if warning:
      out.setdefault("warnings", []).append(warning)
      print(f"warning: {warning}", file=sys.stderr, flush=True)
    out["compute_optimal"] = [fit3.compute_optimal(c) for c in args.predict_flops]
    out["predictions"] = []
    for nd in args.predict_nd:
      n, d = (float(v) for v in nd.split(":"))
      pred = dict(n=n, d=d, loss=float(fit3.predict(n, d)))
      if fit3.samples is not None:
        pred["loss_ci"] = [float(v) for v in fit3.predict_interval(n, d)]
      out["predictions"].append(pred)
  if "approach2" in methods:
    budget = t["budget"] if t["budget"] is not None else isoflop.group_by_budget(t["c"], args.budget_tol)
    fit2 = isoflop.fit(t["n"], t["d"], t["loss"], c=c_run, budget=budget)
    out["approach2"] = dict(fit2.to_json(), compute_optimal=[fit2.compute_optimal(c) for c in args.predict_flops])
  if "kaplan" in methods:
    fitk = kaplan.fit(c_run, t["loss"])
    out["kaplan"] = dict(fitk.to_json(), predictions=[
        dict(flops=c, loss=float(fitk.predict(c)), loss_ci=[float(v) for v in fitk.predict_interval(c)])
        for c in args.predict_flops])
  if args.plot_dir:
    from maxlm.scaling import plots  # matplotlib only when plotting
    budget = t["budget"] if t["budget"] is not None else isoflop.group_by_budget(t["c"], args.budget_tol)
    out["plots"] = [plots.isoflop_profiles(t["n"], t["loss"], budget, fit2, os.path.join(args.plot_dir, "isoflop.png"),
                                           ylabel=args.loss_col),
                    plots.frontier(os.path.join(args.plot_dir, "frontier.png"), fit2, fit3)]
    if fit3:
      out["plots"].append(plots.residuals(fit3, t["n"], t["d"], t["loss"],
                                          os.path.join(args.plot_dir, "residuals.png")))
  if args.json:
    print(json.dumps(out))
  else:
    _print_human(out)
  return out


# Hoffmann et al.'s grid (and every published fit we know of) keeps alpha and beta in
# [0, 2]; a fit outside it, or with an infinite coefficient, is the optimiser chasing a
# term the runs cannot see, not a law.
EXPONENT_RANGE = (0.0, 2.0)


def implausible_exponents(fit) -> str | None:
  """A one-line warning when Approach 3's law is not identified by the runs, else None."""
  lo, hi = EXPONENT_RANGE
  bad = [f"{k}={getattr(fit, k):.4g}" for k in ("alpha", "beta")
         if not (lo < getattr(fit, k) <= hi)]
  bad += [f"{k}={getattr(fit, k):.4g}" for k in ("A", "B") if not math.isfinite(getattr(fit, k))]
  if not bad:
    return None
  return (f"approach 3 on {fit.n_points} runs: {', '.join(bad)} (exponents outside"
          f" ({lo:g}, {hi:g}]): the runs do not pin the law (too few, or N and D over too"
          " narrow a range); add runs over a wider range, or read approach 2")


def _print_human(out):
  if "E" in out:
    print(f"Approach 3 on {out['n_points']} runs: L = {out['E']:.4f} + {out['A']:.4g}/N^{out['alpha']:.4f}"
          f" + {out['B']:.4g}/D^{out['beta']:.4f}   (objective {out['objective']:.7e})")
    for k, (lo, hi) in out.get("ci", {}).items():
      print(f"  {k:>5}  {out[k]:.5g}  [{lo:.5g}, {hi:.5g}]")
    for co in out["compute_optimal"]:
      print(f"  C={co['flops']:.3g}: N_opt={co['n_opt']:.3g} D_opt={co['d_opt']:.3g} D/N={co['tokens_per_param']:.1f}")
    for p in out["predictions"]:
      print(f"  L(N={p['n']:.3g}, D={p['d']:.3g}) = {p['loss']:.4f} {p.get('loss_ci', '')}")
  if "approach2" in out:
    a2 = out["approach2"]
    print(f"Approach 2: N_opt = {a2['n_opt']['k']:.4g} C^{a2['n_opt']['exponent']:.4f},"
          f" D_opt = {a2['d_opt']['k']:.4g} C^{a2['d_opt']['exponent']:.4f} ({len(a2['budgets'])} budgets)")
  if "kaplan" in out:
    k = out["kaplan"]
    print(f"Kaplan: L(C) = ({k['C_c']:.4g}/C)^{k['alpha_C']:.4f}")
  for p in out.get("plots", []):
    print("wrote", p)


def _mix_ratio(args):
  need = [args.r_col, args.general_loss_col, args.n_col, args.d_col]
  rows = _read_rows(args.csv, need, args.domain_loss_col, skip_incomplete=True)
  col = lambda k: np.array([r[k] for r in rows]) if k else None
  r, n, d = col(args.r_col), col(args.n_col), col(args.d_col)
  # Target (N, D): as given, else the largest of the runs (the scale closest to the real run).
  n_at = args.n if args.n is not None else (float(n.max()) if n is not None else None)
  d_at = args.d if args.d is not None else (float(d.max()) if d is not None else None)
  kw = dict(n=n, d=d, eps=args.epsilon, n_boot=args.bootstrap, seed=args.seed)
  fit_d = dcpt.fit(r, col(args.domain_loss_col), ratio="r", **kw)
  fit_g = dcpt.fit(r, col(args.general_loss_col), ratio=args.general_ratio, **kw)
  opt = dcpt.optimal_ratio(fit_d, fit_g, args.max_general_increase, n=n_at, d=d_at, baseline=args.baseline_loss)
  out = dict(n_runs=len(rows), n=n_at, d=d_at, domain=fit_d.to_json(), general=fit_g.to_json(), optimum=opt)
  if args.json:
    print(json.dumps(out))
    return out
  law = lambda p: (f"{p['E']:.4f} + {p['A']:.4g}/N^{p['alpha']:.4f} + {p['B']:.4g} r^{p['eta']:.4f}/D^{p['beta']:.4f}"
                   f" + {p['C']:.4g}/(r + {p['eps']:.3g})^{p['gamma']:.4f}")
  print(f"D-CPT law on {len(rows)} runs (objective: domain {fit_d.objective:.4e}, general {fit_g.objective:.4e})")
  print(f"  domain  L = {law(fit_d.params)}")
  print(f"  general L = {law(fit_g.params)}   (r here is {args.general_ratio})")
  where = f"N={n_at:.3g} " if n_at else ""
  where += f"D={d_at:.3g}" if d_at else ""
  where = where or "the runs' N and D"
  print(f"At {where}: general bound {opt['general_bound']:.4f} = (1 + {args.max_general_increase:g})"
        f" x {opt['baseline']:.4f} ({opt['baseline_source']})")
  if not opt["feasible"]:
    print("  no r in [0, 1] keeps the general loss under the bound")
  else:
    print(f"  r* = {opt['r']:.4f}: domain loss {opt['domain_loss']:.4f} (r=0: {opt['domain_loss_at_r0']:.4f}),"
          f" general loss {opt['general_loss']:.4f} (+{100 * opt['general_increase']:.2f}%),"
          f" {'on the bound' if opt['constraint_active'] else 'unconstrained minimum'}")
  return out


def _sweep(args):
  config = load_config(args.config, args.set)
  points = sweep.points_from_config(config)
  root = args.root or config.root
  launch = config.launch
  runs.write_sweep(points, root, launch.pretrain, launch.variant, launch.command, list(launch.extra_overrides))
  print(f"{len(points)} points -> {root}/{runs.MANIFEST}")
  for p in points:
    print(f"  {p.name:<36} N={p.n_non_embedding:>11,d} D={p.tokens:>13,d} C={p.flops:.3g}"
          f" steps={p.steps} batch={p.global_batch} lr={p.peak_lr:.3g}")
  if args.run:
    runs.run(root)


def _collect(args):
  rows = runs.collect(args.root)
  out = args.out or os.path.join(args.root, "results.csv")
  runs.write_csv(rows, out)
  print(f"{len(rows)} finished of {len(runs.read_points(args.root))} points -> {out}")


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m maxlm.scaling", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="cmd", required=True)
  s = sub.add_parser("sweep", help="write a sweep's points and launch manifest")
  s.add_argument("--config", required=True, help="path.py:arg, e.g. configs/scaling_sweep.py:tiny")
  s.add_argument("--root", help="sweep directory (default: config.root)")
  s.add_argument("--set", action="append", default=[], help="override a config field: key.sub=value")
  s.add_argument("--run", action="store_true", help="then train unfinished points here, one at a time")
  r = sub.add_parser("run", help="train a sweep's unfinished points one at a time")
  r.add_argument("root")
  c = sub.add_parser("collect", help="results CSV from finished points")
  c.add_argument("root")
  c.add_argument("--out")
  f = sub.add_parser("fit", help="fit scaling laws to a results CSV")
  f.add_argument("csv")
  f.add_argument("--n-col", default="n_non_embedding")
  f.add_argument("--d-col", default=None, help="training tokens column (default 'tokens' unless --c-col)")
  f.add_argument("--c-col", default=None, help="compute column; then D = C / (6N)")
  f.add_argument("--loss-col", default="final_loss")
  f.add_argument("--budget-col", default=None, help="isoFLOP budget label column (default: group C within --budget-tol)")
  f.add_argument("--budget-tol", type=float, default=0.1, help="relative gap in C that starts a new budget")
  f.add_argument("--flops-col", default=None,
                 help="per-run compute for Approach 2's N_opt(C) (e.g. the sweep CSV's exact `flops`; default 6ND)")
  f.add_argument("--drop-highest", type=int, default=0, help="drop the K highest-loss points")
  f.add_argument("--method", default="approach3", choices=("approach3", "approach2", "kaplan", "all"))
  f.add_argument("--grid", default="hoffmann", choices=("hoffmann", "coarse"), help="L-BFGS starts (4,500 or 32)")
  f.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals")
  f.add_argument("--seed", type=int, default=0)
  f.add_argument("--predict-flops", type=float, nargs="*", default=[], help="budgets for compute-optimal N, D")
  f.add_argument("--predict-nd", nargs="*", default=[], help="N:D pairs for loss predictions")
  f.add_argument("--plot-dir")
  f.add_argument("--json", action="store_true", help="print one JSON object")
  m = sub.add_parser("mix-ratio", help="D-CPT law fits and the domain ratio under a general-loss budget")
  m.add_argument("csv")
  m.add_argument("--r-col", required=True, help="domain ratio column (share of domain tokens, 0..1)")
  m.add_argument("--domain-loss-col", required=True)
  m.add_argument("--general-loss-col", required=True)
  m.add_argument("--max-general-increase", type=float, required=True,
                 help="T: the general loss may rise to (1 + T) x baseline")
  m.add_argument("--n-col", default=None, help="model size column (omit when all runs share N)")
  m.add_argument("--d-col", default=None, help="training tokens column (omit when all runs share D)")
  m.add_argument("--n", type=float, default=None, help="N to solve at (default: largest N of the runs)")
  m.add_argument("--d", type=float, default=None, help="D to solve at (default: largest D of the runs)")
  m.add_argument("--baseline-loss", type=float, default=None,
                 help="general loss the bound is relative to (default: the general fit at r = 0)")
  m.add_argument("--general-ratio", default="1-r", choices=("1-r", "r"),
                 help="share the general-loss law sees as its r (default: the general share 1 - r)")
  m.add_argument("--epsilon", type=float, default=None, help="fix eps instead of fitting it")
  m.add_argument("--bootstrap", type=int, default=0)
  m.add_argument("--seed", type=int, default=0)
  m.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  if args.cmd == "fit":
    if args.d_col is None and args.c_col is None:
      args.d_col = "tokens"
    _fit(args)
  elif args.cmd == "sweep":
    _sweep(args)
  elif args.cmd == "run":
    return 1 if any(runs.run(args.root).values()) else 0
  elif args.cmd == "collect":
    _collect(args)
  elif args.cmd == "mix-ratio":
    _mix_ratio(args)
  return 0


if __name__ == "__main__":
  cli.run_argparse(main)
