"""How many hyperfine bins? Choose on validation by cross-validated UCE; check on test.

For each finished run (``RUN/seed*/predictions_val.npz`` + ``outputs_test.npz``)
and each bin count, hyperfine calibration (``calibration.fit_hyperfine``,
min_count 20) is scored two ways:

- CV-val: 5-fold cross-fitting inside the validation split (fit on 4 folds,
  calibrate the 5th), UCE of the pooled out-of-fold sigmas. Uses no test data,
  so it can choose the bin count.
- test: fit on all of validation, UCE on test before / after (the check).

Usage::

    python experiments/calibration_bins.py --bins 5 10 20 \\
        --runs runs/abl_splits/none runs/abl_splits/hypuc-0.5 \\
        --out experiments/results/calibration_bins.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import publish
from hypuc_jax import calibration, uncertainty


def cv_uce(mu, sigma, y, bins: int, folds: int = 5, seed: int = 0) -> float:
    """UCE of out-of-fold hyperfine-calibrated sigmas on one split ([n] arrays)."""
    parts = np.array_split(np.random.default_rng(seed).permutation(y.size), folds)
    out = np.empty(y.size)
    for k, held in enumerate(parts):
        fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
        cal = calibration.fit_hyperfine(mu[fit], sigma[fit], y[fit], n_bins=bins, min_count=20)
        out[held] = cal.apply(mu[held], sigma[held])
    return uncertainty.uce(y, mu, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bins", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    lines = ["| run | bins | CV-val UCE | test UCE uncalibrated | test UCE calibrated | change |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in a.runs:
        seeds = sorted(run.glob("seed*"))
        if not seeds:
            raise FileNotFoundError(f"--runs {run}: no seed*/ run directories")
        for b in a.bins:
            cv, unc, cal = [], [], []
            for d in seeds:
                va, te = np.load(d / "predictions_val.npz"), np.load(d / "outputs_test.npz")
                cv.append(cv_uce(va["mu"], va["sigma"], va["y"], b))
                fit = calibration.fit_hyperfine(va["mu"], va["sigma"], va["y"], n_bins=b, min_count=20)
                unc.append(uncertainty.uce(te["y"], te["mu"], te["sigma"]))
                cal.append(uncertainty.uce(te["y"], te["mu"], fit.apply(te["mu"], te["sigma"])))
            u, c = np.mean(unc), np.mean(cal)
            lines.append(f"| {run} ({len(seeds)} seeds) | {b} | {np.mean(cv):.4f} | {u:.4f} | "
                         f"{c:.4f} | {100 * (c / u - 1):+.0f}% |")
    publish("\n".join(lines) + "\n", a.out, "calibration_bins.py", argv or sys.argv[1:],
            intro="Means over seeds.\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
