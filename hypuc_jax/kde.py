"""Gaussian kernel density of labels: bandwidth rules, exact and binned evaluators.

The density of training labels y_1..y_n (scalars [n] or vectors [n, d], d <= 3)
with a diagonal Gaussian kernel of bandwidth h [d] (SPEC section 1)::

    rho_h(y) = 1/n * sum_i prod_k N(y_k - y_ik; 0, h_k^2)

Two evaluators give the same result:

* ``method="exact"``: the direct sum, tiled over blocks of points and blocks of
  samples (``lax.map`` over point blocks, ``lax.scan`` over sample blocks), so
  peak memory is O(chunk_size^2), never O(n * m).
* ``method="binned"``: linear binning of the samples onto a regular grid that
  spans the samples padded by ``PAD_BANDWIDTHS`` bandwidths each side, FFT
  convolution with the sampled kernel (zero-padded, so no wrap-around), then
  (multi)linear interpolation at the points. O(n + m + G log G). For 3-D
  labels, whose grid the node cap leaves coarse (step h/4 to h/2), the leading
  O(step^2) bias of binning and interpolation is removed (``_kde_grid.
  BIAS_CORRECTED_DIMS``: relative L1 ~1e-3 instead of ~5e-3).

Everything below the public functions is jittable with static ``rule``,
``method``, ``grid_size`` and ``chunk_size``; the public functions themselves
work under ``jax.jit`` and ``jax.vmap`` (value checks are skipped on tracers,
see ``hypuc_jax._validation``), e.g. several label sets of several tasks::

    g = max(grid_size_for(s) for s in samples_k_n)   # d = 1; outside the transform
    jax.vmap(lambda s, p: gaussian_kde(s, p, grid_size=g))(samples_k_n, points_k_m)  # [k, m]

(the binned grid cannot grow with the data under a transform, hence the
static ``grid_size``; without it the default grid is used, with a warning).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hypuc_jax._kde_grid import (DEFAULT_GRID_SIZE, MAX_GRID_POINTS, PAD_BANDWIDTHS,  # noqa: F401
                                 STEPS_PER_BANDWIDTH, binned_density, binned_grid,
                                 check_binned_scale, fitted_grid_shape, grid_extent,
                                 grid_shape, interpolate_grid)
from hypuc_jax._validation import as_array, check_finite, check_positive, is_concrete, is_int

RULES = ("scott", "silverman")
METHODS = ("binned", "exact")
MAX_DIM = 3
# Zero-spread fallback: the scale used by a rule when a column has no spread.
MIN_RELATIVE_SCALE = 1e-3
DEFAULT_CHUNK_SIZE = 2048


# --------------------------------------------------------------------------- #
# Bandwidth
# --------------------------------------------------------------------------- #
#: max |label - mean| within which the rule's sum of squares is safe in float32
#: (for up to 1e8 labels).
_SAFE_SQUARE_RANGE = (1e-15, 1e14)


@partial(jax.jit, static_argnames=("rule",))
def _rule_bandwidth(samples: jax.Array, rule: str) -> jax.Array:
    """Rule-of-thumb bandwidth per column. samples [n, d] -> h [d]."""
    n, d = samples.shape
    mean = jnp.mean(samples, axis=0)
    lo, hi = jnp.min(samples, axis=0), jnp.max(samples, axis=0)
    # Squares of deviations below ~1e-19 underflow float32 (and above ~1e19
    # overflow): there (a branch taken only then), sum squares of dev / max|dev|
    # and scale back; ordinary labels get the plain sum, with the bits they had.
    top = lax.stop_gradient(jnp.maximum(hi - mean, mean - lo))          # max |dev|
    plain = (top > _SAFE_SQUARE_RANGE[0]) & (top < _SAFE_SQUARE_RANGE[1]) | (top == 0)

    def scaled(unit):                       # (variance of samples / unit, unit)
        return jnp.sum(jnp.square((samples - mean) / unit), axis=0) / max(n - 1, 1), unit

    var, unit = lax.cond(jnp.all(plain), lambda: scaled(jnp.ones_like(top)),  # x / 1 is x
                         lambda: scaled(jnp.where(plain, 1.0, top)))
    positive = var > 0                       # sqrt'(0) is inf: its gradient would be NaN
    s = jnp.where(positive, unit * jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    if rule == "scott":
        scale, const = s, 1.06
    else:
        q25, q75 = jnp.percentile(samples, jnp.array([25.0, 75.0]), axis=0)
        spread = jnp.minimum(s, (q75 - q25) / 1.34)
        scale, const = jnp.where(spread > 0, spread, s), 0.9  # IQR == 0: use s
    # All labels of a column equal (or n == 1): s is 0 up to round-off.
    constant = hi == lo
    fallback = MIN_RELATIVE_SCALE * jnp.maximum(jnp.abs(mean), 1.0)
    scale = jnp.where(constant | (scale <= 0), fallback, scale)
    h = const * scale * n ** (-0.2)
    chex.assert_shape(h, (d,))
    return h


def _as_samples(samples, name: str = "samples") -> jax.Array:
    """Validates labels [n] or [n, d] and returns them as float [n, d]."""
    samples = as_array(samples, name, ndim=(1, 2))
    if samples.ndim == 2 and not 1 <= samples.shape[1] <= MAX_DIM:
        raise ValueError(f"{name}: expected [n] or [n, d] with 1 <= d <= {MAX_DIM}, "
                         f"got shape {tuple(samples.shape)}")
    check_finite(samples, name)
    x = jnp.asarray(samples)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.result_type(float))     # ints, float16/bfloat16: the FFT needs f32+
    return x.reshape(x.shape[0], -1)


def _resolve_bandwidth(samples2d: jax.Array, rule) -> jax.Array:
    """Bandwidth [d] for validated samples [n, d] from a rule name or value(s)."""
    d = samples2d.shape[1]
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"bandwidth: expected one of {RULES} or a positive float, got {rule!r}")
        h = _rule_bandwidth(samples2d, rule)
        if is_concrete(h) and not bool(jnp.all(jnp.isfinite(h))):
            raise ValueError(f"samples: the spread of the labels overflows {samples2d.dtype} in "
                             f"the {rule!r} bandwidth; rescale the labels (e.g. standardise)")
        if is_concrete(h) and not bool(jnp.all(h >= jnp.finfo(samples2d.dtype).tiny)):
            raise ValueError(f"samples: the {rule!r} bandwidth of the labels underflows "
                             f"{samples2d.dtype} (below its smallest normal number); rescale "
                             "the labels (e.g. standardise)")
        return h
    if isinstance(rule, (bool, np.bool_)) or jnp.issubdtype(getattr(rule, "dtype", float), bool):
        raise ValueError(f"bandwidth: expected one of {RULES} or positive floats, got {rule!r}")
    h = as_array(rule, "bandwidth", ndim=(0, 1))
    if h.ndim == 1 and h.shape[0] not in (1, d):
        raise ValueError(f"bandwidth: expected a scalar or {d} values (one per label dimension), "
                         f"got shape {tuple(h.shape)}")
    check_positive(h, "bandwidth")
    with np.errstate(over="ignore"):                 # checked just below
        h = jnp.broadcast_to(jnp.asarray(h, dtype=samples2d.dtype), (d,))
    tiny = jnp.finfo(samples2d.dtype).tiny           # smaller ones are flushed to 0 by XLA
    if is_concrete(h) and not bool(jnp.all(jnp.isfinite(h) & (h >= tiny))):
        raise ValueError(f"bandwidth: expected values in [{tiny:.3g}, "
                         f"{jnp.finfo(samples2d.dtype).max:.3g}] (normal {samples2d.dtype} "
                         f"numbers, the labels' dtype), got {rule!r}")
    return h


def bandwidth(samples, rule: str | float = "scott") -> jax.Array:
    """Kernel bandwidth of labels by a rule of thumb, per label dimension.

    With s the sample standard deviation (ddof=1) and IQR the interquartile range
    (linear percentiles) of a column, and n the number of labels:

    * ``"scott"``: h = 1.06 * s * n^(-1/5);
    * ``"silverman"``: h = 0.9 * min(s, IQR / 1.34) * n^(-1/5).

    For labels [n, d] the same 1-D rule is applied to each column (a diagonal
    bandwidth, SPEC section 1), not the d-dimensional n^(-1/(d+4)) factor.

    Zero spread: if min(s, IQR/1.34) is 0 but s > 0 (e.g. most labels tied),
    Silverman uses s. If s is 0 (all labels in a column equal, or n == 1), the
    scale falls back to ``MIN_RELATIVE_SCALE * max(|mean|, 1)`` (1e-3 of the label
    magnitude), so the bandwidth is small but positive and nothing divides by 0.

    Args:
        samples: labels [n] or [n, d], d <= 3, finite.
        rule: "scott", "silverman", or a positive float (returned as is,
            broadcast to [d] for labels [n, d]).

    Returns:
        Bandwidth [] for labels [n], [d] for labels [n, d].

    Raises:
        ValueError: empty, non-finite or >3-dimensional labels; unknown rule;
            a bandwidth that is not a normal float of the labels' dtype
            (given, or a rule's at spreads below ~1e-37 in float32).
    """
    x = _as_samples(samples)
    h = _resolve_bandwidth(x, rule)
    return h[0] if np.ndim(samples) == 1 else h


# --------------------------------------------------------------------------- #
# Exact evaluator (jittable; inputs already validated)
# --------------------------------------------------------------------------- #
@partial(jax.jit, static_argnames=("chunk_size",))
def _exact_density(samples: jax.Array, points: jax.Array, h: jax.Array,
                   chunk_size: int) -> jax.Array:
    """Direct Gaussian sum, tiled [chunk, chunk]. samples [n, d], points [m, d] -> [m]."""
    n, d = samples.shape
    m = points.shape[0]
    chex.assert_shape([h, points[0]], (d,))
    cs, cp = min(chunk_size, n), min(chunk_size, m)
    ns, mp = n // cs, -(-m // cp)            # ns full sample blocks, then the rest
    # Only differences matter: centring first keeps float32 labels far from 0
    # (e.g. 1e6 +- 1) exact to a fraction of a bandwidth (the shift cancels, so
    # it is held constant under differentiation).
    lo, hi = jnp.min(samples, axis=0), jnp.max(samples, axis=0)
    # lo + half the span: a mean (or XLA's rewrite of lo / 2 + hi / 2) overflows near 3.4e38
    centre = lax.stop_gradient(lo + 0.5 * (hi - lo))
    samples, points = (samples - centre) / h, (points - centre) / h
    # Samples are not padded (a pad "far away" rounds onto points ~2^31 bandwidths
    # out in float32): the last n - ns * cs are their own tile. Padded points are dropped.
    s_blocks, rest = samples[:ns * cs].reshape(ns, cs, d), samples[ns * cs:]
    p = jnp.concatenate([points, jnp.zeros((mp * cp - m, d), points.dtype)])
    p_blocks = p.reshape(mp, cp, d)

    def kernel_sum(pb, sb):
        # Per-dimension [cp, cs] tiles: a [cp, cs, d] difference tile is far slower.
        sq = sum(jnp.square(pb[:, k, None] - sb[None, :, k]) for k in range(d))
        return jnp.sum(jnp.exp(-0.5 * sq), axis=1)

    def point_block(pb):
        acc, _ = lax.scan(lambda acc, sb: (acc + kernel_sum(pb, sb), None),
                          jnp.zeros((cp,), samples.dtype), s_blocks)
        return acc + kernel_sum(pb, rest) if rest.shape[0] else acc

    total = lax.map(point_block, p_blocks).reshape(-1)[:m]
    norm = n * (2 * math.pi) ** (d / 2) * jnp.prod(h)
    out = total / norm
    chex.assert_shape(out, (m,))
    return out


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def _check_chunk(chunk_size) -> None:
    if not is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")


def density_grid(samples, bandwidth: str | float = "scott", method: str = "binned",
                 grid_size: int | Sequence[int] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Density on the binned method's regular grid (for tables and plots).

    The grid spans the samples padded by ``PAD_BANDWIDTHS`` bandwidths each side.
    ``method="binned"``: the grid ``gaussian_kde`` interpolates (for 3-D labels
    with a curvature correction, ``_kde_grid.BIAS_CORRECTED_DIMS``, that
    ``interpolate_grid`` lacks); ``"exact"``: the direct sum at the same nodes.

    Args:
        samples: labels [n] or [n, d], d <= 3, finite.
        bandwidth: rule name or positive float(s), see ``bandwidth``.
        method: "binned" or "exact".
        grid_size: points per dimension (default ``DEFAULT_GRID_SIZE[d]``,
            enlarged as in ``gaussian_kde``).
        chunk_size: tile size of the exact method.

    Returns:
        (lo [d], step [d], density [G_1, ..., G_d]); node j_k sits at lo + j * step.
    """
    x = _as_samples(samples)
    _check_method(method)
    _check_chunk(chunk_size)
    h = _resolve_bandwidth(x, bandwidth)
    bounds = _check_range(x, h, padded=True)
    shape = fitted_grid_shape(x, h, grid_size, stacklevel=3)
    if method == "binned":
        check_binned_scale(x, h, shape, bounds)
    if method == "binned":
        lo, step, dens = binned_grid(x, h, shape)
    else:
        lo, step = grid_extent(x, h, shape)
        axes = [lo[k] + step[k] * jnp.arange(g, dtype=x.dtype) for k, g in enumerate(shape)]
        nodes = jnp.stack([a.reshape(-1) for a in jnp.meshgrid(*axes, indexing="ij")], axis=1)
        dens = _exact_density(x, nodes, h, chunk_size).reshape(shape)
    # traced inputs are not value-checked: a bad bandwidth or a non-finite sample: NaN
    dens = jnp.where(jnp.all(h > 0) & jnp.all(jnp.isfinite(x)), dens, jnp.nan)
    return lo, step, _finite_density(dens, x.dtype)


def grid_size_for(samples, bandwidth: str | float = "scott") -> tuple[int, ...]:
    """The binned grid's node counts that ``gaussian_kde`` uses for these labels.

    Under ``jax.jit`` / ``jax.vmap`` the grid cannot grow with the data (shapes
    must be static), so compute this outside the transform and pass it as
    ``grid_size`` (static); for several label sets, take the element-wise
    maximum over the sets.

    Args:
        samples: concrete labels [n] or [n, d], d <= 3, finite.
        bandwidth: rule name or positive float(s), as in ``gaussian_kde``.

    Returns:
        d node counts per dimension: the default, or enlarged to a power of
        two; where the powers of two would pass ``MAX_GRID_POINTS`` nodes (3-D
        labels, mostly), the counts the node cap allows, whatever they are.

    Raises:
        ValueError: traced samples, or the checks of ``gaussian_kde``
            (including labels spanning too many bandwidths for any grid).
    """
    x = _as_samples(samples)
    if not is_concrete(x):
        raise ValueError("samples: grid_size_for needs concrete labels; call it outside "
                         "jax.jit / jax.vmap")
    return fitted_grid_shape(x, _resolve_bandwidth(x, bandwidth), None)


def gaussian_kde(samples, points, bandwidth: str | float = "scott", method: str = "binned",
                 grid_size: int | Sequence[int] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Gaussian kernel density of ``samples`` evaluated at ``points``.

    Args:
        samples: labels [n] or [n, d], 1 <= d <= 3, finite.
        points: query points [m] for labels [n], [m, d] for labels [n, d], finite.
        bandwidth: "scott", "silverman" (see ``bandwidth``) or a positive float,
            or d positive floats (diagonal bandwidth).
        method: "binned" (linear binning + FFT + linear interpolation; the density
            is 0 beyond ``PAD_BANDWIDTHS`` bandwidths outside the samples' range,
            where the true density is below exp(-8) of a single kernel's peak / n,
            and more than 8 bandwidths from every sample, in a gap between labels)
            or "exact" (tiled direct sum). Both are differentiable in the
            samples, the points and the bandwidth, but the binned derivatives
            are those of the binned approximation, whose grid moves with the
            samples and h: in the bandwidth about 1e-3 to 2e-2 off the true
            KDE's, in the samples up to ~3e-2 (relative L2 ~5e-3), in the
            points ~1e-3 (values: ~1e-5). Use "exact" for accurate derivatives
            (e.g. to tune the bandwidth).
        grid_size: binned grid points per dimension; default 4096 (d=1),
            512 (d=2), 128 (d=3), enlarged for concrete inputs until the step
            is at most h / STEPS_PER_BANDWIDTH (at most MAX_GRID_POINTS
            nodes; labels spanning too many bandwidths for that are refused).
            Under jit / vmap the default is kept, with a warning: pass
            ``grid_size_for(labels, bandwidth)`` there.
        chunk_size: exact-method tile size; peak memory O(chunk_size^2).

    Returns:
        Density [m] (>= 0), in label units^-d.

    Raises:
        ValueError: empty or non-finite samples/points, d > 3, points whose
            dimension differs from the samples', a non-positive or non-finite
            bandwidth, an unknown rule or method, a bad grid_size or chunk_size;
            labels at float extremes (concrete inputs; under jit such inputs
            give NaN / inf): a range that overflows, a binned grid too fine
            for its sums (float32 spreads below ~1e-28 in 1-D, ~1e-9 in 3-D:
            use "exact"), a binned kernel whose float32 tails underflow
            (bandwidths above ~1.4e33: use "exact"), a density that overflows.
    """
    x = _as_samples(samples)
    p = as_array(points, "points", ndim=(1, 2))
    if p.ndim != np.ndim(samples) or (p.ndim == 2 and p.shape[1] != x.shape[1]):
        want = "[m]" if np.ndim(samples) == 1 else f"[m, {x.shape[1]}]"
        raise ValueError(f"points: expected shape {want} to match samples of shape "
                         f"{tuple(np.shape(samples))}, got {tuple(p.shape)}")
    check_finite(p, "points")
    p = jnp.asarray(p, dtype=x.dtype).reshape(p.shape[0], x.shape[1])
    return _finite_density(_density(x, p, bandwidth, method, grid_size, chunk_size), x.dtype)


def _finite_density(out: jax.Array, dtype) -> jax.Array:
    """``out``, refused when concrete and not finite (1 / (n h^d) at tiny scales)."""
    if is_concrete(out) and out.size and not math.isfinite(float(jnp.max(out))):
        raise ValueError(f"samples: the density of these labels overflows {dtype} at their "
                         "scale; rescale the labels (e.g. standardise)")
    return out


def _check_range(x: jax.Array, h: jax.Array, padded: bool):
    """Refuses concrete labels [n, d] whose range (+ the binned grid's padding if
    ``padded``) overflows their dtype; returns it as numpy (lo [d], hi [d]), or None."""
    if not (is_concrete(x) and is_concrete(h)):
        return None
    lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
    pad = PAD_BANDWIDTHS * h if padded else jnp.zeros_like(h)
    ok = jnp.all(jnp.isfinite(hi - lo) & jnp.isfinite(lo - pad) & jnp.isfinite(hi + pad))
    ok, lo, hi = jax.device_get((ok, lo, hi))                   # one transfer of [d] values
    if not ok:
        grid = f" padded by {PAD_BANDWIDTHS:g} bandwidths (the binned grid)" if padded else ""
        raise ValueError(f"samples: the labels' range{grid} overflows {x.dtype}; rescale the "
                         "labels (e.g. standardise)")
    return lo, hi


def _density(x: jax.Array, p: jax.Array, bandwidth, method: str, grid_size,
             chunk_size: int) -> jax.Array:
    """gaussian_kde for validated samples [n, d] and points [m, d]; checks the options."""
    _check_method(method)
    _check_chunk(chunk_size)
    h = _resolve_bandwidth(x, bandwidth)
    bounds = _check_range(x, h, padded=method == "binned")
    if method == "exact":
        grid_shape(x.shape[1], grid_size)                       # still checked
        out = _exact_density(x, p, h, chunk_size)
    else:
        shape = fitted_grid_shape(x, h, grid_size)
        check_binned_scale(x, h, shape, bounds)
        out = binned_density(x, p, h, shape)
    # traced inputs are not value-checked: a bad bandwidth or a non-finite sample gives
    # NaN everywhere, a NaN point NaN there (the binned grid otherwise reads 0)
    ok = jnp.all(h > 0) & jnp.all(jnp.isfinite(x))
    return jnp.where(ok & ~jnp.any(jnp.isnan(p), axis=1), out, jnp.nan)


__all__ = ["bandwidth", "gaussian_kde", "grid_size_for", "density_grid", "interpolate_grid",
           "DEFAULT_GRID_SIZE", "PAD_BANDWIDTHS", "MIN_RELATIVE_SCALE", "MAX_GRID_POINTS",
           "STEPS_PER_BANDWIDTH"]
