"""Tests for hypuc_jax.losses against closed forms, scipy and numpy references."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import special, stats

from hypuc_jax import losses

RTOL = 2e-5


class Pred(NamedTuple):
    """Stand-in for models.Prediction: losses only read .loc and .scale."""
    loc: Any
    scale: Any = None


def _data(seed, n=16):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=n).astype(np.float32)
    sigma = rng.uniform(0.1, 3.0, size=n).astype(np.float32)
    y = (mu + rng.normal(scale=2.0, size=n)).astype(np.float32)
    return mu, sigma, y


# --- numpy references, written independently of the module -------------------

def _np_huber(e, delta):
    a = np.abs(e)
    return np.where(a <= delta, 0.5 * e ** 2, delta * (a - 0.5 * delta))


def _np_bmc(pred, y, s, mask=None):
    """Cross-entropy of softmax_j(-(pred_i - y_j)^2 / 2s^2) at j = i, times 2s^2."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    n = len(pred)
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    out = np.empty(n)
    for i in range(n):
        cand = keep.copy()
        cand[i] = True
        logits = -(pred[i] - y[cand]) ** 2 / (2 * s * s)
        out[i] = special.logsumexp(logits) + (pred[i] - y[i]) ** 2 / (2 * s * s)
    return 2 * s * s * out


def _np_bni(pred, y, s, centers, probs):
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    p = np.asarray(probs, np.float64) / np.sum(probs)
    out = np.empty(len(pred))
    for i in range(len(pred)):          # log sum_k p_k exp(.), without underflow
        log_prior = special.logsumexp(-(pred[i] - centers) ** 2 / (2 * s * s), b=p)
        out[i] = (pred[i] - y[i]) ** 2 / (2 * s * s) + log_prior
    return 2 * s * s * out


# --- closed forms, under jit -------------------------------------------------

def test_gaussian_nll_matches_scipy_and_closed_form():
    mu, sigma, y = _data(0)
    got = jax.jit(losses.gaussian_nll)(mu, sigma, y)
    np.testing.assert_allclose(got, -stats.norm.logpdf(y, mu, sigma), rtol=RTOL, atol=1e-6)
    var = sigma.astype(np.float64) ** 2
    closed = 0.5 * np.log(2 * np.pi * var) + (y - mu) ** 2 / (2 * var)
    np.testing.assert_allclose(got, closed, rtol=RTOL, atol=1e-6)


def test_laplace_nll_matches_scipy_and_closed_form():
    mu, b, y = _data(1)
    got = jax.jit(losses.laplace_nll)(mu, b, y)
    np.testing.assert_allclose(got, -stats.laplace.logpdf(y, mu, b), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(got, np.log(2 * b) + np.abs(y - mu) / b, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_point_losses_match_numpy(delta):
    pred, _, y = _data(2, n=64)
    e = pred.astype(np.float64) - y
    np.testing.assert_allclose(jax.jit(losses.mse)(pred, y), e ** 2, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.l1)(pred, y), np.abs(e), rtol=RTOL, atol=1e-6)
    huber = jax.jit(losses.huber, static_argnames="delta")
    np.testing.assert_allclose(huber(pred, y, delta=delta), _np_huber(e, delta),
                               rtol=RTOL, atol=1e-6)
    # delta may be a jax scalar, traced (jit), or vmapped over thresholds
    np.testing.assert_allclose(jax.jit(losses.huber)(pred, y, jnp.float32(delta)),
                               _np_huber(e, delta), rtol=RTOL, atol=1e-6)
    for dt in (jnp.bfloat16, jnp.float16, jnp.float32):     # the inputs' dtype is kept
        assert losses.huber(pred.astype(dt), y.astype(dt), delta).dtype == dt
    # a delta beyond float16's range: all quadratic, not NaN from an inf delta
    half = losses.huber(pred.astype(jnp.float16), y.astype(jnp.float16), 1e5)
    np.testing.assert_allclose(np.asarray(half, np.float64),
                               0.5 * (pred.astype(np.float16).astype(np.float64)
                                      - y.astype(np.float16).astype(np.float64)) ** 2,
                               rtol=2e-3, atol=1e-3)
    both = jax.vmap(lambda d: losses.huber(pred, y, d))(jnp.array([delta, 2 * delta]))
    np.testing.assert_allclose(both, np.stack([_np_huber(e, delta), _np_huber(e, 2 * delta)]),
                               rtol=RTOL, atol=1e-6)


def test_point_losses_promote_integer_inputs():
    """Integer / bool differences would wrap (uint8 1 - 2 = 255); they are
    computed in float, as numpy's float64 reference."""
    a, b = np.array([50000, 1], np.int32), np.array([0, 2], np.int32)
    np.testing.assert_allclose(losses.mse(a, b), (a.astype(float) - b) ** 2, rtol=1e-6)
    np.testing.assert_allclose(losses.l1(np.uint8([1]), np.uint8([2])), [1.0])
    np.testing.assert_allclose(losses.mse(np.array([True]), np.array([False])), [1.0])
    np.testing.assert_allclose(losses.huber(np.int32([0, 5]), np.int32([0, 0]), 1.0),
                               [0.0, 4.5])


def test_likelihood_and_balanced_losses_promote_integer_inputs():
    """The NLLs and Balanced MSE subtract their inputs too: integer inputs give
    the float values (scipy / the float64 numpy references as reference), never a wrapped
    difference (2e9 - (-2e9) wraps in int32; 50000^2 too)."""
    mu, y = np.array([2_000_000_000], np.int32), np.array([-2_000_000_000], np.int32)
    np.testing.assert_allclose(losses.gaussian_nll(mu, np.array([1e9]), y),
                               -stats.norm.logpdf(-2e9, 2e9, 1e9), rtol=1e-6)
    np.testing.assert_allclose(losses.laplace_nll(mu, np.array([1e9]), y),
                               -stats.laplace.logpdf(-2e9, 2e9, 1e9), rtol=1e-6)
    pred, lab = np.array([50000, 0], np.int32), np.array([0, 1], np.int32)
    np.testing.assert_allclose(losses.bmc(pred, lab, 1.0), _np_bmc(pred, lab, 1.0), rtol=1e-6)
    np.testing.assert_allclose(losses.bmc(pred, lab, 1.0, mask=np.ones(2)),
                               _np_bmc(pred, lab, 1.0), rtol=1e-6)
    centers, probs = np.array([0.0, 1.0]), np.array([0.5, 0.5])
    np.testing.assert_allclose(losses.bni(pred, lab, 1.0, centers, probs),
                               _np_bni(pred, lab, 1.0, centers, probs), rtol=1e-6)
    assert np.all(np.asarray(losses.bni(pred, lab, 1.0, centers, probs)) > 0)
    with jax.enable_x64(True):             # int64 becomes float64, not float32
        big = np.array([2**40 + 1]), np.array([1]), np.array([2**40])
        np.testing.assert_allclose(losses.gaussian_nll(*big), -stats.norm.logpdf(2**40, 2**40 + 1, 1),
                                   rtol=1e-12)
        np.testing.assert_allclose(losses.laplace_nll(*big),
                                   -stats.laplace.logpdf(2**40, 2**40 + 1, 1), rtol=1e-12)


def test_huber_limits():
    # Small errors: e^2 / 2; large errors: delta * (|e| - delta / 2).
    e = np.array([0.01, -0.2, 50.0, -80.0], np.float32)
    got = losses.huber(e, np.zeros(4, np.float32), delta=1.0)
    np.testing.assert_allclose(got, [0.5e-4, 0.02, 49.5, 79.5], rtol=1e-5)


# --- Balanced MSE -------------------------------------------------------------

@pytest.mark.parametrize("s", [0.3, 1.0, 4.0])
def test_bmc_matches_numpy_cross_entropy(s):
    pred, _, y = _data(3, n=12)
    got = jax.jit(losses.bmc)(pred, y, jnp.float32(s))
    np.testing.assert_allclose(got, _np_bmc(pred, y, s), rtol=1e-4, atol=1e-5)


def test_bmc_mask_drops_padding_from_candidates():
    pred, _, y = _data(4, n=10)
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], np.float32)
    got = np.asarray(jax.jit(losses.bmc)(pred, y, 1.0, mask))
    np.testing.assert_allclose(got, _np_bmc(pred, y, 1.0, mask), rtol=1e-4, atol=1e-5)
    # Valid rows equal BMC on the batch with the padding removed.
    keep = mask > 0
    np.testing.assert_allclose(got[keep], losses.bmc(pred[keep], y[keep], 1.0),
                               rtol=1e-5, atol=1e-6)


def test_bmc_closed_form_small_batches():
    # One example: the softmax has a single entry, the loss is 0.
    np.testing.assert_allclose(losses.bmc(jnp.array([1.5]), jnp.array([-2.0]), 0.7), [0.0],
                               atol=1e-7)
    # Two examples: l_0 = 2 s^2 log(1 + exp(((p0 - y0)^2 - (p0 - y1)^2) / 2 s^2)).
    p, y, s = np.array([0.2, 1.0]), np.array([0.5, -0.4]), 0.8
    l0 = 2 * s * s * np.log1p(np.exp(((p[0] - y[0]) ** 2 - (p[0] - y[1]) ** 2) / (2 * s * s)))
    np.testing.assert_allclose(losses.bmc(p, y, s)[0], l0, rtol=1e-5)


def test_bmc_noise_gradient_holds_the_scale_constant():
    # d/ds of 2 sg(s^2) CE(s) = 2 s0^2 * dCE/ds; numpy central difference of CE.
    pred, _, y = _data(5, n=8)
    s0, h = 0.9, 1e-4
    total = lambda s: losses.bmc(pred, y, s).sum()
    got = jax.grad(total)(jnp.float32(s0))
    ce = lambda s: _np_bmc(pred, y, s).sum() / (2 * s * s)
    want = 2 * s0 * s0 * (ce(s0 + h) - ce(s0 - h)) / (2 * h)
    np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_bni_matches_numpy(s):
    pred, _, y = _data(6, n=12)
    centers = np.linspace(-3, 3, 25).astype(np.float32)
    probs = np.exp(-0.5 * centers ** 2) * 7.0       # unnormalised on purpose
    got = jax.jit(losses.bni)(pred, y, jnp.float32(s), centers, probs)
    np.testing.assert_allclose(got, _np_bni(pred, y, s, centers, probs), rtol=1e-4, atol=1e-5)


def test_bni_single_bin_closed_form():
    # One bin at c: l = (p - y)^2 - (p - c)^2, independent of s.
    pred, _, y = _data(7, n=6)
    for s in (0.3, 3.0):
        got = losses.bni(pred, y, s, np.array([0.7]), np.array([1.0]))
        np.testing.assert_allclose(got, (pred - y) ** 2 - (pred - 0.7) ** 2, rtol=1e-4, atol=1e-4)


def test_histogram_prior_feeds_bni():
    labels = np.random.default_rng(8).gamma(2.0, size=500)
    prior = losses.histogram_prior(labels, n_bins=20)
    counts, edges = np.histogram(labels, bins=20)
    np.testing.assert_allclose(prior.probs.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(prior.probs, counts / 500, rtol=1e-6)
    assert prior.centers[0] > labels.min() and prior.centers[-1] < labels.max()
    pred, _, y = _data(9, n=5)
    got = losses.per_example_loss("bni", Pred(pred), y, noise_sigma=1.0, bni_prior=prior)
    np.testing.assert_allclose(got, _np_bni(pred, y, 1.0, prior.centers, prior.probs),
                               rtol=1e-4, atol=1e-5)




# --- gradients at extreme inputs ---------------------------------------------

@pytest.mark.parametrize("sigma", [1e-6, 1e-3, 1.0, 1e6])
@pytest.mark.parametrize("residual", [0.0, 1e-3, 1e4])
def test_nll_gradients_finite_at_extremes(sigma, residual):
    mu = jnp.zeros(3)
    scale = jnp.full(3, sigma, jnp.float32)
    y = jnp.array([residual, -residual, 0.5 * residual], jnp.float32)
    for fn in (losses.gaussian_nll, losses.laplace_nll):
        total = lambda m, s: fn(m, s, y).sum()
        value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(mu, scale)
        assert np.isfinite(value), (fn.__name__, sigma, residual)
        assert all(np.all(np.isfinite(g)) for g in grads), (fn.__name__, sigma, residual)


@pytest.mark.parametrize("s", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("spread", [1e-3, 1.0, 1e3])
def test_balanced_mse_gradients_finite_at_extremes(s, spread):
    rng = np.random.default_rng(10)
    pred = jnp.asarray(rng.normal(scale=spread, size=16), jnp.float32)
    y = jnp.asarray(rng.normal(scale=spread, size=16), jnp.float32)
    centers, probs = jnp.linspace(-3 * spread, 3 * spread, 30), jnp.ones(30)

    def total(p, sig):
        return (losses.bmc(p, y, sig).sum() + losses.bni(p, y, sig, centers, probs).sum()
                + losses.huber(p, y).sum())
    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(pred, jnp.float32(s))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


# --- beta-NLL ----------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_values_and_gradients_match_closed_form(beta):
    """Value var^beta * NLL; gradients with var^beta held constant (Seitzer et al. 2022):
    d/dmu = (mu - y) / sigma^(2 - 2 beta), d/dsigma = sigma^(2 beta) (1/sigma - r^2/sigma^3)."""
    mu, sigma, y = (a.astype(np.float64) for a in _data(21))

    def total(m, s):
        return jnp.sum(losses.per_example_loss("nll", Pred(m, s), jnp.asarray(y), beta=beta))

    with jax.enable_x64(True):
        value = losses.per_example_loss("nll", Pred(mu, sigma), y, beta=beta)
        g_mu, g_sigma = jax.grad(total, argnums=(0, 1))(jnp.asarray(mu), jnp.asarray(sigma))
    r = y - mu
    np.testing.assert_allclose(value, sigma ** (2 * beta) * -stats.norm.logpdf(y, mu, sigma),
                               rtol=1e-10)
    np.testing.assert_allclose(g_mu, -r / sigma ** (2 - 2 * beta), rtol=1e-10)
    np.testing.assert_allclose(g_sigma, sigma ** (2 * beta) * (1 / sigma - r * r / sigma ** 3),
                               rtol=1e-10)


def test_beta_laplace_uses_the_laplace_variance():
    """Factor (2 b^2)^beta held constant: d/dmu = (2 b^2)^beta sign(mu - y) / b,
    d/db = (2 b^2)^beta (1/b - |y - mu| / b^2)."""
    mu, b, y = (a.astype(np.float64) for a in _data(22))
    got = losses.per_example_loss("laplace", Pred(mu, b), y, beta=0.5)
    want = np.sqrt(2.0) * b * -stats.laplace.logpdf(y, mu, b)
    np.testing.assert_allclose(got, want, rtol=1e-4)

    def total(m, s):
        return jnp.sum(losses.per_example_loss("laplace", Pred(m, s), jnp.asarray(y), beta=0.5))

    with jax.enable_x64(True):
        g_mu, g_b = jax.jit(jax.grad(total, argnums=(0, 1)))(jnp.asarray(mu), jnp.asarray(b))
    factor = np.sqrt(2.0 * b * b)
    np.testing.assert_allclose(g_mu, factor * np.sign(mu - y) / b, rtol=1e-10)
    np.testing.assert_allclose(g_b, factor * (1 / b - np.abs(y - mu) / b ** 2), rtol=1e-10)


def test_beta_bad_values_raise():
    mu, sigma, y = _data(23)
    for beta in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"beta: expected a float in \[0, 1\]"):
            losses.per_example_loss("nll", Pred(mu, sigma), y, beta=beta)
    with pytest.raises(ValueError, match="beta: loss 'mse' has no likelihood"):
        losses.per_example_loss("mse", Pred(mu), y, beta=0.5)


# --- dispatch and heads --------------------------------------------------------

def test_per_example_loss_dispatch_matches_direct_calls():
    mu, sigma, y = _data(11)
    pred = Pred(mu, sigma)
    prior = losses.HistogramPrior(np.linspace(-2, 2, 9), np.ones(9))
    direct = {
        "nll": -stats.norm.logpdf(y, mu, sigma),
        "laplace": -stats.laplace.logpdf(y, mu, sigma),
        "mse": (mu - y) ** 2,
        "l1": np.abs(mu - y),
        "huber": _np_huber(mu.astype(np.float64) - y, 0.7),
        "bmc": _np_bmc(mu, y, 0.8),
        "bni": _np_bni(mu, y, 0.8, prior.centers, prior.probs),
    }
    assert set(direct) == set(losses.LOSS_NAMES)
    for name, want in direct.items():
        got = losses.per_example_loss(name, pred, y, huber_delta=0.7, noise_sigma=0.8,
                                      bni_prior=prior)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_head_for_loss():
    assert losses.head_for_loss("nll") == "gaussian"
    assert losses.head_for_loss("laplace") == "laplace"
    assert {losses.head_for_loss(n) for n in ("mse", "l1", "huber", "bmc", "bni")} == {"point"}
    with pytest.raises(ValueError, match="nll, laplace, mse"):
        losses.head_for_loss("crps")


def test_per_example_loss_bad_requests():
    y = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="expected one of nll, laplace, mse, l1, huber, bmc, bni"):
        losses.per_example_loss("gaussian", Pred(y, y + 1), y)
    with pytest.raises(ValueError, match="prediction.scale"):
        losses.per_example_loss("nll", Pred(y), y)
    with pytest.raises(ValueError, match="noise_sigma"):
        losses.per_example_loss("bmc", Pred(y), y)
    with pytest.raises(ValueError, match="bni_prior"):
        losses.per_example_loss("bni", Pred(y), y, noise_sigma=1.0)


# --- bad input -----------------------------------------------------------------

@pytest.mark.parametrize("jit", [False, True])
def test_shape_mismatch_raises(jit):
    a, b = jnp.zeros(5), jnp.zeros(4)
    wrap = jax.jit if jit else (lambda f: f)
    with pytest.raises(ValueError, match="same length"):
        wrap(losses.gaussian_nll)(a, b, a)
    with pytest.raises(ValueError, match="same length"):
        wrap(losses.laplace_nll)(a, a, b)
    for fn in (losses.mse, losses.l1, losses.huber):
        with pytest.raises(ValueError, match="same length"):
            wrap(fn)(a, b)
    with pytest.raises(ValueError, match="same length"):
        wrap(losses.bmc)(a, b, 1.0)
    with pytest.raises(ValueError, match="bin_centers and bin_probs"):
        wrap(losses.bni)(a, a, 1.0, jnp.zeros(3), jnp.ones(4))
    with pytest.raises(ValueError, match="losses and weights"):
        wrap(losses.weighted_sums)(a, b)
    with pytest.raises(ValueError, match="mask"):
        wrap(losses.weighted_sums)(a, a, b)
    with pytest.raises(ValueError, match="dimensions"):
        wrap(losses.mse)(jnp.zeros((4, 1)), jnp.zeros((4, 1)))


def test_bad_values_raise():
    z = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="sigma"):
        losses.gaussian_nll(z, np.array([1.0, 0.0, 1.0]), z)
    with pytest.raises(ValueError, match="scale"):
        losses.laplace_nll(z, np.array([1.0, -1.0, 1.0]), z)
    with pytest.raises(ValueError, match="y: expected finite"):
        losses.mse(z, np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="noise_sigma"):
        losses.bmc(z, z, 0.0)
    with pytest.raises(ValueError, match="noise_sigma: expected a scalar"):
        losses.bmc(z, z, np.ones(2))
    with pytest.raises(ValueError, match="bin_probs"):
        losses.bni(z, z, 1.0, np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="bin_probs"):
        losses.bni(z, z, 1.0, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="delta"):
        losses.huber(z, z, delta=0.0)
    with pytest.raises(ValueError, match="weights"):
        losses.weighted_sums(z, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="positive total weight"):
        losses.weighted_mean(z, np.ones(3), np.zeros(3))
    # not real numbers: named, not a numpy TypeError
    with pytest.raises(ValueError, match="y: expected a real numeric array, got dtype <U1"):
        losses.mse(z, np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="sigma: expected a real numeric array, got dtype complex"):
        losses.gaussian_nll(z, z + 1j, z)
    with pytest.raises(ValueError, match="delta: expected"):
        losses.huber(z, z, delta="1")
    with pytest.raises(ValueError, match="delta: expected"):
        losses.huber(z, z, delta=True)
    with pytest.raises(ValueError, match="delta: expected"):
        losses.huber(z, z, delta=np.array([True]))
    with pytest.raises(ValueError, match="noise_sigma: expected"):    # True was sigma 1
        losses.bmc(z, z, True)
    # numpy scalars are real numbers too (they were refused as "not a float")
    np.testing.assert_allclose(losses.huber(z + 2.0, z, delta=np.float32(0.5)),
                               _np_huber(np.full(3, 2.0), 0.5), rtol=1e-6)
    np.testing.assert_allclose(losses.variance_weighted(z + 1.0, z + 4.0, np.float64(0.5)),
                               np.full(3, 2.0), rtol=1e-6)
    # an invalid variance used to give silent NaN
    with pytest.raises(ValueError, match="variance"):
        losses.variance_weighted(z + 1.0, -np.ones(3), 0.5)
    # int64 labels beyond int32 (64-bit mode off) used to wrap to int32 silently
    big = np.array([3_000_000_000, 0], np.int64)
    np.testing.assert_allclose(losses.mse(big, np.zeros(2, np.int64)), [9e18, 0.0],
                               rtol=1e-6)
    # bfloat16 (a model dtype) stays accepted: value equals the float32 loss, rounded
    got = losses.gaussian_nll(*(jnp.asarray(a, jnp.bfloat16) for a in (z, z + 1, z)))
    np.testing.assert_allclose(np.asarray(got, np.float32), 0.5 * np.log(2 * np.pi), rtol=1e-2)


# --- weighted reduction --------------------------------------------------------

def test_weighted_sums_with_mask_ignores_padding_even_if_nan():
    l = np.array([1.0, 2.0, np.nan, 4.0, np.inf], np.float32)
    w = np.array([0.5, 2.0, 3.0, 1.0, 9.0], np.float32)
    m = np.array([1, 1, 0, 1, 0], np.float32)
    num, den = jax.jit(losses.weighted_sums)(l, w, m)
    np.testing.assert_allclose([num, den], [0.5 + 4.0 + 4.0, 3.5], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.weighted_mean)(l, w, m),
                               np.average([1.0, 2.0, 4.0], weights=[0.5, 2.0, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(losses.weighted_sums(l, w, m > 0), [num, den], rtol=1e-6)
    # A traced all-masked batch contributes 0, not NaN.
    assert float(jax.jit(losses.weighted_mean)(l, w, np.zeros(5, np.float32))) == 0.0


def test_a_non_finite_concrete_mask_is_refused_by_name():
    # NaN > 0 is False: a NaN mask entry would silently drop its example
    l, w = np.array([1.0, 100.0]), np.array([1.0, 1.0])
    for fn in (losses.weighted_sums, losses.weighted_mean):
        with pytest.raises(ValueError, match="^mask: expected finite"):
            fn(l, w, np.array([1.0, np.nan]))
    assert float(losses.weighted_mean(l, w, np.array([1.0, 0.0]))) == 1.0


def test_boolean_weights_select_examples_eagerly_and_under_jit():
    # a 0/1 selection as bool weights: numpy's average over the selected losses
    l = np.array([1.0, 2.0, 3.0, 7.0], np.float32)
    w = np.array([True, False, True, True])
    want = np.mean(l[w])
    assert float(losses.weighted_mean(l, w)) == pytest.approx(want)
    assert float(jax.jit(losses.weighted_mean)(l, w)) == pytest.approx(want)


def test_weighted_mean_gradients_ignore_nan_padding():
    """Closed form: d/dl_i = w_i m_i / W and d/dw_i = m_i (l_i - mean) / W, with
    W = sum w m; masked entries get exactly 0 even where their loss is NaN or inf."""
    l = np.array([1.0, 2.0, np.nan, 4.0, np.inf], np.float32)
    w = np.array([0.5, 2.0, 3.0, 1.0, 9.0], np.float32)
    m = np.array([1, 1, 0, 1, 0], np.float32)
    g_l, g_w = jax.jit(jax.grad(losses.weighted_mean, argnums=(0, 1)))(l, w, m)
    total = 3.5
    mean = (0.5 * 1.0 + 2.0 * 2.0 + 4.0) / total
    np.testing.assert_allclose(g_l, [0.5 / total, 2.0 / total, 0.0, 1.0 / total, 0.0], rtol=1e-6)
    np.testing.assert_allclose(g_w, [(1.0 - mean) / total, (2.0 - mean) / total, 0.0,
                                     (4.0 - mean) / total, 0.0], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n_dev=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2 ** 16))
def test_sharded_sums_equal_global_weighted_mean(n_dev, seed):
    """Summing (num, den) over shards gives the global weighted mean; the mean
    of per-shard weighted means does not (weights deliberately uneven)."""
    rng = np.random.default_rng(seed)
    b = 4 * n_dev
    l = rng.exponential(size=b).astype(np.float32)
    w = (rng.exponential(size=b) * np.repeat(np.arange(1, n_dev + 1) ** 2, 4)).astype(np.float32)
    m = (rng.uniform(size=b) > 0.2).astype(np.float32)
    m[::4] = 1.0                                   # every shard keeps an example
    shard = lambda a, i: a[4 * i:4 * i + 4]
    parts = [losses.weighted_sums(shard(l, i), shard(w, i), shard(m, i)) for i in range(n_dev)]
    num, den = sum(p[0] for p in parts), sum(p[1] for p in parts)
    want = np.sum(w * m * l, dtype=np.float64) / np.sum(w * m, dtype=np.float64)
    np.testing.assert_allclose(num / den, want, rtol=1e-5)
    np.testing.assert_allclose(losses.weighted_mean(l, w, m), want, rtol=1e-5)
    mean_of_means = np.mean([float(p[0] / p[1]) for p in parts])
    assert not np.isclose(mean_of_means, want, rtol=1e-5)


def test_bmc_axis_name_under_pmap_equals_global_batch(n_devices):
    """Per-device BMC with gathered candidates equals BMC on the global batch."""
    rng = np.random.default_rng(12)
    b = 3 * n_devices
    pred = rng.normal(size=b).astype(np.float32)
    y = rng.normal(size=b).astype(np.float32)
    mask = (rng.uniform(size=b) > 0.3).astype(np.float32)
    per_dev = lambda a: a.reshape(n_devices, 3)
    per_device = lambda p, t, m: losses.per_example_loss(
        "bmc", Pred(p), t, noise_sigma=0.7, mask=m, axis_name="data")
    fn = jax.pmap(per_device, axis_name="data")
    got = np.asarray(fn(per_dev(pred), per_dev(y), per_dev(mask))).reshape(b)
    np.testing.assert_allclose(got, _np_bmc(pred, y, 0.7, mask), rtol=1e-4, atol=1e-5)
    # Without axis_name each device would only see its own 3 labels.
    local = np.asarray(jax.pmap(lambda p, t: losses.bmc(p, t, 0.7))(per_dev(pred), per_dev(y)))
    assert not np.allclose(local.reshape(b), _np_bmc(pred, y, 0.7), rtol=1e-3)


def test_histogram_prior_names_traced_labels():
    # host-side (numpy): a traced input got jax's TracerArrayConversionError before
    with pytest.raises(ValueError, match="^labels: got a traced array"):
        jax.jit(lambda y: losses.histogram_prior(y, 10).probs)(jnp.ones(5))


@pytest.mark.parametrize("fn, args, name", [
    (losses.gaussian_nll, (np.array([1e39]), np.array([1.0]), np.array([1e39])), "mu"),
    (losses.mse, (np.array([1e39, 0.0]), np.array([1e39, 0.0])), "pred"),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")          # the error, not a cast warning
def test_finite_float64_beyond_float32_is_refused_by_name_not_nan(fn, args, name):
    """With 64-bit mode off, 1e39 (finite in float64) would become inf in float32
    and the loss NaN (inf - inf); it is refused by name. 1e30 still computes."""
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match=f"{name}: expected values within the float32 range"):
        fn(*args)
    nll = losses.gaussian_nll(np.array([1e30]), np.array([1.0]), np.array([1e30]))
    np.testing.assert_allclose(np.asarray(nll), [stats.norm.logpdf(0.0) * -1], rtol=1e-6)
