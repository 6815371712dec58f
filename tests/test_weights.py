"""Tests for hypuc_jax.weights against numpy/scipy reimplementations."""
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hypuc_jax import kde, weights
from kde_helpers import skewed_labels


Y = skewed_labels(2000)


def scipy_density(y, h):
    return scipy.stats.gaussian_kde(y, bw_method=h / np.std(y, ddof=1))(y)


def numpy_cap(w0, cap):
    """Scale c with mean(min(c w0, cap)) = 1, by enumerating how many are capped."""
    n = w0.size
    desc = np.sort(w0)[::-1]
    rest = np.cumsum(desc[::-1])[::-1]  # rest[k] = sum of desc[k:]
    for k in range(n):
        c = (n - k * cap) / rest[k]
        if c * desc[k] <= cap and (k == 0 or c * desc[k - 1] >= cap):
            return np.minimum(c * w0, cap)
    raise AssertionError("no solution")


def numpy_hypuc(rho, lam, floor=1e-12, max_weight=None):
    r = np.maximum(rho, floor * rho.max())
    w = r ** -lam
    w = w / w.mean()
    return w if max_weight is None else numpy_cap(w, max_weight)


# --------------------------------------------------------------------------- #
# HypUC weights
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("lam", [0.25, 0.5, 1.0])
def test_kde_weights_exact_match_numpy_from_scipy_density(lam):
    h = 1.06 * np.std(Y, ddof=1) * Y.size ** -0.2
    ref = numpy_hypuc(scipy_density(Y, h), lam)
    with jax.enable_x64(True):
        ours = weights.kde_weights(Y, lam=lam, method="exact")
    np.testing.assert_allclose(ours, ref, rtol=1e-8)


@pytest.mark.parametrize("scale, floor", [(1e30, 1e-12), (1.0, 1e-40)])
def test_weights_at_a_tiny_floor_or_density_scale_match_numpy(scale, floor):
    """A floor * max rho below float32's normal range changes nothing while no
    density is 0 (the floor is then inactive), and the weights do not depend
    on the labels' units: both were refused by a too strict check."""
    y = (Y * scale).astype(np.float32)
    y64 = y.astype(np.float64)
    h = 1.06 * np.std(y64, ddof=1) * y.size ** -0.2
    ref = numpy_hypuc(scipy_density(y64, h), 0.5, floor=floor)
    ours = weights.kde_weights(y, lam=0.5, method="exact", floor=floor)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    fitted = weights.fit_weighting("hypuc", y, floor=floor)(y)
    assert np.abs(np.asarray(fitted) - ref).sum() / y.size < 1e-3


def test_fitted_weighting_floors_the_density_in_a_label_gap():
    """The weighting training uses (``fit_weighting``'s grid): with a gap in the labels
    the density there is 0 (the default floor binds there too: see the next test), and
    only the floor keeps the weights finite. floor 0.01 is also active at the lone
    label 30 (its density is ~0.4% of the peak)."""
    y = np.r_[np.random.default_rng(5).standard_normal(500), 30.0]
    h = 1.06 * np.std(y, ddof=1) * y.size ** -0.2
    rho = scipy_density(y, h)
    assert rho[-1] < 0.01 * rho.max()                  # the floor binds at y = 30
    fitted = weights.fit_weighting("hypuc", y, lam=0.5, floor=0.01)
    np.testing.assert_allclose(fitted(y), numpy_hypuc(rho, 0.5, floor=0.01), rtol=2e-3)
    # in the gap: c * (floor * max rho)^-lam, c the training normalisation
    c = 1.0 / np.mean(np.maximum(rho, 0.01 * rho.max()) ** -0.5)
    gap = np.asarray(fitted(np.array([10.0, 15.0, 20.0])))
    np.testing.assert_allclose(gap, c * (0.01 * rho.max()) ** -0.5, rtol=2e-3)


def test_binned_weights_in_a_label_gap_take_the_default_floor():
    # the default floor 1e-12 * max rho binds in a gap > 30 bandwidths wide, as
    # with the exact sum (the binned grid's FFT round-off used to set the weight)
    rng = np.random.default_rng(0)
    y = np.r_[rng.standard_normal(500), 30 + rng.standard_normal(500)].astype(np.float32)
    rho = scipy.stats.gaussian_kde(y.astype(np.float64), bw_method=0.3 / np.std(y, ddof=1))
    rho_y = rho(y)
    c = 1.0 / np.mean(np.maximum(rho_y, 1e-12 * rho_y.max()) ** -1.0)
    gap = np.array([10.0, 15.0, 20.0], np.float32)
    assert np.all(rho(gap) < 1e-12 * rho_y.max())
    for method in ("binned", "exact"):
        fitted = weights.fit_weighting("hypuc", y, lam=1.0, bandwidth=0.3, method=method)
        np.testing.assert_allclose(fitted(gap), c / (1e-12 * rho_y.max()), rtol=2e-3)


def test_kde_weights_jit_over_a_traced_floor():
    f = jax.jit(lambda y, floor: weights.kde_weights(y, floor=floor, method="exact"))
    h = 1.06 * np.std(Y, ddof=1) * Y.size ** -0.2
    np.testing.assert_allclose(f(Y.astype(np.float32), 1e-12),
                               numpy_hypuc(scipy_density(Y, h), 0.5), rtol=1e-4)


def test_kde_weights_binned_and_cap_match_numpy():
    h = float(kde.bandwidth(Y))
    rho = scipy_density(Y, h)
    ours = weights.kde_weights(Y, lam=1.0)
    assert np.abs(ours - numpy_hypuc(rho, 1.0)).sum() / Y.size < 1e-3
    capped = weights.kde_weights(Y, lam=1.0, max_weight=4.0)
    ref = numpy_hypuc(rho, 1.0, max_weight=4.0)
    assert float(capped.max()) <= 4.0
    np.testing.assert_allclose(float(capped.mean()), 1.0, rtol=1e-4)
    assert np.abs(capped - ref).sum() / Y.size < 1e-3
    # A cap of exactly 1 forces all ones.
    np.testing.assert_allclose(weights.kde_weights(Y, lam=1.0, max_weight=1.0), 1.0, rtol=1e-4)


def test_kde_weights_survive_tiny_densities_and_large_lam():
    """Labels in units of 1e9 have densities ~1e-10; rho^-4 overflows float32. The
    weights are scale-invariant, so they must equal those of the unscaled labels
    (float64 numpy reference), finite, mean 1."""
    rng = np.random.default_rng(0)
    base = np.r_[rng.normal(0, 1, 900), 2 + rng.exponential(1, 100)].astype(np.float32)
    h = float(kde.bandwidth(base.astype(np.float64)))
    ref = numpy_hypuc(scipy_density(base.astype(np.float64), h), 4.0)
    for scale in (1.0, 1e9, 1e-9):
        w = np.asarray(weights.kde_weights(base * np.float32(scale), lam=4.0, method="exact"))
        assert np.all(np.isfinite(w)) and w.mean() == pytest.approx(1.0, rel=1e-4)
        np.testing.assert_allclose(w, ref, rtol=2e-3, atol=1e-6)
    fitted = weights.fit_weighting("hypuc", base * np.float32(1e9), lam=4.0)
    assert np.all(np.isfinite(np.asarray(fitted(base * np.float32(1e9)))))


def test_capped_weights_have_gradients_matching_finite_differences():
    """The cap's scale is found by a while_loop; the weights must still be
    differentiable in lam (central finite difference in float64 as reference)."""
    y = Y[:1000]
    with jax.enable_x64(True):
        f = lambda lam: jnp.sum(weights.kde_weights(y, lam=lam, max_weight=3.0,
                                                    method="exact") ** 2)
        grad = float(jax.grad(f)(0.5))
        eps = 1e-5
        fd = (float(f(0.5 + eps)) - float(f(0.5 - eps))) / (2 * eps)
        assert grad == pytest.approx(fd, rel=1e-4)
        w = weights.kde_weights(y, lam=0.5, max_weight=3.0, method="exact")
        np.testing.assert_allclose(w, numpy_hypuc(scipy_density(y, float(kde.bandwidth(y))),
                                                  0.5, max_weight=3.0), rtol=1e-7)


def test_capped_weights_are_reverse_differentiable_in_the_cap():
    """The docstring promises gradients in M too: jax.grad used to fail on the
    while_loop that finds the capped set. Reference: a float64 central finite
    difference of the same objective."""
    y = Y[:1000].astype(np.float64)
    with jax.enable_x64(True):
        f = lambda m: jnp.sum(weights.kde_weights(y, lam=1.0, max_weight=m,
                                                  method="exact") * y)
        grad = float(jax.grad(f)(3.0))
        eps = 1e-5
        fd = (float(f(3.0 + eps)) - float(f(3.0 - eps))) / (2 * eps)
        assert fd != 0.0
        assert grad == pytest.approx(fd, rel=1e-4)
        assert float(jax.jvp(f, (3.0,), (1.0,))[1]) == pytest.approx(fd, rel=1e-4)


def test_kde_weights_2d_labels_match_numpy_product_kernel():
    rng = np.random.default_rng(3)
    x = np.stack([skewed_labels(400, seed=3), rng.exponential(1.0, 400)], axis=1)
    h = 1.06 * np.std(x, axis=0, ddof=1) * 400 ** -0.2  # Scott per dimension
    z = (x[:, None, :] - x[None, :, :]) / h
    rho = np.exp(-0.5 * (z ** 2).sum(-1)).mean(1) / (2 * np.pi * h.prod())
    with jax.enable_x64(True):
        ours = weights.kde_weights(x, lam=0.5, method="exact")
    np.testing.assert_allclose(ours, numpy_hypuc(rho, 0.5), rtol=1e-8)
    binned = weights.kde_weights(x, lam=0.5)
    assert np.abs(binned - numpy_hypuc(rho, 0.5)).sum() / 400 < 1e-3


def test_lam_zero_gives_ones_and_floor_bounds_weights():
    np.testing.assert_array_equal(weights.kde_weights(Y, lam=0.0), np.ones(Y.size))
    y = np.r_[np.zeros(500), 1e4]  # far outlier, density near 0 at it
    w = np.asarray(weights.kde_weights(y, lam=1.0, bandwidth=0.05, floor=1e-3, method="exact"))
    assert np.all(np.isfinite(w))
    assert w.max() / w.min() <= 1e3 * 1.001  # floor at 1e-3 of the maximum density


def test_all_equal_labels_give_ones():
    y = np.full(50, 4.2)
    for fn in (weights.kde_weights, weights.inverse_weights, weights.sqrt_inverse_weights,
               weights.lds_weights, weights.dense_weights):
        np.testing.assert_allclose(fn(y), 1.0, rtol=1e-6, err_msg=fn.__name__)


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float64, 64, elements=st.floats(0, 20, allow_nan=False).map(
           lambda v: round(v, 4))),   # spreads below ~1e-28 are refused (test_kde_inputs)
       st.sampled_from([0.25, 0.5, 1.0]), st.sampled_from(kde.METHODS))
def test_weight_properties(y, lam, method):
    w = np.asarray(weights.kde_weights(y, lam=lam, method=method), np.float64)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-5)
    rho = np.asarray(kde.gaussian_kde(y, y, method=method), np.float64)
    order = np.argsort(rho, kind="stable")
    assert np.all(np.diff(w[order]) <= 1e-6 * w.max())  # non-increasing in density


# --------------------------------------------------------------------------- #
# DenseWeight vs numpy (the bin baselines and LDS: test_bin_weights.py)
# --------------------------------------------------------------------------- #
def mean_one(w):
    return w / w.mean()


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_dense_weights_match_numpy(alpha):
    h = 1.06 * np.std(Y) * Y.size ** -0.2  # denseweight's own rule (ddof=0)
    dens = scipy_density(Y, h)
    p = (dens - dens.min()) / (dens.max() - dens.min())
    ref = mean_one(np.maximum(1 - alpha * p, 1e-6))
    with jax.enable_x64(True):
        exact = weights.dense_weights(Y, alpha=alpha, bandwidth=h, method="exact")
    np.testing.assert_allclose(exact, ref, rtol=1e-7, atol=1e-9)
    binned = weights.dense_weights(Y, alpha=alpha, bandwidth=h)
    assert np.abs(binned - ref).sum() / Y.size < 1e-3


@pytest.mark.parametrize("labels, bandwidth", [([1.0, 2.0], "silverman"), ([1.0, 5.0, 9.0], 0.5)])
def test_dense_weights_of_a_flat_density_are_ones(labels, bandwidth):
    """Symmetric labels have the same density at every label (closed form), so p' = 0
    and every weight is 1; the binned KDE's round-off must not be min-max scaled up."""
    y = np.asarray(labels, np.float32)
    for method in ("binned", "exact"):
        np.testing.assert_allclose(weights.dense_weights(y, method=method, bandwidth=bandwidth),
                                   1.0, rtol=1e-5)
    np.testing.assert_allclose(weights.fit_weighting("denseweight", y, bandwidth=bandwidth)(y),
                               1.0, rtol=1e-5)


# --------------------------------------------------------------------------- #
# Fitted weighting
# --------------------------------------------------------------------------- #
CASES = [
    ("hypuc", weights.kde_weights, {"lam": 0.5}),
    ("hypuc", weights.kde_weights, {"lam": 1.0, "max_weight": 5.0}),
    ("hypuc", weights.kde_weights, {"lam": 0.75, "method": "exact"}),
    ("inverse", weights.inverse_weights, {"bins": 40}),
    ("sqrt_inv", weights.sqrt_inverse_weights, {}),
    ("lds", weights.lds_weights, {"kernel": "triang", "ks": 7}),
    ("denseweight", weights.dense_weights, {"alpha": 0.8}),
]


@pytest.mark.parametrize("scheme, direct, options", CASES)
def test_fitted_weighting_reproduces_direct_function_under_jit(scheme, direct, options):
    y = Y[:1000]
    fitted = weights.fit_weighting(scheme, y, **options)
    ref = np.asarray(direct(y, **options))
    applied = jax.jit(lambda wt, b: wt(b))(fitted, jnp.asarray(y))
    np.testing.assert_allclose(applied, ref, rtol=1e-3, atol=1e-5)
    # the fitted weighting jits as a function too (its hash is its identity)
    np.testing.assert_allclose(jax.jit(fitted)(jnp.asarray(y)), ref, rtol=1e-3, atol=1e-5)
    # JSON round trip gives the same function.
    restored = weights.LabelWeighting.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(restored(y[:50]), applied[:50], rtol=1e-6)
    # New labels beyond the training range are clamped to its edges.
    lo, hi = y.min(), y.max()
    out = fitted(np.array([lo - 5.0, hi + 5.0]))
    np.testing.assert_allclose(out, fitted(np.array([lo, hi])), rtol=1e-6)


def test_weighting_files_of_the_old_hypuc_format_still_apply():
    """Before session 8 the hypuc params were (lam, rho_min, scale, cap) with
    w = min(scale * max(rho, rho_min)^-lam, cap); such a dict still gives the weights."""
    y = Y[:1000]
    fitted = weights.fit_weighting("hypuc", y, lam=0.5)
    d = fitted.to_dict()
    rho = np.asarray(kde.interpolate_grid(jnp.asarray(y)[:, None], fitted.lo[None],
                                          fitted.step[None], fitted.table), np.float64)
    w0 = np.maximum(rho, d["params"]["rho_min"]) ** -0.5
    d["params"] = {"lam": 0.5, "rho_min": d["params"]["rho_min"], "scale": 1.0 / w0.mean(),
                   "cap": None}
    old = weights.LabelWeighting.from_dict(d)
    np.testing.assert_allclose(old(y), fitted(y), rtol=1e-4)
    np.testing.assert_allclose(old(y), w0 / w0.mean(), rtol=1e-4)


def test_none_scheme_gives_ones():
    fitted = weights.fit_weighting("none", Y)
    np.testing.assert_array_equal(fitted(np.array([1.0, 40.0])), [1.0, 1.0])
    assert weights.LabelWeighting.from_dict(fitted.to_dict()).scheme == "none"


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("labels, kwargs, arg", [
    (np.array([4.0, np.nan, 5.0]), {}, "labels"),
    (np.array([4.0, -np.inf, 5.0]), {}, "labels"),
    (np.array([]), {}, "labels"),
    (np.zeros((10, 4)), {}, "labels"),
    (Y, {"lam": -0.5}, "lam"),
    (Y, {"max_weight": 0.0}, "max_weight"),
    (Y, {"max_weight": -2.0}, "max_weight"),
    (Y, {"max_weight": 0.5}, "max_weight"),
    (Y, {"floor": 0.0}, "floor"),
    (Y, {"bandwidth": 0.0}, "bandwidth"),
    (Y, {"bandwidth": float("nan")}, "bandwidth"),
    (Y, {"method": "approx"}, "method"),
    (Y, {"lam": "0.5"}, "lam: expected real numbers"),
    (np.array(["4.0", "5.0"]), {}, "labels: expected a real numeric array"),
])
def test_kde_weights_bad_input(labels, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        weights.kde_weights(labels, **kwargs)


def _coarse_3d_grid_ok(fn, *args):
    """fn(*args) without the (expected) warning of a coarse capped 3-D grid."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="binned KDE: the labels span")
        return fn(*args)


@pytest.mark.parametrize("call, arg", [
    (lambda: weights.inverse_weights(np.array([1.0, np.nan])), "labels"),
    (lambda: weights.inverse_weights(Y, bins=0), "bins"),
    (lambda: weights.inverse_weights(Y, value_range=(5.0, 1.0)), "value_range"),
    (lambda: weights.sqrt_inverse_weights(Y, clip=(-1.0, None)), "clip"),
    (lambda: weights.inverse_weights(Y, clip=(1000, 5)), "clip: expected low <= high"),
    (lambda: weights.inverse_weights(Y, clip=5), "clip: expected None or"),
    (lambda: weights.inverse_weights(Y, clip=(0, 0)), "clip.*> 0"),    # all-NaN weights before
    (lambda: weights.kde_weights(Y, lam=1e8), r"lam: expected 0 <= lam <= 100"),   # mean 2e-4
    (lambda: weights.fit_weighting("hypuc", Y, lam=101.0), r"lam: expected 0 <= lam <= 100"),
    (lambda: weights.lds_weights(Y, clip=(None, 0.0)), "clip.*> 0"),
    (lambda: weights.lds_weights(Y, ks=4), "ks"),
    (lambda: weights.lds_weights(Y, kernel="box"), "kernel"),
    (lambda: weights.lds_weights(Y, sigma=0.0), "sigma"),
    (lambda: weights.lds_weights(Y, reweight="log"), "reweight"),
    (lambda: weights.dense_weights(Y, alpha=-1.0), "alpha"),
    (lambda: weights.dense_weights(Y, eps=0.0), "eps"),
    (lambda: weights.dense_weights(np.zeros((5, 2))), "labels"),
    (lambda: weights.fit_weighting("focal", Y), "scheme"),
    (lambda: weights.fit_weighting("hypuc", Y, lam=-1.0), "lam"),
    (lambda: weights.fit_weighting("hypuc", Y, max_weight=0.0), "max_weight"),
    (lambda: weights.fit_weighting("hypuc", Y, alpha=1.0), "options"),
    (lambda: weights.fit_weighting("inverse", np.array([np.inf])), "train_labels"),
    # booleans used to pass as 1 (max_weight=True: every weight 1) or fail in jax
    (lambda: weights.kde_weights(Y, lam=True), "lam: expected real numbers"),
    (lambda: weights.kde_weights(Y, max_weight=True), "max_weight: expected real numbers"),
    (lambda: weights.kde_weights(Y, floor=np.bool_(True)), "floor: expected real numbers"),
    (lambda: weights.dense_weights(Y, alpha=True), "alpha: expected real numbers"),
    (lambda: weights.kde_weights(Y, bandwidth=True), "bandwidth: expected one of"),
    (lambda: weights.kde_weights(Y, bandwidth=np.array([True])), "bandwidth: expected one of"),
    # several values where one is meant (a TypeError from jax before)
    (lambda: weights.kde_weights(Y, lam=np.array([0.5, 1.0])), r"lam: expected a scalar"),
    (lambda: weights.fit_weighting("denseweight", Y, eps=np.array([1e-6])), "eps: .*scalar"),
    (lambda: weights.fit_weighting("hypuc", Y, max_weight=[5.0]), "max_weight: .*scalar"),
    # ... also under jit (a length-n lam became one exponent per example, silently)
    (lambda: jax.jit(lambda v: weights.kde_weights(Y, lam=v, method="exact"))(
        jnp.full(len(Y), 0.5)), r"lam: expected a scalar"),
    (lambda: jax.jit(lambda v: weights.kde_weights(Y, max_weight=v, method="exact"))(
        jnp.full(len(Y), 3.0)), r"max_weight: expected a scalar"),
    (lambda: jax.jit(lambda v: weights.dense_weights(Y, alpha=v))(jnp.ones(len(Y))),
     r"alpha: expected a scalar"),
    (lambda: jax.jit(lambda v: weights.kde_weights(Y, lam=v, method="exact"))(True),
     "lam: expected real numbers"),
    (lambda: weights.fit_weighting("hypuc", Y)(np.array([np.nan])), "y"),
    # float32 densities of 3-D labels at these scales overflow / underflow (NaN weights)
    (lambda: _coarse_3d_grid_ok(weights.kde_weights,
                                np.random.default_rng(0).normal(size=(300, 3)) * 1e-10),
     "samples: the labels are too finely spread for the binned density"),
    (lambda: weights.kde_weights(np.random.default_rng(0).normal(size=(300, 3)) * 1e13,
                                 method="exact"),
     "labels: their kernel density over- or underflows"),
    # only some densities underflow: the floor 1e-12 * max rho is flushed to 0 (NaN weights)
    (lambda: weights.kde_weights(np.random.default_rng(1).normal(size=(500, 2)) * 1e18),
     "labels: their kernel density over- or underflows"),
])
def test_baselines_and_fit_bad_input(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_weight_gradients_at_large_lam_match_float64():
    """lam = 8 on potassium-like labels: mean(exp(a)) is ~1e20, whose square in the
    gradient of 1 / mean overflowed float32 (a gradient of 33 for 0.0025)."""
    y = np.random.default_rng(0).normal(4.5, 0.6, 3000)

    def objective(dtype):
        yy = jnp.asarray(y, dtype)
        return lambda lam: jnp.mean(weights.kde_weights(yy, lam=lam) * (yy - 4.5) ** 2)

    with jax.enable_x64(True):          # reference: a float64 central finite difference
        f64, eps = objective(jnp.float64), 1e-5
        fd = (float(f64(8.0 + eps)) - float(f64(8.0 - eps))) / (2 * eps)
        assert float(jax.grad(f64)(8.0)) == pytest.approx(fd, rel=1e-4)
    assert float(jax.grad(objective(jnp.float32))(jnp.float32(8.0))) == pytest.approx(fd, rel=2e-2)


def test_values_jit_cannot_check_come_out_nan_not_plausible():
    """Under jit values are not checked: a NaN label used to get a finite weight ~1e5
    times the largest training weight (the clip keeps NaN, the density table gave 0
    and the floor the largest weight); a traced negative lam inverted the weighting;
    a traced bandwidth of 0 gave mostly zeros. Each is NaN now, valid inputs unchanged."""
    y = skewed_labels(500)
    wf = weights.fit_weighting("hypuc", y, lam=0.5)
    got = jax.jit(lambda a: wf(a))(jnp.array([np.nan, float(y[0])]))
    assert np.isnan(got[0]) and got[1] == pytest.approx(float(wf(np.array([y[0]]))[0]))
    grid = kde.grid_size_for(y)
    w = jax.jit(lambda lam: weights.kde_weights(y, lam=lam, grid_size=grid))
    assert np.all(np.isnan(w(-0.5)))
    np.testing.assert_allclose(w(0.5), weights.kde_weights(y, lam=0.5), rtol=1e-5)
    grid = kde.grid_size_for(y, 0.1)
    dens = jax.vmap(lambda h: kde.gaussian_kde(y, y, bandwidth=h, grid_size=grid))(
        jnp.array([0.1, 0.0]))
    assert np.all(np.isfinite(dens[0])) and np.all(np.isnan(dens[1]))
    np.testing.assert_allclose(dens[0], kde.gaussian_kde(y, y, bandwidth=0.1), rtol=1e-5)



def test_other_unchecked_traced_options_come_out_nan_too():
    """The same for DenseWeight (NaN densities made its weights uniform: all 1), the
    density grid (zeros or negative densities), a traced cap below 1, a negative
    floor, a negative alpha, and a NaN label under the "none" scheme."""
    y = skewed_labels(500)
    grid = kde.grid_size_for(y)
    dense = jax.jit(lambda h: weights.dense_weights(y, bandwidth=h, grid_size=grid))
    assert np.all(np.isnan(dense(-0.3))) and np.all(np.isfinite(dense(0.3)))
    alpha = jax.jit(lambda a: weights.dense_weights(y, alpha=a, grid_size=grid))
    assert np.all(np.isnan(alpha(-1.0)))
    np.testing.assert_allclose(alpha(1.0), weights.dense_weights(y), rtol=1e-5, atol=1e-5)
    for method in ("binned", "exact"):
        dens = jax.jit(lambda h: kde.density_grid(y, bandwidth=h, method=method,
                                                  grid_size=grid)[2])(-0.3)
        assert np.all(np.isnan(dens)), method
    hyp = jax.jit(lambda m, f: weights.kde_weights(y, max_weight=m, floor=f, grid_size=grid))
    assert np.all(np.isnan(hyp(0.5, 1e-12))) and np.all(np.isnan(hyp(10.0, -1.0)))
    assert np.all(np.isfinite(hyp(10.0, 1e-12)))
    for scheme in ("none", "denseweight"):
        wf = weights.fit_weighting(scheme, y)
        got = jax.jit(lambda a: wf(a))(jnp.array([np.nan, 4.2]))
        assert np.isnan(got[0]) and np.isfinite(got[1]), scheme


def test_under_jit_a_non_finite_label_makes_every_weight_nan():
    """Labels are not value-checked under jit: a NaN (or inf) label gave the bin
    schemes and DenseWeight all-ones or finite weights (one bin for every label; a
    binned density of 0 read as flat). Weights of a set depend on every label, so
    one non-finite label now makes all of them NaN."""
    y = jnp.array([1.0, jnp.nan, 2.0, 2.5, 2.6])
    fns = [weights.lds_weights, weights.inverse_weights, weights.sqrt_inverse_weights,
           lambda v: weights.lds_weights(v, value_range=(-3.0, 3.0)),
           lambda v: weights.dense_weights(v, bandwidth=0.5),
           lambda v: weights.kde_weights(v, bandwidth=0.5, grid_size=512)]
    for bad in (jnp.nan, jnp.inf):
        for fn in fns:
            w = np.asarray(jax.jit(fn)(y.at[1].set(bad)))
            assert np.isnan(w).all(), (bad, w)
    ok = np.asarray(jax.jit(weights.lds_weights)(y.at[1].set(1.5)))   # finite: unchanged
    np.testing.assert_allclose(ok, np.asarray(weights.lds_weights(y.at[1].set(1.5))))


def test_a_cap_that_cannot_keep_the_mean_is_refused():
    """At lam 20 most of 2000 normal labels' weights underflow to 0 in float32; capped
    at 2 the rest cannot make the mean 1 (it was 0.35, with the docstring promising 1)."""
    y = np.random.default_rng(0).normal(0, 1, 2000).astype(np.float32)
    with pytest.raises(ValueError, match="max_weight: 2 cannot keep the mean weight 1"):
        weights.kde_weights(y, lam=20, max_weight=2.0)
    with pytest.raises(ValueError, match="max_weight: 2 cannot keep the mean weight 1"):
        weights.fit_weighting("hypuc", y, lam=20, max_weight=2.0)
    traced = jax.jit(lambda v: weights.kde_weights(v, lam=20, max_weight=2.0,
                                                   grid_size=4096))(y)
    assert np.isnan(np.asarray(traced)).all()
    w = np.asarray(weights.kde_weights(y, lam=1.0, max_weight=2.0))        # reachable
    assert w.max() <= 2.0 + 1e-6 and w.mean() == pytest.approx(1.0, abs=1e-5)
