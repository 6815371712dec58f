"""Uncertainty scores of Gaussian predictions N(mu, sigma^2) (SPEC section 7).

Each function takes validated numpy vectors y [n], mu [n], sigma [n] and
returns a python float. ``metrics.evaluate`` validates the inputs and
assembles these per region.

- NLL: mean of 0.5 log(2 pi sigma^2) + (y - mu)^2 / (2 sigma^2).
- CRPS (Gneiting & Raftery 2007, closed form for a Gaussian):
  sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)], z = (y - mu) / sigma, mean.
- coverage / width of the central p interval mu +- z_p sigma.
- UCE: mean over levels p in linspace(0, 1, 100) of |observed coverage of the
  central p interval - p| (the issue's definition; equal to
  uncertainty-toolbox's mean absolute calibration error with
  prop_type="interval").
- miscalibration area: area between the observed-vs-nominal coverage curve
  and the diagonal on the same levels, with crossing segments split at the
  crossing (uncertainty-toolbox's ``miscalibration_area``).
- ENCE (Levi et al. 2019): sort by sigma, split into equal-count bins,
  mean over bins of |RMV - RMSE| / RMV with RMV = sqrt(mean sigma^2).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

CAL_LEVELS = np.linspace(0.0, 1.0, 100)


def nll(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood."""
    return float(np.mean(0.5 * np.log(2 * np.pi * sigma ** 2) + (y - mu) ** 2 / (2 * sigma ** 2)))


def crps(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean closed-form CRPS of N(mu, sigma^2) at y."""
    z = (y - mu) / sigma
    per = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    return float(np.mean(per))


def coverage_curve(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                   levels: np.ndarray = CAL_LEVELS) -> np.ndarray:
    """Observed coverage of the central interval at each nominal level, [len(levels)]."""
    half = stats.norm.ppf(0.5 + np.asarray(levels) / 2.0)  # inf at level 1
    r = np.sort(np.abs(y - mu) / sigma)
    return np.searchsorted(r, half, side="right") / r.size


def coverage(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, level: float) -> float:
    """Fraction of y inside the central ``level`` interval."""
    return float(coverage_curve(y, mu, sigma, np.array([level]))[0])


def width(sigma: np.ndarray, level: float) -> float:
    """Mean width 2 z_level sigma of the central ``level`` interval."""
    return float(np.mean(2 * stats.norm.ppf(0.5 + level / 2.0) * sigma))


def uce(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean |observed - nominal| central-interval coverage over ``CAL_LEVELS``."""
    return float(np.mean(np.abs(coverage_curve(y, mu, sigma) - CAL_LEVELS)))


def uce_noise_floor(n: int, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """UCE of a perfectly calibrated Gaussian predictor on ``n`` samples: (mean, sd).

    Monte Carlo over ``draws`` samples of n standard-normal residuals scored
    against N(0, 1). Finite samples alone give this much UCE, so a measured
    UCE near the floor cannot be lowered by any calibration.
    """
    if int(n) < 1 or int(draws) < 1:
        raise ValueError(f"uce_noise_floor: n and draws must be >= 1, got n={n}, draws={draws}")
    z = np.random.default_rng(seed).standard_normal((int(draws), int(n)))
    zeros, ones = np.zeros(int(n)), np.ones(int(n))
    u = np.array([uce(row, zeros, ones) for row in z])
    return float(u.mean()), float(u.std(ddof=1)) if draws > 1 else 0.0


def miscalibration_area(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Area between observed and nominal central-interval coverage curves."""
    d = coverage_curve(y, mu, sigma) - CAL_LEVELS
    h = np.diff(CAL_LEVELS)
    dl, dr = d[:-1], d[1:]
    same_side = dl * dr >= 0
    denom = np.where(same_side, 1.0, np.abs(dl) + np.abs(dr))
    area = np.where(same_side, h * (np.abs(dl) + np.abs(dr)) / 2, h * (dl ** 2 + dr ** 2) / (2 * denom))
    return float(np.sum(area))


def ence(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, n_bins: int = 10) -> float | None:
    """Expected normalised calibration error over equal-count bins of sigma.

    Returns None when there are fewer samples than bins.
    """
    if y.size < n_bins:
        return None
    order = np.argsort(sigma, kind="stable")
    terms = []
    for idx in np.array_split(order, n_bins):
        rmv = np.sqrt(np.mean(sigma[idx] ** 2))
        rmse = np.sqrt(np.mean((y[idx] - mu[idx]) ** 2))
        terms.append(abs(rmv - rmse) / rmv)
    return float(np.mean(terms))
