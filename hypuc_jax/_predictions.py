"""Input checks and Gaussian helpers shared by the post-training stages.

Calibration, corrections, flagging and metrics all take the same inputs:
predictions of a model in label units (``mu [n]``, ``sigma [n]``) and, where
something is fitted or scored, labels ``y [n]``. This module validates them
once, in one place, and holds the few Gaussian formulas those stages share
(central-interval quantiles, threshold exceedance probabilities).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from hypuc_jax._validation import as_array, check_finite, check_positive, check_same_length


def as_vector(x: Any, name: str) -> np.ndarray:
    """Returns ``x`` as a finite float64 numpy vector.

    Args:
      x: array-like of shape [n] (numpy or jax).
      name: argument name used in error messages.

    Returns:
      np.ndarray [n], float64.

    Raises:
      ValueError: not 1-D, empty, or holding NaN/inf.
    """
    arr = np.asarray(as_array(x, name, ndim=1), dtype=np.float64)
    check_finite(arr, name)
    return arr


def check_predictions(mu: Any, sigma: Any = None, y: Any = None, *,
                      names: tuple[str, str, str] = ("mu", "sigma", "y"),
                      sigma_required: bool = True):
    """Validates predictions (and labels) and returns them as numpy vectors.

    Args:
      mu: predicted location [n].
      sigma: predicted scale [n] (> 0, finite); may be None when
        ``sigma_required`` is False (point models).
      y: labels [n] or None.
      names: argument names used in error messages, for (mu, sigma, y).
      sigma_required: whether ``sigma=None`` is an error.

    Returns:
      (mu [n], sigma [n] or None, y [n] or None) as float64 numpy arrays.

    Raises:
      ValueError: wrong shapes, length mismatch, non-finite values, or
        sigma <= 0; the message names the offending argument.
    """
    mu_name, sigma_name, y_name = names
    mu = as_vector(mu, mu_name)
    if sigma is None:
        if sigma_required:
            raise ValueError(f"{sigma_name}: expected an array of predicted scales, got None")
    else:
        sigma = np.asarray(as_array(sigma, sigma_name, ndim=1), dtype=np.float64)
        check_same_length(mu_name, mu, sigma_name, sigma)
        check_positive(sigma, sigma_name)
    if y is not None:
        y = as_vector(y, y_name)
        check_same_length(mu_name, mu, y_name, y)
    return mu, sigma, y


def central_z(level: float, name: str = "level") -> float:
    """Two-sided standard-normal quantile: P(|Z| <= z) = level.

    Args:
      level: nominal coverage in (0, 1).
      name: argument name used in the error message.

    Returns:
      z such that mu +- z * sigma is the central ``level`` interval.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"{name}: expected a coverage in (0, 1), got {level!r}")
    return float(stats.norm.ppf(0.5 + float(level) / 2.0))


class ThresholdSpec(NamedTuple):
    """A clinical threshold: the event is ``y > value`` ("above") or ``y < value`` ("below")."""
    name: str
    value: float
    direction: str


def as_threshold(t: Any, name: str = "thresholds") -> ThresholdSpec:
    """Normalises a threshold given as an object or a (name, value, direction) tuple.

    Accepts any object with ``name``, ``value`` and ``direction`` attributes
    (e.g. ``hypuc_jax.data.tasks.Threshold``) or a 3-tuple.

    Raises:
      ValueError: malformed threshold, non-finite value or unknown direction.
    """
    if all(hasattr(t, a) for a in ("name", "value", "direction")):
        tname, value, direction = t.name, t.value, t.direction
    elif isinstance(t, (tuple, list)) and len(t) == 3:
        tname, value, direction = t
    else:
        raise ValueError(f"{name}: expected (name, value, direction) or an object with those "
                         f"attributes, got {t!r}")
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: threshold {tname!r} needs a numeric value, got {value!r}") from e
    if not np.isfinite(value):
        raise ValueError(f"{name}: threshold {tname!r} needs a finite value, got {value!r}")
    if direction not in ("above", "below"):
        raise ValueError(f"{name}: threshold {tname!r} direction must be 'above' or 'below', "
                         f"got {direction!r}")
    return ThresholdSpec(str(tname), value, str(direction))


def as_thresholds(thresholds: Any, name: str = "thresholds") -> tuple[ThresholdSpec, ...]:
    """Normalises a sequence of thresholds; names must be unique.

    Raises:
      ValueError: not a sequence, empty, malformed entries or duplicate names.
    """
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of thresholds, got {thresholds!r}")
    specs = tuple(as_threshold(t, name) for t in thresholds)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: expected unique threshold names, got {names}")
    return specs


def event(y: np.ndarray, spec: ThresholdSpec) -> np.ndarray:
    """Binary outcome of a threshold: ``y > value`` (above) or ``y < value`` (below). [n] bool."""
    return y > spec.value if spec.direction == "above" else y < spec.value


def exceed_prob(mu: np.ndarray, sigma: np.ndarray, spec: ThresholdSpec) -> np.ndarray:
    """Probability of the threshold's event under N(mu, sigma^2). [n]

    "above": P(Y > t) = 1 - Phi((t - mu) / sigma); "below": P(Y < t) = Phi((t - mu) / sigma).
    """
    zt = (spec.value - mu) / sigma
    return stats.norm.sf(zt) if spec.direction == "above" else stats.norm.cdf(zt)


def check_threshold_in_range(spec: ThresholdSpec, y: np.ndarray, name: str = "thresholds") -> None:
    """Raises ValueError unless min(y) < value < max(y) (both outcomes possible)."""
    lo, hi = float(np.min(y)), float(np.max(y))
    if not lo < spec.value < hi:
        raise ValueError(f"{name}: threshold {spec.name!r} value {spec.value} is outside the "
                         f"label range ({lo}, {hi})")
