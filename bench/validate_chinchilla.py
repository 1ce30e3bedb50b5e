"""Validate the Approach 3 fitter on the published Chinchilla data.

Data: Epoch AI's reconstruction of Hoffmann et al. 2022 Figure 4 (Besiroglu,
Erdil, Barnett, You 2024, "Chinchilla Scaling: A replication attempt",
arXiv:2404.10102). The file is public: GitHub epoch-research/analyzing-chinchilla,
data/svg_extracted_data.csv (commit 92258837, sha256 193478df...aa1b30, 245 rows):
  curl -LO https://raw.githubusercontent.com/epoch-research/analyzing-chinchilla/92258837425e1b5f2851d624287f0120583a3d0e/data/svg_extracted_data.csv
Runs exactly

  python -m maxlm.scaling fit svg_extracted_data.csv --n-col "Model Size" \
      --c-col "Training FLOP" --loss-col loss --drop-highest 5 --bootstrap 200 --json

(full 4,500-start Hoffmann grid, sum of Huber(1e-3) on log-residuals, D = C/(6N))
and prints the fit next to Hoffmann et al.'s published values and Epoch's.
Passes when E, alpha and beta equal Epoch's L-BFGS fit to 3 significant
figures. Also prints Approach 2 on the same points, grouped into Hoffmann's
nine isoFLOP budgets. Takes one to a few minutes on 2 CPU cores.

  python bench/validate_chinchilla.py svg_extracted_data.csv [--bootstrap 200]
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from maxlm.scaling import cli, isoflop  # noqa: E402

SOURCE_URL = ("https://raw.githubusercontent.com/epoch-research/analyzing-chinchilla/"
              "92258837425e1b5f2851d624287f0120583a3d0e/data/svg_extracted_data.csv")
KEYS = ("E", "A", "B", "alpha", "beta")
PUBLISHED = {
    "Hoffmann et al. 2022 (rounded)": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "Epoch 2024 headline (MLE, BFGS)": dict(E=1.81686, A=482.006, B=2085.434, alpha=0.34781, beta=0.36585),
    "Epoch 2024 L-BFGS grid (cell 18)": dict(E=1.81724, A=477.84, B=2143.86, alpha=0.347313, beta=0.367183),
}
EPOCH_CI = dict(E=(1.769, 1.871), A=(285.2, 743.6), B=(1042.4, 5810.3), alpha=(0.317, 0.373), beta=(0.331, 0.415))
HOFFMANN_BUDGETS = [6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21]


def sig3(x):
  return float(f"{x:.3g}")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("csv", help="Epoch AI's svg_extracted_data.csv (see above for where to get it)")
  ap.add_argument("--bootstrap", type=int, default=200)
  args = ap.parse_args()
  if not os.path.isfile(args.csv):
    sys.exit(f"{args.csv}: not found. It is Epoch AI's public reconstruction of Chinchilla's"
             f" Figure 4: {SOURCE_URL}")

  argv = ["fit", args.csv, "--n-col", "Model Size", "--c-col", "Training FLOP", "--loss-col", "loss",
          "--drop-highest", "5", "--bootstrap", str(args.bootstrap), "--predict-flops", "5.88e23", "--json"]
  t0 = time.time()
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    cli.main(argv)
  fit = json.loads(buf.getvalue())
  secs = time.time() - t0

  print(f"python -m maxlm.scaling {' '.join(repr(a) if ' ' in a else a for a in argv)}")
  print(f"{fit['n_points']} points, 4,500 L-BFGS starts, {args.bootstrap} bootstrap resamples, {secs:.0f} s\n")
  print(f"{'':34}" + "".join(f"{k:>12}" for k in KEYS))
  for name, p in PUBLISHED.items():
    print(f"{name:34}" + "".join(f"{p[k]:>12.6g}" for k in KEYS))
  print(f"{'maxlm (this fit)':34}" + "".join(f"{fit[k]:>12.6g}" for k in KEYS))
  print(f"objective (sum of Huber): {fit['objective']:.7e}  (Epoch cell 18 and the shared README: 1.0182740e-3)\n")

  print(f"95% bootstrap intervals ({fit['n_boot']} resamples) vs Epoch's (4,000):")
  for k in KEYS:
    lo, hi = fit["ci"][k]
    print(f"  {k:>5}  maxlm [{lo:.4g}, {hi:.4g}]   Epoch [{EPOCH_CI[k][0]:.4g}, {EPOCH_CI[k][1]:.4g}]")

  co = fit["compute_optimal"][0]
  print(f"\nCompute-optimal at C = 5.88e23 (Chinchilla's budget): N_opt = {co['n_opt']:.3g}"
        f" {_ci(co['n_opt_ci'])}, D_opt = {co['d_opt']:.3g} {_ci(co['d_opt_ci'])},"
        f" D/N = {co['tokens_per_param']:.1f} {_ci(co['tokens_per_param_ci'], '.1f')}"
        "  (Epoch: D/N 18.4; Hoffmann rounded: 92.8)")

  # Approach 2 on the same points: snap each run to the nearest of Hoffmann's nine budgets.
  t = cli.read_table(args.csv, "Model Size", "loss", c_col="Training FLOP", drop_highest=5)
  label = np.argmin(np.abs(np.log(t["c"])[:, None] - np.log(HOFFMANN_BUDGETS)[None, :]), axis=1)
  fit2 = isoflop.fit(t["n"], t["d"], t["loss"], c=t["c"], budget=label)
  lo, hi = fit2.n_opt.to_json()["exponent_ci"]
  print(f"Approach 2 ({len(fit2.parabolas)} isoFLOP budgets): N_opt ∝ C^{fit2.n_opt.p:.3f} [{lo:.3f}, {hi:.3f}],"
        f" D_opt ∝ C^{fit2.d_opt.p:.3f}   (Hoffmann et al. Approach 2: a = 0.49, b = 0.51)")

  ref = PUBLISHED["Epoch 2024 L-BFGS grid (cell 18)"]
  ok = all(sig3(fit[k]) == sig3(ref[k]) for k in ("E", "alpha", "beta"))
  print("\nE, alpha, beta to 3 significant figures vs Epoch's L-BFGS fit: "
        + ", ".join(f"{k} {sig3(fit[k])} vs {sig3(ref[k])}" for k in ("E", "alpha", "beta"))
        + ("  -> PASS" if ok else "  -> FAIL"))
  return 0 if ok else 1


def _ci(pair, fmt=".3g"):
  return f"[{pair[0]:{fmt}}, {pair[1]:{fmt}}]"


if __name__ == "__main__":
  sys.exit(main())
