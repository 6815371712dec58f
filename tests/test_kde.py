"""Tests for hypuc_jax.kde against scipy.stats.gaussian_kde and closed forms (labels at
extreme scales and bad input: test_kde_inputs.py)."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hypuc_jax import kde, weights
from kde_helpers import closed_form, diagonal_cov_sample, rel_l1, skewed_labels


# --------------------------------------------------------------------------- #
# Bandwidth rules
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_bandwidth_rules_match_closed_forms(rule):
    y = skewed_labels(1000)
    h = kde.bandwidth(y, rule)
    assert h.shape == ()
    np.testing.assert_allclose(h, closed_form(y, rule), rtol=1e-5)
    x = np.stack([y, np.random.default_rng(1).exponential(2.0, 1000)], axis=1)
    h2 = kde.bandwidth(x, rule)
    assert h2.shape == (2,)
    np.testing.assert_allclose(h2, closed_form(x, rule), rtol=1e-5)


def test_bandwidth_float_is_passed_through_per_dimension():
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(kde.bandwidth(x, 0.25), [0.25] * 3)
    np.testing.assert_allclose(kde.bandwidth(x, np.array([0.1, 0.2, 0.3])), [0.1, 0.2, 0.3])
    assert float(kde.bandwidth(x[:, 0], 0.5)) == 0.5


def test_zero_spread_falls_back_to_documented_minimum():
    y = np.full(20, 4.2)
    expected = 1.06 * kde.MIN_RELATIVE_SCALE * 4.2 * 20 ** -0.2
    np.testing.assert_allclose(kde.bandwidth(y), expected, rtol=1e-5)
    np.testing.assert_allclose(kde.bandwidth(np.zeros(20), "silverman"),
                               0.9 * kde.MIN_RELATIVE_SCALE * 20 ** -0.2, rtol=1e-5)
    for method in kde.METHODS:
        dens = np.asarray(kde.gaussian_kde(y, y[:3], method=method))
        np.testing.assert_allclose(dens, 1 / (np.sqrt(2 * np.pi) * expected), rtol=1e-3)
    # Tied quartiles but s > 0: Silverman uses s (IQR / 1.34 is 0).
    tied = np.r_[np.full(30, 4.2), 6.0]
    np.testing.assert_allclose(kde.bandwidth(tied, "silverman"),
                               0.9 * np.std(tied, ddof=1) * 31 ** -0.2, rtol=1e-5)


# --------------------------------------------------------------------------- #
# Density vs scipy
# --------------------------------------------------------------------------- #
def test_exact_1d_matches_scipy_float64():
    y = skewed_labels(1500)
    pts = np.linspace(y.min() - 1, y.max() + 1, 700)
    with jax.enable_x64(True):
        h = float(kde.bandwidth(y))
        ours = kde.gaussian_kde(y, pts, bandwidth=h, method="exact", chunk_size=256)
        assert ours.dtype == jnp.float64
    ref = scipy.stats.gaussian_kde(y, bw_method=h / np.std(y, ddof=1))(pts)
    assert rel_l1(ours, ref) < 1e-5


def test_exact_2d_and_3d_match_scipy_float64():
    for d, n in ((2, 600), (3, 300)):
        x = diagonal_cov_sample(n, d, stds=[1.0, 0.4, 2.0][:d])
        factor = 0.35
        pts = x[:200] + 0.1
        ref = scipy.stats.gaussian_kde(x.T, bw_method=factor)(pts.T)
        with jax.enable_x64(True):
            ours = kde.gaussian_kde(x, pts, bandwidth=factor * np.std(x, 0, ddof=1),
                                    method="exact", chunk_size=64)
        assert rel_l1(ours, ref) < 1e-5, d


def test_binned_1d_matches_scipy():
    y = skewed_labels(5000)
    h = float(kde.bandwidth(y))
    ref_kde = scipy.stats.gaussian_kde(y, bw_method=h / np.std(y, ddof=1))
    pts = np.linspace(y.min() - 0.5, y.max() + 0.5, 1000)
    assert rel_l1(kde.gaussian_kde(y, pts), ref_kde(pts)) < 1e-3
    # At the labels themselves (what the weights use).
    assert rel_l1(kde.gaussian_kde(y, y[:1000]), ref_kde(y[:1000])) < 1e-3


@pytest.mark.parametrize("case", ["lognormal", "outlier"])
def test_binned_grid_follows_the_bandwidth(case):
    """Labels that span thousands of bandwidths (heavy right tail, or one far
    outlier) would leave the default 4096-node grid coarser than the kernel;
    the grid grows instead, and the density (and so the weights) stay within
    the SPEC's 1e-3 of scipy's exact KDE."""
    rng = np.random.default_rng(0)
    y = (rng.lognormal(0.0, 1.5, 20000) if case == "lognormal"
         else np.r_[rng.normal(size=20000), 1e4])
    rule = "silverman" if case == "lognormal" else "scott"
    h = float(kde.bandwidth(y, rule))
    assert (y.max() - y.min()) / h > 4096 / 16             # the old grid was too coarse
    ref = scipy.stats.gaussian_kde(y, bw_method=h / np.std(y, ddof=1))(y[:3000])
    assert rel_l1(kde.gaussian_kde(np.float32(y), np.float32(y[:3000]), rule), ref) < 1e-3


def test_labels_too_wide_for_any_grid_are_refused():
    y = np.r_[np.random.default_rng(0).normal(size=1000), 1e8]
    with pytest.raises(ValueError, match="bandwidth: the labels span .* method='exact'"):
        kde.gaussian_kde(y, y, bandwidth=0.1)
    assert np.all(np.isfinite(kde.gaussian_kde(y, y[:5], bandwidth=0.1, method="exact")))


def test_exact_gradient_is_finite_with_padded_chunks():
    """n not a multiple of chunk_size pads the last sample block; the gradient
    (w.r.t. points and bandwidth) matches the closed form, with no NaN."""
    rng = np.random.default_rng(0)
    y, q, h = rng.normal(size=3000), np.linspace(-1, 1, 4), 0.3
    k = np.exp(-0.5 * ((q[:, None] - y[None]) / h) ** 2) / (len(y) * h * np.sqrt(2 * np.pi))
    f = lambda p, bw: kde.gaussian_kde(jnp.float32(y), p, bandwidth=bw, method="exact",
                                       chunk_size=1024).sum()
    gq = jax.grad(f)(jnp.float32(q), 0.3)
    np.testing.assert_allclose(gq, (-(q[:, None] - y[None]) / h ** 2 * k).sum(1),
                               rtol=1e-3, atol=1e-5)
    gh = jax.grad(f, argnums=1)(jnp.float32(q), 0.3)
    want = (k * (((q[:, None] - y[None]) / h) ** 2 - 1) / h).sum()
    np.testing.assert_allclose(gh, want, rtol=1e-3, atol=1e-5)


def test_binned_2d_matches_scipy():
    x = diagonal_cov_sample(2000, 2, stds=[1.0, 0.3])
    factor = 0.3
    pts = x[:500]
    ref = scipy.stats.gaussian_kde(x.T, bw_method=factor)(pts.T)
    ours = kde.gaussian_kde(x, pts, bandwidth=factor * np.std(x, 0, ddof=1))
    assert rel_l1(ours, ref) < 1e-3


def test_binned_is_zero_beyond_padded_grid_and_exact_is_not():
    y = skewed_labels(200)
    h = float(kde.bandwidth(y))
    far = np.array([y.max() + (kde.PAD_BANDWIDTHS + 1) * h])
    assert float(kde.gaussian_kde(y, far)[0]) == 0.0
    assert float(kde.gaussian_kde(y, far, method="exact")[0]) > 0.0


def test_binned_density_in_a_gap_between_labels_is_zero_not_fft_round_off():
    # 10-20 lie > 30 bandwidths from every label: scipy's float64 sum is 0 there
    # (below 1e-190); the float32 FFT used to leave ~1e-8 of noise
    rng = np.random.default_rng(0)
    y = np.r_[rng.standard_normal(500), 30 + rng.standard_normal(500)].astype(np.float32)
    q = np.array([10.0, 15.0, 20.0, 0.5, 29.0], np.float32)
    ref = scipy.stats.gaussian_kde(y.astype(np.float64), bw_method=0.3 / np.std(y, ddof=1))(q)
    got = np.asarray(kde.gaussian_kde(y, q, bandwidth=0.3))
    np.testing.assert_array_equal(got[:3], 0.0)
    assert np.all(ref[:3] < 1e-100)
    np.testing.assert_allclose(got[3:], ref[3:], rtol=2e-3)
    # 2-D: a gap along the second axis only
    y2 = np.c_[rng.standard_normal(400), np.r_[np.zeros(200), np.full(200, 40.0)]
               + rng.standard_normal(400)].astype(np.float32)
    q2 = np.array([[0.0, 20.0], [0.0, 0.0]], np.float32)
    got2 = np.asarray(kde.gaussian_kde(y2, q2, bandwidth=(0.4, 0.4)))
    assert got2[0] == 0.0 and got2[1] > 0


@pytest.mark.parametrize("scale", [1e-30, 1e33, 1e34, 1e35])
def test_binned_density_is_accurate_or_refused_at_extreme_label_scales(scale):
    # the normalised float32 kernel's tails underflow at h ~ 1e33 and more: the density
    # lost 4e-4 at 1e34 and 13% at 1e35, silently; it is now refused there (the exact
    # sum stays accurate). Reference: the float64 scipy sum in unit scale.
    base = np.random.default_rng(1).gamma(2.0, 1.0, 300)
    h = 1.06 * np.std(base, ddof=1) * base.size ** -0.2
    ref = scipy.stats.gaussian_kde(base, bw_method=h / np.std(base, ddof=1))(base) / scale
    y = (base * scale).astype(np.float32)
    for method in ("binned", "exact"):
        if method == "binned" and h * scale > 1.4e33:
            with pytest.raises(ValueError, match="bandwidth: .* too wide for the binned"):
                kde.gaussian_kde(y, y, bandwidth=np.float32(h * scale))
            continue
        got = kde.gaussian_kde(y, y, bandwidth=np.float32(h * scale), method=method)
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-4)


def test_exact_memory_is_tiled_not_n_by_m():
    n = 20_000
    spec = jax.ShapeDtypeStruct((n, 1), jnp.float32)
    compiled = kde._exact_density.lower(spec, spec, jax.ShapeDtypeStruct((1,), jnp.float32),
                                        1024).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < n * n * 4 // 100  # a full [n, m] float32 matrix would be 1.6 GB


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #
# rounded: label spreads below ~1e-28 are refused by name (test_kde_inputs.py)
labels_strategy = hnp.arrays(np.float64, 40, elements=st.floats(-100, 100, allow_nan=False).map(
    lambda v: round(v, 4)))


@settings(max_examples=20, deadline=None)
@given(labels_strategy, st.sampled_from(kde.METHODS))
def test_density_nonnegative_and_integrates_to_one(y, method):
    h = float(kde.bandwidth(y))
    grid = np.linspace(y.min() - 7 * h, y.max() + 7 * h, 6001)
    dens = np.asarray(kde.gaussian_kde(y, grid, method=method), np.float64)
    assert np.all(dens >= 0)
    np.testing.assert_allclose(scipy.integrate.trapezoid(dens, grid), 1.0, rtol=1e-3)


# --------------------------------------------------------------------------- #
# jit and vmap
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", kde.METHODS)
def test_jit_and_vmap_over_label_sets(method):
    sets = np.stack([skewed_labels(300, seed=s) for s in range(3)])
    sets[1] *= 2.0  # different spreads -> different rule bandwidths per set
    pts = np.stack([np.linspace(2, 12, 50)] * 3)
    grid = max(kde.grid_size_for(s) for s in sets)        # static, outside the transform
    fn = partial(kde.gaussian_kde, method=method, grid_size=grid)
    batched = jax.vmap(fn)(jnp.asarray(sets), jnp.asarray(pts))
    assert batched.shape == (3, 50)
    for k in range(3):
        h = np.std(sets[k], ddof=1) * 1.06 * 300 ** -0.2
        ref = scipy.stats.gaussian_kde(sets[k], bw_method=h / np.std(sets[k], ddof=1))(pts[k])
        assert rel_l1(batched[k], ref) < 1e-3
    jitted = jax.jit(fn)(jnp.asarray(sets[0]), jnp.asarray(pts[0]))
    np.testing.assert_allclose(jitted, batched[0], rtol=1e-5, atol=1e-7)
    two_d = jax.vmap(partial(fn, bandwidth=0.5))(jnp.asarray(sets[:, :, None]),
                                                 jnp.asarray(pts[:, :, None]))
    assert two_d.shape == (3, 50)
    for k in range(3):            # [n, 1] labels: the plain Gaussian sum at h = 0.5
        ref = np.mean(np.exp(-0.5 * ((pts[k][:, None] - sets[k][None, :]) / 0.5) ** 2),
                      axis=1) / (0.5 * np.sqrt(2 * np.pi))
        assert rel_l1(two_d[k], ref) < 1e-3


@pytest.mark.parametrize("method", kde.METHODS)
def test_gradient_at_all_equal_labels_is_finite(method):
    # the rule bandwidth's sqrt(var = 0) used to make every gradient NaN
    y = jnp.full(5, 4.0)
    g = jax.grad(lambda s: kde.gaussian_kde(s, jnp.array([4.0, 4.001]), method=method).sum())(y)
    assert np.all(np.isfinite(g))
    g = jax.grad(lambda s: weights.kde_weights(s).sum())(y)
    assert np.all(np.isfinite(g))


def test_interpolate_grid_names_a_wrong_shape():
    # a ValueError naming the argument (was a chex AssertionError, or a gather TypeError)
    bad = [((jnp.ones(3), jnp.zeros(1), jnp.ones(1), jnp.ones(4)), "points: expected shape"),
           ((jnp.zeros((3, 1)), jnp.zeros(1), jnp.ones(1), jnp.ones(1)), "values: .*G_k >= 2"),
           ((jnp.zeros((3, 1)), jnp.zeros(2), jnp.ones(1), jnp.ones(4)), r"lo: .*\(1,\)"),
           ((jnp.zeros((3, 2)), jnp.zeros(2), jnp.ones(2), jnp.ones(4)), "values: expected")]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            kde.interpolate_grid(*args)
        with pytest.raises(ValueError, match=match):                # also under jit
            jax.jit(kde.interpolate_grid)(*args)
    # density_grid's output fits as it is; linear between nodes (numpy's interp)
    y = np.random.default_rng(0).normal(size=200).astype(np.float32)
    lo, step, dens = kde.density_grid(y)
    q = np.linspace(-2.0, 2.0, 9, dtype=np.float32)
    nodes = np.asarray(lo[0]) + np.asarray(step[0]) * np.arange(dens.shape[0])
    np.testing.assert_allclose(kde.interpolate_grid(q[:, None], lo, step, dens),
                               np.interp(q, nodes, np.asarray(dens)), rtol=1e-5)


def test_traced_binned_kde_warns_and_grid_size_for_restores_the_eager_grid():
    # Under jit the grid cannot grow with the data: labels spanning ~1e5
    # bandwidths were silently off by ~15% with the default 4096 nodes.
    y = np.random.default_rng(0).uniform(0, 100, 2000).astype(np.float32)
    pts, h = y[:50], 1e-3
    ref = scipy.stats.gaussian_kde(y.astype(np.float64), bw_method=h / np.std(y, ddof=1))(pts)
    with pytest.warns(UserWarning, match="grid_size_for"):
        jax.jit(lambda s, p: kde.gaussian_kde(s, p, bandwidth=h))(y, pts)
    grid = kde.grid_size_for(y, h)
    assert grid == (2 ** 21,)                  # 1e5 bandwidths x 16 steps, a power of two
    jitted = jax.jit(lambda s, p: kde.gaussian_kde(s, p, bandwidth=h, grid_size=grid))(y, pts)
    np.testing.assert_allclose(jitted, kde.gaussian_kde(y, pts, bandwidth=h), rtol=1e-6)
    assert rel_l1(jitted, ref) < 1e-3
    with pytest.raises(ValueError, match="outside"):
        jax.jit(kde.grid_size_for)(y)
    for fn in (lambda s: kde.gaussian_kde(s, s), lambda s: kde.density_grid(s)):
        with pytest.warns(UserWarning) as record:      # attributed to this file, not to jax
            jax.jit(fn)(y)
        assert record[0].filename == __file__


def test_binned_density_under_jit_is_nan_for_non_finite_inputs():
    """Under jit the binned grid read 0 at a NaN point and everywhere for a NaN
    sample (the exact sum gave NaN): both NaN now, as a closed form says."""
    samples, points = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, jnp.nan])
    for method in ("binned", "exact"):
        at = jax.jit(lambda p: kde.gaussian_kde(samples, p, bandwidth=0.5, method=method,
                                                grid_size=512))(points)
        ref = np.mean(np.exp(-0.5 * ((2.0 - np.array([1.0, 2.0, 3.0])) / 0.5) ** 2)) / (
            0.5 * np.sqrt(2 * np.pi))
        assert float(at[0]) == pytest.approx(ref, rel=1e-3) and np.isnan(float(at[1]))
        for bad in (jnp.nan, jnp.inf):
            out = jax.jit(lambda s: kde.gaussian_kde(s, jnp.array([1.0, 2.0]), bandwidth=0.5,
                                                     method=method, grid_size=512))(
                samples.at[1].set(bad))
            assert np.isnan(np.asarray(out)).all(), (method, bad, out)
            grid = jax.jit(lambda s: kde.density_grid(s, bandwidth=0.5, method=method,
                                                      grid_size=64))(samples.at[1].set(bad))
            assert np.isnan(np.asarray(grid[2])).all(), (method, bad)   # the grid's density
