"""Tests for hypuc_jax.flagging.

References: scipy's Gaussian entropy, and a selective-risk curve computed
here by dropping the k largest-sigma predictions one mask at a time.
"""
import numpy as np
import pytest
from scipy import stats

from hypuc_jax import flagging


def heteroscedastic(seed, n):
    """Errors scale with sigma, so flagging high-sigma predictions lowers MAE."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(2.0, 8.0, n)
    sigma = rng.uniform(0.1, 2.0, n)
    mu = y + sigma * rng.standard_normal(n)
    return y, mu, sigma


def reference_curve(y, mu, sigma, fractions):
    out = {}
    for q in fractions:
        k = int(np.floor(q * y.size + 1e-9))
        keep = np.ones(y.size, bool)
        if k:
            keep[np.argpartition(sigma, y.size - k)[y.size - k:]] = False  # the k largest sigmas
        out[q] = np.mean(np.abs(y - mu)[keep])
    return out


def test_entropy_matches_scipy():
    sigma = np.array([0.1, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(flagging.predictive_entropy(sigma),
                               stats.norm(scale=sigma).entropy(), rtol=1e-12)


def test_selective_risk_against_reference_and_paper_check():
    y, mu, sigma = heteroscedastic(0, 1000)
    got = flagging.selective_risk(y, mu, sigma)
    assert list(got) == pytest.approx(list(np.linspace(0, 0.5, 11)))
    ref = reference_curve(y, mu, sigma, list(got))
    for q in got:
        assert got[q] == pytest.approx(ref[q], rel=1e-12)
    assert got[0.0] == pytest.approx(np.mean(np.abs(y - mu)))
    assert got[0.1] < got[0.0]  # dropping the 10% most uncertain lowers MAE


def test_selective_risk_by_region():
    y, mu, sigma = heteroscedastic(1, 600)
    regions = {"low": (2.0, 5.0), "high": (5.0, 8.0), "tiny": (7.999, 8.0)}
    out = flagging.selective_risk_by_region(y, mu, sigma, regions, fractions=[0.0, 0.2])
    for name in ("low", "high"):
        lo, hi = regions[name]
        m = (y >= lo) & (y < hi)
        ref = reference_curve(y[m], mu[m], sigma[m], [0.0, 0.2])
        assert out[name]["n"] == int(m.sum())
        assert out[name]["curve"][0.2] == pytest.approx(ref[0.2])
    assert out["tiny"]["curve"] == {0.0: None, 0.2: None}


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.ones(4), np.ones(4), np.r_[1.0, 1, 0, 1]), {}, "sigma"),
    ((np.ones(4), np.ones(3), np.ones(4)), {}, "mu and sigma"),
    ((np.ones(4), np.ones(4), np.ones(4)), {"fractions": [0.1, 1.0]}, "fractions"),
    ((np.ones(4), np.ones(4), np.ones(4)), {"fractions": [-0.1]}, "fractions"),
    ((np.r_[1.0, np.nan, 1, 1], np.ones(4), np.ones(4)), {}, "y"),
])
def test_bad_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flagging.selective_risk(*args, **kwargs)


def test_entropy_and_regions_bad_inputs():
    with pytest.raises(ValueError, match="sigma"):
        flagging.predictive_entropy(np.r_[1.0, -1.0])
    with pytest.raises(ValueError, match="regions"):
        flagging.selective_risk_by_region(np.ones(3), np.ones(3), np.ones(3), {"e": (2.0, 1.0)})
