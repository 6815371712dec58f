"""Gradient-boosted corrections and decisions (SPEC section 5).

Fitted on validation predictions only, never on the training split: the
fitter takes exactly the arrays it is given and nothing else. Trees come from
scikit-learn's ``HistGradientBoostingRegressor`` / ``...Classifier``.

Features per example (``features``): mu, calibrated sigma, mu - z sigma,
mu + z sigma, and for each clinical threshold the calibrated Gaussian's
probability of its event (``y > t`` for "above", ``y < t`` for "below").

- Corrected value: an ensemble of ``n_models`` boosted regressors of y on the
  features, averaged. sklearn's HGB uses its ``random_state`` only for
  subsampling, so each member also gets its own randomness: a bootstrap
  resample of the validation rows (``bootstrap=True``) and, if
  ``max_features < 1``, random feature subsampling per split, both seeded by
  ``seed + k``. Early stopping is off, so a fit is deterministic given seed.
- Decisions: per threshold, an ensemble of boosted classifiers (same
  seeding) whose averaged probability is the decision probability.
  Baselines (``baseline_scores``): thresholding mu (score mu for "above",
  -mu for "below") and the calibrated Gaussian's event probability.

A ``Corrector`` saves to a directory: ``models.joblib`` plus
``manifest.json`` (task name, feature spec, thresholds, hyperparameters).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from hypuc_jax._predictions import (ThresholdSpec, as_thresholds, check_predictions,
                                    check_threshold_in_range, event, exceed_prob)
from hypuc_jax.calibration import check_task

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODELS = "models.joblib"


def feature_names(thresholds) -> list[str]:
    """Column names of ``features`` for these thresholds."""
    return ["mu", "sigma", "mu_minus_z_sigma", "mu_plus_z_sigma"] + [
        f"p_{t.name}" for t in as_thresholds(thresholds)]


def features(mu, sigma, thresholds=(), z: float = 1.96) -> np.ndarray:
    """Feature matrix for the correction models.

    Args:
      mu: predicted locations [n].
      sigma: calibrated predicted scales [n], > 0.
      thresholds: sequence of thresholds (objects with name/value/direction,
        or (name, value, direction) tuples).
      z: half-width of the interval features, in units of sigma.

    Returns:
      np.ndarray [n, 4 + len(thresholds)]: mu, sigma, mu - z sigma,
      mu + z sigma, then the event probability of each threshold.
    """
    mu, sigma, _ = check_predictions(mu, sigma)
    if not (np.isfinite(z) and z > 0):
        raise ValueError(f"z: expected a finite value > 0, got {z!r}")
    cols = [mu, sigma, mu - z * sigma, mu + z * sigma]
    cols += [exceed_prob(mu, sigma, t) for t in as_thresholds(thresholds)]
    return np.stack(cols, axis=1)


def baseline_scores(mu, sigma, thresholds) -> dict[str, dict[str, np.ndarray]]:
    """Baseline decision scores per threshold.

    Args:
      mu: predicted locations [n].
      sigma: calibrated predicted scales [n].
      thresholds: sequence of thresholds.

    Returns:
      {threshold name: {"threshold_mu": mu or -mu [n], "gaussian": P(event) [n]}}.
    """
    mu, sigma, _ = check_predictions(mu, sigma)
    return {t.name: {"threshold_mu": mu if t.direction == "above" else -mu,
                     "gaussian": exceed_prob(mu, sigma, t)}
            for t in as_thresholds(thresholds)}


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
    """
    regressors: list
    classifiers: dict
    thresholds: tuple
    z: float
    task: str | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def predict(self, mu, sigma) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Corrected values and decision probabilities.

        Args:
          mu: predicted locations [n].
          sigma: calibrated predicted scales [n] (calibrated the same way as
            at fit time).

        Returns:
          (corrected [n], {threshold name: P(event) [n]}).
        """
        x = features(mu, sigma, self.thresholds, self.z)
        corrected = np.mean([m.predict(x) for m in self.regressors], axis=0)
        probs = {name: np.mean([c.predict_proba(x)[:, 1] for c in models], axis=0)
                 for name, models in self.classifiers.items()}
        return corrected, probs

    def manifest(self) -> dict:
        """JSON-ready description: task, feature spec, thresholds, hyperparameters."""
        return {"format_version": FORMAT_VERSION, "task": self.task,
                "features": feature_names(self.thresholds), "z": self.z,
                "thresholds": [list(t) for t in self.thresholds],
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
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"directory: expected manifest format_version {FORMAT_VERSION}, "
                             f"got {manifest.get('format_version')!r}")
        check_task(manifest.get("task"), task)
        models = joblib.load(os.path.join(directory, manifest["models"]))
        thresholds = tuple(ThresholdSpec(*t) for t in manifest["thresholds"])
        return cls(regressors=models["regressors"], classifiers=models["classifiers"],
                   thresholds=thresholds, z=float(manifest["z"]), task=manifest.get("task"),
                   params=manifest.get("params", {}))


def fit_corrections(mu_val, sigma_val, y_val, thresholds=(), *, n_models: int = 5, seed: int = 0,
                    z: float = 1.96, bootstrap: bool = True, max_features: float = 1.0,
                    max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                    min_samples_leaf: int = 20, task: str | None = None) -> Corrector:
    """Fits the corrected-value ensemble and one decision ensemble per threshold.

    Args:
      mu_val: validation predicted locations [n].
      sigma_val: validation calibrated scales [n], > 0.
      y_val: validation labels [n].
      thresholds: sequence of thresholds; each value must lie strictly inside
        the validation label range so both outcomes occur.
      n_models: ensemble size K (members seeded seed, seed + 1, ...).
      seed: base seed.
      z: interval half-width used in the features.
      bootstrap: resample the validation rows with replacement per member.
      max_features: fraction of features considered per split (sklearn HGB).
      max_iter, learning_rate, max_leaf_nodes, min_samples_leaf: HGB settings.
      task: task name stored with the corrector.

    Returns:
      Corrector.

    Raises:
      ValueError: bad arrays, n_models < 1, or a threshold outside the label range.
    """
    mu, sigma, y = check_predictions(mu_val, sigma_val, y_val,
                                     names=("mu_val", "sigma_val", "y_val"))
    specs = as_thresholds(thresholds)
    for t in specs:
        check_threshold_in_range(t, y)
    if not isinstance(n_models, (int, np.integer)) or n_models < 1:
        raise ValueError(f"n_models: expected a positive integer, got {n_models!r}")
    if not 0.0 < max_features <= 1.0:
        raise ValueError(f"max_features: expected a fraction in (0, 1], got {max_features!r}")
    x = features(mu, sigma, specs, z)
    hgb = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
               min_samples_leaf=min_samples_leaf, max_features=max_features,
               early_stopping=False)
    labels = {t.name: event(y, t).astype(np.int64) for t in specs}

    def member_rows(k: int) -> np.ndarray:
        if not bootstrap:
            return np.arange(y.size)
        return np.random.default_rng([seed, k]).integers(0, y.size, size=y.size)

    regressors, classifiers = [], {t.name: [] for t in specs}
    for k in range(n_models):
        rows = member_rows(k)
        regressors.append(HistGradientBoostingRegressor(random_state=seed + k, **hgb)
                          .fit(x[rows], y[rows]))
        for t in specs:
            lab = labels[t.name][rows]
            if lab.min() == lab.max():  # a bootstrap draw missed a rare class: use all rows
                rows_t, lab = np.arange(y.size), labels[t.name]
            else:
                rows_t = rows
            classifiers[t.name].append(HistGradientBoostingClassifier(random_state=seed + k, **hgb)
                                       .fit(x[rows_t], lab))
    params = dict(hgb, n_models=int(n_models), seed=int(seed), bootstrap=bool(bootstrap))
    return Corrector(regressors=regressors, classifiers=classifiers, thresholds=specs,
                     z=float(z), task=task, params=params)


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
