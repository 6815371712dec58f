"""Isotonic recalibration of the predicted CDF (Kuleshov et al. 2018): the
calibration baseline. Use it through ``hypuc_jax.calibration``
(``fit_calibrator("isotonic", ...)`` or ``calibration.fit_isotonic``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from scipy import special, stats
from sklearn.isotonic import IsotonicRegression

from hypuc_jax._calibrator import _Calibrator, float_list, unit_level
from hypuc_jax._predictions import central_z, check_predictions, standardized_residuals


def _segment_fraction(z, za, zb) -> np.ndarray:
    """(Phi(z) - Phi(za)) / (Phi(zb) - Phi(za)) for za <= z <= zb, without cancellation.

    Computed from log Phi (segments in the lower half) or log(1 - Phi)
    (upper half), so knots far in either tail, where Phi rounds to 0 or 1
    (|z| > 8) or underflows (|z| > 38), stay distinct.
    """
    upper = za >= 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # Lower half: e^(l_z - l_b) - e^(l_a - l_b) over 1 - e^(l_a - l_b), l = log Phi.
        la, lb, lz = stats.norm.logcdf(za), stats.norm.logcdf(zb), stats.norm.logcdf(z)
        ra = np.exp(la - lb)
        lower_t = (np.exp(lz - lb) - ra) / -np.expm1(la - lb)
        # Upper half: 1 - e^(s_z - s_a) over 1 - e^(s_b - s_a), s = log(1 - Phi).
        sa, sb, sz = stats.norm.logsf(za), stats.norm.logsf(zb), stats.norm.logsf(z)
        upper_t = np.expm1(sz - sa) / np.expm1(sb - sa)
        # Near 0, Phi is linear to O(z^2) while the logs above lose digits: below
        # _CENTRAL (|z| ~ 1e-5, where both errors are ~1e-11) the fraction is in z.
        central_t = (z - za) / (zb - za)
    t = np.where(_central(za, zb), central_t, np.where(upper, upper_t, lower_t))
    return np.clip(np.where(np.isfinite(t), t, 1.0), 0.0, 1.0)


_CENTRAL = 1e-5


def _central(za, zb) -> np.ndarray:
    """Segments inside [-_CENTRAL, _CENTRAL], where Phi is linear to ~1e-11."""
    return (np.abs(za) <= _CENTRAL) & (np.abs(zb) <= _CENTRAL)


def _levels(p, name: str) -> np.ndarray:
    """``p`` as float64, every value a level in [0, 1] (ValueError naming ``name``)."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~((p >= 0.0) & (p <= 1.0))                      # NaN too
    if bad.any():
        raise ValueError(f"{name}: expected levels in [0, 1], got {float(p[bad].flat[0])!r}")
    return p


def _segment_point(t, za, zb) -> np.ndarray:
    """The z in [za, zb] at fraction t of the segment's Gaussian probability (inverse of above)."""
    upper = za >= 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        la, lb = stats.norm.logcdf(za), stats.norm.logcdf(zb)
        ra = np.exp(la - lb)
        z_lower = special.ndtri_exp(lb + np.log(ra + t * (1.0 - ra)))
        sa, sb = stats.norm.logsf(za), stats.norm.logsf(zb)
        z_upper = -special.ndtri_exp(sa + np.log1p(t * np.expm1(sb - sa)))
        z_central = za + t * (zb - za)
    z = np.where(_central(za, zb), z_central, np.where(upper, z_upper, z_lower))
    return np.where(t >= 1.0, zb, np.where(t <= 0.0, za, np.clip(z, za, zb)))


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator(_Calibrator):
    """Isotonic recalibration of the predicted Gaussian CDF (Kuleshov et al. 2018).

    The fitted map R sends a predicted CDF level p = Phi(z), z = (y - mu) /
    sigma, to the fraction of validation samples whose level is <= p. The
    recalibrated predictive distribution has CDF R(Phi((y - mu) / sigma)) and
    quantiles mu + sigma * Phi^-1(R^-1(q)). Because R acts on the
    standardised residual, the recalibrated distribution is a location-scale
    family in (mu, sigma), generally not Gaussian. ``apply`` therefore
    returns a Gaussian-equivalent sigma: the scale whose Gaussian central
    ``xi`` interval has the same width as the recalibrated central ``xi``
    interval. Use ``interval`` / ``quantile`` for the exact recalibrated
    endpoints and ``cdf`` for calibrated levels. The pipeline's later stages
    score that Gaussian-equivalent sigma as a Gaussian (``predictive_dof`` is
    inf), not the recalibrated CDF itself.

    R is stored at knots of the standardised residual z (not of p = Phi(z),
    which rounds to 0 or 1 beyond |z| ~ 8 and would merge the knots of a
    badly over-confident model) and is linear in p between knots, with
    R(p=0) = 0 and R(p=1) = 1 (the same interpolation as
    uncertainty-toolbox's isotonic recalibration).

    Attributes:
      knots: standardised residuals z at the knots of R, strictly increasing, finite.
      freqs: R at those knots (observed frequencies), non-decreasing, in [0, 1].
      xi: coverage used for the Gaussian-equivalent sigma of ``apply``.
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

    def _extended(self) -> tuple[np.ndarray, np.ndarray]:
        """Knots and frequencies with the anchors R(-inf) = 0 and R(+inf) = 1."""
        return (np.concatenate([[-np.inf], self.knots, [np.inf]]),
                np.concatenate([[0.0], self.freqs, [1.0]]))

    def recalibrate_z(self, z) -> np.ndarray:
        """R(Phi(z)): calibrated CDF level for standardised residual(s) z, in [0, 1].

        Raises:
          ValueError: a NaN z (+-inf give 1 and 0).
        """
        z = np.asarray(z, dtype=np.float64)
        if np.isnan(z).any():
            raise ValueError("z: expected standardised residuals, got NaN")
        knots, freqs = self._extended()
        j = np.clip(np.searchsorted(knots, z, side="right"), 1, knots.size - 1)
        t = _segment_fraction(z, knots[j - 1], knots[j])
        return freqs[j - 1] + t * (freqs[j] - freqs[j - 1])

    def quantile_z(self, q) -> np.ndarray:
        """R^-1: the smallest standardised residual z with R(Phi(z)) >= q, for q in [0, 1].

        Raises:
          ValueError: a q outside [0, 1] or NaN.
        """
        q = _levels(q, "q")
        knots, freqs = self._extended()
        # R is non-decreasing and piecewise monotone: find the first segment reaching q.
        j = np.clip(np.searchsorted(freqs, q, side="left"), 1, freqs.size - 1)
        f0, f1 = freqs[j - 1], freqs[j]
        t = np.where(f1 > f0, (q - f0) / np.where(f1 > f0, f1 - f0, 1.0), 1.0)
        return _segment_point(np.clip(t, 0.0, 1.0), knots[j - 1], knots[j])

    def recalibrate_level(self, p) -> np.ndarray:
        """R(p): calibrated CDF level for predicted level(s) p in [0, 1] (ValueError outside)."""
        return self.recalibrate_z(stats.norm.ppf(_levels(p, "p")))

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
        central_z(level)  # validates level
        return (self.quantile(mu, sigma, 0.5 - level / 2.0),
                self.quantile(mu, sigma, 0.5 + level / 2.0))

    def sigma_factor(self, level: float | None = None) -> float:
        """Width of the recalibrated central interval over that of N(0, 1)'s."""
        level = self.xi if level is None else level
        z = central_z(level)
        lo, hi = self.quantile_z(np.array([0.5 - level / 2, 0.5 + level / 2]))
        width = hi - lo
        if not (np.isfinite(width) and width > 0):
            far = float(np.max(np.abs(self.knots)))
            if far > 1e150:                         # log Phi(z) overflows beyond ~1e154
                raise ValueError(f"sigma: the fitted residuals reach {far:.3g} predicted "
                                 "standard deviations, beyond what float64 resolves in "
                                 "Phi(z); expected scales within ~1e150 of the residuals")
            raise ValueError(f"level: the recalibrated {level} interval has width {width}; "
                             "refit on more validation samples or use a smaller level")
        return float(width / (2.0 * z))

    def apply(self, mu, sigma) -> np.ndarray:
        """Gaussian-equivalent calibrated sigma [n] (equal central-``xi`` width)."""
        _, sigma = self._inputs(mu, sigma)
        return self.sigma_factor() * sigma


def fit_isotonic(mu, sigma, y, *, xi: float = 0.95, task: str | None = None) -> IsotonicCalibrator:
    """Fits isotonic recalibration of the predicted CDF (Kuleshov et al. 2018).

    The training pairs are (p_i, P_hat(p_i)) with p_i = Phi(z_i), z_i = (y_i -
    mu_i) / sigma_i, and P_hat(p) = |{j : p_j <= p}| / n, fitted with
    sklearn's ``IsotonicRegression`` (bounded to [0, 1]) on the ranks of the
    distinct z_i, which order the pairs exactly as p_i does without rounding p
    near 0 or 1, and without sklearn merging z values closer than 1e-15 (a
    sigma ~1e16 times the residuals). The knots (in z) and fitted frequencies
    are stored; R(0) = 0 and R(1) = 1 are implicit anchors.

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
    z = np.sort(standardized_residuals(mu, sigma, y))
    p_hat = np.searchsorted(z, z, side="right") / z.size
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
