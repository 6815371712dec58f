"""The report's figures, drawn from evaluated runs (see :mod:`hypuc_jax.report`).

Each figure is a function of the :class:`RunOutputs` arrays, drawn with the
non-interactive Agg backend and written to a temporary file first, then
moved into place, so an interrupted run leaves no half-written PNG.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from hypuc_jax import flagging, uncertainty  # noqa: E402
from hypuc_jax._files import temp_file  # noqa: E402
from hypuc_jax.calibration import quantile_edges  # noqa: E402
from hypuc_jax._predictions import (ThresholdSpec, central_bounds, event,  # noqa: E402
                                    exceed_prob, family_label, has_both_outcomes)

FIGURES = ("labels_kde_weights", "pred_vs_true", "mae_per_region", "reliability",
           "coverage_per_bin", "selective_risk", "roc")
_FLAG_FRACTIONS = tuple(np.round(np.linspace(0.0, 0.5, 11), 2))


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What the report needs from one evaluated run directory.

    Attributes:
      name: label used in legends and tables (e.g. "baseline", "hypuc").
      eval: the run's eval.json as a dict.
      y, mu, sigma, sigma_cal, corrected: test-split arrays [n] in label units.
      decision_probs: {threshold name: boosted probability [n]}.
      thresholds: ((name, value, direction "above"/"below"), ...) with a
        boosted decision (``decision_probs``).
      train_labels: training labels [n_train] (label histogram, shot regions).
      regions: named clinical regions {name: (low, high)}.
      label_density: (grid [g], kde density [g], weight [g]) of the run's
        weighting fitted on ``train_labels``; weight is all ones for "none".
      unit: label unit for axis titles.
      mu_bins: hyperfine-calibration bin of each test prediction [n] (None:
        quantile bins of test mu are used for the per-bin coverage).
      dof: family of the calibrated predictive mu + sigma_cal Z (inf:
        Gaussian; finite: the unit-variance Student-t of a fitted tail; an
        isotonic run's ``RecalibratedNormal``).
      calibration: the calibration method ("hyperfine", "global", "isotonic";
        "" unknown).
      tails: every threshold of the task, decision or not (the rare ranges
        whose MAE the report checks); empty: ``thresholds``.
    """
    name: str
    eval: Mapping[str, Any]
    y: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    sigma_cal: np.ndarray
    corrected: np.ndarray
    decision_probs: Mapping[str, np.ndarray]
    thresholds: Sequence[tuple[str, float, str]]
    train_labels: np.ndarray
    regions: Mapping[str, tuple[float, float]]
    label_density: tuple[np.ndarray, np.ndarray, np.ndarray]
    unit: str = ""
    mu_bins: np.ndarray | None = None
    dof: Any = math.inf
    tails: Sequence[tuple[str, float, str]] = ()
    calibration: str = ""


def _save(fig: plt.Figure, path: Path) -> None:
    tmp = temp_file(path.parent, suffix=".png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def central_coverage(y, mu, sigma, level: float, dof: float = math.inf) -> float:
    """Fraction of ``y`` inside the central ``level`` interval of mu + sigma Z (family ``dof``).

    Args:
      y, mu, sigma: labels, predicted locations and standard deviations [n] (sigma > 0).
      level: nominal coverage in [0, 1].
      dof: predictive family (inf: Gaussian).

    Returns:
      observed coverage in [0, 1] (``uncertainty.coverage``).
    """
    return float(uncertainty.coverage(y, mu, sigma, level, dof))


def _calibrated_label(run: RunOutputs) -> str:
    """Legend name of the calibrated predictive, with its tail."""
    label = family_label(run.dof)
    return "calibrated" if label == "Gaussian" else f"calibrated ({label})"


def _unit(run: RunOutputs) -> str:
    return f" [{run.unit}]" if run.unit else ""


def _fig_labels(runs: Sequence[RunOutputs], path: Path) -> None:
    ref = runs[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ref.train_labels, bins=80, density=True, color="0.8", label="training labels")
    grid, dens, _ = ref.label_density
    ax.plot(grid, dens, color="k", lw=1.5, label="KDE density")
    ax.set_xlabel("label" + _unit(ref))
    ax.set_ylabel("density")
    ax2 = ax.twinx()
    for run, color in zip(runs, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        g, _, w = run.label_density
        ax2.plot(g, w, color=color, lw=1.5, ls="--", label=f"weight ({run.name})")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.set_ylabel("training weight (mean 1 over train)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # below the axes: inside, some corner always covers a tail's weight curve
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    ax.set_title("Training labels, fitted KDE and weight curve")
    _save(fig, path)


def _shade_regions(ax, run: RunOutputs, lo: float, hi: float) -> None:
    for k, (name, (a, b)) in enumerate(run.regions.items()):
        a, b = max(a, lo), min(b, hi)
        if a < b:
            ax.axvspan(a, b, color=f"C{k}", alpha=0.08, lw=0)
            ax.text((a + b) / 2, 0.02 + 0.04 * (k % 2), name.replace("_", " "), fontsize=7,
                    transform=ax.get_xaxis_transform(), ha="center", color="0.3")


def scatter_rows(y: np.ndarray, middle: int = 600, tail: int = 300
                 ) -> tuple[np.ndarray, int, int]:
    """Rows [m] of the scatter figure and the thinning steps (k of the middle, kt
    of the tails): the 5% of lowest and the 5% of highest labels y [n] (the rare
    ranges the figure is for), every one of them up to ``tail`` records a side
    (beyond, every kt-th counted from the extremes), and every k-th of the
    others, about ``middle`` of them."""
    order = np.argsort(y, kind="stable")
    n = order.size
    k = max(1, n // middle)
    if k == 1:
        return order, 1, 1
    edge = max(1, n // 20)
    kt = -(-edge // tail)                                   # ceil: <= tail records a side
    return np.concatenate([order[:edge][::kt], order[edge:n - edge][::k],
                           order[n - edge:][::-1][::kt]]), k, kt


def _fig_scatter(runs: Sequence[RunOutputs], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.6), squeeze=False)
    lo = float(min(np.min(r.y) for r in runs))
    hi = float(max(np.max(r.y) for r in runs))
    pad = 0.05 * (hi - lo) or max(0.05 * abs(lo), 0.5)     # constant labels: a visible window
    for ax, run in zip(axes[0], runs):
        lo_z, hi_z = central_bounds(0.95, dof=run.dof)
        sub, k, kt = scatter_rows(run.y)
        _shade_regions(ax, run, lo - pad, hi + pad)
        # vlines, not errorbar: an isotonic interval need not contain mu (a biased model)
        ax.vlines(run.y[sub], run.mu[sub] + lo_z * run.sigma_cal[sub],
                  run.mu[sub] + hi_z * run.sigma_cal[sub], lw=0.5, alpha=0.5, color="tab:blue")
        ax.plot(run.y[sub], run.mu[sub], "o", ms=2, alpha=0.5, color="tab:blue",
                label="mu with calibrated 95% interval" + (
                    f"\n({'every record' if kt == 1 else f'1 in {kt}'} in the 5% "
                    f"tails of y, 1 in {k} between)" if k > 1 else ""))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
        cov = central_coverage(run.y, run.mu, run.sigma_cal, 0.95, run.dof)
        ax.set_title(f"{run.name}: test MAE {np.mean(np.abs(run.y - run.mu)):.3f}, "
                     f"95% cov {cov:.1%}", fontsize=10)
        ax.set_xlabel("true" + _unit(run))
        ax.set_ylabel("predicted mu" + _unit(run))
        ax.set_xlim(lo - pad, hi + pad)
        ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def _region_names(run: RunOutputs) -> list[str]:
    return list(run.eval["uncalibrated"]["regions"].keys())


def _fig_mae_regions(runs: Sequence[RunOutputs], path: Path) -> None:
    names = ["overall"] + _region_names(runs[0])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    width = 0.8 / len(runs)
    x = np.arange(len(names))
    for k, run in enumerate(runs):
        block = run.eval["uncalibrated"]
        vals, counts = [], []
        for n in names:
            m = block["overall"] if n == "overall" else block["regions"][n]
            vals.append(np.nan if m.get("mae") is None else m["mae"])
            counts.append(m.get("n", 0))
        bars = ax.bar(x + (k - (len(runs) - 1) / 2) * width, vals, width, label=run.name)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center",
                        va="bottom", fontsize=7)
    counts = [runs[0].eval["uncalibrated"]["overall"]["n"]] + [
        runs[0].eval["uncalibrated"]["regions"][n].get("n", 0) for n in names[1:]]
    ax.set_xticks(x, [f"{n.replace('_', chr(10))}\n(n={c})" for n, c in zip(names, counts)],
                  fontsize=8)
    ax.set_ylabel("test MAE (mu)" + _unit(runs[0]))
    ax.set_title("MAE per region (empty bars: too few samples)")
    ax.legend()
    _save(fig, path)


def _fig_reliability(runs: Sequence[RunOutputs], path: Path) -> None:
    levels = np.linspace(0.05, 0.95, 19)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for sig, label, c, dof in ((run.sigma, "uncalibrated", "tab:orange", math.inf),
                                   (run.sigma_cal, _calibrated_label(run), "tab:blue", run.dof)):
            obs = [central_coverage(run.y, run.mu, sig, p, dof) for p in levels]
            uce = float(np.mean(np.abs(np.asarray(obs) - levels)))
            ax.plot(levels, obs, "o-", ms=3, color=c, label=f"{label}\nmean |gap| {uce:.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("nominal central-interval level")
        ax.set_ylabel("observed coverage (test)")
        ax.set_title(f"Reliability: {run.name}")
        # below the axes: an over-confident curve runs under the diagonal, an
        # under-confident one above it, so no corner inside is free in general
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    _save(fig, path)


def mu_bin_coverage(y, mu, sigma, n_bins: int = 10, level: float = 0.95, bins=None,
                    dof: Any = math.inf):
    """Coverage of the central ``level`` interval per bin of predicted mu.

    Args:
      y, mu, sigma: labels and predictions [n].
      n_bins: number of quantile bins of mu when ``bins`` is None.
      level: nominal coverage.
      bins: optional bin index of each prediction [n] (e.g. the calibrator's).
      dof: predictive family of (mu, sigma) (inf: Gaussian).

    Returns:
      (bin median mu [b], coverage [b], counts [b]) over the non-empty bins.
    """
    if bins is None:
        bins = np.searchsorted(quantile_edges(mu, n_bins), mu, side="right")
    centres, cov, counts = [], [], []
    for b in np.unique(bins):
        sel = bins == b
        centres.append(float(np.median(mu[sel])))
        cov.append(central_coverage(y[sel], mu[sel], sigma[sel], level, dof))
        counts.append(int(np.sum(sel)))
    return np.asarray(centres), np.asarray(cov), np.asarray(counts)


def _fig_bin_coverage(runs: Sequence[RunOutputs], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(4.8 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        lowest = 1.0
        for sig, label, c, off, dof in (
                (run.sigma, "uncalibrated", "tab:orange", -0.2, math.inf),
                (run.sigma_cal, _calibrated_label(run), "tab:blue", 0.2, run.dof)):
            centres, cov, counts = mu_bin_coverage(run.y, run.mu, sig, bins=run.mu_bins, dof=dof)
            ax.bar(np.arange(len(cov)) + off, cov, 0.4, color=c, label=label)
            lowest = min(lowest, float(np.min(cov)))
        ax.set_xticks(np.arange(len(centres)),
                      [f"{c:.2f}\nn={n}" for c, n in zip(centres, counts)], fontsize=6)
        ax.axhline(0.95, color="k", lw=1)
        ax.axhspan(0.93, 0.97, color="0.85", zorder=0, label="95% ± 2 pp")
        ax.set_ylim(max(0.0, min(0.85, lowest - 0.05)), 1.01)
        ax.set_xlabel("calibration mu-bin (median mu, test count)" if run.mu_bins is not None
                      else "quantile mu-bin (median mu, test count)")
        ax.set_ylabel("95% interval coverage (test)")
        ax.set_title(f"Coverage per mu-bin: {run.name}")
        ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    _save(fig, path)


def selective_mae(y, mu, sigma, fractions=_FLAG_FRACTIONS) -> np.ndarray:
    """MAE of the kept predictions after flagging the highest-entropy fractions.

    Args:
      y, mu, sigma: labels, predicted locations and calibrated scales [n] (sigma > 0).
      fractions: flagged fractions [f] in [0, 1) (default 0, 0.05, ..., 0.5).

    Returns:
      [f] float MAE per fraction (``flagging.selective_risk``), NaN where nothing is kept.
    """
    risk = flagging.selective_risk(y, mu, sigma, fractions)        # keyed by fraction
    return np.asarray([risk[flagging._key(q)] for q in np.asarray(fractions, float)], float)


def _fig_selective(runs: Sequence[RunOutputs], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(np.asarray(_FLAG_FRACTIONS) * 100, selective_mae(run.y, run.mu, run.sigma_cal),
                "o-", ms=3, label=run.name)
    ax.set_xlabel("flagged (highest predictive entropy) [%]")
    ax.set_ylabel("MAE of kept predictions" + _unit(runs[0]))
    ax.set_title("Selective risk")
    ax.legend()
    _save(fig, path)


def _fig_roc(runs: Sequence[RunOutputs], path: Path) -> None:
    ths = list(runs[-1].thresholds)
    fig, axes = plt.subplots(1, max(1, len(ths)), figsize=(4.3 * max(1, len(ths)), 4.2),
                             squeeze=False)
    method = runs[-1]
    for ax, (name, value, direction) in zip(axes[0], ths):
        spec = ThresholdSpec(name, value, direction)
        curves = []
        for run in runs:
            if not has_both_outcomes(run.y, spec) or name not in run.decision_probs:
                continue
            curves.append((run, "boosted", run.decision_probs[name]))
            if run is method:
                sign = 1.0 if direction == "above" else -1.0
                curves.append((run, "threshold mu", sign * run.mu))
                curves.append((run, "calibrated P",
                               exceed_prob(run.mu, run.sigma_cal, spec, run.dof)))
        for run, label, score in curves:
            fpr, tpr, _ = roc_curve(event(run.y, spec), score)
            auc = float(np.trapezoid(tpr, fpr))
            color = {"boosted": "tab:red", "threshold mu": "tab:gray", "calibrated P": "tab:blue"}
            ax.plot(fpr, tpr, ls="-" if run is method else "--", color=color[label], lw=1.2,
                    label=f"{run.name} {label} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"ROC: {name}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if curves:
            ax.legend(fontsize=6, loc="lower right")
        else:
            ax.text(0.5, 0.5, "one outcome only in the test split", ha="center", fontsize=8)
    _save(fig, path)


def write_figures(runs: Sequence[RunOutputs], fig_dir: str | os.PathLike) -> dict[str, Path]:
    """Draws every report figure for ``runs`` into ``fig_dir``.

    Args:
      runs: one or more evaluated runs; the last is the method of interest.
      fig_dir: output folder (created).

    Returns:
      {figure name: path of the PNG}; no "roc" when no run has a decision
      (a task without thresholds), and a stale roc.png is removed.
    """
    if not runs:
        raise ValueError("runs: expected at least one evaluated run, got none")
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    drawers = dict(zip(FIGURES, (_fig_labels, _fig_scatter, _fig_mae_regions, _fig_reliability,
                                 _fig_bin_coverage, _fig_selective, _fig_roc)))
    if not any(r.decision_probs for r in runs):
        del drawers["roc"]
        (fig_dir / "roc.png").unlink(missing_ok=True)
    out = {}
    for name, draw in drawers.items():
        out[name] = fig_dir / f"{name}.png"
        draw(list(runs), out[name])
    return out
