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


def test_tied_entropies_share_the_cut_whatever_the_record_order():
    """Where the cut splits predictions of equal sigma, the kept MAE is the
    mean over every order of the tied ones (enumerated here); a constant
    sigma gives a flat curve, not one decided by record order."""
    import itertools
    y = np.array([1.0, 4.0, 2.0, 9.0, 3.0, 5.0, 0.5])
    mu = np.zeros(7)
    sigma = np.array([2.0, 1.0, 2.0, 1.0, 1.0, 3.0, 1.0])
    fractions = [0.0, 1 / 7, 2 / 7, 3 / 7, 4 / 7, 5 / 7, 6 / 7]
    got = flagging.selective_risk(y, mu, sigma, fractions)
    for q in fractions:
        k = int(np.floor(q * 7 + 1e-9))
        kept = [np.mean(np.abs(y - mu)[np.lexsort((perm, -sigma))[k:]])
                for perm in itertools.permutations(range(7))]
        assert got[flagging._key(q)] == pytest.approx(np.mean(kept), rel=1e-12)
    flat = flagging.selective_risk(y, mu, np.ones(7), fractions)
    assert all(v == pytest.approx(np.mean(y)) for v in flat.values())
    perm = np.random.default_rng(0).permutation(7)
    shuffled = flagging.selective_risk(y[perm], mu[perm], sigma[perm], fractions)
    assert shuffled == pytest.approx(got)


def test_flag_unreliable_top_fraction_and_tie_groups():
    """Continuous sigmas: flagged iff above the 90% quantile of the reference
    (numpy); tie groups at the cut: flagged when that brings the reference's
    flagged fraction nearer 10% (five equal bins: the top one), never for a
    constant sigma."""
    rng = np.random.default_rng(0)
    ref, new = rng.lognormal(size=1000), rng.lognormal(size=300)
    flags = flagging.flag_unreliable(new, ref, 0.1)
    np.testing.assert_array_equal(flags, new > np.quantile(ref, 0.9))
    assert abs(flagging.flag_unreliable(ref, ref, 0.1).mean() - 0.1) <= 1e-3
    bins = np.repeat([0.5, 0.7, 0.9, 1.1, 1.3], 80)            # a point model, 5 bins
    np.testing.assert_array_equal(flagging.flag_unreliable(bins, bins, 0.1), bins == 1.3)
    nine = np.r_[np.repeat([0.5, 0.7], 450), np.full(100, 1.3)]
    assert flagging.flag_unreliable(nine, nine, 0.1).mean() == pytest.approx(0.1)
    mostly = np.r_[np.full(10, 0.5), np.full(90, 0.9)]          # cut inside a 90% group
    assert not flagging.flag_unreliable(mostly, mostly, 0.1).any()
    const = np.full(50, 0.8)
    assert not flagging.flag_unreliable(const, const, 0.1).any()
    exact_tie = np.r_[np.full(6, 1.0), np.full(2, 2.0), np.full(2, 3.0)]   # 0.2 or 0.4 vs 0.3
    assert flagging.flag_unreliable(exact_tie, exact_tie, 0.3).mean() == pytest.approx(0.4)
    for kwargs, match in (({"fraction": 0.0}, "fraction"), ({"fraction": "0.1"}, "fraction"),
                          ({"reference_sigma": np.r_[1.0, -1.0]}, "reference_sigma"),
                          ({"reference_sigma": np.zeros(0)}, "reference_sigma")):
        args = {"sigma": np.ones(3), "reference_sigma": np.ones(4), "fraction": 0.1, **kwargs}
        with pytest.raises(ValueError, match=match):
            flagging.flag_unreliable(**args)


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


def test_flag_unreliable_names_a_traced_reference():
    # every other numpy stage gives this named error; the reference used to raise jax's
    # TracerArrayConversionError
    import jax
    import jax.numpy as jnp
    with pytest.raises(ValueError, match="^reference_sigma: got a traced array"):
        jax.jit(lambda r: flagging.flag_unreliable(np.ones(3), r))(jnp.ones(3))
