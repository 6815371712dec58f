"""The predictive family mu + sigma Z of the post-training stages.

The predictive family. ``sigma`` is always a standard deviation. A
predictive is ``mu + sigma * Z`` with Z of unit variance: standard normal
when ``dof`` is inf (the network's output and the SPEC's calibrated
Gaussian), or a Student-t with ``dof > 2`` degrees of freedom rescaled to
unit variance, ``Z = c T``, ``c = sqrt((dof - 2) / dof)``, when hyperfine
calibration fitted a heavier tail (``calibration.fit_hyperfine(tail="auto")``),
or, after isotonic calibration, the recalibrated family
``hypuc_jax._recalibrated.RecalibratedNormal`` (scaled to the Gaussian of
equal central ``xi`` width; not symmetric: intervals take both ends from ``central_bounds``). ``dof`` names
the family everywhere: a number, or that family object. The ``std_*``
functions are the law of Z.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special, stats

from hypuc_jax._recalibrated import RecalibratedNormal, is_family
from hypuc_jax._validation import is_real, plain_scalar


def check_dof(dof: Any, name: str = "dof") -> float | RecalibratedNormal:
    """The predictive family: ``inf`` (or None) for the Gaussian, a finite
    number > 2 (a Student-t with finite variance), or an isotonic
    ``RecalibratedNormal``, returned as is (its ``to_dict`` form is read by
    :func:`dof_from_json`).

    Raises:
      ValueError: not a number or family, NaN, or <= 2.
    """
    if dof is None:
        return math.inf
    if is_family(dof):
        return dof
    dof = plain_scalar(dof)
    if isinstance(dof, bool) or not isinstance(dof, (int, float, np.integer, np.floating)):
        got = repr(dof)
        raise ValueError(f"{name}: expected a number > 2 or inf, got "
                         f"{got if len(got) <= 80 else type(dof).__name__ + ' ' + got[:60] + '...'}")
    dof = float(dof)
    if not dof > 2.0:
        raise ValueError(f"{name}: expected a number > 2 (finite variance) or inf, got {dof!r}")
    return dof


def dof_to_json(dof: float | RecalibratedNormal) -> float | None | dict:
    """JSON form of a family: None for the Gaussian (JSON has no inf), the dof of a
    Student-t, the knots and frequencies of an isotonic family."""
    if is_family(dof):
        return dof.to_dict()
    return None if math.isinf(dof) else float(dof)


def dof_from_json(value: Any, name: str = "dof") -> float | RecalibratedNormal:
    """Inverse of :func:`dof_to_json` (ValueError naming ``name``)."""
    if isinstance(value, dict):
        return RecalibratedNormal.from_dict(value, name)
    return check_dof(value, name)


def centred(dof: float | RecalibratedNormal) -> float | RecalibratedNormal:
    """The family moved to mean 0 (the symmetric ones already are): the predictive
    of a bias-corrected value (the boosted corrections) with the calibrated sigma."""
    return dof.centred() if is_family(dof) else dof


def family_label(dof: float | RecalibratedNormal) -> str:
    """Human name of a family: "Gaussian", "Student-t dof 30", "isotonic recalibration"."""
    if is_family(dof):
        return ("isotonic recalibration" + ("" if dof.xi == 0.95 else f" (xi {dof.xi:g})")
                + (", centred" if dof.loc else ""))
    return "Gaussian" if math.isinf(dof) else f"Student-t dof {dof:g}"


def _t_scale(dof: float) -> float:
    """c = sqrt((dof - 2) / dof): the t scale that has unit variance."""
    return math.sqrt((dof - 2.0) / dof)


def std_cdf(z, dof: float = math.inf) -> np.ndarray:
    """P(Z <= z) for the unit-variance family member with ``dof``."""
    dof = check_dof(dof)
    if is_family(dof):
        return dof.cdf(z)
    if math.isinf(dof):
        return stats.norm.cdf(z)
    return stats.t.cdf(np.asarray(z) / _t_scale(dof), dof)


def std_ppf(q, dof: float = math.inf) -> np.ndarray:
    """Quantile of Z at level(s) q in [0, 1] (+-inf at 0 and 1)."""
    dof = check_dof(dof)
    if is_family(dof):
        return dof.ppf(q)
    if math.isinf(dof):
        return stats.norm.ppf(q)
    return _t_scale(dof) * stats.t.ppf(q, dof)


def std_logsf_logcdf(z, dof: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(log P(Z > z), log P(Z <= z)), accurate far in both tails.

    scipy's t gives the log of a tail probability that underflows (-inf once
    P < ~1e-308: |u| beyond ~1e6 at dof 50, ~1e103 at dof 3); below log P =
    ``_LOG_TINY`` the tail comes from the incomplete beta function instead
    (:func:`_t_log_tail`: to ~1e-14 relative for dof up to ~1e5, ~1e-6 beyond).
    """
    dof = check_dof(dof)
    if is_family(dof):
        return dof.logsf_logcdf(z)
    if math.isinf(dof):
        return stats.norm.logsf(z), stats.norm.logcdf(z)
    z = np.asarray(z, dtype=np.float64)
    c = _t_scale(dof)
    with np.errstate(over="ignore"):
        u = z / c
    logsf, logcdf = np.asarray(stats.t.logsf(u, dof)), np.asarray(stats.t.logcdf(u, dof))
    far = ((z > 0) & ~(logsf > _LOG_TINY)) | ((z < 0) & ~(logcdf > _LOG_TINY))
    if np.any(far):
        tail = np.full(z.shape, np.nan)
        tail[far] = _t_log_tail(_log_abs_u(z[far], c), dof)
        use = far & np.isfinite(tail)
        logsf = np.where(use & (z > 0), tail, logsf)
        logcdf = np.where(use & (z < 0), tail, logcdf)
    return logsf, logcdf


_LOG_TINY = -700.0   # log P below which the t tail is computed by _t_log_tail
_FAR = 1e100         # |u| beyond which the t density is continued analytically


def _log_abs_u(z: np.ndarray, c: float) -> np.ndarray:
    """log|z / c| without forming z / c (which overflows for |z| near float max)."""
    with np.errstate(divide="ignore"):
        return np.log(np.abs(z)) - math.log(c)


def _t_log_tail(log_u: np.ndarray, dof: float) -> np.ndarray:
    """log P(T > u) of a standard Student-t with ``dof``, u = exp(log_u) > 0, from
    P = I_x(dof/2, 1/2) / 2, x = dof / (dof + u^2), and I_x(a, b) = x^a (1 - x)^b
    2F1(a + b, 1; a + 1; x) / (a B(a, b)); u^2 is never formed. Where scipy's 2F1
    fails (x near 1: u^2 << dof, dof beyond ~5e5), the leading term of the tail's
    asymptotic series instead, log f(u) + log((dof + u^2) / ((dof - 1) u)) with f
    the density, to ~1e-6 relative there (u > ~38)."""
    a = dof / 2.0
    with np.errstate(all="ignore"):
        r = dof * np.exp(-2.0 * log_u)                         # dof / u^2
        log_x = math.log(dof) - 2.0 * log_u - np.log1p(r)
        h = special.hyp2f1(a + 0.5, 1.0, a + 1.0, np.exp(log_x))
        out = (math.log(0.5) + a * log_x - 0.5 * np.log1p(r) - math.log(a)
               - special.betaln(a, 0.5) + np.log(h))
        if np.all(np.isfinite(out)):
            return out
        u = np.exp(log_u)                                      # moderate where 2F1 fails
        mills = (stats.t.logpdf(u, dof) + np.log(dof + u * u) - math.log(dof - 1.0) - log_u)
        return np.where(np.isfinite(out), out, mills)


def std_logpdf(z, dof: float = math.inf) -> np.ndarray:
    """log density of Z at z (scipy's t.logpdf, accurate up to dof ~ 1e17).

    scipy squares u = z / c, which overflows beyond |u| ~ 1e154 although the
    log density (~ -(dof + 1) log|u|) is finite there: beyond ``_FAR`` it is
    continued from u = _FAR by -(dof + 1) log(|u| / _FAR), exact to
    O(dof / _FAR^2).
    """
    dof = check_dof(dof)
    z = np.asarray(z, dtype=np.float64)
    if is_family(dof):
        return dof.logpdf(z)
    if math.isinf(dof):
        return -0.5 * math.log(2 * math.pi) - 0.5 * z * z
    c = _t_scale(dof)
    log_u = _log_abs_u(z, c)
    far = log_u > math.log(_FAR)
    with np.errstate(over="ignore"):
        u = np.where(far, _FAR, np.abs(z) / c)
    out = stats.t.logpdf(u, dof)
    out = np.where(far, out - (dof + 1.0) * (log_u - math.log(_FAR)), out)
    return out - math.log(c)


def std_entropy(dof: float = math.inf) -> float:
    """Differential entropy of Z; the entropy of mu + sigma Z adds log(sigma)."""
    dof = check_dof(dof)
    if is_family(dof):
        return dof.entropy
    if math.isinf(dof):
        return 0.5 * math.log(2 * math.pi * math.e)
    return float(stats.t.entropy(dof)) + math.log(_t_scale(dof))


def central_z(level: float, name: str = "level", dof: float = math.inf) -> float:
    """Two-sided quantile of a symmetric unit-variance family: P(|Z| <= z) = level.

    Args:
      level: nominal coverage in (0, 1).
      name: argument name used in the error message.
      dof: family (inf: Gaussian; a number > 2: Student-t). An isotonic family
        is not symmetric: use :func:`central_bounds`.

    Returns:
      z such that mu +- z * sigma is the central ``level`` interval.
    """
    level = _coverage(level, name)
    if is_family(check_dof(dof)):
        raise ValueError("dof: an isotonic family has no symmetric interval; expected a "
                         "Gaussian or Student-t (use central_bounds)")
    return float(std_ppf(0.5 + level / 2.0, dof))


def central_bounds(level: float, name: str = "level",
                   dof: float | RecalibratedNormal = math.inf) -> tuple[float, float]:
    """Ends (lo, hi) of Z's central interval: P(Z < lo) = P(Z > hi) = (1 - level) / 2.

    ``mu + lo * sigma, mu + hi * sigma`` is the central ``level`` interval of
    every family (lo = -hi for the symmetric ones).
    """
    level = _coverage(level, name)
    dof = check_dof(dof)
    if is_family(dof):
        lo, hi = dof.ppf(np.array([0.5 - level / 2.0, 0.5 + level / 2.0]))
        return float(lo), float(hi)
    z = central_z(level, name, dof)
    return -z, z


def _coverage(level, name: str) -> float:
    level = plain_scalar(level)                  # numpy / jax scalars
    if not is_real(level) or not 0.0 < level < 1.0:
        raise ValueError(f"{name}: expected a coverage in (0, 1), got {level!r}")
    if not 0.5 < 0.5 + level / 2.0 < 1.0:      # the central quantile would be 0 or inf
        raise ValueError(f"{name}: expected a coverage whose central quantile float64 "
                         f"resolves (about 1e-15 to 1 - 1e-16), got {level!r}")
    return float(level)
