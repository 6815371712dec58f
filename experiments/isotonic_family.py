"""Isotonic calibration scored as its own recalibrated CDF vs the Gaussian stand-in.

Until session 20 the stages after ``hypuc calibrate --method isotonic``
scored the Gaussian of equal central 95% width; they now score the
recalibrated family (``hypuc_jax._recalibrated.RecalibratedNormal``). This
script fits each calibration on a trained run's validation predictions and
scores the test predictions (test split, no refit) under:

- ``hyperfine`` (the run's config: bins, min_count, xi, tail) and ``global``;
- ``isotonic``: its recalibrated CDF (what evaluate / predict now report);
- ``isotonic as Gaussian``: the same sigma_cal read as a Gaussian (before).

Columns: 68/90/95% coverage, mean 95% width, UCE, NLL and CRPS (the
``hypuc_jax.uncertainty`` scores), and the worst 95%-coverage gap over the
quantile bins of mu holding >= 50 test records (``report.mu_bin_coverage``
with the run's number of calibration bins).

Usage::

    python experiments/isotonic_family.py --workdir runs/main/hypuc [--workdir runs/main/baseline] \\
        --out experiments/results/isotonic_family_potassium.md
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from hypuc_jax import calibration, report, uncertainty

from _results import check_out, predictions, run_main, write_result

LEVELS = (0.68, 0.9, 0.95)


def score(y, mu, sigma_cal, dof, n_bins: int) -> dict:
    """Coverage, width, UCE, NLL, CRPS and the worst mu-bin gap of one predictive."""
    row = {f"cov{int(100 * p)}": uncertainty.coverage(y, mu, sigma_cal, p, dof) for p in LEVELS}
    row["width95"] = uncertainty.width(sigma_cal, 0.95, dof)
    row["uce"] = uncertainty.uce(y, mu, sigma_cal, dof)
    row["nll"] = uncertainty.nll(y, mu, sigma_cal, dof)
    row["crps"] = uncertainty.crps(y, mu, sigma_cal, dof)
    _, cov, counts = report.mu_bin_coverage(y, mu, sigma_cal, n_bins=n_bins, dof=dof)
    big = counts >= 50
    row["worst_bin_gap_pp"] = float(np.max(np.abs(cov[big] - 0.95)) * 100) if big.any() else None
    return row


def run_rows(workdir: Path, val: dict, test: dict) -> list[tuple[str, dict]]:
    """Every calibration of one run directory, fitted on its validation predictions
    ``val`` and scored on its test predictions ``test`` ({"y", "mu", "sigma"} [n])."""
    cfg = json.loads((workdir / "config.json").read_text())["calibration"]
    y, mu, sigma = (np.asarray(test[k], np.float64) for k in ("y", "mu", "sigma"))
    fit = lambda method, **kw: calibration.fit_calibrator(                # noqa: E731
        method, val["mu"], val["sigma"], val["y"], **kw)
    hyper = fit("hyperfine", n_bins=cfg["bins"], min_count=cfg["min_count"], xi=cfg["xi"],
                tail=cfg["tail"], quantile=cfg["quantile"])
    glob, iso = fit("global"), fit("isotonic", xi=cfg["xi"])
    bins = cfg["bins"]
    rows = [("uncalibrated", score(y, mu, sigma, math.inf, bins))]
    for name, cal in (("global", glob), ("hyperfine", hyper), ("isotonic", iso)):
        rows.append((name, score(y, mu, cal.apply(mu, sigma), cal.predictive_dof, bins)))
    rows.append(("isotonic as Gaussian (before)", score(y, mu, iso.apply(mu, sigma), math.inf,
                                                          bins)))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", action="append", required=True, type=Path,
                    help="a trained run directory (repeatable)")
    ap.add_argument("--out", type=Path, help="markdown file to write")
    args = ap.parse_args(argv)
    check_out(ap, args.out)
    loaded = {}                             # every run's files before any fit
    for wd in args.workdir:
        if not (wd / "config.json").is_file():
            ap.error(f"--workdir {wd}: no config.json (expected a trained run directory)")
        try:
            loaded[wd] = [predictions(wd, f"predictions_{s}.npz", "--workdir")
                          for s in ("val", "test")]
        except (ValueError, KeyError, OSError) as e:
            ap.error(str(e))
    t0 = time.time()
    lines = ["# Isotonic calibration: recalibrated CDF vs Gaussian stand-in", "",
             "Command: `python experiments/isotonic_family.py "
             + " ".join(f"--workdir {w}" for w in args.workdir)
             + (f" --out {args.out}" if args.out else "") + "`", "",
             "Calibrations fitted on each run's validation split, scored on its test split.", ""]
    keys = ("cov68", "cov90", "cov95", "width95", "uce", "nll", "crps", "worst_bin_gap_pp")
    for wd in args.workdir:
        rows = run_rows(wd, *loaded[wd])
        n = int(loaded[wd][1]["y"].size)
        lines += [f"## {wd} (test n = {n})", "",
                  "| calibration | " + " | ".join(keys) + " |",
                  "| --- |" + " ---: |" * len(keys)]
        for name, r in rows:
            lines.append(f"| {name} | " + " | ".join(
                "-" if r[k] is None else f"{r[k]:.4f}" for k in keys) + " |")
        lines.append("")
    lines.append(f"({time.time() - t0:.1f} s)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_result(args.out, text)


if __name__ == "__main__":
    run_main("isotonic_family.py", main)
