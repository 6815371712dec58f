"""Isotonic recalibration of the predicted CDF (Kuleshov et al. 2018): the
calibration baseline. Use it through ``hypuc_jax.calibration``
(``fit_calibrator("isotonic", ...)`` or ``calibration.fit_isotonic``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from hypuc_jax._calibrator import _Calibrator, float_list, unit_level
from hypuc_jax._predictions import central_bounds, check_predictions, standardized_residuals
from hypuc_jax._normal_segments import levels
from hypuc_jax._recalibrated import RecalibratedNormal


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator(_Calibrator):
    """Isotonic recalibration of the predicted Gaussian CDF (Kuleshov et al. 2018).

    The fitted map R sends a predicted CDF level p = Phi(z), z = (y - mu) /
    sigma, to the fraction of validation samples whose level is <= p. The
    recalibrated predictive distribution has CDF R(Phi((y - mu) / sigma)) and
    quantiles mu + sigma * Phi^-1(R^-1(q)). Because R acts on the
    standardised residual, the recalibrated distribution is a location-scale
    family in (mu, sigma), generally neither Gaussian nor symmetric:
    ``predictive_dof`` is that family (``RecalibratedNormal``) and ``apply``
    returns sigma times its scale s, the Gaussian-equivalent sigma (the
    Gaussian's central ``xi`` interval has the recalibrated one's width).
    ``mu + apply(mu, sigma) * Z``, Z from
    ``predictive_dof``, is exactly the recalibrated predictive, so the later
    stages (corrections, ``evaluate``, ``predict``'s interval, the report)
    score the recalibrated CDF itself: its coverage, intervals (asymmetric),
    NLL, CRPS and entropy. ``interval`` / ``quantile`` / ``cdf`` give the
    same in terms of the predicted sigma.

    R is stored at knots of the standardised residual z (not of p = Phi(z),
    which rounds to 0 or 1 beyond |z| ~ 8 and would merge the knots of a
    badly over-confident model) and is linear in p between knots, with
    R(p=0) = 0 and R(p=1) = 1 (the same interpolation as
    uncertainty-toolbox's isotonic recalibration).

    Attributes:
      knots: standardised residuals z at the knots of R, strictly increasing, finite.
      freqs: R at those knots (observed frequencies), non-decreasing, in [0, 1].
      xi: coverage whose central interval fixes the scale of ``apply``.
      task: task the calibrator was fitted on, or None.
    """
    knots: list
    freqs: list
    xi: float = 0.95
    task: str | None = None
    method: ClassVar[str] = "isotonic"

    def __post_init__(self):
        knots = float_list(self.knots, "knots", increasing=True)
        freqs = float_list(self.freqs, "freqs", len(knots), low=0.0, high=1.0)
        if not knots or np.any(np.diff(freqs) < 0):
            raise ValueError(f"freqs: expected non-decreasing frequencies in [0, 1], one per "
                             f"knot, got {self.freqs!r}")
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "freqs", freqs)
        object.__setattr__(self, "xi", unit_level(self.xi, "xi"))

    @classmethod
    def from_dict(cls, d: dict, task: str | None = None) -> "IsotonicCalibrator":
        """Rebuilds the calibrator; format-2 dicts (knots as levels p in [0, 1]) convert to z."""
        if isinstance(d, dict) and "levels" in d and "knots" not in d:
            levels = np.asarray(float_list(d["levels"], "levels", low=0.0, high=1.0,
                                           increasing=True))
            freqs = np.asarray(float_list(d.get("freqs"), "freqs", levels.size, low=0.0, high=1.0))
            inner = (levels > 0) & (levels < 1)    # the p = 0 / 1 anchors are implicit now
            d = {k: v for k, v in d.items() if k != "levels"}
            d.update(knots=stats.norm.ppf(levels[inner]).tolist(), freqs=freqs[inner].tolist())
        return super().from_dict(d, task=task)

    @functools.cached_property
    def family(self) -> RecalibratedNormal:
        """The recalibrated predictive family, scaled by ``xi``'s interval width."""
        return RecalibratedNormal(tuple(self.knots), tuple(self.freqs), self.xi)

    @property
    def predictive_dof(self) -> RecalibratedNormal:
        """Family of the calibrated predictive mu + apply(mu, sigma) Z: ``family``."""
        return self.family

    def recalibrate_z(self, z) -> np.ndarray:
        """R(Phi(z)): calibrated CDF level for standardised residual(s) z, in [0, 1].

        Raises:
          ValueError: a NaN z (+-inf give 1 and 0).
        """
        return self.family.w_cdf(z)

    def quantile_z(self, q) -> np.ndarray:
        """R^-1: the smallest standardised residual z with R(Phi(z)) >= q, for q in [0, 1].

        Raises:
          ValueError: a q outside [0, 1] or NaN.
        """
        return self.family.w_ppf(q)

    def recalibrate_level(self, p) -> np.ndarray:
        """R(p): calibrated CDF level for predicted level(s) p in [0, 1] (ValueError outside)."""
        return self.recalibrate_z(stats.norm.ppf(levels(p, "p")))

    def inverse_level(self, q) -> np.ndarray:
        """R^-1(q) = inf{p : R(p) >= q}: the predicted level to ask for to get level q in
        [0, 1] (ValueError outside)."""
        return stats.norm.cdf(self.quantile_z(q))

    def cdf(self, mu, sigma, y) -> np.ndarray:
        """Calibrated CDF levels R(Phi((y - mu) / sigma)), [n] in [0, 1]."""
        mu, sigma, y = check_predictions(mu, sigma, y)
        return self.recalibrate_z((y - mu) / sigma)

    def quantile(self, mu, sigma, q: float) -> np.ndarray:
        """Recalibrated quantile at level q in (0, 1): mu + sigma R^-1(q), [n]."""
        mu, sigma = self._inputs(mu, sigma)
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"q: expected a level in (0, 1), got {q!r}")
        return mu + sigma * self.quantile_z(float(q))

    def interval(self, mu, sigma, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated central interval: quantiles at (1 -+ level) / 2, each [n]."""
        central_bounds(level)  # validates level
        return (self.quantile(mu, sigma, 0.5 - level / 2.0),
                self.quantile(mu, sigma, 0.5 + level / 2.0))

    def sigma_factor(self, level: float | None = None) -> float:
        """Width of the recalibrated central interval (default ``xi``) over that of N(0, 1)'s."""
        if level is None or level == self.xi:
            return self.family.scale
        return dataclasses.replace(self, xi=level).family.scale

    def apply(self, mu, sigma) -> np.ndarray:
        """Calibrated sigma [n]: sigma times the family's Gaussian-equivalent scale."""
        _, sigma = self._inputs(mu, sigma)
        return self.family.scale * sigma


def fit_isotonic(mu, sigma, y, *, xi: float = 0.95, task: str | None = None) -> IsotonicCalibrator:
    """Fits isotonic recalibration of the predicted CDF (Kuleshov et al. 2018).

    The training pairs are (p_i, P_hat(p_i)) with p_i = Phi(z_i), z_i = (y_i -
    mu_i) / sigma_i, and P_hat(p) = |{j : p_j <= p}| / (n + 1), fitted with
    sklearn's ``IsotonicRegression`` (bounded to [0, 1]) on the ranks of the
    distinct z_i, which order the pairs exactly as p_i does without rounding p
    near 0 or 1, and without sklearn merging z values closer than 1e-15 (a
    sigma ~1e16 times the residuals). The knots (in z) and fitted frequencies
    are stored; R(0) = 0 and R(1) = 1 are implicit anchors.

    Args:
      mu: validation predicted locations [n].
      sigma: validation predicted scales [n], > 0.
      y: validation labels [n].
      xi: coverage whose central interval fixes ``apply``'s scale.
      task: task name stored with the calibrator.

    Returns:
      IsotonicCalibrator.
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    central_bounds(xi, "xi")
    z = np.sort(standardized_residuals(mu, sigma, y))
    # Plotting positions i / (n + 1) (Kuleshov et al. and uncertainty-toolbox divide by n):
    # with R = 1 at the largest residual, the recalibrated density is 0 beyond it and
    # a test record there has an infinite NLL; over n + 1, each end keeps 1 / (n + 1)
    # of the probability as a Gaussian tail and the family has full support.
    p_hat = np.searchsorted(z, z, side="right") / (z.size + 1)
    # sklearn merges inputs closer than 1e-15 in absolute terms, which would collapse the
    # knots of residuals tiny against sigma (z ~ 1e-16); the fit depends only on the order
    # of z, so it runs on the ranks of the distinct z and the knots map back to z.
    distinct, rank = np.unique(z, return_inverse=True)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(rank.astype(np.float64), p_hat)
    knots = distinct[np.asarray(iso.X_thresholds_).astype(np.int64)]
    return IsotonicCalibrator(knots=knots.tolist(),
                              freqs=np.asarray(iso.y_thresholds_, np.float64).tolist(),
                              xi=float(xi), task=task)
