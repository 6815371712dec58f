"""Flagging unreliable predictions (SPEC section 6).

The predictive entropy of the calibrated predictive (Gaussian:
0.5 log(2 pi e sigma^2); a fitted Student-t tail adds a constant) ranks
predictions by uncertainty; for one calibration it is increasing in sigma.
Flagging the top-q fraction and scoring the rest gives a selective-risk
curve: MAE of the kept predictions as q grows.
The number flagged is floor(q n). Predictions with tied entropy are
interchangeable: where the cut falls inside a tie, the kept MAE is its
expectation over the order of the tied predictions, so the curve does not
depend on record order (a constant sigma gives a flat curve).
"""
from __future__ import annotations

import fractions
from typing import Any

import numpy as np

from hypuc_jax._predictions import (as_vector, check_dof, check_predictions, concrete_vector,
                                    std_entropy)
from hypuc_jax._validation import check_positive, is_real, plain_scalar
from hypuc_jax.regions import region_masks

DEFAULT_FRACTIONS = tuple(round(float(f), 12) for f in np.linspace(0.0, 0.5, 11))


def predictive_entropy(sigma, dof: float = float("inf")) -> np.ndarray:
    """Differential entropy of mu + sigma Z, [n], for sigma [n].

    Gaussian (dof inf): 0.5 log(2 pi e sigma^2); Student-t of ``dof``
    rescaled to standard deviation sigma: log(sigma) + H(Z).
    """
    sigma = concrete_vector(sigma, "sigma")
    check_positive(sigma, "sigma")
    return np.log(sigma) + std_entropy(check_dof(dof))


def flag_unreliable(sigma, reference_sigma, fraction: float = 0.1) -> np.ndarray:
    """Flags [n] (bool) for the predictions in the top ``fraction`` of uncertainty.

    The cut is the (1 - fraction) quantile of ``reference_sigma`` (the
    calibrated validation sigmas of the same run; entropy is increasing in
    sigma for one calibration); a prediction above it is flagged. When the
    cut falls on a group of equal reference values (a point model's
    hyperfine bins; a constant sigma), a value equal to the cut is flagged
    too if that brings the reference's flagged fraction nearer ``fraction``
    (or as near): a constant sigma flags nothing, five equal bins flag the
    top one (20%) rather than nothing.

    Args:
      sigma: calibrated scales of the predictions to flag [n], > 0.
      reference_sigma: calibrated validation scales [m], > 0.
      fraction: target flagged fraction in (0, 1).
    """
    sigma = concrete_vector(sigma, "sigma")
    ref = concrete_vector(reference_sigma, "reference_sigma", allow_empty=True)
    check_positive(sigma, "sigma")
    check_positive(ref, "reference_sigma")
    if ref.size == 0:
        raise ValueError("reference_sigma: expected at least one value")
    fraction = plain_scalar(fraction)
    if not is_real(fraction) or not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    cut = float(np.quantile(ref, 1.0 - fraction))
    # exact comparison of the two flagged counts' distances to fraction * m
    # (a float comparison breaks exact ties by rounding: 0.4 - 0.3 > 0.3 - 0.2)
    target = fractions.Fraction(str(fraction)) * ref.size
    above, at_or_above = int(np.sum(ref > cut)), int(np.sum(ref >= cut))
    inclusive = abs(at_or_above - target) <= abs(above - target)
    return sigma >= cut if inclusive else sigma > cut


def _key(q: float) -> float:
    """Fraction as a tidy dict key (0.15, not 0.15000000000000002)."""
    return float(round(float(q), 12))


def _fractions(fractions) -> np.ndarray:
    f = as_vector(fractions, "fractions")
    if np.any((f < 0) | (f >= 1)):
        raise ValueError(f"fractions: expected values in [0, 1), got {f}")
    return f


def _curve(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
           fractions: np.ndarray) -> dict[float, float | None]:
    order = np.argsort(-sigma, kind="stable")  # most uncertain first (entropy is monotone in sigma)
    s, err = sigma[order], np.abs(y - mu)[order]
    n = y.size
    tail = np.concatenate([np.cumsum(err[::-1])[::-1], [0.0]])     # tail[i] = sum(err[i:])
    out = {}
    for q in fractions:
        k = int(np.floor(q * n + 1e-9))                     # flagged
        if k >= n:
            out[_key(q)] = None
            continue
        # The tie group [a, b) around the cut: keep (b - k) of its members, on average.
        a = int(np.searchsorted(-s, -s[k], side="left"))
        b = int(np.searchsorted(-s, -s[k], side="right"))
        kept_sum = tail[b] + (b - k) / (b - a) * (tail[a] - tail[b])
        out[_key(q)] = float(kept_sum / (n - k))
    return out


def selective_risk(y, mu, sigma, fractions=DEFAULT_FRACTIONS) -> dict[float, float | None]:
    """MAE of the kept predictions after flagging the most uncertain fraction.

    Args:
      y: labels [n].
      mu: predicted locations [n].
      sigma: calibrated predicted scales [n], > 0.
      fractions: flagged fractions in [0, 1), default 0, 0.05, ..., 0.5.

    Returns:
      {fraction: MAE of the kept predictions} (None if nothing is kept).
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    return _curve(y, mu, sigma, _fractions(fractions))


def selective_risk_by_region(y, mu, sigma, regions, fractions=DEFAULT_FRACTIONS,
                             min_count: int = 10) -> dict[str, Any]:
    """Selective-risk curve within each named region (flagging inside the region).

    Args:
      y, mu, sigma: labels and calibrated predictions, each [n].
      regions: {name: (low, high)} half-open label ranges.
      fractions: flagged fractions in [0, 1).
      min_count: regions with fewer samples get None for every fraction.

    Returns:
      {region name: {"n": count, "curve": {fraction: MAE or None}}}.
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    f = _fractions(fractions)
    out = {}
    for name, m in region_masks(y, regions).items():
        n = int(m.sum())
        curve = (_curve(y[m], mu[m], sigma[m], f) if n >= min_count
                 else {_key(q): None for q in f})
        out[name] = {"n": n, "curve": curve}
    return out
