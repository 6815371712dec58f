"""Uncertainty scores of predictions mu + sigma Z (SPEC section 7).

Z is the unit-variance predictive family of ``hypuc_jax._predictions``:
standard normal at ``dof=inf`` (the default: N(mu, sigma^2)), or a Student-t
with ``dof`` degrees of freedom rescaled to unit variance, so ``sigma`` is
the predictive standard deviation; after isotonic calibration ``dof`` is the
recalibrated family (``hypuc_jax._recalibrated.RecalibratedNormal``; sigma
is then its Gaussian-equivalent scale, not a standard deviation), scored
exactly: its asymmetric intervals, log density and CRPS. Each function takes validated
vectors y [n], mu [n], sigma [n] (checked: 1-D, one length, finite, sigma
> 0, dof > 2 or inf; a ``ValueError`` names the argument) and returns a
python float. ``metrics.evaluate`` assembles these per region.

- NLL: mean of -log p(y); Gaussian: 0.5 log(2 pi sigma^2) + (y - mu)^2 / (2 sigma^2).
- CRPS, closed forms: Gaussian (Gneiting & Raftery 2007)
  sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)], z = (y - mu) / sigma;
  Student-t (Jordan, Krueger & Lerch 2019, scoringRules) with scale
  s = c sigma and u = (y - mu) / s:
  s [u (2 F(u) - 1) + 2 f(u) (dof + u^2) / (dof - 1)
     - 2 sqrt(dof) B(1/2, dof - 1/2) / ((dof - 1) B(1/2, dof / 2)^2)].
- coverage / width of the central p interval mu +- z_p sigma (z_p the
  family's two-sided quantile; [mu + lo_p sigma, mu + hi_p sigma] with the
  family's (1 -+ p) / 2 quantiles for the isotonic family).
- CRPS of the isotonic family: ``RecalibratedNormal.crps`` (closed form per
  segment of its CDF).
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

import math

import numpy as np
from scipy import special, stats

from hypuc_jax._predictions import (central_bounds, check_dof, check_predictions,
                                    concrete_vector, std_logpdf, std_ppf)
from hypuc_jax._recalibrated import is_family
from hypuc_jax._validation import check_positive, is_int, is_real, plain_scalar

CAL_LEVELS = np.linspace(0.0, 1.0, 100)
INF = math.inf


def _checked(y, mu, sigma, dof):
    """(y [n], mu [n], sigma [n], dof) validated, as float64 vectors and a float."""
    mu, sigma, y = check_predictions(mu, sigma, y)
    return y, mu, sigma, check_dof(dof)


def nll(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, dof: float = INF) -> float:
    """Mean negative log-likelihood of mu + sigma Z (Gaussian at dof inf).

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      mean over n of log(sigma) - log p_Z((y - mu) / sigma).

    Raises:
      ValueError: invalid inputs (see the module docstring).
    """
    y, mu, sigma, dof = _checked(y, mu, sigma, dof)
    # log(sigma) - log p(z): no sigma ** 2, which overflows beyond ~1e154 and
    # underflows below ~1e-162.
    return float(np.mean(np.log(sigma) - std_logpdf((y - mu) / sigma, dof)))


def crps(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, dof: float = INF) -> float:
    """Mean closed-form CRPS of mu + sigma Z at y.

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      mean CRPS over n, in label units.

    Raises:
      ValueError: invalid inputs (see the module docstring).
    """
    y, mu, sigma, dof = _checked(y, mu, sigma, dof)
    # Written as e (2 F(u) - 1) + s (...) with e = y - mu, so a tiny sigma
    # (u = e / s overflowing to +-inf) still gives |e|, the point-mass CRPS.
    e = y - mu
    if is_family(dof):                          # the isotonic family's own CRPS
        with np.errstate(over="ignore"):
            z = e / sigma
        finite = np.isfinite(z)                 # beyond: the point-mass limit |e|
        per = np.abs(e)
        per[finite] = sigma[finite] * dof.crps(z[finite])
        return float(np.mean(per))
    if math.isinf(dof):
        with np.errstate(over="ignore"):
            z = e / sigma
        per = e * (2 * stats.norm.cdf(z) - 1) + sigma * (2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
        return float(np.mean(per))
    s = sigma * math.sqrt((dof - 2.0) / dof)
    with np.errstate(over="ignore"):
        u = e / s
    const = (2 * math.sqrt(dof) * special.beta(0.5, dof - 0.5)
             / ((dof - 1) * special.beta(0.5, dof / 2) ** 2))
    finite = np.abs(u) < 1e150                 # beyond: u * u overflows; the limit is |e|
    uf = np.where(finite, u, 0.0)
    density_term = np.where(finite, 2 * stats.t.pdf(uf, dof) * (dof + uf * uf) / (dof - 1), 0.0)
    per = e * (2 * stats.t.cdf(u, dof) - 1) + s * (density_term - const)
    return float(np.mean(per))


def coverage_curve(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                   levels: np.ndarray = CAL_LEVELS, dof: float = INF) -> np.ndarray:
    """Observed coverage of the central interval at each nominal level.

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      levels: nominal coverages [L] in [0, 1] (default ``CAL_LEVELS``, L = 100).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      [L] fraction of y with |y - mu| <= z_p sigma, z_p the family's central
      quantile at each level p.

    Raises:
      ValueError: invalid inputs, or levels not 1-D within [0, 1].
    """
    y, mu, sigma, dof = _checked(y, mu, sigma, dof)
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or not np.all((levels >= 0) & (levels <= 1)):
        raise ValueError(f"levels: expected a 1-D array of coverages in [0, 1], got {levels!r}")
    if is_family(dof):                          # not symmetric: both ends
        lo, hi = std_ppf(0.5 - levels / 2.0, dof), std_ppf(0.5 + levels / 2.0, dof)
        z = np.sort((y - mu) / sigma)
        return (np.searchsorted(z, hi, side="right") - np.searchsorted(z, lo, side="left")) / z.size
    half = std_ppf(0.5 + levels / 2.0, dof)  # inf at level 1
    r = np.sort(np.abs(y - mu) / sigma)
    return np.searchsorted(r, half, side="right") / r.size


def coverage(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, level: float,
             dof: float = INF) -> float:
    """Fraction of y inside the central ``level`` interval mu +- z_level sigma.

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      level: nominal coverage in [0, 1].
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      observed coverage in [0, 1].

    Raises:
      ValueError: invalid inputs, or ``level`` outside [0, 1].
    """
    level = plain_scalar(level)
    if not (is_real(level) and 0.0 <= level <= 1.0):
        raise ValueError(f"level: expected a coverage in [0, 1], got {level!r}")
    return float(coverage_curve(y, mu, sigma, np.array([level]), dof)[0])


def width(sigma: np.ndarray, level: float, dof: float = INF) -> float:
    """Mean width (hi - lo) sigma of the central ``level`` interval (2 z_level sigma
    for a symmetric family).

    Args:
      sigma: predictive standard deviations [n], finite and > 0.
      level: nominal coverage in (0, 1).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      mean interval width over n, in label units.

    Raises:
      ValueError: sigma not 1-D, non-finite or <= 0, ``level`` outside (0, 1),
        or a bad dof.
    """
    sigma = concrete_vector(sigma, "sigma")
    check_positive(sigma, "sigma")
    lo, hi = central_bounds(level, "level", dof)
    return float(np.mean((hi - lo) * sigma))


def uce(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, dof: float = INF) -> float:
    """Mean |observed - nominal| central-interval coverage over ``CAL_LEVELS``.

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      UCE in [0, 1] (0: perfectly calibrated).

    Raises:
      ValueError: invalid inputs (see the module docstring).
    """
    return float(np.mean(np.abs(coverage_curve(y, mu, sigma, dof=dof) - CAL_LEVELS)))


def uce_noise_floor(n: int, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """UCE of a perfectly calibrated predictor on ``n`` samples: (mean, sd).

    Monte Carlo over ``draws`` samples of n standard-normal residuals scored
    against N(0, 1). The floor is the same for every continuous predictive
    (coverage of a correct central interval is Binomial(n, p) whatever the
    family). Finite samples alone give this much UCE, so a measured UCE near
    the floor cannot be lowered by any calibration.
    """
    if int(n) < 1 or int(draws) < 1:
        raise ValueError(f"uce_noise_floor: n and draws must be >= 1, got n={n}, draws={draws}")
    z = np.random.default_rng(seed).standard_normal((int(draws), int(n)))
    zeros, ones = np.zeros(int(n)), np.ones(int(n))
    u = np.array([uce(row, zeros, ones) for row in z])
    return float(u.mean()), float(u.std(ddof=1)) if draws > 1 else 0.0


def miscalibration_area(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                        dof: float = INF) -> float:
    """Area between observed and nominal central-interval coverage curves.

    Args:
      y, mu, sigma: labels, predicted locations and predictive standard
        deviations [n] (sigma > 0).
      dof: predictive family: inf (Gaussian) or a Student-t dof > 2.

    Returns:
      area (>= 0) between :func:`coverage_curve` at ``CAL_LEVELS`` and the diagonal.

    Raises:
      ValueError: invalid inputs (see the module docstring).
    """
    d = coverage_curve(y, mu, sigma, dof=dof) - CAL_LEVELS
    h = np.diff(CAL_LEVELS)
    dl, dr = d[:-1], d[1:]
    same_side = dl * dr >= 0
    denom = np.where(same_side, 1.0, np.abs(dl) + np.abs(dr))
    area = np.where(same_side, h * (np.abs(dl) + np.abs(dr)) / 2, h * (dl ** 2 + dr ** 2) / (2 * denom))
    return float(np.sum(area))


def _rms(v: np.ndarray) -> float:
    """sqrt(mean(v ** 2)) scaled by max |v|, so it neither overflows nor underflows."""
    m = float(np.max(np.abs(v)))
    return m * float(np.sqrt(np.mean((v / m) ** 2))) if m > 0 else 0.0


def _squares_unsafe(v: np.ndarray, limit: float = 1e100) -> bool:
    """True when squares of ``v`` may overflow or lose precision to underflow
    (max |v| outside [1 / limit, limit], or 0): scale before squaring. A
    product of two sums of squares needs ``limit=1e50``."""
    return not 1.0 / limit <= float(np.max(np.abs(v))) <= limit


def _tie_free_cuts(sorted_values: np.ndarray, n_bins: int) -> np.ndarray:
    """Cut positions of ``n_bins`` equal-count bins (``np.array_split`` sizes) of
    sorted values, each moved down to the start of its tie group so that
    equal values share a bin (the bins then do not depend on the input order);
    cuts that coincide merge their bins."""
    n = sorted_values.size
    cuts = np.cumsum([n // n_bins + (k < n % n_bins) for k in range(n_bins)])[:-1]
    cuts = np.searchsorted(sorted_values, sorted_values[np.minimum(cuts, n - 1)], side="left")
    return np.unique(cuts[(cuts > 0) & (cuts < n)])


def ence(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, n_bins: int = 10) -> float | None:
    """Expected normalised calibration error over equal-count bins of sigma.

    Args:
      y, mu, sigma: labels, predicted means and scales [n] (sigma > 0).
      n_bins: number of equal-count bins of sigma. Records with equal sigma
        always share a bin (a cut inside a tie group moves to its start), so
        the result does not depend on the order of the records; with ties
        there may be fewer, unequal bins (one for a constant sigma).

    Returns:
      mean over bins of |RMV - RMSE| / RMV; None when there are fewer
      samples than bins.
    """
    y, mu, sigma, _ = _checked(y, mu, sigma, INF)
    if not is_int(n_bins) or n_bins < 1:
        raise ValueError(f"n_bins: expected an int >= 1, got {n_bins!r}")
    if y.size < n_bins:
        return None
    order = np.argsort(sigma, kind="stable")
    terms = []
    for idx in np.split(order, _tie_free_cuts(sigma[order], n_bins)):
        rmv = _rms(sigma[idx])
        terms.append(abs(rmv - _rms(y[idx] - mu[idx])) / rmv)
    return float(np.mean(terms))
