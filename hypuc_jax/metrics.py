"""Evaluation protocol: accuracy, uncertainty and decision metrics, overall and per region.

Entry point ``evaluate(y, mu, sigma, *, train_labels=None, regions=None, dof=inf)``
returns one block of eval.json::

    {"overall": METRICS, "regions": {name: METRICS}}

METRICS keys (python floats / ints, ``None`` where undefined; never NaN):

- ``n``: number of samples;
- accuracy: ``mae``, ``mse``, ``rmse``, ``gm`` (geometric mean of |error|,
  0 if any error is exactly 0), ``pearson``, ``spearman`` (None when n < 2 or
  an input is constant), ``balanced_mae`` (mean over occupied label bins of
  each bin's MAE; the shot regions' equal-width bins over the training
  labels, see ``hypuc_jax.regions``; a label beyond them counts in the
  outermost bin here, and as few-shot in the shot regions);
- uncertainty (None when ``sigma`` is None, i.e. a point model): ``nll``,
  ``crps``, ``coverage_68/90/95``, ``width_68/90/95``, ``uce``, ``ence``,
  ``miscal_area`` (definitions in ``hypuc_jax.uncertainty``), for the
  predictive mu + sigma Z of family ``dof`` (inf: Gaussian; a finite dof: the
  unit-variance Student-t a hyperfine calibration with a fitted tail issues).

Regions: "many" / "medium" / "few" shot regions from ``train_labels`` and
named regions from ``regions`` ({name: (low, high)}, half-open). A region
holding fewer than ``min_count`` samples reports its ``n`` and None for
every other metric.

Decisions: ``decision_metrics(y_binary, score)`` gives AUROC, AUPRC (average
precision) and sensitivity at 90% specificity, written in numpy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hypuc_jax import uncertainty as unc
from hypuc_jax._predictions import (as_thresholds, as_vector, check_dof, check_predictions,
                                    concrete_vector, event, is_family)
from hypuc_jax._validation import check_finite, is_int, is_real, plain_scalar
from hypuc_jax.regions import (SHOT_REGIONS, bin_index, check_edges, label_bin_edges,
                               region_masks, shot_masks, validate_regions)

LEVELS = {"68": 0.68, "90": 0.90, "95": 0.95}
ACCURACY_KEYS = ("mae", "mse", "rmse", "gm", "pearson", "spearman", "balanced_mae")
UNCERTAINTY_KEYS = ("nll", "crps", *(f"coverage_{k}" for k in LEVELS),
                    *(f"width_{k}" for k in LEVELS), "uce", "ence", "miscal_area")
METRIC_KEYS = ("n", *ACCURACY_KEYS, *UNCERTAINTY_KEYS)
MIN_COUNT = 10          # fewest samples a region's metrics are computed on (else None)


def _clean(x: Any) -> float | None:
    """Python float, or None for None/NaN/inf (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x [n], ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _finite_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    out = tuple(concrete_vector(v, k, allow_empty=True) for v, k in ((a, "a"), (b, "b")))
    for v, k in zip(out, "ab"):
        check_finite(v, k)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two vectors.

    Args:
      a, b: values [n] each, concrete (numpy; not traced), same length.

    Returns:
      r in [-1, 1]; None when n < 2, either input is constant, or r is not finite.

    Raises:
      ValueError: a or b not a concrete vector, holding NaN/inf, or lengths differ.
    """
    a, b = _finite_pair(a, b)
    if a.size != b.size:
        raise ValueError(f"a and b: expected the same length, got {a.size} and {b.size}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    da, db = a - a.mean(), b - b.mean()
    # r is scale-free: bring extreme magnitudes to ~1 so the squares stay exact
    da, db = [d / np.max(np.abs(d)) if unc._squares_unsafe(d, 1e50) else d for d in (da, db)]
    r = np.sum(da * db) / np.sqrt(np.sum(da ** 2) * np.sum(db ** 2))
    return _clean(np.clip(r, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman correlation: Pearson correlation of the average ranks (ties share ranks).

    Args:
      a, b: values [n] each, concrete (numpy; not traced), same length.

    Returns:
      rho in [-1, 1]; None as for :func:`pearson` (n < 2 or a constant input).

    Raises:
      ValueError: as :func:`pearson` (a NaN would otherwise rank last, silently).
    """
    a, b = _finite_pair(a, b)
    return pearson(average_ranks(a), average_ranks(b))


def geometric_mean_error(y: np.ndarray, mu: np.ndarray) -> float:
    """Geometric mean of |y - mu|.

    Args:
      y: labels [n].
      mu: predicted locations [n].

    Returns:
      exp(mean(log|y - mu|)); 0.0 when any error is exactly 0.

    Raises:
      ValueError: not 1-D vectors of one length, empty, or non-finite (named).
    """
    mu, _, y = check_predictions(mu, None, y, sigma_required=False)
    err = np.abs(y - mu)
    if np.any(err == 0):
        return 0.0
    return float(np.exp(np.mean(np.log(err))))


def balanced_mae(y: np.ndarray, mu: np.ndarray, edges: np.ndarray) -> float:
    """Mean over occupied label bins of each bin's MAE.

    Args:
      y: labels [n].
      mu: predicted locations [n].
      edges: increasing label-bin edges [B + 1] (``regions.label_bin_edges``);
        binned as :func:`hypuc_jax.regions.bin_index`. A label beyond them (a
        test label outside the training labels' range, the rarest of all)
        counts in the outermost bin on its side.

    Returns:
      The mean of the per-bin MAEs over bins holding at least one label.

    Raises:
      ValueError: y, mu not 1-D vectors of one length, empty, or non-finite, or
        edges not increasing (named).
    """
    mu, _, y = check_predictions(mu, None, y, sigma_required=False)
    edges = check_edges(edges)
    idx = bin_index(np.clip(y, edges[0], edges[-1]), edges)
    err = np.abs(y - mu)
    return float(np.mean([err[idx == b].mean() for b in np.unique(idx)]))


def _ence(y, mu, sigma, dof) -> float | None:
    """ENCE of the predictive's mean mu + sigma E[Z] and standard deviation sigma sd(Z)
    (mu and sigma themselves for the Gaussian and Student-t families)."""
    if is_family(dof):
        return unc.ence(y, mu + sigma * dof.mean, sigma * dof.sd)
    return unc.ence(y, mu, sigma)


def _block(y, mu, sigma, edges, min_count, dof=unc.INF) -> dict[str, Any]:
    """METRICS for one set of samples."""
    out: dict[str, Any] = {k: None for k in METRIC_KEYS}
    out["n"] = int(y.size)
    if y.size < max(min_count, 1):
        return out
    err = y - mu
    mse = float(np.mean(err ** 2))
    out.update(mae=float(np.mean(np.abs(err))), mse=mse, rmse=float(np.sqrt(mse)),
               gm=geometric_mean_error(y, mu),
               pearson=pearson(y, mu), spearman=spearman(y, mu),
               balanced_mae=balanced_mae(y, mu, edges))
    if sigma is not None:
        out.update(nll=unc.nll(y, mu, sigma, dof), crps=unc.crps(y, mu, sigma, dof),
                   uce=unc.uce(y, mu, sigma, dof), ence=_ence(y, mu, sigma, dof),
                   miscal_area=unc.miscalibration_area(y, mu, sigma, dof))
        for key, level in LEVELS.items():
            out[f"coverage_{key}"] = unc.coverage(y, mu, sigma, level, dof)
            out[f"width_{key}"] = unc.width(sigma, level, dof)
    return {k: (v if k == "n" else _clean(v)) for k, v in out.items()}


def evaluate(y, mu, sigma=None, *, train_labels=None, regions=None, shot_bins: Any = 100,
             min_count: int = MIN_COUNT, many_shot: int = 100, few_shot: int = 20,
             dof: float = unc.INF) -> dict[str, Any]:
    """Metrics overall and per region, JSON-serialisable.

    Args:
      y: labels [n].
      mu: predicted locations [n] (or corrected values).
      sigma: predicted (calibrated) scales [n], > 0, or None for point models.
      train_labels: training labels [m]; gives the many/medium/few-shot regions.
      regions: named regions {name: (low, high)}, half-open [low, high).
      shot_bins: label bins for shot regions and balanced MAE: a number of
        equal-width bins over the training-label range (over y's range
        without ``train_labels``), or explicit edges.
      min_count: regions with fewer samples report n and None metrics (the
        overall block is computed for any n >= 1).
      many_shot, few_shot: shot-region count limits (> many_shot, < few_shot).
      dof: predictive family of (mu, sigma): inf (Gaussian) or a Student-t
        dof > 2 (``calibrator.dof`` of a hyperfine calibration).

    Returns:
      {"overall": METRICS, "regions": {name: METRICS}}.

    Raises:
      ValueError: mismatched lengths, non-finite values, sigma <= 0, dof <= 2,
        an empty or invalid region, or a named region called like a shot region.
    """
    mu, sigma, y = check_predictions(mu, sigma, y, sigma_required=False)
    dof = check_dof(dof)
    if not is_int(min_count) or min_count < 1:
        raise ValueError(f"min_count: expected a positive integer, got {min_count!r}")
    named = validate_regions(regions)
    clash = sorted(set(named) & set(SHOT_REGIONS))     # reserved, with or without train_labels
    if clash:
        raise ValueError(f"regions: names {clash} clash with the shot regions {SHOT_REGIONS}")
    masks: dict[str, np.ndarray] = {}
    if train_labels is not None:
        train_labels = as_vector(train_labels, "train_labels")
        for key, value in (("many_shot", many_shot), ("few_shot", few_shot)):
            if not is_int(value):
                raise ValueError(f"{key}: expected an int count, got {value!r}")
        masks.update(shot_masks(y, train_labels, shot_bins, many_shot, few_shot))
    masks.update(region_masks(y, named))
    edges = label_bin_edges(train_labels if train_labels is not None else y, shot_bins,
                            "shot_bins")
    return {"overall": _block(y, mu, sigma, edges, 1, dof),    # min_count is for regions
            "regions": {name: _block(y[m], mu[m], None if sigma is None else sigma[m],
                                     edges, min_count, dof)
                        for name, m in masks.items()}}


def decision_metrics(y_binary, score, specificity: float = 0.9) -> dict[str, float | None]:
    """AUROC, AUPRC and sensitivity at a fixed specificity for a binary decision.

    AUROC is the Mann-Whitney probability P(score_pos > score_neg) with ties
    counted 1/2; AUPRC is average precision, sum over distinct score
    thresholds of (recall_k - recall_{k-1}) * precision_k; sensitivity is the
    largest true-positive rate among thresholds whose specificity >= the
    target.

    Args:
      y_binary: outcomes [n] (bool or 0/1).
      score: decision scores [n], higher means more likely positive.
      specificity: target specificity in (0, 1).

    Returns:
      {"n", "n_positive", "auroc", "auprc", "sensitivity_at_90_specificity"}
      (the last key named after ``specificity`` in percent, exactly: 99.9 for
      0.999); metrics None when only one
      class is present.
    """
    yb = as_vector(y_binary, "y_binary")
    if not np.all((yb == 0) | (yb == 1)):
        raise ValueError("y_binary: expected only 0/1 or boolean outcomes")
    score, _, yb = check_predictions(score, None, yb, names=("score", "sigma", "y_binary"),
                                     sigma_required=False)
    specificity = plain_scalar(specificity)
    if not is_real(specificity) or not 0.0 < specificity < 1.0:
        raise ValueError(f"specificity: expected a value in (0, 1), got {specificity!r}")
    pct = repr(round(float(specificity) * 100, 5))       # 0.9 -> "90", 0.999 -> "99.9"
    key = f"sensitivity_at_{pct.removesuffix('.0')}_specificity"
    pos = yb == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    out: dict[str, Any] = {"n": int(yb.size), "n_positive": n_pos,
                           "auroc": None, "auprc": None, key: None}
    if n_pos == 0 or n_neg == 0:
        return out
    ranks = average_ranks(score)
    out["auroc"] = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    # Cumulative counts at each distinct threshold, from the highest score down.
    order = np.argsort(-score, kind="stable")
    s, p = score[order], pos[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(p)[last]
    fp = np.cumsum(~p)[last]
    recall = tp / n_pos
    precision = tp / (tp + fp)
    out["auprc"] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    ok = (1.0 - fp / n_neg) >= specificity - 1e-12
    out[key] = float(recall[ok].max()) if np.any(ok) else 0.0
    return out


def threshold_decisions(y, thresholds, scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Decision metrics of several scoring methods for each clinical threshold.

    Args:
      y: labels [n].
      thresholds: sequence of thresholds (name, value, direction).
      scores: {threshold name: {method name: score [n]}}, e.g. the corrector's
        probabilities and ``corrections.baseline_scores`` merged.

    Returns:
      {threshold name: {method name: decision_metrics(...)}}.
    """
    y = as_vector(y, "y")
    out = {}
    for t in as_thresholds(thresholds):
        if t.name not in scores:
            raise ValueError(f"scores: expected scores for threshold {t.name!r}, got {sorted(scores)}")
        outcome = event(y, t)
        out[t.name] = {method: decision_metrics(outcome, s) for method, s in scores[t.name].items()}
    return out
