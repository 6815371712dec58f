"""The binned KDE (``kde`` method "binned"): the grid's size (the default node
counts, grown to resolve the bandwidth: ``fitted_grid_shape``) and the
evaluator on it (linear binning, FFT smoothing, multilinear interpolation)."""
from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hypuc_jax._validation import concrete_values, is_int

# Default binned grid size per dimension, by label dimension d.
DEFAULT_GRID_SIZE = {1: 4096, 2: 512, 3: 128}
# With the default grid size, the grid grows (concrete inputs only) until its
# step is at most h / STEPS_PER_BANDWIDTH (relative L1 error ~1e-5 to 5e-4 against
# the exact sum, ~1e-3 where the labels crowd into a few cells), up to
# MAX_GRID_POINTS nodes in all. Only 3-D labels reach that cap (steps of 0.24-0.47
# h for 2000-50000 labels), where the bias correction below keeps the error at
# 6e-4 to 1.2e-3; a step above h / WARN_STEPS_PER_BANDWIDTH (the corrected
# estimator: h / CORRECTED_WARN_STEPS_PER_BANDWIDTH) exceeds ~1e-3 and a warning
# says so. A grid whose step would still exceed h / MIN_STEPS_PER_BANDWIDTH
# (error ~1e-2 and more) is refused.
STEPS_PER_BANDWIDTH = 16
# Label dimensions whose binned evaluator removes the leading O(step^2) bias:
# linear binning widens the kernel by the variance step^2 / 6 per axis (the
# sampled kernel is narrowed by as much) and linear interpolation overestimates
# by t (1 - t) / 2 step^2 f'' at fraction t of a cell (subtracted, with f'' from
# the grid's second differences). Only 3-D, where the node cap leaves steps of
# 0.24-0.47 h: 2000-50000 Gaussian labels, relative L1 4.0e-3 to 6.0e-3 without
# it, 5.7e-4 to 1.16e-3 with it (gamma and correlated labels alike), at the same
# cost. In 1-D and 2-D the grid resolves h / 16 (errors ~1e-6 and ~3e-5) and the
# estimator is left as it was, so their densities (and the trained runs that
# used them) are unchanged to the bit.
BIAS_CORRECTED_DIMS = (3,)
CORRECTED_WARN_STEPS_PER_BANDWIDTH = 2.5
WARN_STEPS_PER_BANDWIDTH = 8
MIN_STEPS_PER_BANDWIDTH = 2
MAX_GRID_POINTS = 2 ** 22
# The binned grid extends this many bandwidths beyond the extreme samples.
PAD_BANDWIDTHS = 4.0
# Grid nodes farther than this many bandwidths from every sample get density 0
# (exactly, instead of the FFT's round-off; the exact sum there is < 1e-13 of
# one sample's peak).
NEAR_BANDWIDTHS = 8.0


def grid_shape(d: int, grid_size) -> tuple[int, ...]:
    """Checked ``grid_size`` (None, an int, or d ints, each >= 2) as d node counts."""
    if grid_size is None:
        return (DEFAULT_GRID_SIZE[d],) * d
    sizes = ((grid_size,) * d if is_int(grid_size)
             else tuple(grid_size) if isinstance(grid_size, (tuple, list)) else ())
    if (isinstance(grid_size, (bool, np.bool_)) or len(sizes) != d
            or not all(is_int(g) and g >= 2 for g in sizes)):
        raise ValueError(f"grid_size: expected None, an int >= 2 or {d} ints >= 2, got {grid_size!r}")
    return tuple(int(g) for g in sizes)


def fitted_grid_shape(x: jax.Array, h: jax.Array, grid_size, stacklevel: int = 4
                      ) -> tuple[int, ...]:
    """``grid_shape``; for the default size and known inputs (concrete, or
    under ``jax.grad``), a grid fine enough for the bandwidth (step <= h /
    STEPS_PER_BANDWIDTH, within MAX_GRID_POINTS). Under jit / vmap the values
    are unknown: the default is kept (shapes must be static), with a warning,
    since nothing then checks that it resolves the kernel.

    ``stacklevel``: of the warning, so that it points at the user's call.

    Raises:
        ValueError: the labels span so many bandwidths that no allowed grid
            resolves the kernel (step > h / MIN_STEPS_PER_BANDWIDTH).
    """
    d = x.shape[1]
    shape = grid_shape(d, grid_size)
    if grid_size is not None:
        return shape
    x_known, h_known = concrete_values(x), concrete_values(h)
    if x_known is None or h_known is None:
        warnings.warn(
            f"binned KDE under jit/vmap: the grid keeps the default {shape} nodes (shapes must "
            f"be static), accurate only while the labels span at most about "
            f"{(shape[0] - 1) // STEPS_PER_BANDWIDTH - 2 * PAD_BANDWIDTHS:g} bandwidths; pass "
            "grid_size=kde.grid_size_for(labels, bandwidth) computed outside the transform, or "
            "method='exact'", UserWarning, stacklevel=stacklevel)
        return shape
    span = (np.asarray(np.max(x_known, axis=0) - np.min(x_known, axis=0), np.float64)
            / np.asarray(h_known, np.float64) + 2 * PAD_BANDWIDTHS)    # in bandwidths, [d]
    need = [max(g, int(np.ceil(sp * STEPS_PER_BANDWIDTH)) + 1) for g, sp in zip(shape, span)]
    if math.prod(need) > MAX_GRID_POINTS:
        scale = (MAX_GRID_POINTS / math.prod(need)) ** (1 / d)
        need = [max(g, int(n * scale)) for g, n in zip(shape, need)]
        worst = float(np.max(span / (np.asarray(need) - 1)))
        if worst > 1 / MIN_STEPS_PER_BANDWIDTH:
            raise ValueError(
                f"bandwidth: the labels span {float(np.max(span)):.3g} bandwidths, so the "
                f"binned grid (at most {MAX_GRID_POINTS} nodes) would have a step of "
                f"{worst:.2g} bandwidths (at most {1 / MIN_STEPS_PER_BANDWIDTH:g} keeps the "
                "density accurate); use method='exact' (gaussian_kde), a larger bandwidth, "
                "or transform the labels (e.g. log) first")
        warn_steps = (CORRECTED_WARN_STEPS_PER_BANDWIDTH if d in BIAS_CORRECTED_DIMS
                      else WARN_STEPS_PER_BANDWIDTH)
        if worst > 1 / warn_steps:
            warnings.warn(
                f"binned KDE: the labels span {float(np.max(span)):.3g} bandwidths, so the grid "
                f"(at most {MAX_GRID_POINTS} nodes over {d} dimensions) has a step of "
                f"{worst:.2g} bandwidths; expect a relative L1 error above 1e-3 against "
                f"the exact sum (1e-3 needs at most 1/{warn_steps:g}); use "
                "method='exact' for that accuracy", UserWarning, stacklevel=stacklevel)
    # Powers of two keep the FFT fast and the compiled shapes few.
    pow2 = tuple(g if g == g0 else 2 ** math.ceil(math.log2(g)) for g, g0 in zip(need, shape))
    return pow2 if math.prod(pow2) <= MAX_GRID_POINTS else tuple(need)


def check_binned_scale(x: jax.Array, h: jax.Array, shape: tuple[int, ...], bounds) -> None:
    """Refuses labels [n, d] (range ``bounds`` from ``kde._check_range``, None: traced)
    so finely spread that the binned sums n / prod(step) overflow (float32 ~1e-29 in 1-D),
    or with a bandwidth so large that the sampled kernel 1 / (sqrt(2 pi) h) exp(-u^2 / 2)
    underflows within 4.5 bandwidths (float32: h > 1.4e33; the density then loses
    1e-4 and more)."""
    if bounds is None:
        return
    widest = float(np.max(np.asarray(h, np.float64)))
    if widest * math.sqrt(2 * math.pi) * float(jnp.finfo(x.dtype).tiny) > math.exp(-0.5 * 4.5 ** 2):
        raise ValueError(f"bandwidth: {widest:.3g} is too wide for the binned density's "
                         f"{x.dtype} kernel (its tails underflow); use method='exact' or "
                         "rescale the labels (e.g. standardise)")
    lo, hi = (np.asarray(b, np.float64) for b in bounds)
    span = hi - lo + 2 * PAD_BANDWIDTHS * np.asarray(h, np.float64)
    log_scale = math.log10(x.shape[0]) - float(np.sum(np.log10(span / (np.asarray(shape) - 1))))
    # float32 sums measured accurate up to 1e36 / 1e35 / 1e33 (d = 1 / 2 / 3), overflowing
    # from 1e38 / 1e39 / 1e36: the bound log10(max) - 2.5 - d is 35 / 34 / 33 for float32
    if log_scale > math.log10(float(jnp.finfo(x.dtype).max)) - 2.5 - x.shape[1]:
        raise ValueError(f"samples: the labels are too finely spread for the binned density's "
                         f"{x.dtype} sums (n / grid cell volume = 1e{log_scale:.0f}); use "
                         "method='exact' or rescale the labels (e.g. standardise)")


# --------------------------------------------------------------------------- #
# Binned evaluator: linear binning, FFT smoothing, interpolation (jittable)
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


def interpolate_grid(points, lo, step, values) -> jax.Array:
    """(Multi)linear interpolation of values on a regular grid; 0 outside it.

    Args:
        points: query points [m, d] (1-D labels: ``y[:, None]``).
        lo: grid origin [d].
        step: grid spacing [d], > 0.
        values: grid values [G_1, ..., G_d], each G_k >= 2 (``density_grid``'s
            output fits as it is).

    Returns:
        Interpolated values [m]; points outside [lo, lo + (G - 1) * step] get 0.

    Raises:
        ValueError: shapes that do not fit together, named (checked on
          tracers too).
    """
    points, lo, step, values = (jnp.asarray(v) for v in (points, lo, step, values))
    if points.ndim != 2:
        raise ValueError(f"points: expected shape [m, d] (1-D labels as y[:, None]), got "
                         f"{points.shape}")
    d = points.shape[1]
    for name, v in (("lo", lo), ("step", step)):
        if v.shape != (d,):
            raise ValueError(f"{name}: expected shape [d] = ({d},) for points [m, {d}], got "
                             f"{v.shape}")
    if values.ndim != d or min(values.shape, default=0) < 2:
        raise ValueError(f"values: expected a grid [G_1, ..., G_{d}] with every G_k >= 2, got "
                         f"shape {values.shape}")
    return _interpolate(points, lo, step, values)


@jax.jit
def _interpolate(points: jax.Array, lo: jax.Array, step: jax.Array,
                 values: jax.Array) -> jax.Array:
    """``interpolate_grid`` on checked shapes."""
    m, d = points.shape
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


def _near_samples(counts: jax.Array, step: jax.Array, h: jax.Array) -> jax.Array:
    """Grid nodes within NEAR_BANDWIDTHS * h (per axis) of a node that holds
    samples [G_1..G_d] (bool): a separable box dilation of ``counts > 0``.

    Farther out the exact density is below exp(-NEAR_BANDWIDTHS^2 / 2) of one
    sample's peak, while the float32 FFT leaves round-off of ~1e-8 of the
    largest value everywhere; zeroing those nodes keeps a gap between labels
    at density 0, as the exact sum has it (and the weights' floor applies).
    """
    near = counts > 0
    for k, g in enumerate(counts.shape):
        r = jnp.ceil(NEAR_BANDWIDTHS * h[k] / step[k]).astype(jnp.int32)
        total = jnp.cumsum(near.astype(jnp.int32), axis=k)            # occupied in [0, i]
        i = jnp.arange(g)
        upper = jnp.take(total, jnp.clip(i + r, 0, g - 1), axis=k)
        below = jnp.take(total, jnp.clip(i - r - 1, 0, g - 1), axis=k)
        below = jnp.where((i - r - 1 >= 0).reshape((1,) * k + (g,) + (1,) * (near.ndim - k - 1)),
                          below, 0)
        near = upper - below > 0                                    # occupied in [i-r, i+r]
    return near


# --------------------------------------------------------------------------- #
def grid_extent(samples: jax.Array, h: jax.Array, shape: tuple[int, ...]):
    """Grid origin [d] and spacing [d] covering the samples +- PAD_BANDWIDTHS * h."""
    lo = jnp.min(samples, axis=0) - PAD_BANDWIDTHS * h
    hi = jnp.max(samples, axis=0) + PAD_BANDWIDTHS * h
    step = (hi - lo) / (jnp.asarray(shape, samples.dtype) - 1)
    return lo, step


def _kernel_bandwidth(h: jax.Array, step: jax.Array, d: int) -> jax.Array:
    """The sampled kernel's bandwidth [d]: ``h``, narrowed in 3-D by the variance
    step^2 / 6 that linear binning adds (see ``BIAS_CORRECTED_DIMS``)."""
    if d not in BIAS_CORRECTED_DIMS:
        return h
    return jnp.sqrt(h * h - jnp.minimum(step, h) ** 2 / 6.0)


def _curvature_corrected(points: jax.Array, lo: jax.Array, step: jax.Array,
                         values: jax.Array) -> jax.Array:
    """Multilinear interpolation at points [m, d] minus its leading error.

    Along axis k, linear interpolation at fraction t of a cell overestimates a
    smooth f by t (1 - t) / 2 * step_k^2 f''; the grid's second differences
    estimate step_k^2 f'' and are interpolated the same way. Clipped at 0
    (the density is); 0 outside the grid, as ``interpolate_grid``.
    """
    out = _interpolate(points, lo, step, values)
    _, _, frac = _cell_and_fraction(points, lo, step, values.shape)
    for k in range(values.ndim):
        v = jnp.moveaxis(values, k, 0)
        second = jnp.zeros_like(v).at[1:-1].set(v[2:] - 2.0 * v[1:-1] + v[:-2])
        out = out - (frac[:, k] * (1.0 - frac[:, k]) / 2.0
                     * _interpolate(points, lo, step, jnp.moveaxis(second, 0, k)))
    return jnp.maximum(out, 0.0)


@partial(jax.jit, static_argnames=("shape",))
def binned_grid(samples: jax.Array, h: jax.Array, shape: tuple[int, ...]):
    """Binned density on its grid: (lo [d], step [d], density [G_1..G_d])."""
    n, d = samples.shape
    chex.assert_shape(h, (d,))
    lo, step = grid_extent(samples, h, shape)
    counts = _linear_binning(samples, lo, step, shape)
    smooth = _fft_smooth(counts, step, _kernel_bandwidth(h, step, d))
    dens = jnp.where(_near_samples(counts, step, h), smooth, 0.0)
    return lo, step, dens / n


@partial(jax.jit, static_argnames=("shape",))
def binned_density(samples: jax.Array, points: jax.Array, h: jax.Array,
                    shape: tuple[int, ...]) -> jax.Array:
    """Binned density of samples [n, d] at points [m, d] -> [m] (one program)."""
    lo, step, dens = binned_grid(samples, h, shape)
    if samples.shape[1] in BIAS_CORRECTED_DIMS:
        return _curvature_corrected(points, lo, step, dens)
    return interpolate_grid(points, lo, step, dens)
