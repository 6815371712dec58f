"""Boosted clinical decisions and the features they share with the corrections (SPEC section 5).

Features per example (``features``): mu, calibrated sigma, mu - z sigma,
mu + z sigma, and for each clinical threshold the calibrated predictive's
probability of its event (``y > t`` for "above", ``y < t`` for "below").
The calibrated predictive is mu + sigma Z of the calibration's family
(``dof``): Gaussian, or the unit-variance Student-t a hyperfine calibration
with a fitted tail issues. Names below say "Gaussian" for it (the SPEC's
case, and the stable eval.json keys); every such formula takes ``dof``.

Decisions: per threshold, an ensemble of boosted classifiers, shrunk towards the calibrated Gaussian. Three choices, made by
cross-validation inside the validation split only (see
experiments/results/decisions_study.md), keep the boosted decision from
under-performing its baselines when positives are few:

* monotone constraints (``monotone=True``): the classifier for an "above"
  threshold is non-decreasing in mu, mu +- z sigma and every "above" event
  probability, non-increasing in every "below" one (signs flipped for a
  "below" threshold); sigma is free. Raising mu at fixed sigma therefore
  never lowers P(event): trees cannot invert the ranking by mu.
* ensemble in log-odds: members' ``decision_function`` are averaged.
* shrinkage to the Gaussian log-odds: with m the minority-class count in
  the validation rows and n0 = ``prior_strength`` (a pseudo-count),
  logit P = (1 - w) * boosted + w * log(P_g / (1 - P_g)), w = n0 / (n0 + m),
  where P_g is the calibrated Gaussian's event probability (computed as
  logsf - logcdf so it never saturates into ties). Few positives -> the
  Gaussian dominates; many -> the trees do. ``prior_strength=0`` is pure
  boosting. Trees are invariant to monotone feature transforms, so a
  logit(P_g) feature would add nothing; the blend is where it enters.

Baselines (``baseline_scores``): thresholding mu (score mu for "above",
-mu for "below") and the calibrated Gaussian's event probability.

Ensemble members are seeded ``seed + k`` and, when there are several, each
gets a bootstrap resample of the validation rows (``member_rows``; a single
member is fitted on every row), as the corrected-value regressors
of :mod:`hypuc_jax.corrections` do. Fitted on validation predictions only.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special
from sklearn.ensemble import HistGradientBoostingClassifier

from hypuc_jax._predictions import (ThresholdSpec, as_thresholds, check_dof, check_predictions,
                                    event, exceed_prob, std_logsf_logcdf)
from hypuc_jax._validation import is_real, plain_scalar

# Pseudo-count n0 of the shrinkage to the Gaussian log-odds; chosen by 5-fold CV
# (x4 repeats) inside the validation split, experiments/results/decisions_study.md.
PRIOR_STRENGTH = 1000.0


def feature_names(thresholds) -> list[str]:
    """Column names of ``features`` for these thresholds."""
    return ["mu", "sigma", "mu_minus_z_sigma", "mu_plus_z_sigma"] + [
        f"p_{t.name}" for t in as_thresholds(thresholds)]


def features(mu, sigma, thresholds=(), z: float = 1.96, dof: float = math.inf) -> np.ndarray:
    """Feature matrix for the correction models.

    Args:
      mu: predicted locations [n].
      sigma: calibrated predicted scales [n], > 0.
      thresholds: sequence of thresholds (objects with name/value/direction,
        or (name, value, direction) tuples).
      z: half-width of the interval features, in units of sigma.
      dof: family of the calibrated predictive (inf: Gaussian).

    Returns:
      np.ndarray [n, 4 + len(thresholds)]: mu, sigma, mu - z sigma,
      mu + z sigma, then the event probability of each threshold.
    """
    mu, sigma, _ = check_predictions(mu, sigma)
    dof = check_dof(dof)
    z = plain_scalar(z)
    if not (is_real(z) and np.isfinite(z) and z > 0):
        raise ValueError(f"z: expected a finite value > 0, got {z!r}")
    cols = [mu, sigma, mu - z * sigma, mu + z * sigma]
    cols += [exceed_prob(mu, sigma, t, dof) for t in as_thresholds(thresholds)]
    return np.stack(cols, axis=1)


def baseline_scores(mu, sigma, thresholds,
                    dof: float = math.inf) -> dict[str, dict[str, np.ndarray]]:
    """Baseline decision scores per threshold.

    Args:
      mu: predicted locations [n].
      sigma: calibrated predicted scales [n].
      thresholds: sequence of thresholds.
      dof: family of the calibrated predictive (inf: Gaussian).

    Returns:
      {threshold name: {"threshold_mu": mu or -mu [n], "gaussian": P(event) [n]}}.
    """
    mu, sigma, _ = check_predictions(mu, sigma)
    return {t.name: {"threshold_mu": mu if t.direction == "above" else -mu,
                     "gaussian": exceed_prob(mu, sigma, t, dof)}
            for t in as_thresholds(thresholds)}


def gaussian_log_odds(mu, sigma, spec: ThresholdSpec, dof: float = math.inf) -> np.ndarray:
    """log(P / (1 - P)) of the threshold's event under mu + sigma Z (N(mu, sigma^2) at dof inf). [n]

    Computed as logsf - logcdf of (t - mu) / sigma, so it stays finite and
    strictly monotone in mu where P itself rounds to 0 or 1.
    """
    zt = (spec.value - np.asarray(mu, np.float64)) / np.asarray(sigma, np.float64)
    logsf, logcdf = std_logsf_logcdf(zt, dof)
    log_odds = logsf - logcdf
    return log_odds if spec.direction == "above" else -log_odds


def monotone_constraints(specs, index: int) -> list[int]:
    """HGB ``monotonic_cst`` over the ``features`` columns for the decision ``specs[index]``.

    +1 (non-decreasing) on mu, mu +- z sigma and each "above" probability for
    an "above" decision; -1 on each "below" probability; all signs flipped for
    a "below" decision; sigma unconstrained (0). Every constrained column moves
    the same way as mu at fixed sigma, so the decision is monotone in mu.
    """
    s = 1 if specs[index].direction == "above" else -1
    return [s, 0, s, s] + [s if t.direction == "above" else -s for t in specs]


def gaussian_weight(labels: np.ndarray, prior_strength: float) -> float:
    """Weight w = n0 / (n0 + m) of the Gaussian log-odds in the blended decision.

    Args:
      labels: event outcomes [n] as 0/1 (ints or bools).
      prior_strength: pseudo-count n0 >= 0 (inf: w = 1.0; 0: w = 0.0, pure boosting).

    Returns:
      w in [0, 1], with m = min(positives, negatives) in ``labels``.
    """
    m = int(min(labels.sum(), labels.size - labels.sum()))
    if np.isinf(prior_strength):
        return 1.0
    return float(prior_strength / (prior_strength + m)) if prior_strength > 0 else 0.0


def member_rows(n: int, k: int, seed: int, bootstrap: bool) -> np.ndarray:
    """Row indices [n] of ensemble member ``k``: a bootstrap draw from ``(seed, k)``, or all rows."""
    if not bootstrap:
        return np.arange(n)
    return np.random.default_rng([seed, k]).integers(0, n, size=n)


def fit_decisions(mu, sigma, y, thresholds, *, n_models: int = 5, seed: int = 0, z: float = 1.96,
                  dof: float = math.inf, bootstrap: bool = True, monotone: bool = True,
                  class_weight: str | None = None,
                  prior_strength: float = PRIOR_STRENGTH, **hgb: Any) -> tuple[dict, dict]:
    """Fits the decision ensembles only (``fit_corrections`` calls this).

    Args:
      mu, sigma, y: validation predictions and labels [n] (already checked).
      thresholds: ThresholdSpec tuple, each event with both outcomes in ``y``.
      n_models, seed, z, dof, bootstrap: as in ``fit_corrections`` (a single
        member is fitted on every row).
      monotone: impose ``monotone_constraints``.
      class_weight: None or "balanced" (sklearn).
      prior_strength: pseudo-count n0 of the shrinkage to the Gaussian log-odds
        (0: pure boosting; inf: pure Gaussian).
      **hgb: HistGradientBoostingClassifier settings.

    Returns:
      ({name: [classifiers]}, {name: Gaussian weight w}).
    """
    bootstrap = bool(bootstrap) and n_models > 1
    x = features(mu, sigma, thresholds, z, dof)
    classifiers, weights = {}, {}
    for i, t in enumerate(thresholds):
        labels = event(y, t).astype(np.int64)
        weights[t.name] = gaussian_weight(labels, prior_strength)
        cst = monotone_constraints(thresholds, i) if monotone else None
        classifiers[t.name] = []
        for k in range(n_models):
            rows = member_rows(y.size, k, seed, bootstrap)
            if labels[rows].min() == labels[rows].max():  # a draw missed a rare class: all rows
                rows = np.arange(y.size)
            clf = HistGradientBoostingClassifier(random_state=seed + k, monotonic_cst=cst,
                                                 class_weight=class_weight, **hgb)
            classifiers[t.name].append(clf.fit(x[rows], labels[rows]))
    return classifiers, weights


def predict_decisions(classifiers: dict, weights: dict, mu, sigma, thresholds,
                      z: float = 1.96, dof: float = math.inf) -> dict[str, np.ndarray]:
    """P(event) per threshold: expit((1 - w) * mean member log-odds + w * Gaussian log-odds).

    Args:
      classifiers, weights: as returned by ``fit_decisions``.
      mu: predicted locations [n]; sigma: calibrated scales [n].
      thresholds: the ThresholdSpec tuple used at fit time.
      z: interval half-width used at fit time.
      dof: predictive family used at fit time.

    Returns:
      {threshold name: probabilities [n] in [0, 1]}.
    """
    mu, sigma, _ = check_predictions(mu, sigma)
    x = features(mu, sigma, thresholds, z, dof)
    probs = {}
    for t in thresholds:
        w = float(weights[t.name])
        # A weight of 0 (pure boosting) or 1 leaves its term out, uncomputed: the
        # Gaussian log-odds overflow to +-inf far from t, and 0 * inf is NaN.
        log_odds = np.zeros(mu.shape)
        if w < 1.0:
            log_odds += (1.0 - w) * np.mean([c.decision_function(x)
                                             for c in classifiers[t.name]], axis=0)
        if w > 0.0:
            log_odds += w * gaussian_log_odds(mu, sigma, t, dof)
        probs[t.name] = special.expit(log_odds)
    return probs
