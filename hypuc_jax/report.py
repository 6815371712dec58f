"""``report.md`` comparing evaluated runs (e.g. baseline vs HypUC), with its figures.

The report reads nothing itself: the workflow loads each run directory into a
:class:`RunOutputs` and hands them over. :func:`checks` states the HypUC
claims (tail MAE, calibration, decisions, flagging) as measured rows, and
:func:`write_report` writes OUT/figures/*.png (:mod:`hypuc_jax.report_figures`)
and OUT/report.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hypuc_jax import metrics
from hypuc_jax import uncertainty as unc_scores
from hypuc_jax._files import write_text_atomic  # noqa: F401  (re-exported: report.write_text_atomic)
from hypuc_jax._predictions import ThresholdSpec, event, family_label, is_family
from hypuc_jax.report_figures import (  # noqa: F401  (re-exported)
    FIGURES, RunOutputs, _region_names, central_coverage, mu_bin_coverage, scatter_rows,
    selective_mae, write_figures)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "—" if not np.isfinite(v) else f"{v:.{digits}g}"


def _within(fraction: float, n: int, target: float, tol: float) -> bool:
    """|fraction - target| <= tol for a fraction of n records, compared in whole
    records (0.97 - 0.95 is 0.020000000000000018 in floats: 97% failed a ±2 pp
    check that 93% passed)."""
    return abs(round(fraction * n) - target * n) <= tol * n + 1e-9


def _change(new: float, old: float, limit: float) -> str:
    """new / old - 1 in percent, with enough digits to show its side of ``limit``
    (-19.98% prints as -20.0% at one digit, beside a "missed")."""
    pct = (new / old - 1) * 100
    for digits in (1, 2, 3, 4):
        text = f"{pct:+.{digits}f}"
        if (float(text) <= limit) == (pct <= limit):
            return f"{text}%"
    return f"{text}%, just {'below' if pct <= limit else 'above'} {limit:+g}%"


def tail_mae(run: RunOutputs, value: float, direction: str, which: str = "mu") -> tuple[int, float]:
    """(count, MAE) of the test examples beyond a threshold (y > value or y < value)."""
    sel = event(run.y, ThresholdSpec("tail", value, direction))
    pred = run.mu if which == "mu" else run.corrected
    return int(sel.sum()), (float(np.mean(np.abs(run.y[sel] - pred[sel]))) if sel.any()
                            else float("nan"))


def checks(baseline: RunOutputs | None, method: RunOutputs, min_bin: int = 50,
           min_region: int = metrics.MIN_COUNT) -> list[dict]:
    """The HypUC claims as rows {claim, measured, passed} (passed None = undefined).

    Args:
      baseline: the unweighted run (None skips the comparisons against it).
      method: the HypUC run.
      min_bin: smallest test mu-bin count whose 95% coverage is checked.
      min_region: fewest test records beyond a threshold whose MAE change is
        judged (as eval.json, which reports no metrics for smaller regions).
    """
    rows = []

    def add(claim, measured, passed):
        rows.append({"claim": claim, "measured": measured,
                     "passed": None if passed is None else bool(passed)})

    if baseline is not None:
        mb = float(np.mean(np.abs(baseline.y - baseline.mu)))
        mm = float(np.mean(np.abs(method.y - method.mu)))
        add("overall MAE no more than 5% above baseline",
            f"{mm:.4f} vs {mb:.4f} ({_change(mm, mb, 5.0)})", mm <= 1.05 * mb)
        for name, value, direction in method.tails or method.thresholds:
            n, tm = tail_mae(method, value, direction)
            _, tb = tail_mae(baseline, value, direction)
            side = ">" if direction == "above" else "<"
            few = n < min_region
            add(f"MAE for y {side} {value:g} at least 20% below baseline",
                f"{tm:.4f} vs {tb:.4f} ({_change(tm, tb, -20.0)}, n={n}"
                + (f"; fewer than {min_region} test records: not judged)" if few else ")") if n
                else f"no test records with y {side} {value:g}", None if few else tm <= 0.8 * tb)
    cal = method.eval["calibrated"]["overall"]
    unc = method.eval["uncalibrated"]["overall"]
    c95 = cal.get("coverage_95")
    add("calibrated 95% coverage within ±2 pp overall", _fmt(c95),
        None if c95 is None else _within(c95, method.y.size, 0.95, 0.02))
    _, cov, counts = mu_bin_coverage(method.y, method.mu, method.sigma_cal, bins=method.mu_bins,
                                     dof=method.dof)
    big = counts >= min_bin
    worst = float(np.max(np.abs(cov[big] - 0.95))) if big.any() else float("nan")
    add(f"calibrated 95% coverage within ±2 pp in every mu-bin with >= {min_bin} samples",
        f"worst gap {worst * 100:.1f} pp over {int(big.sum())} bins" if big.any()
        else f"no mu-bin with >= {min_bin} test records", None if not big.any()
        else all(_within(c, m, 0.95, 0.02) for c, m in zip(cov[big], counts[big])))
    u0, u1 = unc.get("uce"), cal.get("uce")
    floor, floor_sd = unc_scores.uce_noise_floor(method.y.size)
    add("UCE at least 50% below uncalibrated",
        f"{_fmt(u1)} vs {_fmt(u0)} (a perfectly calibrated predictor scores "
        f"{floor:.4f} ± {floor_sd:.4f} at n={method.y.size})",
        None if u0 is None or u1 is None else u1 <= 0.5 * u0)
    if baseline is not None:      # the paper's comparison: plain NLL, neither weighted nor calibrated
        ub = baseline.eval["uncalibrated"]["overall"].get("uce")
        add("UCE at least 50% below the unweighted NLL's uncalibrated UCE (the paper's "
            "comparison)",
            f"{_fmt(u1)} vs {_fmt(ub)}" + (f" ({_change(u1, ub, -50.0)})" if u1 and ub else ""),
            None if ub is None or u1 is None else u1 <= 0.5 * ub)
    for name, d in method.eval.get("decisions", {}).items():
        a, b = d.get("auroc"), d.get("baseline_auroc")
        if d.get("skipped"):
            measured = f"no classifier ({d['skipped']})"
        elif a is None or b is None:
            measured = (f"undefined: {d.get('n_positive')} of {d.get('n')} test records "
                        "positive (AUROC needs both outcomes)")
        else:
            measured = f"{_fmt(a)} vs {_fmt(b)}"
        pos, n_dec = d.get("n_positive"), d.get("n")
        few = (a is not None and b is not None and pos is not None and n_dec is not None
               and min(pos, n_dec - pos) < min_region)
        if few:   # as the tail MAE rows: one or two positives are not an AUROC to judge
            measured += (f" ({pos} of {n_dec} test records positive; fewer than {min_region} "
                         "of one outcome: not judged)")
        add(f"decision {name}: boosted AUROC >= thresholding-mu AUROC", measured,
            None if a is None or b is None or few else a >= b)
    sel = selective_mae(method.y, method.mu, method.sigma_cal, (0.0, 0.1))
    add("flagging the 10% highest-entropy predictions lowers the MAE of the rest",
        f"{sel[1]:.4f} vs {sel[0]:.4f}", sel[1] < sel[0])
    cut = method.eval.get("flagging", {}).get("validation_cut")
    if cut and cut.get("mae_kept") is not None:        # eval.json from before session 15: none
        add("... with `predict`'s flag (the validation split's top-10% cut)",
            f"{cut['mae_kept']:.4f} vs {sel[0]:.4f} ({100 * cut['flagged']:.1f}% of test "
            "flagged)", cut["mae_kept"] < sel[0] if cut["flagged"] > 0 else None)
    return rows


_TABLE_KEYS = ("n", "mae", "rmse", "gm", "pearson", "spearman", "nll", "crps", "coverage_68",
               "coverage_90", "coverage_95", "width_95", "uce", "ence")


def _metrics_table(runs: Sequence[RunOutputs]) -> list[str]:
    lines = ["| run | stage | " + " | ".join(_TABLE_KEYS) + " |",
             "|" + " --- |" * (len(_TABLE_KEYS) + 2)]
    for run in runs:
        for stage in ("uncalibrated", "calibrated", "corrected"):
            m = run.eval[stage]["overall"]
            lines.append(f"| {run.name} | {stage} | "
                         + " | ".join(_fmt(m.get(k)) for k in _TABLE_KEYS) + " |")
    return lines


def _region_table(runs: Sequence[RunOutputs]) -> list[str]:
    keys = ("n", "mae", "coverage_95", "nll")
    head = "| region | " + " | ".join(f"{r.name} {k}" for r in runs for k in keys) + " |"
    lines = [head, "|" + " --- |" * (1 + len(keys) * len(runs))]
    for reg in _region_names(runs[0]):
        cells = []
        for run in runs:
            unc = run.eval["uncalibrated"]["regions"].get(reg, {})
            cal = run.eval["calibrated"]["regions"].get(reg, {})
            cells += [_fmt(unc.get("n")), _fmt(unc.get("mae")), _fmt(cal.get("coverage_95")),
                      _fmt(cal.get("nll"))]
        lines.append(f"| {reg} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(runs: Sequence[RunOutputs], figures: Mapping[str, Path],
                    fig_rel: str = "figures", title: str = "HypUC report",
                    extra: Sequence[str] = ()) -> str:
    """The text of report.md for ``runs`` (the last run is the method of interest)."""
    base = runs[0] if len(runs) > 1 else None
    method = runs[-1]
    tails = ", ".join(f"{r.name} {family_label(r.dof)}" for r in runs)
    out = [f"# {title}", "", *extra, "",
           f"Test split: n = {method.eval['n']}. Uncalibrated = raw Gaussian (mu, sigma); "
           "calibrated = after the run's calibration (sigma, and with a fitted tail the "
           f"predictive's family: {tails}; sigma stays the standard deviation"
           + ("; after isotonic calibration it is the Gaussian-equivalent scale of the "
              "recalibrated CDF, whose own asymmetric intervals are scored"
              if any(is_family(r.dof) for r in runs) else "") + "); corrected = "
           "boosted value with the calibrated predictive. Region metrics: MAE of mu, "
           "coverage/NLL after calibration.", "",
           "## Claims checked on this run", "", "| claim | measured | result |",
           "| --- | --- | --- |"]
    for row in checks(base, method):
        res = {True: "met", False: "**missed**", None: "n/a"}[row["passed"]]
        out.append(f"| {row['claim']} | {row['measured']} | {res} |")
    out += ["", "## Overall metrics (eval.json)", "", *_metrics_table(runs), "",
            "## Per region", "", *_region_table(runs), "", "## Decisions", ""]
    if any(run.eval.get("decisions") for run in runs):
        out += ["| run | decision | boosted AUROC | boosted AUPRC | threshold-mu AUROC |",
                "| --- | --- | --- | --- | --- |"]
    else:
        out.append("This task has no decision thresholds.")
    for run in runs:
        for name, d in run.eval.get("decisions", {}).items():
            out.append(f"| {run.name} | {name} | {_fmt(d.get('auroc'))} | "
                       f"{_fmt(d.get('auprc'))} | {_fmt(d.get('baseline_auroc'))} |")
    fr = list(method.eval["flagging"]["mae_kept_at"].keys())
    out += ["", "## Flagging (MAE of kept predictions vs flagged fraction)", "",
            "| run | " + " | ".join(fr) + " |", "|" + " --- |" * (len(fr) + 1)]
    for run in runs:
        kept = run.eval["flagging"]["mae_kept_at"]
        out.append(f"| {run.name} | " + " | ".join(_fmt(kept.get(f)) for f in fr) + " |")
    out += ["", "## Figures", ""]
    for name, path in figures.items():
        out += [f"![{name}]({fig_rel}/{Path(path).name})", ""]
    return "\n".join(out) + "\n"


def write_report(out_dir: str | os.PathLike, runs: Sequence[RunOutputs], *,
                 title: str = "HypUC report", extra: Sequence[str] = ()) -> Path:
    """Writes OUT/figures/*.png and OUT/report.md; returns the report path."""
    out_dir = Path(out_dir)
    figures = write_figures(runs, out_dir / "figures")
    path = out_dir / "report.md"
    write_text_atomic(path, render_markdown(runs, figures, title=title, extra=extra))
    return path
