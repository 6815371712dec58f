"""The standard normal's probability, density and moments on segments [a, b], to
full precision far in its tails: the numerics under the isotonic family
(``hypuc_jax._recalibrated``).

log Phi(z) and log(1 - Phi(z)) are ~ -z^2 / 2 far out, so differences of them
lose digits in proportion to z^2. Here every such difference is written with
the inverse Mills ratio r(x) = phi(x) / (1 - Phi(x)) (from scipy's erfcx) as
-(z - a)(z + a) / 2 + log r(a) - log r(z), and every segment's quantities
about its end nearest 0; a segment of width h with h max(1, |z|) < 1e-5 uses
Phi's quadratic about its left end instead.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

_CENTRAL = 1e-5
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT2 = math.sqrt(2.0)


def tiny_segment(za, zb) -> np.ndarray:
    """Segments where Phi is a quadratic to ~1e-11 relative: inside [-_CENTRAL,
    _CENTRAL], or of width h with h max(1, |z|) < 1e-5 (where the logs of Phi lose
    the digits of its difference)."""
    with np.errstate(invalid="ignore", over="ignore"):
        width = (zb - za) * np.maximum(1.0, np.maximum(np.abs(za), np.abs(zb)))
    return (((np.abs(za) <= _CENTRAL) & (np.abs(zb) <= _CENTRAL))
            | (np.isfinite(width) & (width < 1e-5)))


def segment_fraction(z, za, zb) -> np.ndarray:
    """(Phi(z) - Phi(za)) / (Phi(zb) - Phi(za)) for za <= z <= zb, without cancellation.

    Computed from differences of log Phi (segments in the lower half) or of
    log(1 - Phi) (upper half), formed by :func:`dlogsf` without cancelling
    the z^2 / 2 they carry, so knots far in either tail, where Phi rounds to 0
    or 1 (|z| > 8) or underflows (|z| > 38), stay distinct to ~1e8 and beyond.
    """
    upper = za >= 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # Lower half: e^(l_z - l_b) - e^(l_a - l_b) over 1 - e^(l_a - l_b), l = log Phi.
        la_lb, lz_lb = dlogcdf(za, zb), dlogcdf(z, zb)
        ra = np.exp(la_lb)
        lower_t = (np.exp(lz_lb) - ra) / -np.expm1(la_lb)
        # Upper half: 1 - e^(s_z - s_a) over 1 - e^(s_b - s_a), s = log(1 - Phi).
        upper_t = np.expm1(dlogsf(za, z)) / np.expm1(dlogsf(za, zb))
        # A tiny segment: Phi(za + d) - Phi(za) = phi(za) d (1 - za d / 2 + O(d^2)).
        d, h = z - za, zb - za
        tiny_t = d * (1.0 - 0.5 * za * d) / (h * (1.0 - 0.5 * za * h))
    t = np.where(tiny_segment(za, zb), tiny_t, np.where(upper, upper_t, lower_t))
    return np.clip(np.where(np.isfinite(t), t, 1.0), 0.0, 1.0)


def segment_point(t, za, zb) -> np.ndarray:
    """The z in [za, zb] at fraction t of the segment's Gaussian probability (inverse of above)."""
    upper = za >= 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lb = stats.norm.logcdf(zb)
        ra = np.exp(dlogcdf(za, zb))
        z_lower = special.ndtri_exp(lb + np.log(ra + t * (1.0 - ra)))
        sa = stats.norm.logsf(za)
        z_upper = -special.ndtri_exp(sa + np.log1p(t * np.expm1(dlogsf(za, zb))))
        h = zb - za                          # the tiny segments' quadratic, inverted
        d0 = t * h
        z_tiny = za + d0 * (1.0 - 0.5 * za * h) / (1.0 - 0.5 * za * d0)
    z = np.where(tiny_segment(za, zb), z_tiny, np.where(upper, z_upper, z_lower))
    return np.where(t >= 1.0, zb, np.where(t <= 0.0, za, np.clip(z, za, zb)))


def dlogsf(a, z) -> np.ndarray:
    """log(1 - Phi(z)) - log(1 - Phi(a)) for a >= 0 (elsewhere the plain difference):
    -(z - a)(z + a) / 2 + log r(a) - log r(z), no z^2 / 2 formed and cancelled."""
    a, z = np.asarray(a, dtype=np.float64), np.asarray(z, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mills = -0.5 * (z - a) * (z + a) + log_mills_inv(a) - log_mills_inv(z)
        plain = stats.norm.logsf(z) - stats.norm.logsf(a)
    return np.where((a >= 0) & (z >= 0) & np.isfinite(a), np.where(np.isinf(z), -np.inf, mills),
                    plain)


def dlogcdf(a, b) -> np.ndarray:
    """log Phi(a) - log Phi(b), the mirror image of :func:`dlogsf`."""
    return dlogsf(-np.asarray(b, dtype=np.float64), -np.asarray(a, dtype=np.float64))


def levels(p, name: str) -> np.ndarray:
    """``p`` as float64, every value a level in [0, 1] (ValueError naming ``name``)."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~((p >= 0.0) & (p <= 1.0))                      # NaN too
    if bad.any():
        raise ValueError(f"{name}: expected levels in [0, 1], got {float(p[bad].flat[0])!r}")
    return p


def segment_terms(a, b, e):
    """For finite segments [a, b] with anchor e (a if a >= 0, b if b <= 0, else 0):
    (log phi(e) - log dPhi (a tiny segment: from its midpoint), phi(a) / dPhi, phi(b) / dPhi, dPhi2 / (2 sqrt(pi) dPhi^2),
    E[(W - e)(W + e)] under the normal truncated to [a, b]), dPhi = Phi(b) - Phi(a),
    dPhi2 = Phi(sqrt2 b) - Phi(sqrt2 a). A segment off 0 is mirrored to a' = |e| >= 0
    and written with rho = (1 - Phi(b')) / (1 - Phi(a')) and r = r(a'):
    dPhi = (1 - Phi(a')) (1 - rho), phi(a') / dPhi = r / (1 - rho), and
    E[W^2] - a'^2 = 1 + a' (r - a') + a' r rho / (1 - rho) - b' phi(b') / dPhi."""
    lo = b <= 0
    a1, b1 = np.where(lo, -b, a), np.where(lo, -a, b)    # upper-oriented, a1 >= 0 if off 0
    off = (a >= 0) | lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        # off 0 (a1 >= 0): everything from Mills ratios
        log_r = log_mills_inv(a1)
        r = np.exp(log_r)
        log_rho = dlogsf(a1, b1)
        one_m_rho = -np.expm1(log_rho)
        rho_frac = np.exp(log_rho) / one_m_rho
        A1 = r / one_m_rho
        B1 = r * np.exp(-0.5 * (b1 - a1) * (b1 + a1)) / one_m_rho
        r2 = np.exp(log_mills_inv(SQRT2 * a1))
        rho2 = -np.expm1(dlogsf(SQRT2 * a1, SQRT2 * b1))
        cross_off = r * r * rho2 / (SQRT2 * r2 * one_m_rho ** 2)
        q2_off = 1.0 + x_r_minus_x(a1) + a1 * r * rho_frac - b1 * B1
        c_off = log_r - np.log(one_m_rho)
        # holding 0 (a < 0 < b): plain differences, no tail far from its end
        dphi = stats.norm.cdf(b) - stats.norm.cdf(a)
        A0, B0 = stats.norm.pdf(a) / dphi, stats.norm.pdf(b) / dphi
        cross0 = ((stats.norm.cdf(SQRT2 * b) - stats.norm.cdf(SQRT2 * a))
                  / (2.0 * math.sqrt(math.pi) * dphi ** 2))
        q2_0 = 1.0 + a * A0 - b * B0
        c0 = -HALF_LOG_2PI - np.log(dphi)
        # a tiny segment: dPhi = h phi(mid) (1 + O((h mid)^2)), the Mills difference
        # would keep only the digits of log r(b) - log r(a) ~ h
        h, mid = b - a, 0.5 * (a + b)
        c_tiny = -np.log(h) + 0.5 * (mid - e) * (mid + e)
    A = np.where(off, np.where(lo, B1, A1), A0)            # mirrored: a <-> b swap ends
    B = np.where(off, np.where(lo, A1, B1), B0)
    c = np.where(tiny_segment(a, b), c_tiny, np.where(off, c_off, c0))
    return c, A, B, np.where(off, cross_off, cross0), np.where(off, q2_off, q2_0)


def log_mills_inv(x) -> np.ndarray:
    """log r(x), r = phi(x) / (1 - Phi(x)) (the inverse Mills ratio), for any x:
    from erfcx where 1 - Phi underflows (r ~ x), directly where it is near 1."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        via_erfcx = 0.5 * math.log(2.0 / math.pi) - np.log(special.erfcx(x / SQRT2))
        direct = stats.norm.logpdf(x) - stats.norm.logsf(x)
    return np.where(x > -20.0, via_erfcx, direct)


def x_r_minus_x(x) -> np.ndarray:
    """x (r(x) - x), -> 1 as x -> inf: a series beyond 1e4, where r - x cancels."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        direct = x * (np.exp(log_mills_inv(x)) - x)
        u = 1.0 / np.where(x > 1e4, x * x, 1.0)
        series = 1.0 - 2.0 * u + 10.0 * u * u - 74.0 * u ** 3
    return np.where(x > 1e4, series, direct)


def phi_drop(log_ga, a, b) -> np.ndarray:
    """g(a) - g(b) for g = slope phi on one segment, log_ga = log g(a): from the larger
    density times expm1 of the log ratio (no cancellation, no overflow)."""
    e = -0.5 * (b - a) * (b + a)                          # log g(b) - log g(a)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        from_a = -np.exp(log_ga) * np.expm1(np.minimum(e, 0.0))
        from_b = np.exp(log_ga + e) * np.expm1(np.minimum(-e, 0.0))
    return np.where(e <= 0, from_a, from_b)
