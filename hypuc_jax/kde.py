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
  (multi)linear interpolation at the points. O(n + m + G log G).

Everything below the public functions is jittable with static ``rule``,
``method``, ``grid_size`` and ``chunk_size``; the public functions themselves
work under ``jax.jit`` and ``jax.vmap`` (value checks are skipped on tracers,
see ``hypuc_jax._validation``), e.g. several label sets of several tasks::

    jax.vmap(lambda s, p: gaussian_kde(s, p))(samples_k_n, points_k_m)  # [k, m]
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
                                 STEPS_PER_BANDWIDTH, fitted_grid_shape, grid_shape)
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
@partial(jax.jit, static_argnames=("rule",))
def _rule_bandwidth(samples: jax.Array, rule: str) -> jax.Array:
    """Rule-of-thumb bandwidth per column. samples [n, d] -> h [d]."""
    n, d = samples.shape
    mean = jnp.mean(samples, axis=0)
    var = jnp.sum(jnp.square(samples - mean), axis=0) / max(n - 1, 1)
    s = jnp.sqrt(var)
    if rule == "scott":
        scale, const = s, 1.06
    else:
        q25, q75 = jnp.percentile(samples, jnp.array([25.0, 75.0]), axis=0)
        spread = jnp.minimum(s, (q75 - q25) / 1.34)
        scale, const = jnp.where(spread > 0, spread, s), 0.9  # IQR == 0: use s
    # All labels of a column equal (or n == 1): s is 0 up to round-off.
    constant = jnp.max(samples, axis=0) == jnp.min(samples, axis=0)
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
        return h
    h = as_array(rule, "bandwidth", ndim=(0, 1))
    if h.ndim == 1 and h.shape[0] not in (1, d):
        raise ValueError(f"bandwidth: expected a scalar or {d} values (one per label "
                                                                       f"dimension), got shape {tuple(h.shape)}")
    check_positive(h, "bandwidth")
    return jnp.broadcast_to(jnp.asarray(h, dtype=samples2d.dtype), (d,))


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
            non-positive or non-finite bandwidth.
    """
    x = _as_samples(samples)
    h = _resolve_bandwidth(x, rule)
    return h[0] if jnp.ndim(samples) == 1 else h


# --------------------------------------------------------------------------- #
# Grid helpers (shared with hypuc_jax.weights)
# --------------------------------------------------------------------------- #
def _corner_weights(frac: jax.Array) -> jax.Array:
    """frac [m, d] -> multilinear corner weights [m, 2, ..., 2] (d twos)."""
    m, d = frac.shape
    w = jnp.stack([1.0 - frac[:, 0], frac[:, 0]], axis=-1)
    for k in range(1, d):
        wk = jnp.stack([1.0 - frac[:, k], frac[:, k]], axis=-1)
        w = w[..., None] * wk.reshape((m,) + (1,) * k + (2,))
    return w


def _cell_and_fraction(points: jax.Array, lo: jax.Array, step: jax.Array,
                       shape: Sequence[int]):
    """Lower grid cell [m, d] (int32, clipped to the grid) and fraction in it."""
    t = (points - lo) / step
    upper = jnp.asarray(shape, dtype=jnp.int32) - 2
    cell = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, upper)
    return t, cell, t - cell


@jax.jit
def interpolate_grid(points: jax.Array, lo: jax.Array, step: jax.Array,
                     values: jax.Array) -> jax.Array:
    """(Multi)linear interpolation of values on a regular grid; 0 outside it.

    Args:
        points: query points [m, d].
        lo: grid origin [d].
        step: grid spacing [d], > 0.
        values: grid values [G_1, ..., G_d], each G_k >= 2.

    Returns:
        Interpolated values [m]; points outside [lo, lo + (G - 1) * step] get 0.
    """
    m, d = points.shape
    chex.assert_rank(values, d)
    chex.assert_shape([lo, step], (d,))
    t, cell, frac = _cell_and_fraction(points, lo, step, values.shape)
    dnums = lax.GatherDimensionNumbers(offset_dims=tuple(range(1, d + 1)),
                                       collapsed_slice_dims=(),
                                       start_index_map=tuple(range(d)))
    corners = lax.gather(values, cell, dnums, slice_sizes=(2,) * d,
                         mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    out = jnp.sum((corners * _corner_weights(frac)).reshape(m, -1), axis=1)
    inside = jnp.all((t >= 0) & (t <= jnp.asarray(values.shape, t.dtype) - 1), axis=1)
    chex.assert_shape(out, (m,))
    return jnp.where(inside, out, 0.0)


def _linear_binning(samples: jax.Array, lo: jax.Array, step: jax.Array,
                    shape: tuple[int, ...]) -> jax.Array:
    """Linear binning counts [G_1..G_d] (sum n) of samples [n, d] on the grid."""
    n, d = samples.shape
    _, cell, frac = _cell_and_fraction(samples, lo, step, shape)
    dnums = lax.ScatterDimensionNumbers(update_window_dims=tuple(range(1, d + 1)),
                                        inserted_window_dims=(),
                                        scatter_dims_to_operand_dims=tuple(range(d)))
    return lax.scatter_add(jnp.zeros(shape, samples.dtype), cell, _corner_weights(frac),
                           dnums, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _fft_smooth(counts: jax.Array, step: jax.Array, h: jax.Array) -> jax.Array:
    """Convolves grid counts [G_1..G_d] with the sampled Gaussian kernel N(0, h^2).

    The counts are zero-padded to 2 G_k per axis and the kernel is sampled at
    every offset in (-G_k, G_k), so the circular FFT convolution equals the
    linear one on the grid. The kernel is separable, so its transform is the
    outer product of 1-D transforms (rfft on the last axis, fft on the others).
    """
    shape = counts.shape
    d = len(shape)
    padded = tuple(2 * g for g in shape)
    spectrum = jnp.fft.rfftn(counts, s=padded)
    for k, (g, p) in enumerate(zip(shape, padded)):
        offsets = jnp.concatenate([jnp.arange(g), jnp.arange(-g, 0)]).astype(counts.dtype)
        u = offsets * step[k] / h[k]
        kernel = jnp.exp(-0.5 * u * u) / (math.sqrt(2 * math.pi) * h[k])
        kf = jnp.fft.rfft(kernel) if k == d - 1 else jnp.fft.fft(kernel)
        spectrum = spectrum * kf.reshape((1,) * k + (-1,) + (1,) * (d - k - 1))
    smooth = jnp.fft.irfftn(spectrum, s=padded)[tuple(slice(0, g) for g in shape)]
    return jnp.maximum(smooth, 0.0)  # FFT round-off can leave tiny negatives


# --------------------------------------------------------------------------- #
# Evaluators (jittable; inputs already validated)
# --------------------------------------------------------------------------- #
def _grid_extent(samples: jax.Array, h: jax.Array, shape: tuple[int, ...]):
    """Grid origin [d] and spacing [d] covering the samples +- PAD_BANDWIDTHS * h."""
    lo = jnp.min(samples, axis=0) - PAD_BANDWIDTHS * h
    hi = jnp.max(samples, axis=0) + PAD_BANDWIDTHS * h
    step = (hi - lo) / (jnp.asarray(shape, samples.dtype) - 1)
    return lo, step


@partial(jax.jit, static_argnames=("shape",))
def _binned_grid(samples: jax.Array, h: jax.Array, shape: tuple[int, ...]):
    """Binned density on its grid: (lo [d], step [d], density [G_1..G_d])."""
    n, d = samples.shape
    chex.assert_shape(h, (d,))
    lo, step = _grid_extent(samples, h, shape)
    counts = _linear_binning(samples, lo, step, shape)
    return lo, step, _fft_smooth(counts, step, h) / n


@partial(jax.jit, static_argnames=("shape",))
def _binned_density(samples: jax.Array, points: jax.Array, h: jax.Array,
                    shape: tuple[int, ...]) -> jax.Array:
    """Binned density of samples [n, d] at points [m, d] -> [m] (one program)."""
    lo, step, dens = _binned_grid(samples, h, shape)
    return interpolate_grid(points, lo, step, dens)


@partial(jax.jit, static_argnames=("chunk_size",))
def _exact_density(samples: jax.Array, points: jax.Array, h: jax.Array,
                   chunk_size: int) -> jax.Array:
    """Direct Gaussian sum, tiled [chunk, chunk]. samples [n, d], points [m, d] -> [m]."""
    n, d = samples.shape
    m = points.shape[0]
    chex.assert_shape([h, points[0]], (d,))
    cs, cp = min(chunk_size, n), min(chunk_size, m)
    ns, mp = -(-n // cs), -(-m // cp)
    # Padded samples sit far away (finite, so gradients stay finite): their
    # kernel underflows to exactly 0; padded points are dropped.
    far = jnp.max(jnp.abs(points / h)) + jnp.max(jnp.abs(samples / h)) + 100.0
    s = jnp.concatenate([samples / h, jnp.full((ns * cs - n, d), 1.0, samples.dtype)
                         * lax.stop_gradient(far)])
    p = jnp.concatenate([points / h, jnp.zeros((mp * cp - m, d), points.dtype)])
    s_blocks, p_blocks = s.reshape(ns, cs, d), p.reshape(mp, cp, d)

    def point_block(pb):
        def body(acc, sb):
            # Per-dimension [cp, cs] tiles: a [cp, cs, d] difference tile is far slower.
            sq = sum(jnp.square(pb[:, k, None] - sb[None, :, k]) for k in range(d))
            return acc + jnp.sum(jnp.exp(-0.5 * sq), axis=1), None
        acc, _ = lax.scan(body, jnp.zeros((cp,), s.dtype), s_blocks)
        return acc

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
    ``method="binned"`` gives exactly the grid that ``gaussian_kde`` interpolates;
    ``method="exact"`` evaluates the direct sum at the same grid nodes.

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
    shape = fitted_grid_shape(x, h, grid_size)
    if method == "binned":
        return _binned_grid(x, h, shape)
    lo, step = _grid_extent(x, h, shape)
    axes = [lo[k] + step[k] * jnp.arange(g, dtype=x.dtype) for k, g in enumerate(shape)]
    nodes = jnp.stack([a.reshape(-1) for a in jnp.meshgrid(*axes, indexing="ij")], axis=1)
    return lo, step, _exact_density(x, nodes, h, chunk_size).reshape(shape)


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
            where the true density is below exp(-8) of a single kernel's peak / n)
            or "exact" (tiled direct sum).
        grid_size: binned grid points per dimension; default 4096 (d=1),
            512 (d=2), 128 (d=3), enlarged for concrete inputs until the step
            is at most h / STEPS_PER_BANDWIDTH (at most MAX_GRID_POINTS
            nodes; labels spanning too many bandwidths for that are refused).
        chunk_size: exact-method tile size; peak memory O(chunk_size^2).

    Returns:
        Density [m] (>= 0), in label units^-d.

    Raises:
        ValueError: empty or non-finite samples/points, d > 3, points whose
            dimension differs from the samples', a non-positive or non-finite
            bandwidth, an unknown rule or method, a bad grid_size or chunk_size.
    """
    x = _as_samples(samples)
    p = as_array(points, "points", ndim=(1, 2))
    if p.ndim != jnp.ndim(samples) or (p.ndim == 2 and p.shape[1] != x.shape[1]):
        want = "[m]" if jnp.ndim(samples) == 1 else f"[m, {x.shape[1]}]"
        raise ValueError(f"points: expected shape {want} to match samples of shape "
                         f"{tuple(jnp.shape(samples))}, got {tuple(p.shape)}")
    check_finite(p, "points")
    p = jnp.asarray(p, dtype=x.dtype).reshape(p.shape[0], x.shape[1])
    return _density(x, p, bandwidth, method, grid_size, chunk_size)


def _density(x: jax.Array, p: jax.Array, bandwidth, method: str, grid_size,
             chunk_size: int) -> jax.Array:
    """gaussian_kde for validated samples [n, d] and points [m, d]; checks the options."""
    _check_method(method)
    _check_chunk(chunk_size)
    h = _resolve_bandwidth(x, bandwidth)
    if method == "exact":
        grid_shape(x.shape[1], grid_size)                       # still checked
        return _exact_density(x, p, h, chunk_size)
    shape = fitted_grid_shape(x, h, grid_size)
    return _binned_density(x, p, h, shape)


__all__ = ["bandwidth", "gaussian_kde", "density_grid", "interpolate_grid",
           "DEFAULT_GRID_SIZE", "PAD_BANDWIDTHS", "MIN_RELATIVE_SCALE", "MAX_GRID_POINTS",
           "STEPS_PER_BANDWIDTH"]
