"""How many hyperfine bins, which tail? Choose on validation by cross-validated UCE; check on test.

For each finished run (``RUN/seed<N>/predictions_val.npz`` + ``outputs_test.npz``;
``--seeds``: only these N; a point model's NaN sigma is its task.json
``constant_sigma``, as in the pipeline),
each tail ("gaussian": the SPEC's; "auto": a Student-t dof fitted on
validation) and each bin count, hyperfine calibration
(``calibration.fit_hyperfine``, min_count 20) is scored two ways:

- CV-val: 5-fold cross-fitting inside the validation split (fit on 4 folds,
  calibrate the 5th), UCE of the pooled out-of-fold sigmas. Uses no test data,
  so it can choose the bin count.
- test: fit on all of validation, UCE on test before / after (the check).
- oracle: the same calibration fitted on the test split itself and scored
  there: how low this calibration's form can bring test UCE at all.

Usage::

    python experiments/calibration_bins.py --bins 5 10 20 --tails gaussian auto \\
        --runs runs/abl_splits/none runs/abl_splits/hypuc-0.5 \\
        --out experiments/results/calibration_bins.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import at_least, check_out, predictions, publish, run_main, seed_dirs, seeds_per_run
from scipy import stats

from hypuc_jax import calibration, uncertainty
from hypuc_jax._predictions import std_cdf


def cv_uce(mu, sigma, y, bins: int, folds: int = 5, seed: int = 0, tail="gaussian") -> float:
    """UCE of out-of-fold hyperfine-calibrated predictives on one split ([n] arrays).

    ``calibration.cross_fit`` calibrates each fold (and, for ``tail="auto"``,
    picks its dof) from the other folds; held-out residuals are mapped to the
    Gaussian scale by their fold's predictive CDF, Phi^-1(F((y - mu) / sigma'')),
    which keeps every central-interval coverage, and pooled. Residuals of any
    size are scored (one beyond 8.3 sigma once made the map infinite).
    """
    held, dofs = calibration.cross_fit(mu, sigma, y, folds, seed, n_bins=bins, min_count=20,
                                       tail=tail)
    z = (y - mu) / held
    u = np.empty(y.size)
    for dof in np.unique(dofs):
        sel = dofs == dof
        # Through the lower tail, P(Z <= -|z|), which keeps its precision where
        # F(|z|) rounds to 1 (|z| > 8.3 for a Gaussian); where even that
        # underflows the residual lies beyond every central interval scored,
        # so a large finite stand-in keeps each coverage exact.
        lower = stats.norm.ppf(std_cdf(-np.abs(z[sel]), float(dof)))
        u[sel] = np.sign(z[sel]) * np.minimum(-lower, 1e12)
    return uncertainty.uce(u, np.zeros(y.size), np.ones(y.size))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bins", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--tails", nargs="+", default=["gaussian", "auto"],
                    choices=["gaussian", "auto"])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", action="append",
                    help="only these seeds (default: all of each run); once for every run or "
                    "once per --runs folder, in order")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    at_least(ap, bins=(min(a.bins), 1))
    check_out(ap, a.out)
    try:                                       # every run's files before any fit
        runs = [(run, seed_dirs(run, s))
                for run, s in zip(a.runs, seeds_per_run(ap, a.seeds, a.runs))]
        data = {d: (predictions(d, "predictions_val.npz"), predictions(d, "outputs_test.npz"))
                for _, dirs in runs for d in dirs}
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    lines = ["| run | tail | bins | dof per seed | CV-val UCE | test UCE uncalibrated | "
             "test UCE calibrated | change | oracle (fitted on test) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run, seeds in runs:
        for tail, b in ((t, b) for t in a.tails for b in a.bins):
            cv, unc, cal, dofs, oracle = [], [], [], [], []
            for d in seeds:
                va, te = data[d]
                cv.append(cv_uce(va["mu"], va["sigma"], va["y"], b, tail=tail))
                fit = calibration.fit_hyperfine(va["mu"], va["sigma"], va["y"], n_bins=b,
                                                min_count=20, tail=tail)
                unc.append(uncertainty.uce(te["y"], te["mu"], te["sigma"]))
                cal.append(uncertainty.uce(te["y"], te["mu"], fit.apply(te["mu"], te["sigma"]),
                                           fit.predictive_dof))
                dofs.append(f"{fit.predictive_dof:g}")
                on_test = calibration.fit_hyperfine(te["mu"], te["sigma"], te["y"], n_bins=b,
                                                    min_count=20, tail=tail)
                oracle.append(uncertainty.uce(te["y"], te["mu"],
                                              on_test.apply(te["mu"], te["sigma"]),
                                              on_test.predictive_dof))
            u, c = np.mean(unc), np.mean(cal)
            lines.append(f"| {run} ({len(seeds)} seeds) | {tail} | {b} | {' / '.join(dofs)} | "
                         f"{np.mean(cv):.4f} | {u:.4f} | {c:.4f} | {100 * (c / u - 1):+.0f}% | "
                         f"{np.mean(oracle):.4f} |")
    publish("\n".join(lines) + "\n", a.out, "calibration_bins.py", argv or sys.argv[1:],
            intro="Means over seeds.\n\n")
    return 0


if __name__ == "__main__":
    run_main("calibration_bins.py", main)
