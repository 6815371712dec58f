"""Tests for hypuc_jax.metrics, hypuc_jax.uncertainty and hypuc_jax.regions.

References: uncertainty-toolbox (NLL, CRPS, miscalibration area, mean
absolute calibration error), scikit-learn (AUROC, AUPRC, ROC curve), scipy
(Pearson, Spearman, geometric mean), and numpy re-implementations written
here (ENCE, balanced MAE, shot regions).
"""
import json
import math

import numpy as np
import pytest
import uncertainty_toolbox as uct
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from hypuc_jax import flagging, metrics
from hypuc_jax import uncertainty as unc
from hypuc_jax.regions import shot_masks

KEYS = ["n", "mae", "mse", "rmse", "gm", "pearson", "spearman", "balanced_mae", "nll", "crps",
        "coverage_68", "coverage_90", "coverage_95", "width_68", "width_90", "width_95",
        "uce", "ence", "miscal_area"]
UNC_KEYS = ["nll", "crps", "coverage_68", "coverage_90", "coverage_95", "width_68", "width_90",
            "width_95", "uce", "ence", "miscal_area"]


def _preds(seed=0, n=2000, miscal=1.3):
    rng = np.random.default_rng(seed)
    y = rng.normal(4.5, 1.0, n)
    sigma = rng.uniform(0.2, 1.0, n)
    mu = y + miscal * sigma * rng.standard_normal(n)
    return y, mu, sigma


def test_scores_match_uncertainty_toolbox():
    y, mu, sigma = _preds()
    o = metrics.evaluate(y, mu, sigma)["overall"]
    assert o["nll"] == pytest.approx(uct.nll_gaussian(mu, sigma, y), rel=1e-10)
    assert o["crps"] == pytest.approx(uct.crps_gaussian(mu, sigma, y), rel=1e-10)
    assert o["miscal_area"] == pytest.approx(uct.miscalibration_area(mu, sigma, y), abs=1e-10)
    assert o["uce"] == pytest.approx(
        uct.mean_absolute_calibration_error(mu, sigma, y, prop_type="interval"), abs=1e-10)
    assert o["miscal_area"] > 0.05  # the predictions are miscalibrated by design


def test_accuracy_against_scipy_and_closed_forms():
    y, mu, sigma = _preds(1)
    o = metrics.evaluate(y, mu, sigma)["overall"]
    err = y - mu
    assert o["n"] == y.size
    assert o["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert o["mse"] == pytest.approx(np.mean(err ** 2))
    assert o["rmse"] == pytest.approx(math.sqrt(np.mean(err ** 2)))
    assert o["gm"] == pytest.approx(stats.gmean(np.abs(err)), rel=1e-10)
    assert o["pearson"] == pytest.approx(stats.pearsonr(y, mu)[0], rel=1e-10)
    assert o["spearman"] == pytest.approx(stats.spearmanr(y, mu)[0], rel=1e-10)
    for key, level in [("68", 0.68), ("90", 0.90), ("95", 0.95)]:
        z = stats.norm.ppf(0.5 + level / 2)
        assert o[f"coverage_{key}"] == pytest.approx(np.mean(np.abs(err) <= z * sigma))
        assert o[f"width_{key}"] == pytest.approx(np.mean(2 * z * sigma))


def test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 5, 300).astype(float)
    b = a + rng.integers(0, 3, 300)
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], rel=1e-10)
    assert metrics.pearson(a, np.ones(300)) is None


def test_a_boolean_sigma_is_refused_not_read_as_one():
    y, mu = np.array([1.0, 2.0]), np.array([1.0, 2.5])
    for sigma in (np.array([True, True]), [True, True]):
        with pytest.raises(ValueError, match="^sigma: expected predicted scales, got booleans"):
            metrics.evaluate(y, mu, sigma)
    # a 0/1 label vector for the decision metrics stays accepted
    assert metrics.decision_metrics(np.array([True, False, True]),
                                    np.array([0.9, 0.1, 0.8]))["auroc"] == 1.0


@pytest.mark.parametrize("fn", [metrics.spearman, metrics.pearson])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_correlations_refuse_non_finite_input_by_name(fn, bad):
    # a NaN would rank last in spearman (rho 1.0 below, confidently wrong)
    with pytest.raises(ValueError, match="^a: expected finite"):
        fn([1.0, 2.0, bad], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="^b: expected finite"):
        fn([1.0, 2.0, 3.0], [1.0, bad, 3.0])


@pytest.mark.parametrize("exponent", range(-300, 301, 10))
def test_pearson_is_exact_at_extreme_magnitudes(exponent):
    """Squares of 1e200 overflow and of 1e-200 underflow, and the product of
    the two sums of squares of 1e90-sized vectors too; r is scale-free (scipy)."""
    a, b = np.array([1.0, 2.0, 3.0, 7.0]), np.array([1.0, 2.0, 4.0, 5.0])
    expected, scale = stats.pearsonr(a, b)[0], 10.0 ** exponent
    assert metrics.pearson(a * scale, b) == pytest.approx(expected, rel=1e-12)
    assert metrics.pearson(a * scale, b * scale) == pytest.approx(expected, rel=1e-12)


def test_ence_does_not_depend_on_the_order_of_tied_sigmas():
    """Equal sigmas share a bin: a constant sigma is one bin (closed form), and
    tie groups straddling the equal-count cuts give the same ENCE in any order
    (numpy reference: bins cut at tie-group starts)."""
    rng = np.random.default_rng(0)
    y, mu, sigma = rng.standard_normal(40), np.zeros(40), np.ones(40)
    one_bin = abs(1.0 - math.sqrt(np.mean(y ** 2)))
    for _ in range(5):
        p = rng.permutation(40)
        assert unc.ence(y[p], mu[p], sigma[p]) == pytest.approx(one_bin, rel=1e-12)
    sigma = rng.integers(1, 6, 40).astype(float)            # 5 tie groups, 10 bins asked
    values = {round(unc.ence(y[p], mu[p], sigma[p]), 12)
              for p in [rng.permutation(40) for _ in range(8)]}
    terms = [abs(math.sqrt(np.mean(sigma[sigma == v] ** 2))
                 - math.sqrt(np.mean(y[sigma == v] ** 2))) / v for v in np.unique(sigma)]
    assert values == {round(float(np.mean(terms)), 12)}


def test_ence_against_numpy_reference():
    y, mu, sigma = _preds(3, n=1003)
    order = np.argsort(sigma)
    # np.array_split puts the extra samples in the first bins; reproduce that.
    sizes = [y.size // 10 + (1 if k < y.size % 10 else 0) for k in range(10)]
    bounds = np.r_[0, np.cumsum(sizes)]
    terms = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        i = order[lo:hi]
        rmv = math.sqrt(np.mean(sigma[i] ** 2))
        rmse = math.sqrt(np.mean((y[i] - mu[i]) ** 2))
        terms.append(abs(rmv - rmse) / rmv)
    assert metrics.evaluate(y, mu, sigma)["overall"]["ence"] == pytest.approx(np.mean(terms))


def test_balanced_mae_against_numpy_reference():
    y, mu, _ = _preds(4, n=500)
    edges = np.linspace(y.min(), y.max(), 6)
    maes = []
    for b in range(5):
        last = b == 4
        m = (y >= edges[b]) & ((y <= edges[b + 1]) if last else (y < edges[b + 1]))
        if m.any():
            maes.append(np.mean(np.abs(y[m] - mu[m])))
    got = metrics.evaluate(y, mu, shot_bins=5)["overall"]["balanced_mae"]
    assert got == pytest.approx(np.mean(maes))


def test_balanced_mae_counts_labels_beyond_the_training_range():
    """A test label outside the training labels' range (the rarest of all) was
    dropped: y=[1, 2, 10], mu=[1, 2, 0] over edges [0, 1.5, 3] scored 0.0. Each
    such label now counts in the outermost bin on its side."""
    assert metrics.balanced_mae([1.0, 2.0, 10.0], [1.0, 2.0, 0.0],
                                [0.0, 1.5, 3.0]) == pytest.approx((0.0 + (0.0 + 10.0) / 2) / 2)
    rng = np.random.default_rng(11)
    train = rng.gamma(4.0, 1.0, 300)
    y = np.concatenate([rng.gamma(4.0, 1.0, 200), [train.min() - 1.0, train.max() + 3.0]])
    mu = y + rng.normal(0.0, 0.5, y.size)
    edges = np.linspace(train.min(), train.max(), 6)
    per_bin = {}
    for yi, ei in zip(y, np.abs(y - mu)):              # the reference: a loop over labels
        b = 0 if yi < edges[1] else 4 if yi >= edges[4] else next(
            k for k in range(1, 4) if edges[k] <= yi < edges[k + 1])
        per_bin.setdefault(b, []).append(ei)
    want = np.mean([np.mean(v) for v in per_bin.values()])
    got = metrics.evaluate(y, mu, train_labels=train, shot_bins=5)["overall"]["balanced_mae"]
    assert got == pytest.approx(want)


@pytest.mark.parametrize("bad, name", [
    ((np.array([[2.0], [3.0], [5.0]]), np.r_[1.0, 2.0, 4.0]), "y"),     # broadcast 3x3 before
    ((np.r_[np.nan, 1.0], np.r_[0.0, 0.0]), "y"),                      # silent NaN before
    ((np.r_[1.0, 2.0], np.r_[np.inf, 0.0]), "mu"),
    ((np.zeros(0), np.zeros(0)), "mu"),
    ((np.r_[1.0, 2.0, 3.0], np.r_[0.0, 0.0]), "mu and y"),
])
def test_gm_and_balanced_mae_check_their_inputs(bad, name):
    y, mu = bad
    for fn in (lambda: metrics.geometric_mean_error(y, mu),
               lambda: metrics.balanced_mae(y, mu, np.r_[0.0, 1.0, 10.0])):
        with pytest.raises(ValueError, match=rf"^{name}:"):
            fn()


def test_gm_and_balanced_mae_take_lists_and_match_scipy():
    from scipy import stats as st
    y, mu = [2.0, 3.0, 5.0], [1.0, 2.5, 4.0]
    assert metrics.geometric_mean_error(y, mu) == pytest.approx(st.gmean([1.0, 0.5, 1.0]))
    assert metrics.balanced_mae(y, mu, [0.0, 2.5, 6.0]) == pytest.approx((1.0 + 0.75) / 2)
    for edges in ([0.0], [1.0, 1.0], [0.0, np.nan]):
        with pytest.raises(ValueError, match="^edges:"):
            metrics.balanced_mae(y, mu, edges)


def test_shot_regions_against_numpy_counts():
    rng = np.random.default_rng(5)
    train = np.concatenate([rng.uniform(0, 1, 500), rng.uniform(1, 2, 50), rng.uniform(2, 3, 5)])
    y = np.array([0.5, 1.5, 2.5, 7.0, -1.0])
    masks = shot_masks(y, train, shot_bins=np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(masks["many"], [True, False, False, False, False])
    np.testing.assert_array_equal(masks["medium"], [False, True, False, False, False])
    np.testing.assert_array_equal(masks["few"], [False, False, True, True, True])
    # Default: 100 equal-width bins over the training range.
    y2 = rng.uniform(0, 3, 400)
    edges = np.linspace(train.min(), train.max(), 101)
    counts = np.histogram(train, edges)[0]
    c = counts[np.clip(np.digitize(y2, edges) - 1, 0, 99)]
    got = shot_masks(y2, train)
    np.testing.assert_array_equal(got["many"], c > 100)
    np.testing.assert_array_equal(got["few"], c < 20)


def test_regions_and_min_count():
    y, mu, sigma = _preds(6, n=1000)
    regions = {"low": (-np.inf, 3.5), "normal": (3.5, 5.5), "high": (5.5, 6.5),
               "severe": (6.5, np.inf), "nothing": (100.0, 200.0)}
    out = metrics.evaluate(y, mu, sigma, train_labels=_preds(7, n=3000)[0], regions=regions,
                           min_count=30)
    assert set(out["regions"]) == {"many", "medium", "few", *regions}
    m = (y >= 3.5) & (y < 5.5)
    assert out["regions"]["normal"]["n"] == int(m.sum())
    assert out["regions"]["normal"]["mae"] == pytest.approx(np.mean(np.abs(y[m] - mu[m])))
    assert sum(out["regions"][k]["n"] for k in ("many", "medium", "few")) == y.size
    for name, block in out["regions"].items():
        assert list(block) == KEYS
        if block["n"] < 30:
            assert all(block[k] is None for k in KEYS if k != "n"), name
    assert out["regions"]["nothing"]["n"] == 0
    # Half-open: a label exactly on a boundary belongs to the upper region.
    edge = metrics.evaluate(np.array([3.5, 3.4]), np.array([3.5, 3.4]),
                            regions={"a": (3.0, 3.5), "b": (3.5, 4.0)}, min_count=1)
    assert edge["regions"]["a"]["n"] == 1 and edge["regions"]["b"]["n"] == 1


def _walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str)
            _walk(v)
    else:
        assert x is None or type(x) in (int, float), type(x)
        assert not (isinstance(x, float) and not math.isfinite(x))


def test_output_is_json_serialisable_and_point_models_get_none():
    y, mu, sigma = _preds(8, n=300)
    out = metrics.evaluate(y, mu, sigma, train_labels=y, regions={"r": (4.0, 5.0)})
    _walk(out)
    json.dumps(out, allow_nan=False)
    point = metrics.evaluate(y, mu, None, regions={"r": (4.0, 5.0)})
    _walk(point)
    assert all(point["overall"][k] is None for k in UNC_KEYS)
    assert point["overall"]["mae"] == pytest.approx(np.mean(np.abs(y - mu)))
    const = metrics.evaluate(np.ones(20), np.ones(20) + 0.1, min_count=1)["overall"]
    assert const["pearson"] is None and const["spearman"] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(y=np.ones(5), mu=np.ones(4), sigma=np.ones(5)), "mu and sigma|mu and y"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.r_[1.0, 1, 1, 1, 0]), "sigma"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=-np.ones(5)), "sigma"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.r_[1.0, 1, 1, 1, np.inf]), "sigma"),
    (dict(y=np.ones(9), mu=np.ones(9), sigma=np.r_[np.ones(8), np.nan]),
     "sigma: expected finite values > 0, got 1 NaN/inf entries"),
    (dict(y=np.r_[1.0, 1, np.nan, 1, 1], mu=np.ones(5), sigma=np.ones(5)), "y"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), regions={"e": (4.0, 4.0)}), "regions"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), regions={"e": (5.0, 4.0)}), "regions"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), regions=[(1, 2)]), "regions"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), train_labels=np.ones(3),
          regions={"few": (0.0, 1.0)}), "regions"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), regions={"many": (0.0, 1.0)}),
     "regions: names \\['many'\\] clash"),
    (dict(y=np.ones((5, 1)), mu=np.ones(5), sigma=np.ones(5)), "y"),
    (dict(y=np.ones(5), mu=np.ones(5), sigma=np.ones(5), regions={1: (0.0, 1.0), "1": (1.0, 2.0)}),
     "regions: two regions are named '1'"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.evaluate(**kwargs)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 200), levels=st.integers(2, 10))
def test_decision_metrics_against_sklearn(seed, n, levels):
    rng = np.random.default_rng(seed)
    yb = rng.random(n) < 0.3
    if yb.all() or not yb.any():
        yb[0], yb[-1] = True, False
    score = rng.integers(0, levels, n) + 0.8 * yb  # ties on purpose
    got = metrics.decision_metrics(yb, score)
    assert got["auroc"] == pytest.approx(roc_auc_score(yb, score), abs=1e-12)
    assert got["auprc"] == pytest.approx(average_precision_score(yb, score), abs=1e-12)
    fpr, tpr, _ = roc_curve(yb, score, drop_intermediate=False)
    assert got["sensitivity_at_90_specificity"] == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max())


@pytest.mark.parametrize("specificity, pct", [(0.9, "90"), (0.95, "95"), (0.999, "99.9"),
                                              (0.995, "99.5"), (0.004, "0.4")])
def test_the_sensitivity_key_names_the_specificity_it_was_computed_at(specificity, pct):
    """0.999 was keyed 'sensitivity_at_100_specificity', a level the value is not
    for; the value is the sklearn ROC's best sensitivity at that specificity."""
    rng = np.random.default_rng(0)
    yb = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    score = np.r_[rng.random(1000), np.full(10, 0.9995)]
    got = metrics.decision_metrics(yb, score, specificity=specificity)
    assert set(metrics.decision_metrics(yb, score, specificity=np.float32(specificity))) == set(got)
    fpr, tpr, _ = roc_curve(yb, score, drop_intermediate=False)
    assert set(got) == {"n", "n_positive", "auroc", "auprc", f"sensitivity_at_{pct}_specificity"}
    want = tpr[fpr <= 1 - specificity + 1e-12].max()
    assert got[f"sensitivity_at_{pct}_specificity"] == pytest.approx(want)


def test_decision_metrics_single_class_and_bad_input():
    got = metrics.decision_metrics(np.zeros(10), np.arange(10.0))
    assert got["auroc"] is None and got["n_positive"] == 0
    with pytest.raises(ValueError, match="y_binary"):
        metrics.decision_metrics(np.r_[0, 1, 2.0], np.arange(3.0))
    with pytest.raises(ValueError, match="score"):
        metrics.decision_metrics(np.r_[0, 1, 1.0], np.arange(4.0))


def test_threshold_decisions_uses_event_direction():
    y = np.array([2.0, 3.0, 4.0, 6.0, 7.0])
    scores = {"hypo": {"m": -y}, "hyper": {"m": y}}
    out = metrics.threshold_decisions(y, [("hypo", 3.5, "below"), ("hyper", 5.5, "above")], scores)
    assert out["hypo"]["m"]["n_positive"] == 2 and out["hypo"]["m"]["auroc"] == 1.0
    assert out["hyper"]["m"]["n_positive"] == 2 and out["hyper"]["m"]["auroc"] == 1.0
    with pytest.raises(ValueError, match="scores"):
        metrics.threshold_decisions(y, [("other", 5.0, "above")], scores)


def test_uce_noise_floor_matches_binomial_closed_form():
    # A calibrated predictor's coverage at level p is Binomial(n, p) / n, so
    # E|coverage - p| ~ sqrt(2 p (1 - p) / (pi n)) (normal approximation);
    # the UCE floor is its mean over the levels (linearity of expectation).
    from hypuc_jax import uncertainty
    for n in (400, 1600):
        levels = uncertainty.CAL_LEVELS
        closed = float(np.mean(np.sqrt(2 * levels * (1 - levels) / (math.pi * n))))
        mean, sd = uncertainty.uce_noise_floor(n, draws=400, seed=1)
        assert abs(mean - closed) < 0.05 * closed, (n, mean, closed)
        assert 0 < sd < mean
    with pytest.raises(ValueError, match="n and draws"):
        uncertainty.uce_noise_floor(0)


def test_numpy_stages_refuse_traced_inputs_with_a_named_error():
    import jax

    from hypuc_jax import calibration, corrections

    y = np.linspace(3.0, 6.0, 50)
    for fn in (lambda a: metrics.evaluate(a, a, a + 1.0)["overall"]["mae"],
               lambda a: calibration.fit_global(a, a + 1.0, a).scale,
               lambda a: corrections.fit_corrections(a, a + 1.0, a, n_models=1)):
        with pytest.raises(ValueError, match="traced array.*outside jax.jit"):
            jax.jit(fn)(y)
    with pytest.raises(ValueError, match="sigma: got a traced array"):   # sigma alone traced
        jax.jit(lambda s: calibration.fit_global(y, s, y + 0.1).scale)(np.ones(50))


_Y3, _MU3, _S3 = np.r_[1.0, 2.0, 3.0], np.r_[1.5, 2.0, 2.5], np.r_[0.5, 0.5, 0.5]


@pytest.mark.parametrize("call, match", [
    (lambda: unc.nll(np.r_[1.0, np.nan, 3.0], _MU3, _S3), "y"),
    (lambda: unc.crps(_Y3, _MU3[:2], _S3), "mu"),
    (lambda: unc.uce(_Y3, _MU3, np.r_[0.5, 0.0, 0.5]), "sigma"),
    (lambda: unc.coverage(_Y3[:, None], _MU3, _S3, 0.9), "y"),
    (lambda: unc.coverage_curve(_Y3, _MU3, _S3, np.r_[0.5, 1.2]), "levels"),
    (lambda: unc.width(_S3, 1.5), "level"),
    (lambda: unc.coverage(_Y3, _MU3, _S3, float("nan")), "level: "),
    (lambda: unc.width(-_S3, 0.9), "sigma"),
    (lambda: unc.miscalibration_area(_Y3, np.r_[1.0, np.inf, 2.0], _S3), "mu"),
    (lambda: unc.ence(_Y3, _MU3, _S3, n_bins=0), "n_bins"),
    (lambda: unc.ence(["a", "b", "c"], _MU3, _S3), "y"),
    (lambda: unc.coverage(_Y3, _MU3, _S3, "0.9"), "level: expected a coverage"),
    (lambda: metrics.decision_metrics(np.r_[0, 1, 1], _Y3, specificity="0.9"), "specificity"),
    (lambda: metrics.evaluate(_Y3, _MU3, _S3, train_labels=_Y3, many_shot="100"), "many_shot"),
    (lambda: metrics.evaluate(_Y3, _MU3, _S3, train_labels=_Y3, few_shot=2.5), "few_shot"),
    (lambda: metrics.evaluate(_Y3, _MU3, _S3, shot_bins=10.0), "shot_bins: expected an int"),
    (lambda: metrics.evaluate(_Y3, _MU3, _S3, train_labels=_Y3, shot_bins=np.r_[3.0, 1.0]),
     "shot_bins: expected an int or at least 2 increasing edges"),
])
def test_uncertainty_scores_name_bad_inputs(call, match):
    """The scores are public: bad inputs get a named error, never a NaN score."""
    with pytest.raises(ValueError, match=match):
        call()


def test_uncertainty_scores_take_lists_and_ints():
    """Plain lists and integer arrays score like the float arrays (scipy reference)."""
    y, mu, s = [1, 2, 3], np.array([1, 2, 2]), [1, 1, 2]
    ref = -np.mean(stats.norm.logpdf(y, loc=mu, scale=s))
    assert unc.nll(y, mu, s) == pytest.approx(ref, rel=1e-12)
    assert unc.coverage(y, mu, s, 0.5) == pytest.approx(np.mean(
        np.abs(np.subtract(y, mu)) / np.asarray(s, float) <= stats.norm.ppf(0.75)))


def test_scores_stay_finite_for_extreme_but_valid_sigmas():
    """sigma ** 2 overflows beyond ~1e154 and underflows below ~1e-162; the scores must not."""
    y = np.array([0.0, 1.0, -1.0, 2.0, 0.5, -0.3, 1.2, -2.0, 0.1, 0.7])
    mu = np.zeros(10)
    huge = np.full(10, 1e155)
    out = metrics.evaluate(y, mu, huge)["overall"]
    assert out["nll"] == pytest.approx(-np.mean(stats.norm.logpdf(y, 0.0, 1e155)), rel=1e-12)
    assert out["ence"] == pytest.approx(1.0, rel=1e-12)   # |RMV - RMSE| / RMV, RMSE << RMV
    tiny = np.full(10, 1e-170)
    assert unc.nll(np.zeros(10), mu, tiny) == pytest.approx(-stats.norm.logpdf(0.0, 0.0, 1e-170),
                                                             rel=1e-12)
    # CRPS of a point mass is the absolute error (Gneiting & Raftery 2007).
    for dof in (math.inf, 5.0):
        for s in (1e-160, 1e-310):
            assert unc.crps(y, mu, np.full(10, s), dof=dof) == pytest.approx(np.mean(np.abs(y)),
                                                                            rel=1e-12)


@pytest.mark.parametrize("dof", [1e8, 1e12, 1e15])
def test_student_t_scores_approach_the_gaussian_at_large_dof(dof):
    """The log-gamma difference of the t density cancels catastrophically at large dof;
    the scores must match scipy's t (and so the Gaussian) there."""
    rng = np.random.default_rng(0)
    y, mu, s = rng.normal(size=1000), np.zeros(1000), np.ones(1000)
    c = math.sqrt((dof - 2) / dof)
    assert unc.nll(y, mu, s, dof=dof) == pytest.approx(
        -np.mean(stats.t.logpdf(y, dof, scale=c)), abs=1e-9)
    assert unc.nll(y, mu, s, dof=dof) == pytest.approx(-np.mean(stats.norm.logpdf(y)), abs=1e-6)
    np.testing.assert_allclose(flagging.predictive_entropy(np.r_[1.0, 2.0], dof),
                               stats.t.entropy(dof, scale=c * np.r_[1.0, 2.0]), atol=1e-9)


def test_overall_metrics_are_computed_below_the_region_min_count():
    """min_count blanks sparse regions only: 3 test records still get an overall MAE."""
    y, mu, s = np.r_[1.0, 2.0, 4.0], np.r_[1.5, 2.0, 3.0], np.r_[0.5, 1.0, 2.0]
    out = metrics.evaluate(y, mu, s, regions={"high": (3.0, np.inf)})
    assert out["overall"]["mae"] == pytest.approx(np.mean(np.abs(y - mu)))
    assert out["overall"]["nll"] == pytest.approx(-np.mean(stats.norm.logpdf(y, mu, s)))
    assert out["overall"]["ence"] is None                 # fewer records than its 10 bins
    assert out["regions"]["high"] == {**{k: None for k in metrics.METRIC_KEYS}, "n": 1}


def test_thresholds_and_region_bounds_compare_labels_as_written():
    # Labels are float32 (float32(4.3) = 4.3000002, float32(4.1) = 4.0999999); a label
    # written as the threshold or bound is on it, as in the decimals the user wrote.
    from decimal import Decimal

    from hypuc_jax._predictions import ThresholdSpec, event
    from hypuc_jax.regions import region_masks
    text = [f"{v / 10:.1f}" for v in range(30, 60)] * 3                  # 3.0 ... 5.9
    y = np.array([float(t) for t in text], np.float32).astype(np.float64)  # as the npz stores
    dec = [Decimal(t) for t in text]
    for value in ("4.3", "4.1", "1.3", "5.5", "5.9"):
        for direction, want in (("above", [d > Decimal(value) for d in dec]),
                                ("below", [d < Decimal(value) for d in dec])):
            got = event(y, ThresholdSpec("t", float(value), direction))
            np.testing.assert_array_equal(got, want, err_msg=f"{direction} {value}")
    masks = region_masks(y, {"mid": (4.1, 4.3), "top": (5.7, math.inf), "low": (-math.inf, 3.3)})
    np.testing.assert_array_equal(masks["mid"], [Decimal("4.1") <= d < Decimal("4.3") for d in dec])
    np.testing.assert_array_equal(masks["top"], [d >= Decimal("5.7") for d in dec])
    np.testing.assert_array_equal(masks["low"], [d < Decimal("3.3") for d in dec])
    assert masks["mid"].sum() == 6                                      # 4.1 and 4.2, x3


def test_numpy_stages_name_a_traced_argument():
    # as nll / crps / evaluate: a named error under jit, not a raw TracerArrayConversionError
    import jax
    import jax.numpy as jnp
    calls = [(lambda s: flagging.predictive_entropy(s), "sigma"),
             (lambda s: unc.width(s, 0.9), "sigma"),
             (lambda s: metrics.pearson(s, np.arange(3.0)), "a"),
             (lambda s: metrics.spearman(np.arange(3.0), s), "b")]
    for fn, name in calls:
        with pytest.raises(ValueError, match=f"{name}: got a traced array"):
            jax.jit(fn)(jnp.ones(3))
    with pytest.raises(ValueError, match="a and b: expected the same length"):
        metrics.pearson(np.ones(3), np.ones(2))
    empty = np.array([])                                  # n < 2: None, as documented
    assert metrics.pearson(empty, empty) is None and metrics.spearman(empty, empty) is None
    assert metrics.pearson(np.ones(1), np.ones(1)) is None
    a, b = np.arange(6.0), np.array([1.0, 3.0, 2.0, 5.0, 4.0, 7.0])
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
