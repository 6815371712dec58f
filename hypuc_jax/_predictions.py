"""Input checks and predictive-family helpers shared by the post-training stages.

Calibration, corrections, flagging and metrics all take the same inputs:
predictions of a model in label units (``mu [n]``, ``sigma [n]``) and, where
something is fitted or scored, labels ``y [n]``. This module validates them
once, in one place, and holds the few distribution formulas those stages
share (central-interval quantiles, threshold exceedance probabilities).

The predictive family mu + sigma Z (``dof``: a Student-t's degrees of
freedom, inf for the Gaussian, or an isotonic ``RecalibratedNormal``) lives
in ``hypuc_jax._family``; its functions are re-exported here.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from hypuc_jax._family import (  # noqa: F401  (re-exported: the stages import them from here)
    central_bounds, central_z, centred, check_dof, dof_from_json, dof_to_json, family_label,
    std_cdf, std_entropy, std_logpdf, std_logsf_logcdf, std_ppf)
from hypuc_jax._recalibrated import RecalibratedNormal, is_family  # noqa: F401  (re-exported)
from hypuc_jax._validation import (as_array, check_concrete, check_finite, check_positive,
                                   check_same_length)


def as_vector(x: Any, name: str) -> np.ndarray:
    """Returns ``x`` as a finite float64 numpy vector.

    Args:
      x: array-like of shape [n] (numpy or jax).
      name: argument name used in error messages.

    Returns:
      np.ndarray [n], float64.

    Raises:
      ValueError: not 1-D, empty, holding NaN/inf, or traced (inside
        ``jax.jit``: the numpy-based stages take concrete arrays).
    """
    arr = concrete_vector(x, name)
    check_finite(arr, name)
    return arr


def concrete_vector(x: Any, name: str, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a float64 numpy vector; a named error for a tracer (no value check)."""
    check_concrete(x, name)
    return np.asarray(as_array(x, name, ndim=1, allow_empty=allow_empty), dtype=np.float64)


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
      ValueError: wrong shapes, length mismatch, non-finite values, a boolean
        sigma, or sigma <= 0; the message names the offending argument.
    """
    mu_name, sigma_name, y_name = names
    if sigma is not None and (sigma.dtype if hasattr(sigma, "dtype")
                              else np.asarray(sigma).dtype) == np.bool_:   # True read as 1.0
        raise ValueError(f"{sigma_name}: expected predicted scales, got booleans")
    mu = as_vector(mu, mu_name)
    if sigma is None:
        if sigma_required:
            raise ValueError(f"{sigma_name}: expected an array of predicted scales, got None")
    else:
        sigma = concrete_vector(sigma, sigma_name)
        check_same_length(mu_name, mu, sigma_name, sigma)
        check_positive(sigma, sigma_name)
    if y is not None:
        y = as_vector(y, y_name)
        check_same_length(mu_name, mu, y_name, y)
    return mu, sigma, y


def standardized_residuals(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray,
                           sigma_name: str = "sigma") -> np.ndarray:
    """``(y - mu) / sigma`` [n] of checked float64 vectors; a named error where
    it overflows (a scale far below its residual), not inf downstream."""
    with np.errstate(over="ignore"):
        z = (y - mu) / sigma
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{sigma_name}: (y - mu) / {sigma_name} overflows float64; expected "
                         "scales within float range of the residuals")
    return z


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
    """Binary outcome of a threshold: ``y > value`` (above) or ``y < value`` (below). [n] bool.

    Compared in float32, the labels' precision everywhere in hypuc_jax (the
    data layer reads them as float32): a label written as the threshold
    (4.3, stored as 4.3000002) is on it, not above it, whatever its rounding.
    """
    y, value = as_float32_labels(y, spec.value)
    return y > value if spec.direction == "above" else y < value


def as_float32_labels(y, *bounds):
    """``y`` and ``bounds`` rounded to float32 (bounds beyond its range become
    +-inf, on the same side of every label), for comparing labels with
    thresholds or region bounds given as decimals."""
    with np.errstate(over="ignore"):
        return (np.asarray(y, np.float32), *(np.float32(b) for b in bounds))


def exceed_prob(mu: np.ndarray, sigma: np.ndarray, spec: ThresholdSpec,
                dof: float = math.inf) -> np.ndarray:
    """Probability of the threshold's event under mu + sigma Z (Gaussian at dof inf). [n]

    "above": P(Y > t) = F((mu - t) / sigma) for a symmetric Z, 1 - F((t - mu)
    / sigma) (from its log) for an isotonic family; "below": P(Y < t) = F((t -
    mu) / sigma).
    """
    zt = (spec.value - mu) / sigma
    dof = check_dof(dof)
    if spec.direction == "above" and is_family(dof):
        return np.exp(dof.logsf_logcdf(zt)[0])
    return std_cdf(-zt if spec.direction == "above" else zt, dof)


def has_both_outcomes(y: np.ndarray, spec: ThresholdSpec) -> bool:
    """Whether labels ``y`` [n] hold both a positive and a negative of the event."""
    pos = event(np.asarray(y), spec)
    return bool(pos.any() and not pos.all())


def check_both_outcomes(spec: ThresholdSpec, y: np.ndarray, name: str = "thresholds") -> None:
    """Raises ValueError unless labels ``y`` [n] hold both outcomes of the event."""
    if not has_both_outcomes(y, spec):
        side = ">" if spec.direction == "above" else "<"
        every = "every" if event(np.asarray(y), spec).all() else "no"
        raise ValueError(f"{name}: threshold {spec.name!r} (y {side} {spec.value}) needs both "
                         f"outcomes among the labels, but {every} label is positive (labels in "
                         f"[{float(np.min(y))}, {float(np.max(y))}])")
