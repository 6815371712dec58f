"""Gradient-boosted corrections and decisions (SPEC section 5).

Fitted on validation predictions only, never on the training split: the
fitter takes exactly the arrays it is given and nothing else. Trees come from
scikit-learn's ``HistGradientBoostingRegressor`` / ``...Classifier``.

Features per example (``features``): mu, calibrated sigma, mu - z sigma,
mu + z sigma, and for each clinical threshold the calibrated predictive's
probability of its event (``y > t`` for "above", ``y < t`` for "below").
The calibrated predictive is mu + sigma Z of the calibration's family
(``dof``): Gaussian, or the unit-variance Student-t a hyperfine calibration
with a fitted tail issues. Names below say "Gaussian" for it (the SPEC's
case, and the stable eval.json keys); every such formula takes ``dof``.

- Corrected value: an ensemble of ``n_models`` boosted regressors of y on the
  features, averaged. sklearn's HGB uses its ``random_state`` only for
  subsampling, so each member also gets its own randomness: a bootstrap
  resample of the validation rows (``bootstrap=True``) and, if
  ``max_features < 1``, random feature subsampling per split, both seeded by
  ``seed + k``. Early stopping is off, so a fit is deterministic given seed.
- Decisions: per threshold, an ensemble of boosted classifiers (same
  seeding), shrunk towards the calibrated Gaussian. Three choices, made by
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

A ``Corrector`` saves to a directory: ``models.joblib`` plus
``manifest.json`` (task name, feature spec, thresholds, hyperparameters).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import joblib
import numpy as np
from scipy import special
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from hypuc_jax._predictions import (ThresholdSpec, as_thresholds, check_dof, check_predictions,
                                    check_threshold_in_range, dof_to_json, event, exceed_prob,
                                    std_logsf_logcdf)
from hypuc_jax.calibration import check_task

FORMAT_VERSION = 3  # 2: log-odds ensemble shrunk to the Gaussian; 3: + the predictive's dof
_READABLE_VERSIONS = (2, 3)  # a version-2 manifest has no dof: the Gaussian
# Pseudo-count n0 of the shrinkage to the Gaussian log-odds; chosen by 5-fold CV
# (x4 repeats) inside the validation split, experiments/results/decisions_study.md.
PRIOR_STRENGTH = 1000.0
_CLASSIFIER_KEYS = frozenset({"max_iter", "learning_rate", "max_leaf_nodes",
                              "min_samples_leaf", "l2_regularization", "max_features"})
MANIFEST = "manifest.json"
MODELS = "models.joblib"


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
    if not (np.isfinite(z) and z > 0):
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
    """Weight w = n0 / (n0 + m) of the Gaussian log-odds; m = minority-class count."""
    m = int(min(labels.sum(), labels.size - labels.sum()))
    if np.isinf(prior_strength):
        return 1.0
    return float(prior_strength / (prior_strength + m)) if prior_strength > 0 else 0.0


def _member_rows(n: int, k: int, seed: int, bootstrap: bool) -> np.ndarray:
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
      thresholds: ThresholdSpec tuple, values inside the label range.
      n_models, seed, z, dof, bootstrap: as in ``fit_corrections``.
      monotone: impose ``monotone_constraints``.
      class_weight: None or "balanced" (sklearn).
      prior_strength: pseudo-count n0 of the shrinkage to the Gaussian log-odds
        (0: pure boosting; inf: pure Gaussian).
      **hgb: HistGradientBoostingClassifier settings.

    Returns:
      ({name: [classifiers]}, {name: Gaussian weight w}).
    """
    x = features(mu, sigma, thresholds, z, dof)
    classifiers, weights = {}, {}
    for i, t in enumerate(thresholds):
        labels = event(y, t).astype(np.int64)
        weights[t.name] = gaussian_weight(labels, prior_strength)
        cst = monotone_constraints(thresholds, i) if monotone else None
        classifiers[t.name] = []
        for k in range(n_models):
            rows = _member_rows(y.size, k, seed, bootstrap)
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
        w = weights[t.name]
        boosted = np.mean([c.decision_function(x) for c in classifiers[t.name]], axis=0)
        probs[t.name] = special.expit((1.0 - w) * boosted
                                      + w * gaussian_log_odds(mu, sigma, t, dof))
    return probs


@dataclasses.dataclass
class Corrector:
    """Fitted correction and decision models.

    Attributes:
      regressors: boosted regressors of y, averaged for the corrected value.
      classifiers: {threshold name: list of boosted classifiers}.
      thresholds: the thresholds, as ThresholdSpec.
      z: interval half-width used in the features.
      task: task the corrector was fitted on, or None.
      params: hyperparameters used for fitting (recorded in the manifest).
      gaussian_weights: {threshold name: weight w of the Gaussian log-odds}.
      dof: family of the calibrated predictive the features use (inf: Gaussian).
    """
    regressors: list
    classifiers: dict
    thresholds: tuple
    z: float
    task: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    gaussian_weights: dict = dataclasses.field(default_factory=dict)
    dof: float = math.inf

    def __post_init__(self):
        self.dof = check_dof(self.dof)

    def predict(self, mu, sigma) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Corrected values and decision probabilities.

        Args:
          mu: predicted locations [n].
          sigma: calibrated predicted scales [n] (calibrated the same way as
            at fit time).

        Returns:
          (corrected [n], {threshold name: P(event) [n]}).
        """
        x = features(mu, sigma, self.thresholds, self.z, self.dof)
        corrected = np.mean([m.predict(x) for m in self.regressors], axis=0)
        weights = {t.name: self.gaussian_weights.get(t.name, 0.0) for t in self.thresholds}
        probs = predict_decisions(self.classifiers, weights, mu, sigma, self.thresholds, self.z,
                                  self.dof)
        return corrected, probs

    def manifest(self) -> dict:
        """JSON-ready description: task, feature spec, thresholds, hyperparameters."""
        return {"format_version": FORMAT_VERSION, "task": self.task,
                "features": feature_names(self.thresholds), "z": self.z,
                "dof": dof_to_json(self.dof),
                "thresholds": [list(t) for t in self.thresholds],
                "gaussian_weights": self.gaussian_weights,
                "n_models": len(self.regressors), "params": self.params, "models": MODELS}

    def save(self, directory: str | os.PathLike) -> None:
        """Writes ``models.joblib`` and ``manifest.json`` into ``directory`` (created)."""
        os.makedirs(directory, exist_ok=True)
        joblib.dump({"regressors": self.regressors, "classifiers": self.classifiers},
                    os.path.join(directory, MODELS))
        with open(os.path.join(directory, MANIFEST), "w") as fh:
            json.dump(self.manifest(), fh, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike, task: str | None = None) -> "Corrector":
        """Reads a corrector saved with ``save``.

        Args:
          directory: the directory passed to ``save`` (e.g. DIR/corrections).
          task: expected task name; None accepts any.

        Raises:
          ValueError: unknown format, or fitted for a task other than ``task``.
        """
        with open(os.path.join(directory, MANIFEST)) as fh:
            manifest = json.load(fh)
        if manifest.get("format_version") not in _READABLE_VERSIONS:
            raise ValueError("directory: expected manifest format_version in "
                             f"{_READABLE_VERSIONS}, "
                             f"got {manifest.get('format_version')!r}; refit the corrections")
        check_task(manifest.get("task"), task)
        models = joblib.load(os.path.join(directory, manifest["models"]))
        thresholds = tuple(ThresholdSpec(*t) for t in manifest["thresholds"])
        return cls(regressors=models["regressors"], classifiers=models["classifiers"],
                   thresholds=thresholds, z=float(manifest["z"]), task=manifest.get("task"),
                   params=manifest.get("params", {}),
                   gaussian_weights={k: float(v) for k, v in manifest["gaussian_weights"].items()},
                   dof=check_dof(manifest.get("dof"), "manifest dof"))


def fit_corrections(mu_val, sigma_val, y_val, thresholds=(), *, n_models: int = 5, seed: int = 0,
                    z: float = 1.96, dof: float = math.inf, bootstrap: bool = True,
                    max_features: float = 1.0,
                    max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                    min_samples_leaf: int = 20, task: str | None = None, monotone: bool = True,
                    class_weight: str | None = None, prior_strength: float = PRIOR_STRENGTH,
                    classifier_params: dict | None = None) -> Corrector:
    """Fits the corrected-value ensemble and one decision ensemble per threshold.

    Args:
      mu_val: validation predicted locations [n].
      sigma_val: validation calibrated scales [n], > 0.
      y_val: validation labels [n].
      thresholds: sequence of thresholds; each value must lie strictly inside
        the validation label range so both outcomes occur.
      n_models: ensemble size K (members seeded seed, seed + 1, ...), for the
        regressors and for each threshold's classifiers.
      seed: base seed.
      z: interval half-width used in the features.
      dof: family of the calibrated predictive (``calibrator.predictive_dof``;
        inf: Gaussian), used for the event-probability features and the
        shrinkage target.
      bootstrap: resample the validation rows with replacement per member.
      max_features: fraction of features considered per split (sklearn HGB).
      max_iter, learning_rate, max_leaf_nodes, min_samples_leaf: HGB settings
        (regressors, and classifiers unless ``classifier_params`` overrides).
      task: task name stored with the corrector.
      monotone: monotone constraints on the classifiers (``monotone_constraints``).
      class_weight: classifiers' class weighting, None or "balanced".
      prior_strength: pseudo-count n0 >= 0 (inf allowed) of the classifiers'
        shrinkage to the Gaussian log-odds (module docstring).
      classifier_params: overrides of max_iter, learning_rate, max_leaf_nodes,
        min_samples_leaf, l2_regularization, max_features for the classifiers.

    Returns:
      Corrector.

    Raises:
      ValueError: bad arrays, n_models < 1, a threshold outside the label
        range, or a bad classifier setting (named).
    """
    mu, sigma, y = check_predictions(mu_val, sigma_val, y_val,
                                     names=("mu_val", "sigma_val", "y_val"))
    specs = as_thresholds(thresholds)
    dof = check_dof(dof)
    for t in specs:
        check_threshold_in_range(t, y)
    if not isinstance(n_models, (int, np.integer)) or n_models < 1:
        raise ValueError(f"n_models: expected a positive integer, got {n_models!r}")
    if not 0.0 < max_features <= 1.0:
        raise ValueError(f"max_features: expected a fraction in (0, 1], got {max_features!r}")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight: expected None or 'balanced', got {class_weight!r}")
    if not (isinstance(prior_strength, (int, float, np.number)) and prior_strength >= 0):
        raise ValueError(f"prior_strength: expected a number >= 0 (inf allowed), "
                         f"got {prior_strength!r}")
    extra = set(classifier_params or {}) - _CLASSIFIER_KEYS
    if extra:
        raise ValueError(f"classifier_params: unknown keys {sorted(extra)}; "
                         f"expected some of {sorted(_CLASSIFIER_KEYS)}")
    x = features(mu, sigma, specs, z, dof)
    hgb = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
               min_samples_leaf=min_samples_leaf, max_features=max_features,
               early_stopping=False)
    clf_hgb = dict(hgb, **(classifier_params or {}))
    regressors = [HistGradientBoostingRegressor(random_state=seed + k, **hgb)
                  .fit(x[rows], y[rows])
                  for k in range(n_models) for rows in [_member_rows(y.size, k, seed, bootstrap)]]
    classifiers, weights = fit_decisions(
        mu, sigma, y, specs, n_models=n_models, seed=seed, z=z, dof=dof, bootstrap=bootstrap,
        monotone=monotone, class_weight=class_weight, prior_strength=prior_strength, **clf_hgb)
    params = dict(hgb, n_models=int(n_models), seed=int(seed), bootstrap=bool(bootstrap),
                  monotone=bool(monotone), class_weight=class_weight,
                  prior_strength=float(prior_strength), classifier=clf_hgb)
    return Corrector(regressors=regressors, classifiers=classifiers, thresholds=specs,
                     z=float(z), task=task, params=params, gaussian_weights=weights, dof=dof)


def load_corrector(directory: str | os.PathLike, task: str | None = None) -> Corrector:
    """Loads a corrector saved with ``Corrector.save`` (alias of ``Corrector.load``)."""
    return Corrector.load(directory, task=task)


def summarize(y, mu, corrected) -> dict[str, Any]:
    """MAE/MSE before and after correction, as JSON-ready floats.

    Args:
      y: labels [n]; mu: uncorrected predictions [n]; corrected: corrected values [n].

    Returns:
      {"mae_before", "mae_after", "mse_before", "mse_after"}.
    """
    mu, _, y = check_predictions(mu, None, y, sigma_required=False)
    corrected, _, _ = check_predictions(corrected, None, y, names=("corrected", "sigma", "y"),
                                        sigma_required=False)
    return {"mae_before": float(np.mean(np.abs(y - mu))),
            "mae_after": float(np.mean(np.abs(y - corrected))),
            "mse_before": float(np.mean((y - mu) ** 2)),
            "mse_after": float(np.mean((y - corrected) ** 2))}
