"""Gradient-boosted corrections (SPEC section 5): the corrected value, plus the decisions.

Fitted on validation predictions only, never on the training split: the
fitter takes exactly the arrays it is given and nothing else. Trees come from
scikit-learn's ``HistGradientBoostingRegressor`` / ``...Classifier``, on the
features of :func:`hypuc_jax.decisions.features` (mu, calibrated sigma, the
interval ends, each threshold's event probability under the calibration's
family ``dof``).

- Corrected value: an ensemble of ``n_models`` boosted regressors on the
  features, averaged. With ``target="residual"`` (the default) they fit the
  residual ``y - mu`` and the corrected value is ``mu`` plus their mean:
  boosting that starts from the network's prediction instead of a constant,
  so where the validation split is sparse (a clinical tail, or mu beyond
  its range) the trees' shrunken leaves leave mu nearly as it is rather than
  pulling it to the average label of the leaf. The residuals are rounded to
  a power-of-two grid near sd / 1024 (:func:`quantize_residuals`), so that
  predictions equal up to their last bits grow the same trees.
  ``target="label"`` fits y itself (format versions <= 3). sklearn's HGB uses its ``random_state`` only for
  subsampling, so each member also gets its own randomness: a bootstrap
  resample of the validation rows (``bootstrap=True``, with more than one
  member; a single member is fitted on every row) and, if
  ``max_features < 1``, random feature subsampling per split, both seeded by
  ``seed + k``. Early stopping is off, so a fit is deterministic given seed.
- Decisions: per threshold, an ensemble of boosted classifiers, monotone in
  mu and shrunk towards the calibrated predictive's log-odds
  (:mod:`hypuc_jax.decisions`, which also holds ``features``).

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
from sklearn.ensemble import HistGradientBoostingRegressor

from hypuc_jax._predictions import (ThresholdSpec, as_thresholds, check_dof, check_predictions,
                                    check_both_outcomes, dof_from_json, dof_to_json)
from hypuc_jax._validation import is_int, is_real, plain_scalar
from hypuc_jax.calibration import check_task
from hypuc_jax.config import CORRECTION_TARGETS as TARGETS
from hypuc_jax.decisions import (PRIOR_STRENGTH, baseline_scores, feature_names, features,
                                 fit_decisions, member_rows, predict_decisions)

__all__ = ["Corrector", "TARGETS", "fit_corrections", "load_corrector", "summarize", "features",
           "feature_names", "baseline_scores", "PRIOR_STRENGTH"]

FORMAT_VERSION = 4  # 2: log-odds ensemble shrunk to the Gaussian; 3: + dof; 4: + target
_READABLE_VERSIONS = (2, 3, 4)  # version 2 has no dof (Gaussian); <= 3 no target ("label")
_CLASSIFIER_KEYS = frozenset({"max_iter", "learning_rate", "max_leaf_nodes",
                              "min_samples_leaf", "l2_regularization", "max_features"})
MANIFEST = "manifest.json"
MODELS = "models.joblib"


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
      target: what the regressors fit, "residual" (y - mu) or "label" (y).
    """
    regressors: list
    classifiers: dict
    thresholds: tuple
    z: float
    task: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    gaussian_weights: dict = dataclasses.field(default_factory=dict)
    dof: float = math.inf
    target: str = "label"

    def __post_init__(self):
        self.dof = check_dof(self.dof)
        _check_target(self.target)

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
        if self.target == "residual":
            corrected = corrected + x[:, 0]   # feature 0 is mu, as float64
        weights = {t.name: self.gaussian_weights.get(t.name, 0.0) for t in self.thresholds}
        probs = predict_decisions(self.classifiers, weights, mu, sigma, self.thresholds, self.z,
                                  self.dof)
        return corrected, probs

    def manifest(self) -> dict:
        """JSON-ready description: task, feature spec, thresholds, hyperparameters."""
        return {"format_version": FORMAT_VERSION, "task": self.task,
                "features": feature_names(self.thresholds), "z": self.z,
                "dof": dof_to_json(self.dof), "target": self.target,
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
        path = os.path.join(directory, MANIFEST)
        try:
            with open(path) as fh:
                manifest = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the corrections manifest ({e})") from e
        if manifest.get("format_version") not in _READABLE_VERSIONS:
            raise ValueError("directory: expected manifest format_version in "
                             f"{_READABLE_VERSIONS}, "
                             f"got {manifest.get('format_version')!r}; refit the corrections")
        check_task(manifest.get("task"), task)
        path = os.path.join(directory, str(manifest.get("models", MODELS)))
        try:
            models = joblib.load(path)
        except Exception as e:  # noqa: BLE001 - unpickling raises many types
            raise ValueError(f"{path}: cannot read the fitted models ({type(e).__name__}: {e}); "
                             "fit the corrections again") from e
        thresholds = tuple(ThresholdSpec(*t) for t in manifest["thresholds"])
        return cls(regressors=models["regressors"], classifiers=models["classifiers"],
                   thresholds=thresholds, z=float(manifest["z"]), task=manifest.get("task"),
                   params=manifest.get("params", {}),
                   gaussian_weights={k: float(v) for k, v in manifest["gaussian_weights"].items()},
                   dof=dof_from_json(manifest.get("dof"), "manifest dof"),
                   target=manifest.get("target", "label"))


def fit_corrections(mu_val, sigma_val, y_val, thresholds=(), *, n_models: int = 5, seed: int = 0,
                    z: float = 1.96, dof: float = math.inf, bootstrap: bool = True,
                    max_features: float = 1.0,
                    max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                    min_samples_leaf: int = 20, task: str | None = None, monotone: bool = True,
                    class_weight: str | None = None, prior_strength: float = PRIOR_STRENGTH,
                    classifier_params: dict | None = None,
                    target: str = "residual") -> Corrector:
    """Fits the corrected-value ensemble and one decision ensemble per threshold.

    Args:
      mu_val: validation predicted locations [n].
      sigma_val: validation calibrated scales [n], > 0.
      y_val: validation labels [n].
      thresholds: sequence of thresholds; ``y_val`` must hold both outcomes
        of each event (a positive and a negative).
      n_models: ensemble size K (members seeded seed, seed + 1, ...), for the
        regressors and for each threshold's classifiers.
      seed: base seed.
      z: interval half-width used in the features.
      dof: family of the calibrated predictive (``calibrator.predictive_dof``;
        inf: Gaussian), used for the event-probability features and the
        shrinkage target.
      bootstrap: resample the validation rows with replacement per member, only
        with several members (a single member is fitted on every row: a resample
        would leave ~37% of them out, rare outcomes included).
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
      target: "residual" (regressors fit y - mu; corrected = mu + their
        mean) or "label" (they fit y).

    Returns:
      Corrector.

    Raises:
      ValueError: bad arrays, n_models < 1, a threshold whose event has one
        outcome only among ``y_val``, an unknown target, or a bad classifier setting (named).
    """
    mu, sigma, y = check_predictions(mu_val, sigma_val, y_val,
                                     names=("mu_val", "sigma_val", "y_val"))
    _check_target(target)
    specs = as_thresholds(thresholds)
    dof = check_dof(dof)
    for t in specs:
        check_both_outcomes(t, y)
    if not is_int(n_models) or n_models < 1:
        raise ValueError(f"n_models: expected a positive integer, got {n_models!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    max_features, prior_strength = plain_scalar(max_features), plain_scalar(prior_strength)
    if not is_real(max_features) or not 0.0 < max_features <= 1.0:
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
    bootstrap = bool(bootstrap) and n_models > 1         # one member: every row
    x = features(mu, sigma, specs, z, dof)
    hgb = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
               min_samples_leaf=min_samples_leaf, max_features=max_features,
               early_stopping=False)
    clf_hgb = dict(hgb, **(classifier_params or {}))
    goal = quantize_residuals(y - x[:, 0]) if target == "residual" else y
    regressors = [HistGradientBoostingRegressor(random_state=seed + k, **hgb)
                  .fit(x[rows], goal[rows])
                  for k in range(n_models) for rows in [member_rows(y.size, k, seed, bootstrap)]]
    classifiers, weights = fit_decisions(
        mu, sigma, y, specs, n_models=n_models, seed=seed, z=z, dof=dof, bootstrap=bootstrap,
        monotone=monotone, class_weight=class_weight, prior_strength=prior_strength, **clf_hgb)
    params = dict(hgb, n_models=int(n_models), seed=int(seed), bootstrap=bool(bootstrap),
                  monotone=bool(monotone), class_weight=class_weight,
                  prior_strength=float(prior_strength), classifier=clf_hgb)
    return Corrector(regressors=regressors, classifiers=classifiers, thresholds=specs,
                     z=float(z), task=task, params=params, gaussian_weights=weights, dof=dof,
                     target=target)


#: Residual targets are rounded to 2**-RESIDUAL_GRID_BITS of their standard
#: deviation (a power of two), 0.1% of the noise the trees fit.
RESIDUAL_GRID_BITS = 10


def quantize_residuals(r: np.ndarray) -> np.ndarray:
    """Residuals ``y - mu`` [n] rounded to a power-of-two grid near ``sd / 1024``.

    The boosted trees decide between splits of equal or nearly equal gain by
    float rounding of their gradient sums, so on a small validation split a
    change of mu in its last bits (another device count or data-parallel
    mode: ~1e-7) grew different trees and moved the corrected values by up
    to ~0.1. On the grid those inputs give the same targets (unless a
    residual lies within ~1e-7 of a grid point), hence the same trees. The
    rounding error, at most sd / 2048, is far below the residual noise.
    """
    sd = float(np.std(r))
    if not sd > 0 or not np.isfinite(sd):
        return r
    step = 2.0 ** (math.floor(math.log2(sd)) - RESIDUAL_GRID_BITS)
    return np.round(r / step) * step


def _check_target(target) -> None:
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")


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
