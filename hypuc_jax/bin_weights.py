"""Histogram-bin label weights: the frequency baselines of SPEC section 2.

Inverse and square-root inverse frequency on equal-width bins
(``inverse_weights``, ``sqrt_inverse_weights``) and label distribution
smoothing (``lds_weights``, Yang et al. 2021, DIR): the training labels are
binned, the bin counts are clipped / square-rooted / smoothed into a table,
and the weight of a label is 1 / table[bin], normalised to mean 1 over the
given labels. The labels and ``value_range`` may be traced (jit / vmap);
``bins``, ``kernel``, ``ks`` and ``sigma`` set the table and window and must
be concrete Python values (static arguments under jit); ``clip`` may be
traced. Same call shape as ``hypuc_jax.weights.kde_weights``; those
functions are re-exported by ``hypuc_jax.weights``, whose ``fit_weighting``
uses the table helpers here to build a ``LabelWeighting`` for new labels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax._validation import (as_array, as_representable, check_finite, check_positive,
                                   is_concrete, is_int)

BIN_SCHEMES = ("inverse", "sqrt_inv", "lds")
LDS_KERNELS = ("gaussian", "triang", "laplace")


def _labels_1d(labels, name: str = "labels") -> jax.Array:
    """Validates labels [n] (finite, non-empty) and returns a float jax array
    (integer and half-precision labels as float32: bin counts above 65504
    overflow float16, and bfloat16 rounds counts above 256)."""
    labels = as_array(labels, name, ndim=1)
    check_finite(labels, name)
    y = as_representable(labels, name)
    if jnp.issubdtype(y.dtype, jnp.floating) and jnp.finfo(y.dtype).bits >= 32:
        return y
    return y.astype(jnp.float32)


def _bin_grid(y: jax.Array, bins: int, value_range):
    """(lo, width) of ``bins`` equal bins over value_range or [min y, max y]."""
    if not is_int(bins) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1, got {bins!r}")
    if value_range is None:
        lo, hi = jnp.min(y), jnp.max(y)
    else:
        if (isinstance(value_range, (list, tuple))
                and not all(map(is_concrete, value_range))):     # (low, high) traced
            value_range = jnp.stack([jnp.asarray(v) for v in value_range])
        vr = as_array(value_range, "value_range", ndim=1)
        check_finite(vr, "value_range")
        if vr.shape[0] != 2 or (is_concrete(vr) and not float(vr[0]) < float(vr[1])):
            raise ValueError(f"value_range: expected (low, high) with low < high, got {value_range!r}")
        lo, hi = jnp.asarray(vr[0], y.dtype), jnp.asarray(vr[1], y.dtype)
    width = jnp.where(hi > lo, (hi - lo) / bins, 1.0)  # all labels equal: one occupied bin
    return lo, width


def _bin_index(y: jax.Array, lo, width, bins: int) -> jax.Array:
    """Bin of each label [b]; labels outside the range go to the edge bins."""
    return jnp.clip(jnp.floor((y - lo) / width).astype(jnp.int32), 0, bins - 1)


def _lds_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
    """LDS smoothing window [ks] with peak 1, as in DIR's get_lds_kernel_window.

    gaussian: a centred unit impulse of length ks filtered by a Gaussian of
    std sigma (radius int(4 sigma + 0.5), 'reflect' boundary, as
    scipy.ndimage.gaussian_filter1d), divided by its maximum; triang: the
    triangular window 1 - |i - c| / ((ks + 1) / 2); laplace: exp(-|i - c| / sigma).
    """
    c = (ks - 1) // 2
    offsets = np.arange(ks) - c
    if kernel == "triang":
        return 1.0 - np.abs(offsets) / ((ks + 1) / 2)
    if kernel == "laplace":
        return np.exp(-np.abs(offsets) / sigma)
    radius = int(4.0 * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (k / sigma) ** 2)
    out = np.zeros(ks)
    for i in range(ks):
        j = np.mod(i + k, 2 * ks)
        j = np.where(j >= ks, 2 * ks - 1 - j, j)  # 'reflect': d c b a | a b c d | d c b a
        out[i] = g[j == c].sum()
    return out / out.max()


def _bin_table(y, bins, value_range, clip, power, window):
    """(lo, width, table [bins]) of processed counts: clip, ^power, smooth."""
    if clip is not None:
        if not isinstance(clip, (tuple, list)) or len(clip) != 2:
            raise ValueError(f"clip: expected None or (low, high) with None for no bound, got {clip!r}")
        for v, strict in zip(clip, (False, True)):   # a high of 0 zeroes every count
            if v is not None:
                check_positive(v, "clip", strict=strict)
        if None not in clip and all(map(is_concrete, clip)) and clip[0] > clip[1]:
            raise ValueError(f"clip: expected low <= high, got {tuple(clip)!r}")
    lo, width = _bin_grid(y, bins, value_range)
    counts = jnp.bincount(_bin_index(y, lo, width, bins), length=bins).astype(y.dtype)
    if clip is not None:
        counts = jnp.clip(counts, clip[0], clip[1])
    table = counts ** power
    if window is not None:
        # Zero-padded ("full") convolution, then the centred ``bins`` entries:
        # numpy's mode="same" returns max(bins, ks) entries when ks > bins.
        half = (len(window) - 1) // 2
        table = jnp.convolve(table, jnp.asarray(window, y.dtype), mode="full")[half:half + bins]
    # Bins with a zero value are reachable only by new labels: use the smallest
    # positive value so that no weight is infinite.
    smallest = jnp.min(jnp.where(table > 0, table, jnp.inf))
    return lo, width, jnp.where(table > 0, table, smallest)


def _bin_weights(y, lo, width, table):
    """Weights 1 / table[bin(y)] normalised to mean 1; returns (w [n], scale).
    A non-finite label (possible under jit, where labels are not value-checked)
    makes every weight NaN: the bins and the normalisation depend on all labels."""
    raw = 1.0 / table[_bin_index(y, lo, width, table.shape[0])]
    scale = 1.0 / jnp.mean(raw)
    return jnp.where(jnp.all(jnp.isfinite(y)), raw * scale, jnp.nan), scale


def _check_lds(kernel, ks, sigma, reweight):
    for name, v in (("ks", ks), ("sigma", sigma)):
        if not is_concrete(v):
            raise ValueError(f"{name}: expected a concrete number (it shapes the LDS window), "
                             f"got a traced value; under jit pass it as a static argument")
    if kernel not in LDS_KERNELS:
        raise ValueError(f"kernel: expected one of {LDS_KERNELS}, got {kernel!r}")
    if not is_int(ks) or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks: expected an odd int >= 1, got {ks!r}")
    check_positive(sigma, "sigma")
    if reweight not in ("inverse", "sqrt_inv"):
        raise ValueError(f"reweight: expected 'inverse' or 'sqrt_inv', got {reweight!r}")


def _bin_scheme_table(y, scheme: str, bins=100, value_range=None, clip="default",
                      kernel="gaussian", ks=5, sigma=2.0, reweight="sqrt_inv"):
    """Table of a bin scheme (one of ``BIN_SCHEMES``) with its defaults."""
    if scheme == "lds":
        _check_lds(kernel, ks, sigma, reweight)
        window = _lds_window(kernel, int(ks), float(sigma))
        power = 0.5 if reweight == "sqrt_inv" else 1.0
        clip = None if clip == "default" else clip
    else:
        window, power = None, (0.5 if scheme == "sqrt_inv" else 1.0)
        clip = ((5.0, 1000.0) if scheme == "inverse" else (1.0, None)) if clip == "default" else clip
    return _bin_table(y, bins, value_range, clip, power, window)


def inverse_weights(labels, bins: int = 100, value_range=None,
                    clip: tuple | None = (5.0, 1000.0)) -> jax.Array:
    """Inverse-frequency weights on equal-width bins, 1 / clip(count), mean 1.

    Args:
      labels: training labels [n], finite.
      bins: number of equal-width bins over ``value_range``.
      value_range: (low, high); default (min, max) of the labels. Labels
        outside go to the edge bins.
      clip: (low, high) bounds on the bin counts (None for no bound); the
        default (5, 1000) is the DIR reference (Yang et al. 2021).

    Returns:
      Weights [n], mean 1.
    """
    y = _labels_1d(labels)
    lo, width, table = _bin_scheme_table(y, "inverse", bins, value_range, clip)
    return _bin_weights(y, lo, width, table)[0]


def sqrt_inverse_weights(labels, bins: int = 100, value_range=None,
                         clip: tuple | None = (1.0, None)) -> jax.Array:
    """Square-root inverse-frequency weights, 1 / sqrt(clip(count)), mean 1.

    Args:
      labels: training labels [n], finite.
      bins: number of equal-width bins.
      value_range: (low, high); default (min, max) of the labels.
      clip: (low, high) bounds on the counts; the default only lifts empty
        bins to 1 (DIR does not clip for sqrt_inv; training labels never
        fall into an empty bin, so their weights are the same).

    Returns:
      Weights [n], mean 1.
    """
    y = _labels_1d(labels)
    lo, width, table = _bin_scheme_table(y, "sqrt_inv", bins, value_range, clip)
    return _bin_weights(y, lo, width, table)[0]


def lds_weights(labels, bins: int = 100, value_range=None, kernel: str = "gaussian",
                ks: int = 5, sigma: float = 2.0, reweight: str = "sqrt_inv",
                clip: tuple | None = None) -> jax.Array:
    """Label distribution smoothing (LDS) weights, as in DIR (Yang et al. 2021).

    Following DIR's reference ``_prepare_weights``: bin counts, clipped if
    ``clip`` is given (DIR clips to (5, 1000) for "inverse"), square-rooted for
    "sqrt_inv", convolved (zero boundary) with the LDS window of odd size ks
    (``_lds_window``), and the weight of a label is 1 / smoothed value of its
    bin, normalised to mean 1.

    Args:
      labels: training labels [n], finite.
      bins: number of equal-width bins.
      value_range: (low, high); default (min, max) of the labels.
      kernel: "gaussian", "triang" or "laplace".
      ks: window size, odd >= 1.
      sigma: window scale (gaussian std / laplace scale) in bins, > 0.
      reweight: "sqrt_inv" or "inverse".
      clip: optional (low, high) bounds on the raw counts.

    Returns:
      Weights [n], mean 1.
    """
    y = _labels_1d(labels)
    lo, width, table = _bin_scheme_table(y, "lds", bins, value_range, clip, kernel, ks,
                                         sigma, reweight)
    return _bin_weights(y, lo, width, table)[0]


__all__ = ["inverse_weights", "sqrt_inverse_weights", "lds_weights", "BIN_SCHEMES",
           "LDS_KERNELS"]
