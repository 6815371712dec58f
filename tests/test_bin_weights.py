"""hypuc_jax.bin_weights (via hypuc_jax.weights): inverse, square-root inverse and LDS
weights against numpy histograms and scipy.ndimage convolutions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from hypuc_jax import weights
from kde_helpers import skewed_labels

Y = skewed_labels(2000)


def numpy_bins(y, bins):
    counts, edges = np.histogram(y, bins=bins, range=(y.min(), y.max()))
    idx = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, bins - 1)
    return counts.astype(np.float64), idx


def mean_one(w):
    return w / w.mean()


def test_inverse_and_sqrt_inverse_match_numpy():
    counts, idx = numpy_bins(Y, 50)
    with jax.enable_x64(True):
        inv = weights.inverse_weights(Y, bins=50, clip=(5, 100))
        sq = weights.sqrt_inverse_weights(Y, bins=50)
    np.testing.assert_allclose(inv, mean_one(1 / np.clip(counts, 5, 100)[idx]), rtol=1e-10)
    np.testing.assert_allclose(sq, mean_one(1 / np.sqrt(counts[idx])), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_bin_weights_of_half_precision_labels_count_in_float32(dtype):
    """70000 labels in one bin: a float16 count overflows (inf -> weight 0 /
    NaN), a bfloat16 one rounds; the weights equal the float64 reference."""
    y = np.r_[np.zeros(70000), np.ones(1001)]
    counts = np.array([70000.0, 1001.0])[(y > 0.5).astype(int)]
    for fn, ref in ((weights.inverse_weights, 1 / counts),
                    (weights.sqrt_inverse_weights, 1 / np.sqrt(counts))):
        got = np.asarray(fn(jnp.asarray(y, dtype), bins=2, clip=None), np.float64)
        np.testing.assert_allclose(got, mean_one(ref), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(weights.lds_weights(jnp.asarray(y, dtype), bins=2),
                                         np.float64)))


def dir_window(kernel, ks, sigma):
    """DIR's get_lds_kernel_window (Yang et al. 2021, imbalanced-regression)."""
    half = (ks - 1) // 2
    if kernel == "gaussian":
        base = np.r_[np.zeros(half), 1.0, np.zeros(half)]
        win = scipy.ndimage.gaussian_filter1d(base, sigma=sigma)
        return win / win.max()
    if kernel == "triang":
        return scipy.signal.windows.triang(ks)
    lap = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma) / (2 * sigma)
    return lap / lap.max()


@pytest.mark.parametrize("kernel, ks, sigma", [("gaussian", 5, 2.0), ("gaussian", 9, 1.0),
                                               ("triang", 7, 2.0), ("laplace", 5, 1.5)])
@pytest.mark.parametrize("reweight", ["sqrt_inv", "inverse"])
def test_lds_matches_scipy_ndimage_convolution(kernel, ks, sigma, reweight):
    counts, idx = numpy_bins(Y, 60)
    clip = (5, 1000) if reweight == "inverse" else None
    values = np.clip(counts, 5, 1000) if reweight == "inverse" else np.sqrt(counts)
    smoothed = scipy.ndimage.convolve1d(values, dir_window(kernel, ks, sigma), mode="constant")
    with jax.enable_x64(True):
        ours = weights.lds_weights(Y, bins=60, kernel=kernel, ks=ks, sigma=sigma,
                                   reweight=reweight, clip=clip)
    np.testing.assert_allclose(ours, mean_one(1 / smoothed[idx]), rtol=1e-10)


@pytest.mark.parametrize("bins, ks", [(1, 5), (2, 5), (3, 9), (4, 5)])
def test_lds_with_fewer_bins_than_the_window_matches_scipy(bins, ks):
    # numpy's convolve(mode="same") returned max(bins, ks) entries, so labels
    # were looked up in the wrong bins when ks > bins.
    y = np.array([0.0, 1.0, 2.0, 3.0, 3.5, 7.0])
    counts, idx = numpy_bins(y, bins)
    smoothed = scipy.ndimage.convolve1d(np.sqrt(counts), dir_window("gaussian", ks, 2.0),
                                        mode="constant")
    with jax.enable_x64(True):
        ours = weights.lds_weights(y, bins=bins, ks=ks)
    np.testing.assert_allclose(ours, mean_one(1 / smoothed[idx]), rtol=1e-10)


def test_traced_options_clip_works_window_options_are_named():
    # clip may be vmapped (its order check used to fail on tracers); the LDS window's
    # ks and sigma shape it, so a traced one is refused by name (was a raw JAX error).
    counts, idx = numpy_bins(Y, 50)
    lows = jnp.array([1.0, 5.0, 20.0])
    got = jax.vmap(lambda c: weights.inverse_weights(Y, bins=50, clip=(c, 100.0)))(lows)
    for row, c in zip(got, (1.0, 5.0, 20.0)):
        np.testing.assert_allclose(row, mean_one(1 / np.clip(counts, c, 100)[idx]), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma: expected a concrete number"):
        jax.jit(lambda s: weights.lds_weights(Y, sigma=s))(2.0)
    with pytest.raises(ValueError, match="sigma: expected a concrete number"):
        jax.vmap(lambda s: weights.lds_weights(Y, kernel="laplace", sigma=s))(lows)
    with pytest.raises(ValueError, match="ks: expected a concrete number"):
        jax.jit(lambda k: weights.lds_weights(Y, ks=k))(5)
    # value_range as the documented (low, high) pair of traced values
    lo, hi = float(Y.min()), float(Y.max())
    traced = jax.jit(lambda a, b: weights.inverse_weights(Y, bins=50, clip=(5, 100),
                                                          value_range=(a, b)))(lo, hi)
    np.testing.assert_allclose(traced, mean_one(1 / np.clip(counts, 5, 100)[idx]), rtol=1e-5)
    stat = jax.jit(weights.lds_weights, static_argnames=("ks", "sigma"))(Y, ks=5, sigma=2.0)
    np.testing.assert_allclose(stat, weights.lds_weights(Y, ks=5, sigma=2.0), rtol=1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")          # the error, not a cast warning
@pytest.mark.parametrize("scheme", ["inv", "sqrt_inv", "lds"])
def test_finite_float64_labels_beyond_float32_are_refused_not_nan(scheme):
    """1e39 is finite in float64 but inf in float32 (64-bit mode off): the bins'
    width would be inf and every weight NaN; it is refused by name instead."""
    assert not jax.config.jax_enable_x64
    y = np.array([0.0, 1.0, 1e39])
    fns = {"inv": weights.inverse_weights, "sqrt_inv": weights.sqrt_inverse_weights,
           "lds": weights.lds_weights}
    with pytest.raises(ValueError, match="labels: expected values within the float32 range"):
        fns[scheme](y)
    with pytest.raises(ValueError, match="train_labels: expected values within the float32"):
        weights.fit_weighting("sqrt_inv" if scheme == "sqrt_inv" else "inverse", y)
