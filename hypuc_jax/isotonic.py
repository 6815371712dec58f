"""Isotonic recalibration of the predicted CDF (Kuleshov et al. 2018): the
calibration baseline. Use it through ``hypuc_jax.calibration``
(``fit_calibrator("isotonic", ...)`` or ``calibration.fit_isotonic``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from hypuc_jax._calibrator import _Calibrator, float_list, unit_level
from hypuc_jax._predictions import central_z, check_predictions


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator(_Calibrator):
    """Isotonic recalibration of the predicted Gaussian CDF (Kuleshov et al. 2018).

    The fitted map R sends a predicted CDF level p = Phi((y - mu) / sigma) to
    the fraction of validation samples whose level is <= p. The recalibrated
    predictive distribution has CDF R(Phi((y - mu) / sigma)) and quantiles
    mu + sigma * Phi^-1(R^-1(q)). Because R acts on the standardised level,
    the recalibrated distribution is a location-scale family in (mu, sigma),
    generally not Gaussian. ``apply`` therefore returns a Gaussian-equivalent
    sigma: the scale whose Gaussian central ``xi`` interval has the same width
    as the recalibrated central ``xi`` interval. Use ``interval`` / ``quantile``
    for the exact recalibrated endpoints and ``cdf`` for calibrated levels.
    The pipeline's later stages score that Gaussian-equivalent sigma as a
    Gaussian (``predictive_dof`` is inf), not the recalibrated CDF itself.

    Attributes:
      levels: knots of R (predicted levels), increasing, in [0, 1].
      freqs: R at those knots (observed frequencies), non-decreasing, in [0, 1].
      xi: coverage used for the Gaussian-equivalent sigma of ``apply``.
      task: task the calibrator was fitted on, or None.
    """
    levels: list
    freqs: list
    xi: float = 0.95
    task: str | None = None
    method: ClassVar[str] = "isotonic"

    def __post_init__(self):
        levels = float_list(self.levels, "levels", low=0.0, high=1.0, increasing=True)
        freqs = float_list(self.freqs, "freqs", len(levels), low=0.0, high=1.0)
        if len(levels) < 2 or np.any(np.diff(freqs) < 0):
            raise ValueError(f"freqs: expected >= 2 non-decreasing levels in [0, 1], one per knot "
                             f"of levels, got {self.freqs!r}")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "freqs", freqs)
        object.__setattr__(self, "xi", unit_level(self.xi, "xi"))

    def recalibrate_level(self, p) -> np.ndarray:
        """R(p): calibrated CDF level for predicted level(s) p in [0, 1]."""
        return np.interp(np.asarray(p, dtype=np.float64), self.levels, self.freqs)

    def inverse_level(self, q) -> np.ndarray:
        """R^-1(q) = inf{p : R(p) >= q}: the predicted level to ask for to get level q."""
        q = np.asarray(q, dtype=np.float64)
        levels, freqs = np.asarray(self.levels), np.asarray(self.freqs)
        # R is piecewise linear and non-decreasing: find the first segment reaching q.
        j = np.clip(np.searchsorted(freqs, q, side="left"), 1, len(freqs) - 1)
        f0, f1, p0, p1 = freqs[j - 1], freqs[j], levels[j - 1], levels[j]
        t = np.where(f1 > f0, (q - f0) / np.where(f1 > f0, f1 - f0, 1.0), 1.0)
        return np.clip(p0 + np.clip(t, 0.0, 1.0) * (p1 - p0), 0.0, 1.0)

    def cdf(self, mu, sigma, y) -> np.ndarray:
        """Calibrated CDF levels R(Phi((y - mu) / sigma)), [n] in [0, 1]."""
        mu, sigma, y = check_predictions(mu, sigma, y)
        return self.recalibrate_level(stats.norm.cdf((y - mu) / sigma))

    def quantile(self, mu, sigma, q: float) -> np.ndarray:
        """Recalibrated quantile at level q in (0, 1): mu + sigma Phi^-1(R^-1(q)), [n]."""
        mu, sigma = self._inputs(mu, sigma)
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"q: expected a level in (0, 1), got {q!r}")
        return mu + sigma * stats.norm.ppf(self.inverse_level(float(q)))

    def interval(self, mu, sigma, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated central interval: quantiles at (1 -+ level) / 2, each [n]."""
        central_z(level)  # validates level
        return (self.quantile(mu, sigma, 0.5 - level / 2.0),
                self.quantile(mu, sigma, 0.5 + level / 2.0))

    def sigma_factor(self, level: float | None = None) -> float:
        """Width of the recalibrated central interval over that of N(0, 1)'s."""
        level = self.xi if level is None else level
        z = central_z(level)
        lo, hi = stats.norm.ppf(self.inverse_level(np.array([0.5 - level / 2, 0.5 + level / 2])))
        width = hi - lo
        if not np.isfinite(width):
            raise ValueError(f"level: recalibrated {level} interval is unbounded; use a smaller level")
        return float(width / (2.0 * z))

    def apply(self, mu, sigma) -> np.ndarray:
        """Gaussian-equivalent calibrated sigma [n] (equal central-``xi`` width)."""
        _, sigma = self._inputs(mu, sigma)
        return self.sigma_factor() * sigma


def fit_isotonic(mu, sigma, y, *, xi: float = 0.95, task: str | None = None) -> IsotonicCalibrator:
    """Fits isotonic recalibration of the predicted CDF (Kuleshov et al. 2018).

    The training pairs are (p_i, P_hat(p_i)) with p_i = Phi((y_i - mu_i) / sigma_i)
    and P_hat(p) = |{j : p_j <= p}| / n, fitted with sklearn's
    ``IsotonicRegression`` (bounded to [0, 1]); the knots of the fitted
    piecewise-linear map, anchored at (0, 0) and (1, 1), are stored.

    Args:
      mu: validation predicted locations [n].
      sigma: validation predicted scales [n], > 0.
      y: validation labels [n].
      xi: coverage used for ``apply``'s Gaussian-equivalent sigma.
      task: task name stored with the calibrator.

    Returns:
      IsotonicCalibrator.
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    central_z(xi, "xi")
    p = np.sort(stats.norm.cdf((y - mu) / sigma))
    p_hat = np.searchsorted(p, p, side="right") / p.size
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.concatenate([[0.0], p, [1.0]]), np.concatenate([[0.0], p_hat, [1.0]]))
    levels = np.asarray(iso.X_thresholds_, dtype=np.float64)
    freqs = np.asarray(iso.y_thresholds_, dtype=np.float64)
    return IsotonicCalibrator(levels=levels.tolist(), freqs=freqs.tolist(), xi=float(xi), task=task)
