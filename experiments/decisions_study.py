"""Boosted clinical decisions vs their baselines on saved predictions (issue 5).

Fits the decision classifiers of ``hypuc_jax.corrections`` on the validation
split of a run directory and scores AUROC per clinical threshold:

- CV: repeated stratified K-fold inside the validation split (out-of-fold
  probabilities pooled per repeat, AUROC per repeat, mean and sample sd
  (ddof=1; "—" for one repeat) over repeats). Defaults are chosen on these
  numbers only.
- test: fitted on the whole validation split, scored on the test split; a
  final check, never used for a choice.

The calibrated sigma feature comes from the run's calibration, fitted on
the whole validation split, also inside the CV folds (a mild leak: the
hyperfine factors are a few numbers per mu-bin, and every variant and
baseline shares it).

Variants: a fit configuration (monotone constraints, class weighting,
regularisation, ensemble size) crossed with the prior strength n0 of the
shrinkage to the Gaussian log-odds (applied after the fit, so one fit serves
every n0). Baselines: thresholding mu, and the calibrated Gaussian. A point
model's run (NaN predicted sigma) uses its task.json ``constant_sigma``, as
the pipeline does.

Usage:
  python experiments/decisions_study.py --workdir runs/main/hypuc --folds 5 --repeats 4
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
from threadpoolctl import threadpool_limits

from hypuc_jax import decisions as dec
from hypuc_jax._predictions import as_thresholds, event
from hypuc_jax.calibration import load_calibrator

from _results import at_least, check_out, predictions, publish, run_main

# Shared HGB settings as the workflow passes them (config defaults, 1600 val rows).
BASE = dict(max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=40,
            early_stopping=False)
REG = dict(BASE, max_leaf_nodes=4, min_samples_leaf=20, l2_regularization=1.0)
CONFIGS = {  # name: (fit kwargs, HGB settings)
    "plain (previous)": (dict(n_models=1, monotone=False), BASE),
    "monotone": (dict(n_models=1, monotone=True), BASE),
    "monotone+balanced": (dict(n_models=1, monotone=True, class_weight="balanced"), BASE),
    "monotone+reg": (dict(n_models=1, monotone=True), REG),
    "monotone, K=5": (dict(n_models=5, monotone=True), BASE),
    "monotone+reg, K=5": (dict(n_models=5, monotone=True), REG),
    "plain, K=5": (dict(n_models=5, monotone=False), BASE),
}
PRIORS = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # n0 = inf is the "gaussian" row


def load(workdir: Path, split: str, cal):
    """(mu, calibrated sigma, y) of ``split``; a point model's sigma is its constant."""
    d = predictions(workdir, f"predictions_{split}.npz", "--workdir")
    return d["mu"], cal.apply(d["mu"], d["sigma"]), d["y"]


def scores(fit, mu, sigma, specs, dof=math.inf):
    """{(config, n0): {name: probs}} plus baselines, for one fitted set of configs
    (``dof``: the calibrated predictive's family, inf for the Gaussian)."""
    out = {}
    for name, (classifiers, weights) in fit.items():
        for n0 in PRIORS:
            w = {t.name: dec.gaussian_weight(weights[t.name], n0) for t in specs}
            out[(name, n0)] = dec.predict_decisions(classifiers, w, mu, sigma, specs, dof=dof)
    base = dec.baseline_scores(mu, sigma, specs, dof=dof)
    out[("threshold mu", None)] = {k: v["threshold_mu"] for k, v in base.items()}
    out[("gaussian", None)] = {t.name: dec.gaussian_log_odds(mu, sigma, t, dof) for t in specs}
    return out


def fit_all(mu, sigma, y, specs, seed, dof=math.inf):
    fit = {}
    for name, (kw, hgb) in CONFIGS.items():
        classifiers, _ = dec.fit_decisions(mu, sigma, y, specs, seed=seed, prior_strength=0.0,
                                            dof=dof, **kw, **hgb)
        # Keep the labels so the Gaussian weight can be recomputed for every n0.
        fit[name] = (classifiers, {t.name: event(y, t).astype(np.int64) for t in specs})
    return fit


def cross_validate(mu, sigma, y, specs, folds, repeats, seed, dof=math.inf):
    # One stratum per joint outcome of all events (they overlap: y > 6.5 implies y > 5.5).
    strata = sum(2 ** i * event(y, t).astype(np.int64) for i, t in enumerate(specs))
    aucs = {}
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    oof = None
    for j, (tr, te) in enumerate(cv.split(mu, strata)):
        if j % folds == 0:
            oof = {}
        part = scores(fit_all(mu[tr], sigma[tr], y[tr], specs, seed, dof), mu[te], sigma[te],
                      specs, dof)
        for key, probs in part.items():
            for t in specs:
                oof.setdefault((key, t.name), np.empty(y.size))[te] = probs[t.name]
        if j % folds == folds - 1:
            for (key, name), s in oof.items():
                spec = next(t for t in specs if t.name == name)
                aucs.setdefault((key, name), []).append(roc_auc_score(event(y, spec), s))
    # sample sd (ddof=1) over repeats, as the other scripts report; NaN for one repeat
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan)
            for k, v in aucs.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/main/hypuc"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    at_least(p, folds=(args.folds, 2), repeats=(args.repeats, 1))
    check_out(p, args.out)
    start = time.time()
    if not args.workdir.is_dir():
        p.error(f"--workdir {args.workdir}: no such folder")
    for name in ("task.json", "calibration.json"):
        if not (args.workdir / name).is_file():
            p.error(f"--workdir {args.workdir}: no {name} (a calibrated `hypuc` run directory "
                    "was expected)")
    try:
        task = json.loads((args.workdir / "task.json").read_text())
        specs = as_thresholds(task["thresholds"])
        cal = load_calibrator(args.workdir / "calibration.json", task=task["name"])
        val, test = load(args.workdir, "val", cal), load(args.workdir, "test", cal)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    with threadpool_limits(1):
        dof = cal.predictive_dof
        cv = cross_validate(*val, specs, args.folds, args.repeats, args.seed, dof)
        final = scores(fit_all(*val, specs, args.seed, dof), test[0], test[1], specs, dof)
    ev_test = {t.name: event(test[2], t) for t in specs}
    names = [t.name for t in specs]
    pos = " ".join(f"{t.name}: {int(event(val[2], t).sum())}/{int(ev_test[t.name].sum())}"
                   for t in specs)
    lines = [f"positives val/test: {pos}", "",
             "| variant | n0 | " + " | ".join(f"{n} CV" for n in names) + " | mean CV - mu CV | "
             + " | ".join(f"{n} test" for n in names) + " |",
             "|" + "---|" * (3 + 2 * len(names))]
    # a threshold with one class in validation has no CV AUROC (NaN): left out of the means
    mu_cv = np.nanmean([cv[(("threshold mu", None), n)][0] for n in names])
    rows = []
    for key in final:
        cvs = [cv[(key, n)] for n in names]
        gap = np.nanmean([c[0] for c in cvs]) - mu_cv
        tests = [roc_auc_score(ev_test[n], final[key][n]) for n in names]
        rows.append((gap, key, cvs, tests))
    for gap, (name, n0), cvs, tests in sorted(rows, key=lambda r: -np.nan_to_num(r[0], nan=-np.inf)):
        lines.append(f"| {name} | {'-' if n0 is None else f'{n0:g}'} | "
                     + " | ".join(f"{m:.4f} ± " + (f"{s:.4f}" if np.isfinite(s) else "—")
                                  for m, s in cvs)
                     + f" | {gap:+.4f} | " + " | ".join(f"{a:.4f}" for a in tests) + " |")
    lines += ["", f"CV: mean ± sample sd (ddof=1) over repeats; folds={args.folds} "
              f"repeats={args.repeats} seed={args.seed}; {time.time() - start:.0f} s"]
    publish("\n".join(lines) + "\n", args.out, "decisions_study.py",
            sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    run_main("decisions_study.py", main)
