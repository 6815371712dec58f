"""Jitted cores and option checks of the KDE weightings in ``hypuc_jax.weights``.

``_hypuc_from_density`` (w = c max(rho, rho_min)^-lam, normalised to mean 1,
optionally capped), ``_dense_from_density`` / ``_dense_raw`` (DenseWeight),
``_checked`` (densities refused when they over- or underflow) and the scalar
option checks, shared by the direct functions (``kde_weights``,
``dense_weights``) and the fitted ``LabelWeighting``.
"""
from __future__ import annotations

import math
from functools import partial

import chex
import jax
import jax.numpy as jnp

from hypuc_jax._config_types import MAX_LAM
from hypuc_jax._validation import check_positive, is_concrete

_CAP_STEP_TOL = 1e-7  # Newton for the cap stops when the scale moves less than this


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
#: How far from 1 the mean of capped weights may be (float32 gives <= 1e-6).
CAP_MEAN_TOL = 1e-3


def check_cap_reached(w, lam, max_weight) -> None:
    """Refuses concrete capped weights [n] that could not keep mean 1: with a large
    lam, weights below ~1e-38 of the largest underflow to 0 in float32, and the
    rest capped at ``max_weight`` cannot make up the mean."""
    if max_weight is None or not is_concrete(w) or not bool(jnp.any(jnp.isnan(w))):
        return
    raise ValueError(f"max_weight: {max_weight:g} cannot keep the mean weight 1 at lam={lam:g}: "
                     f"rho^-lam spans more than the {w.dtype} range, so the smallest weights "
                     "underflow to 0 and the capped rest cannot make up the mean; use a smaller "
                     "lam, a larger max_weight or no cap")


def _check_lam(lam) -> None:
    check_positive(lam, "lam", strict=False, scalar=True)
    if is_concrete(lam) and float(lam) > MAX_LAM:
        raise ValueError(f"lam: expected 0 <= lam <= {MAX_LAM:g} (beyond, float32 weights lose "
                         f"their mean of 1), got {lam!r}")


def _check_max_weight(max_weight) -> None:
    if max_weight is None:
        return
    check_positive(max_weight, "max_weight", scalar=True)
    if is_concrete(max_weight) and float(max_weight) < 1.0:
        raise ValueError(f"max_weight: expected None or a value >= 1 (weights have mean 1, "
                         f"so a cap below 1 cannot hold), got {max_weight!r}")


def _check_floor(floor) -> None:
    check_positive(floor, "floor", scalar=True)
    if is_concrete(floor) and float(floor) > 1.0:
        raise ValueError(f"floor: expected a value in (0, 1] relative to the maximum density, "
                         f"got {floor!r}")


# --------------------------------------------------------------------------- #
# HypUC weights
# --------------------------------------------------------------------------- #
@partial(jax.jit, static_argnames=("capped",))
def _hypuc_from_density(rho: jax.Array, lam, floor, cap, capped: bool):
    """w = c * max(rho, rho_min)^-lam, capped.

    Returns ``(w [n], params)`` with the constants a new label's weight needs:
    ``rho_min``, ``scale`` (c), ``log_scale`` (log c) and ``fine``.

    The raw weights exp(a_i), a_i = -lam log max(rho_i, rho_min), are
    normalised as c = 1 / mean(exp(a)) while exp(a), its sum and the gradient
    of 1 / mean stay normal float32 numbers (``fine``: the usual case,
    computed exactly as before).
    Otherwise (tiny or huge densities, e.g. labels in units of 1e9 with a
    large lam) they are normalised in logs, w = exp(a + log c) with log c =
    log n - logsumexp(a), which never overflows.

    With a cap M >= 1 the scale s of the mean-1 weights u solves
    mean(min(s u, M)) = 1 (the fixed point of "cap, renormalise, repeat").
    g(s) is concave and piecewise linear, so Newton's method from s = 1
    (where g <= 1) increases monotonically and ends in a few steps. The loop
    only finds which weights are capped; the scale is then the closed form for
    that set, s = (1 - M mean(capped)) / mean(u [not capped]), so the weights
    stay differentiable in lam, the labels and M (no gradient through a
    while_loop).
    """
    chex.assert_rank(rho, 1)
    n = rho.shape[0]
    rho_min = floor * jnp.max(rho)
    a = -lam * jnp.log(jnp.maximum(rho, rho_min))                     # log raw weights
    # The direct form while exp(a), its sum and the square in d(1/mean)/d(mean) stay
    # normal float32 numbers (|log| < 40; potassium at lam <= 1 stays well inside).
    fine = (jnp.max(a) + jnp.log(n) < 40.0) & (jnp.min(a) > -40.0)

    def direct(a):
        w0 = jnp.exp(a)
        c = 1.0 / jnp.mean(w0)
        return c * w0, c, jnp.log(c)

    def in_logs(a):
        log_c = jnp.log(n) - jax.scipy.special.logsumexp(a)
        return jnp.exp(a + log_c), jnp.exp(log_c), log_c

    u, c, log_c = jax.lax.cond(fine, direct, in_logs, a)               # u: mean 1
    if capped:
        # The loop sees constants only: reverse mode cannot differentiate a
        # while_loop, and the closed form below carries the gradient.
        u_fixed, cap_fixed = jax.lax.stop_gradient(u), jax.lax.stop_gradient(cap)

        def g(s):
            return jnp.mean(jnp.minimum(s * u_fixed, cap_fixed))

        def cond(state):
            _, gs, it, moved = state
            return (gs < 1.0) & moved & (it < 100)

        def body(state):
            s, gs, it, _ = state
            slope = jnp.mean(jnp.where(s * u_fixed < cap_fixed, u_fixed, 0.0))
            new_s = s + jnp.where(slope > 0, (1.0 - gs) / jnp.where(slope > 0, slope, 1.0), 0.0)
            return new_s, g(new_s), it + 1, new_s > s * (1.0 + _CAP_STEP_TOL)

        s, _, _, _ = jax.lax.while_loop(cond, body, (jnp.ones_like(c), g(1.0), 0,
                                                     jnp.array(True)))
        at_cap = s * u_fixed >= cap_fixed
        free = jnp.mean(jnp.where(at_cap, 0.0, u))
        capped_frac = jnp.mean(at_cap.astype(u.dtype))     # a bool mean is float32 under x64
        s = jnp.where(free > 0, (1.0 - cap * capped_frac) / jnp.where(free > 0, free, 1.0),
                      s)
        w = jnp.where(at_cap, cap, jnp.minimum(s * u, cap))
        c, log_c = c * s, log_c + jnp.log(s)
    else:
        w = u
    # traced options are not value-checked: out of range gives NaN, not plausible weights
    valid = (lam >= 0) & (lam <= MAX_LAM) & (floor >= 0) & (floor <= 1)   # 1e-40 is 0 in f32
    if capped:   # and reachable: weights underflowed to 0 (lam ~15+) can leave mean < 1
        valid = valid & (cap >= 1) & (jnp.abs(jnp.mean(w) - 1.0) < CAP_MEAN_TOL)
    w = jnp.where(valid, w, jnp.nan)
    chex.assert_equal_shape([w, rho])
    return w, {"rho_min": rho_min, "scale": c, "log_scale": log_c,
               "fine": fine.astype(rho.dtype)}


def _checked(rho: jax.Array, floor=None) -> jax.Array:
    """Densities at (or around) the labels, checked when concrete: finite, some
    > 0 and, given a concrete HypUC ``floor``, no 0 under a floor ``floor * max
    rho`` flushed to 0 (log 0: NaN weights). Weights do not depend on the
    labels' units, float densities do (3-D labels at ~1e-10 overflow, 2-D
    ones at ~1e18 underflow in part). Under jit the check cannot run."""
    if not is_concrete(rho):
        return rho
    top, dtype = float(jnp.max(rho)), jnp.asarray(rho).dtype    # NaN propagates; rho >= 0
    bad = not (math.isfinite(top) and top > 0)
    if not bad and floor is not None and is_concrete(floor):
        bad = float(floor) * top < float(jnp.finfo(dtype).tiny) and float(jnp.min(rho)) == 0
    if bad:
        raise ValueError(f"labels: their kernel density over- or underflows {dtype} at this "
                         "label scale; rescale the labels (e.g. standardise them), which "
                         "leaves the weights unchanged")
    return rho


# --------------------------------------------------------------------------- #
# DenseWeight
# --------------------------------------------------------------------------- #
@jax.jit
def _dense_from_density(rho, alpha, eps):
    """(w [n], scale, rho_lo, rho_hi) for DenseWeight from densities [n]."""
    rho_lo, rho_hi = jnp.min(rho), jnp.max(rho)
    raw = _dense_raw(rho, alpha, eps, rho_lo, rho_hi)
    scale = 1.0 / jnp.mean(raw)
    # NaN densities (a bad traced bandwidth or label) or a traced alpha < 0 are not
    # value-checked under jit: NaN weights, not uniform ones
    valid = ~jnp.isnan(rho_lo) & ~jnp.isnan(rho_hi) & (alpha >= 0)
    return jnp.where(valid, raw * scale, jnp.nan), scale, rho_lo, rho_hi


#: DenseWeight treats the density as flat when it varies by less than this
#: fraction of its maximum over the labels (above the binned KDE's ~1e-4 error,
#: whose round-off min-max scaling would otherwise blow up to the full range).
_DENSE_FLAT_TOL = 1e-3


def _dense_raw(rho, alpha, eps, rho_lo, rho_hi):
    """max(1 - alpha * p', eps) with p' the min-max scaled density (0 if flat)."""
    span = rho_hi - rho_lo
    varies = span > _DENSE_FLAT_TOL * rho_hi
    p = jnp.where(varies, (rho - rho_lo) / jnp.where(varies, span, 1.0), 0.0)
    return jnp.maximum(1.0 - alpha * p, eps)
