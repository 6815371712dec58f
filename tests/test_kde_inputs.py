"""hypuc_jax.kde on labels at extreme scales and offsets (float32 limits) and on
bad input: scipy's density where one exists, else a named error, never NaN."""
import warnings

import numpy as np
import pytest
import scipy.stats

from hypuc_jax import kde, weights
from kde_helpers import closed_form, rel_l1, skewed_labels


@pytest.mark.parametrize("offset, spread", [(1e6, 0.5), (1e4, 0.05), (-3e5, 0.2)])
def test_float32_labels_far_from_zero_match_scipy(offset, spread):
    # The exact sum used to scale raw coordinates by 1/h before differencing:
    # at |y| / h ~ 1e7 a float32 step is about a bandwidth (relative L1 ~1e-2).
    y = (offset + spread * np.random.default_rng(0).standard_normal(500)).astype(np.float32)
    h = float(kde.bandwidth(y))
    y64 = y.astype(np.float64)
    ref = scipy.stats.gaussian_kde(y64, bw_method=h / np.std(y64, ddof=1))(y64)
    for method in kde.METHODS:
        assert rel_l1(kde.gaussian_kde(y, y, method=method), ref) < 1e-5, method


def test_exact_density_near_the_float32_maximum_is_finite():
    # centring by the mean overflowed to inf (NaN densities) where the uncentred sum did not
    y = np.array([2e38, 2.5e38, 3e38], np.float32)
    got = np.asarray(kde.gaussian_kde(y, y, bandwidth=1e37, method="exact"), np.float64)
    d = (y[:, None].astype(np.float64) - y[None, :]) / 1e37
    ref = np.exp(-0.5 * d ** 2).sum(axis=1) / (3 * np.sqrt(2 * np.pi) * 1e37)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("n, chunk", [(3000, 2048), (5, 2)])
def test_exact_density_far_from_the_labels_is_zero(n, chunk):
    # padding samples used to sit at max|point| + 100 bandwidths: at points ~2^31
    # bandwidths out float32 rounded them onto the point, each adding a full kernel
    y = np.random.default_rng(0).normal(size=n).astype(np.float32)
    far = np.array([1e9, -3e9, 1e38], np.float32)
    ref = scipy.stats.gaussian_kde(y.astype(np.float64))(far.astype(np.float64))
    got = np.asarray(kde.gaussian_kde(y, far, method="exact", chunk_size=chunk))
    np.testing.assert_array_equal(ref, 0.0)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("scale", [1e-19, 1e-30, 1e20])
@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_bandwidth_of_labels_at_extreme_scales_matches_closed_form(scale, rule):
    # squares of deviations ~1e-19 underflow float32: the variance came out 0 and the
    # bandwidth fell back to 1e-3 (weights all 1), 1e15 times too large
    y = (skewed_labels(2000) * scale).astype(np.float32)
    np.testing.assert_allclose(kde.bandwidth(y, rule), closed_form(y.astype(np.float64), rule),
                               rtol=1e-5)


def test_labels_spread_over_1e20_match_scipy():
    # their squared deviations overflow float32: refused before, now scaled first
    y = np.array([0.0, 1e20, 5.0, -4e19], np.float32)
    pts = np.array([4.0, 6.0, 9e19], np.float32)
    h = float(kde.bandwidth(y))
    y64 = y.astype(np.float64)
    ref = scipy.stats.gaussian_kde(y64, bw_method=h / np.std(y64, ddof=1))(pts.astype(np.float64))
    for method in kde.METHODS:
        np.testing.assert_allclose(kde.gaussian_kde(y, pts, method=method), ref, rtol=1e-4)


@pytest.mark.parametrize("scale, match", [
    (4e-38, "samples: the 'scott' bandwidth of the labels underflows float32"),
    (1e-30, "samples: the labels are too finely spread for the binned density"),
])
def test_labels_too_small_for_float32_are_refused_not_nan(scale, match):
    # the bandwidth came back 0 (exact: NaN) and the binned sums overflowed (NaN, inf or 0)
    y = (np.random.default_rng(0).standard_normal(2000) * scale).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        kde.gaussian_kde(y, np.zeros(1, np.float32))
    if scale > 1e-37:         # the exact sum still has the density's scale: scipy's value
        y64 = y.astype(np.float64)
        ref = scipy.stats.gaussian_kde(y64)
        got = kde.gaussian_kde(y, np.zeros(1, np.float32), method="exact",
                               bandwidth=float(ref.factor * np.std(y64, ddof=1)))
        np.testing.assert_allclose(got, ref(np.zeros(1)), rtol=1e-4)


def test_binned_scale_bound_follows_dimension_and_dtype():
    # 1-D labels at 1e-28 (n / cell volume ~1e34) still fit float32's binned sums;
    # the exact grid (density_grid) and float64 labels are not bound by them
    y = (np.random.default_rng(0).standard_normal(2000) * 1e-28).astype(np.float32)
    y64 = y.astype(np.float64)
    ref = scipy.stats.gaussian_kde(y64)
    h = float(ref.factor * np.std(y64, ddof=1))
    np.testing.assert_allclose(kde.gaussian_kde(y, np.zeros(1, np.float32), bandwidth=h),
                               ref(np.zeros(1)), rtol=2e-3)
    tiny = (np.random.default_rng(0).standard_normal(2000) * 1e-30).astype(np.float32)
    lo, step, dens = kde.density_grid(tiny, method="exact")
    t64 = tiny.astype(np.float64)
    peak = scipy.stats.gaussian_kde(t64, bw_method=float(kde.bandwidth(tiny)) / np.std(t64, ddof=1))
    np.testing.assert_allclose(float(dens.max()), peak(np.linspace(-1e-30, 1e-30, 2001)).max(),
                               rtol=2e-3)
    import jax
    with jax.enable_x64(True):
        np.testing.assert_allclose(kde.gaussian_kde(t64, np.zeros(1), bandwidth=h * 1e-2),
                                   scipy.stats.gaussian_kde(t64, bw_method=h * 1e-2 / np.std(
                                       t64, ddof=1))(np.zeros(1)), rtol=1e-4)


@pytest.mark.parametrize("bandwidth", [1e-39, 1e-46, 1e39])
def test_bandwidth_beyond_the_labels_float_range_is_refused(bandwidth):
    # positive as a Python float, but 0, subnormal (flushed to 0) or inf in float32
    y = np.array([0.0, 1.0, 2.0], np.float32)
    for method in kde.METHODS:
        with pytest.raises(ValueError, match="bandwidth: expected values in"):
            kde.gaussian_kde(y, y, bandwidth=bandwidth, method=method)
    with pytest.raises(ValueError, match="bandwidth: expected values in"):
        weights.kde_weights(y, bandwidth=bandwidth)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
GOOD = np.array([4.0, 4.2, 4.5, 6.0])


@pytest.mark.parametrize("samples, points, kwargs, arg", [
    (np.array([4.0, np.nan, 5.0]), GOOD, {}, "samples"),
    (np.array([4.0, np.inf, 5.0]), GOOD, {}, "samples"),
    (np.array([]), GOOD, {}, "samples"),
    (np.zeros((5, 4)), np.zeros((2, 4)), {}, "samples"),
    (np.zeros((5, 2)), np.zeros((2, 3)), {}, "points"),
    (np.zeros((5, 2)), np.zeros(2), {}, "points"),
    (GOOD, np.array([np.nan]), {}, "points"),
    (GOOD, GOOD, {"bandwidth": 0.0}, "bandwidth"),
    (GOOD, GOOD, {"bandwidth": -1.0}, "bandwidth"),
    (GOOD, GOOD, {"bandwidth": float("nan")}, "bandwidth"),
    (GOOD, GOOD, {"bandwidth": float("inf")}, "bandwidth"),
    (GOOD, GOOD, {"bandwidth": "bogus"}, "bandwidth"),
    (np.zeros((5, 2)), np.zeros((2, 2)), {"bandwidth": np.ones(3)}, "bandwidth"),
    (GOOD, GOOD, {"method": "fast"}, "method"),
    (GOOD, GOOD, {"grid_size": 1}, "grid_size"),
    (GOOD, GOOD, {"grid_size": 100.0}, "grid_size"),
    (GOOD, GOOD, {"chunk_size": 0}, "chunk_size"),
    (np.array(["a", "b"]), GOOD, {}, "samples: expected a real numeric array"),
    (np.array([-3e38, 0.0, 3e38], np.float32), GOOD, {}, "samples: the labels' range .*overflows"),
    (np.array([-3e38, 0.0, 3e38], np.float32), GOOD, {"method": "exact"},
     "samples: the labels' range overflows"),
    (np.array([0.0, 3e38], np.float32), GOOD, {"bandwidth": 1e38},
     "samples: the labels' range padded by 4 bandwidths"),
])
def test_bad_input_raises_value_error_naming_argument(samples, points, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        kde.gaussian_kde(samples, points, **kwargs)


def test_bandwidth_bad_input():
    with pytest.raises(ValueError, match="samples"):
        kde.bandwidth(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="bandwidth"):
        kde.bandwidth(GOOD, -0.1)
    with pytest.raises(ValueError, match="samples"):
        kde.bandwidth(np.zeros((3, 5)))


@pytest.mark.parametrize("method", ["binned", "exact"])
def test_half_precision_labels_are_computed_in_float32(method):
    """float16 labels (the FFT needs float32 or wider) give scipy's density of the
    float16-rounded values (Scott: kernel sd 1.06 s n^-1/5 = scipy factor 1.06 n^-1/5)."""
    from scipy import stats

    rng = np.random.default_rng(4)
    y = rng.normal(4.0, 0.5, 300).astype(np.float16)
    got = kde.gaussian_kde(y, y[:7], method=method)
    ref = stats.gaussian_kde(y.astype(np.float64), bw_method=1.06 * 300 ** -0.2)
    np.testing.assert_allclose(np.asarray(got), ref(y[:7].astype(np.float64)), rtol=2e-3)


def _product_kernel_sum(x, q, h):
  """Numpy reference: the 3-D Gaussian product-kernel KDE of x [n, 3] at q [m, 3]
  with diagonal bandwidth h [3], float64, in blocks of points."""
  out = []
  for block in np.array_split(q, max(1, len(q) // 250)):
    z = (block[:, None, :] - x[None, :, :]) / h
    out.append(np.exp(-0.5 * (z ** 2).sum(-1)).mean(1))
  return np.concatenate(out) / ((2 * np.pi) ** 1.5 * h.prod())


@pytest.mark.parametrize("kind, n", [("normal", 2000), ("gamma", 5000)])
def test_a_capped_3d_grid_is_bias_corrected_to_the_spec_accuracy(kind, n):
  """3-D labels: the 2**22-node cap leaves a step of h/4 to h/3, where plain
  linear binning and interpolation are ~4e-3 off the exact sum (relative L1).
  With the step^2 bias removed the binned density meets the SPEC's 1e-3
  against a numpy product-kernel sum with the same diagonal bandwidth, and no
  warning is due; 1-D labels at the default grid (step <= h/16) stay quiet too."""
  import warnings
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 3)) if kind == "normal" else rng.gamma(3.0, 1.0, size=(n, 3))
  h = np.asarray(kde.bandwidth(x), np.float64)
  assert max(kde.grid_size_for(x)) < 200              # capped: ~160 nodes per axis
  q = x[:1500]
  want = _product_kernel_sum(x, q, h)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = np.asarray(kde.gaussian_kde(x, q), np.float64)
    kde.gaussian_kde(rng.gamma(9.0, 0.47, 20000), np.linspace(2, 8, 7))
  assert rel_l1(got, want) < 1e-3
  assert np.all(got >= 0)


def test_a_3d_grid_coarser_than_h_over_2_5_warns_that_it_misses_1e_3():
  """50000 Gaussian 3-D labels: the cap leaves a step of ~0.47 h, where even the
  bias-corrected density is ~1.2e-3 off the exact sum: it must say so."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50000, 3))
  h = np.asarray(kde.bandwidth(x), np.float64)
  q = x[:1000]
  want = _product_kernel_sum(x, q, h)
  with pytest.warns(UserWarning, match=r"binned KDE: the labels span .* bandwidths, so the grid "
                    r"\(at most 4194304 nodes over 3 dimensions\) has a step of 0\.4\d bandwidths"
                    r"; expect a relative L1 error above 1e-3 .*1/2\.5"):
    got = np.asarray(kde.gaussian_kde(x, q), np.float64)
  assert rel_l1(got, want) > 1e-3        # the warning is warranted


def test_python_lists_need_no_jax_array_conversion_and_match_scipy():
    """Lists are array-likes like any other: no JAX deprecation warning (raised
    as an error here); Scott's closed form (1.06 s n^-1/5) and scipy's density."""
    labels = [0.0, 1.0, 2.5, 4.0]
    s = np.std(labels, ddof=1)
    ref = scipy.stats.gaussian_kde(labels, bw_method=1.06 * len(labels) ** -0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        h = kde.bandwidth(labels)
        dens = kde.gaussian_kde(labels, [0.5, 3.0], method="exact")
    np.testing.assert_allclose(float(h), 1.06 * s * len(labels) ** -0.2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dens), ref([0.5, 3.0]), rtol=1e-5)
