"""Tests for hypuc_jax.corrections.

References: closed-form Gaussian exceedance probabilities (scipy), synthetic
predictions with a known bias, a spy on scikit-learn's fit proving that only
the validation rows given are used, and the decision baselines scored with
scikit-learn's roc_auc_score.
"""
import collections
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from hypuc_jax import corrections as corr
from hypuc_jax import decisions as dec

# Few, small trees: the tests check behaviour, not accuracy at scale.
FAST = dict(n_models=2, max_iter=30, max_leaf_nodes=15)
Threshold = collections.namedtuple("Threshold", "name value direction")
THRESHOLDS = (Threshold("hyper", 5.5, "above"), ("hypo", 3.5, "below"))


@pytest.fixture(autouse=True)
def _one_thread():
    # OpenMP worker threads of the tree fits stall on a shared, busy CPU.
    with threadpool_limits(1):
        yield


def biased(seed, n):
    """Labels U(2, 8); predictions unbiased below 6 and 1.0 too low from 6 up."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(2.0, 8.0, n)
    mu = y + 0.3 * rng.standard_normal(n) - np.where(y >= 6.0, 1.0, 0.0)
    return mu, np.full(n, 0.3), y


def informative_sigma(seed, n):
    """y = mu + sigma * eps with sigma varying 40x: sigma changes P(y > t) at fixed mu."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(3.0, 8.0, n)
    sigma = rng.uniform(0.05, 2.0, n)
    return mu, sigma, mu + sigma * rng.standard_normal(n)


def test_features_closed_form():
    mu, sigma = np.array([3.0, 5.0, 7.0]), np.array([0.5, 1.0, 2.0])
    x = corr.features(mu, sigma, THRESHOLDS, z=2.0)
    assert x.shape == (3, 6)
    assert corr.feature_names(THRESHOLDS) == ["mu", "sigma", "mu_minus_z_sigma",
                                              "mu_plus_z_sigma", "p_hyper", "p_hypo"]
    np.testing.assert_allclose(x[:, 2], mu - 2 * sigma)
    np.testing.assert_allclose(x[:, 3], mu + 2 * sigma)
    np.testing.assert_allclose(x[:, 4], 1 - stats.norm.cdf(5.5, loc=mu, scale=sigma))
    np.testing.assert_allclose(x[:, 5], stats.norm.cdf(3.5, loc=mu, scale=sigma))
    base = corr.baseline_scores(mu, sigma, THRESHOLDS)
    np.testing.assert_array_equal(base["hyper"]["threshold_mu"], mu)
    np.testing.assert_array_equal(base["hypo"]["threshold_mu"], -mu)
    np.testing.assert_allclose(base["hypo"]["gaussian"], x[:, 5])


def test_correction_removes_known_bias():
    c = corr.fit_corrections(*biased(0, 2000), **FAST)
    tmu, tsig, ty = biased(1, 4000)
    corrected, probs = c.predict(tmu, tsig)
    assert probs == {}
    region = ty >= 6.0
    before = np.mean(np.abs(ty - tmu)[region])
    after = np.mean(np.abs(ty - corrected)[region])
    assert before > 0.9 and after < 0.6 * before
    summary = corr.summarize(ty, tmu, corrected)
    assert summary["mae_after"] < summary["mae_before"]


def test_residual_target_matches_sklearn_on_the_residual():
    """target="residual": one unbootstrapped member equals sklearn's HGB fitted on
    y - mu (rounded to 2**(floor(log2 sd) - 10), numpy here), plus mu;
    target="label" equals HGB fitted on y."""
    mu, sigma, y = informative_sigma(10, 600)
    tmu, tsig, _ = informative_sigma(11, 300)
    hgb = dict(max_iter=30, max_leaf_nodes=15, learning_rate=0.1, min_samples_leaf=20,
               max_features=1.0, early_stopping=False, random_state=3)
    x, tx = corr.features(mu, sigma), corr.features(tmu, tsig)
    step = 2.0 ** (np.floor(np.log2(np.std(y - mu))) - 10)
    for target, goal, offset in (("residual", np.round((y - mu) / step) * step, tmu),
                                 ("label", y, 0.0)):
        want = HistGradientBoostingRegressor(**hgb).fit(x, goal).predict(tx) + offset
        # a single member is fitted on every row, bootstrap or not (a resample of
        # one member left ~37% of the rows out, the default corrections.n_models=1)
        for bootstrap in (False, True):
            c = corr.fit_corrections(mu, sigma, y, n_models=1, seed=3, bootstrap=bootstrap,
                                     max_iter=30, max_leaf_nodes=15, target=target)
            np.testing.assert_allclose(c.predict(tmu, tsig)[0], want, rtol=1e-12,
                                       err_msg=f"{target}, bootstrap={bootstrap}")
        assert c.target == target and c.manifest()["target"] == target


def test_residual_target_keeps_mu_beyond_the_validation_range():
    """Unbiased predictions on mu in [2, 8]: at mu = 9.5 the residual fit returns
    ~mu (residuals there are ~0), while trees on y stop at the largest leaf (< 8.5)."""
    rng = np.random.default_rng(12)
    mu = rng.uniform(2.0, 8.0, 2000)
    y = mu + 0.2 * rng.standard_normal(2000)
    sigma = np.full(2000, 0.2)
    far = np.full(5, 9.5)
    residual = corr.fit_corrections(mu, sigma, y, **FAST).predict(far, np.full(5, 0.2))[0]
    label = corr.fit_corrections(mu, sigma, y, target="label", **FAST).predict(
        far, np.full(5, 0.2))[0]
    assert np.all(np.abs(residual - 9.5) < 0.15)
    assert np.all(label < 8.5)


def test_fit_sees_only_the_validation_rows(monkeypatch):
    """The fitter receives only validation arrays; every row given to sklearn is one of them."""
    mu_val, sigma_val, y_val = biased(2, 500)
    # A training split, disjoint and obviously different, that must never reach a fit.
    mu_tr, sigma_tr, y_tr = (a + 100.0 for a in biased(3, 500))
    seen = []
    for cls in (HistGradientBoostingRegressor, HistGradientBoostingClassifier):
        orig = cls.fit

        def spy(self, X, y, *args, _orig=orig, **kwargs):
            seen.append((np.array(X), np.array(y)))
            return _orig(self, X, y, *args, **kwargs)
        monkeypatch.setattr(cls, "fit", spy)
    corr.fit_corrections(mu_val, sigma_val, y_val, [("hyper", 5.5, "above")], **FAST)
    assert len(seen) == 2 * FAST["n_models"]  # one regressor + one classifier per member
    val_rows = {tuple(r) for r in corr.features(mu_val, sigma_val, [("hyper", 5.5, "above")])}
    # regressors fit the validation residuals, classifiers 0/1 validation outcomes
    val_targets = set(corr.quantize_residuals(y_val - mu_val)) | {0, 1}
    for X, y in seen:
        assert all(tuple(r) in val_rows for r in X)
        assert set(y) <= val_targets
        assert X[:, 0].max() < mu_tr.min()


def test_seeds_make_members_differ_and_fit_is_deterministic():
    data = biased(4, 800)
    a = corr.fit_corrections(*data, n_models=2, max_iter=20, seed=7)
    b = corr.fit_corrections(*data, n_models=2, max_iter=20, seed=7)
    x = corr.features(*data[:2])
    p0, p1 = (m.predict(x) for m in a.regressors)
    assert np.max(np.abs(p0 - p1)) > 1e-3  # bootstrap resampling differs per member
    np.testing.assert_array_equal(a.predict(*data[:2])[0], b.predict(*data[:2])[0])
    # Constant sigma makes every feature a function of mu; use varying sigma here.
    data = informative_sigma(4, 800)
    c = corr.fit_corrections(*data, n_models=2, max_iter=20, seed=7, bootstrap=False,
                             max_features=0.5)
    q0, q1 = (m.predict(corr.features(*data[:2])) for m in c.regressors)
    assert np.max(np.abs(q0 - q1)) > 1e-6  # feature subsampling differs per member


def test_boosted_decision_at_least_thresholding_mu():
    th = [("hyper", 5.5, "above")]
    c = corr.fit_corrections(*informative_sigma(5, 4000), th, n_models=3, max_iter=40,
                             max_leaf_nodes=15)
    tmu, tsig, ty = informative_sigma(6, 8000)
    _, probs = c.predict(tmu, tsig)
    outcome = ty > 5.5
    base = corr.baseline_scores(tmu, tsig, th)["hyper"]
    auc_boost = roc_auc_score(outcome, probs["hyper"])
    auc_mu = roc_auc_score(outcome, base["threshold_mu"])
    auc_gauss = roc_auc_score(outcome, base["gaussian"])
    assert auc_gauss > auc_mu + 0.01  # sigma does carry information here
    assert auc_boost >= auc_mu
    assert np.all((probs["hyper"] >= 0) & (probs["hyper"] <= 1))


def test_save_load_round_trip(tmp_path):
    data = biased(7, 600)
    c = corr.fit_corrections(*data, THRESHOLDS, task="potassium", **FAST)
    c.save(tmp_path / "corrections")
    manifest = json.loads((tmp_path / "corrections" / "manifest.json").read_text())
    assert manifest["task"] == "potassium"
    assert manifest["features"] == corr.feature_names(THRESHOLDS)
    assert manifest["thresholds"] == [["hyper", 5.5, "above"], ["hypo", 3.5, "below"]]
    loaded = corr.Corrector.load(tmp_path / "corrections", task="potassium")
    v0, p0 = c.predict(*data[:2])
    v1, p1 = loaded.predict(*data[:2])
    np.testing.assert_array_equal(v0, v1)
    assert p0.keys() == p1.keys() == {"hyper", "hypo"}
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])
    with pytest.raises(ValueError, match="task"):
        corr.load_corrector(tmp_path / "corrections", task="lvef")


def test_version_3_manifest_loads_as_a_label_fit(tmp_path):
    """Correctors saved before the target existed (format 3) fitted y: they load
    with target "label" and predict what they predicted."""
    data = biased(13, 600)
    c = corr.fit_corrections(*data, THRESHOLDS, target="label", **FAST)
    c.save(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest.pop("target") == "label" and manifest["format_version"] == 4
    manifest["format_version"] = 3
    path.write_text(json.dumps(manifest))
    loaded = corr.load_corrector(tmp_path)
    assert loaded.target == "label"
    np.testing.assert_array_equal(loaded.predict(*data[:2])[0], c.predict(*data[:2])[0])


@pytest.mark.parametrize("thresholds, kwargs, match", [
    ([("hyper", 9.5, "above")], {}, "thresholds"),
    ([("hypo", 1.0, "below")], {}, "thresholds"),
    ([("x", 5.0, "sideways")], {}, "thresholds"),
    ([("x", 5.0)], {}, "thresholds"),
    ([("x", 5.0, "above"), ("x", 6.0, "above")], {}, "thresholds"),
    ("hyper", {}, "thresholds"),
    ([], {"n_models": 0}, "n_models"),
    ([], {"max_features": 0.0}, "max_features"),
    ([], {"max_features": "0.5"}, "max_features: expected a fraction"),
    ([], {"seed": -1}, "seed: expected an int >= 0"),
    ([], {"seed": 1.5}, "seed: expected an int >= 0"),
    ([], {"z": -1.0}, "z"),
    ([], {"target": "y"}, "target: expected one of \\('residual', 'label'\\), got 'y'"),
])
def test_bad_inputs_raise(thresholds, kwargs, match):
    with pytest.raises(ValueError, match=match):
        corr.fit_corrections(*biased(8, 100), thresholds, **kwargs)


@pytest.mark.parametrize("threshold", [("score>0", 0.0, "above"), ("score<5", 5.0, "below")])
def test_a_threshold_at_a_discrete_label_extreme_is_fitted(threshold):
    """Integer labels 0..5: "y > 0" and "y < 5" have both outcomes although the
    value is the smallest / largest label. `hypuc correct` keeps such a threshold
    (rundir.usable_thresholds), so the fit must accept it, not call it "outside
    the label range"; its decision must rank like the labels (sklearn AUROC)."""
    from hypuc_jax.rundir import Task, usable_thresholds
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6.0), 30)
    mu, sigma = y + rng.normal(0.0, 0.3, y.size), np.full(y.size, 0.3)
    task = Task("t", "score", "", {}, (threshold,), "tabular", (3,))
    assert usable_thresholds(task, y) == (threshold,)
    c = corr.fit_corrections(mu, sigma, y, [threshold], **FAST)
    name, value, direction = threshold
    event = y > value if direction == "above" else y < value
    assert roc_auc_score(event, c.predict(mu, sigma)[1][name]) > 0.95


@pytest.mark.parametrize("threshold", [("score>5", 5.0, "above"), ("score<0", 0.0, "below")])
def test_a_threshold_with_one_outcome_is_refused_and_skipped(threshold):
    from hypuc_jax.rundir import Task, usable_thresholds
    y = np.repeat(np.arange(6.0), 30)
    assert usable_thresholds(Task("t", "score", "", {}, (threshold,), "tabular", (3,)), y) == ()
    with pytest.raises(ValueError, match=f"thresholds: threshold '{threshold[0]}'.*needs both "
                                         "outcomes.*no label is positive"):
        corr.fit_corrections(y, np.ones_like(y), y, [threshold], **FAST)


def test_residual_targets_are_rounded_to_a_power_of_two_grid():
    """Grid 2**(floor(log2 sd) - 10) (numpy reference); rounding error at most half
    a step; a constant residual is kept; a last-bits change of the inputs gives
    the same targets (the point: the same trees in every parallel mode)."""
    r = np.random.default_rng(0).normal(0.1, 0.3, 500)
    step = 2.0 ** (np.floor(np.log2(np.std(r))) - 10)
    q = corr.quantize_residuals(r)
    np.testing.assert_array_equal(q / step, np.round(q / step))
    assert np.max(np.abs(q - r)) <= step / 2
    np.testing.assert_array_equal(corr.quantize_residuals(np.full(4, 0.25)), np.full(4, 0.25))
    nudged = r + np.random.default_rng(1).normal(0, 1e-9, r.size)
    far = np.abs(r / step - np.round(r / step)) < 0.49     # not within 1e-9 of a boundary
    np.testing.assert_array_equal(corr.quantize_residuals(nudged)[far], q[far])


def test_bad_arrays_name_the_argument():
    mu, sigma, y = biased(9, 50)
    with pytest.raises(ValueError, match="mu_val and y_val"):
        corr.fit_corrections(mu, sigma, y[:-1])
    with pytest.raises(ValueError, match="sigma_val"):
        corr.fit_corrections(mu, -sigma, y)
    with pytest.raises(ValueError, match="y_val"):
        corr.fit_corrections(mu, sigma, np.where(y > 5, np.nan, y))


def few_positives(seed, n):
    """Potassium-like: mu ~ N(4.5, 0.75), sigma ~ U(0.1, 0.8), y = mu + sigma * eps.

    About 1% of labels exceed 6.5 (~16 positives in 1600 validation rows).
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(4.5, 0.75, n)
    sigma = rng.uniform(0.1, 0.8, n)
    return mu, sigma, mu + sigma * rng.standard_normal(n)


@pytest.mark.parametrize("name, value, direction", [("hyper", 5.5, "above"),
                                                    ("hypo", 3.5, "below")])
def test_decision_is_monotone_in_mu(name, value, direction):
    """Pure boosting (no Gaussian shrinkage): raising mu at fixed sigma never moves
    P(event) against the threshold's direction, on a fine grid at several sigmas."""
    th = [(name, value, direction), ("other", 6.5 if direction == "below" else 3.0, "above")]
    c = corr.fit_corrections(*informative_sigma(10, 1500), th, prior_strength=0.0, **FAST)
    grid = np.linspace(2.0, 9.0, 701)
    sign = 1.0 if direction == "above" else -1.0
    for s in (0.05, 0.3, 1.0, 2.0):
        p = c.predict(grid, np.full(grid.size, s))[1][name]
        assert np.all(sign * np.diff(p) >= 0.0), f"sigma={s}"
        assert sign * (p[-1] - p[0]) > 0.5  # and it does move with mu
    assert dec.monotone_constraints(dec.as_thresholds(th), 0) == (
        [1, 0, 1, 1, 1, 1] if direction == "above" else [-1, 0, -1, -1, 1, -1])


def test_boosted_at_least_thresholding_mu_with_few_positives():
    th = [("severe", 6.5, "above")]
    mu, sigma, y = few_positives(11, 1600)
    assert 8 <= np.sum(y > 6.5) <= 30
    c = corr.fit_corrections(mu, sigma, y, th, n_models=3, max_iter=100, max_leaf_nodes=8,
                             min_samples_leaf=40, learning_rate=0.05)
    tmu, tsig, ty = few_positives(12, 40000)
    outcome = ty > 6.5
    auc_boost = roc_auc_score(outcome, c.predict(tmu, tsig)[1]["severe"])
    base = corr.baseline_scores(tmu, tsig, th)["severe"]
    auc_mu = roc_auc_score(outcome, base["threshold_mu"])
    auc_gauss = roc_auc_score(outcome, base["gaussian"])
    assert auc_gauss > auc_mu + 0.01  # sigma carries information here
    assert auc_boost >= auc_mu
    # and the trees do not throw away most of what sigma offers (unshrunk ones did)
    assert auc_boost - auc_mu >= 0.5 * (auc_gauss - auc_mu)


def test_decision_mixes_log_odds_at_an_intermediate_weight():
    """At a finite pseudo-count the probability is expit((1 - w) * mean member
    log-odds + w * Gaussian log-odds), w = n0 / (n0 + m): reimplemented here with
    scipy's log survival / log CDF and the members' own decision_function (a mix
    of probabilities instead of log-odds agrees only at w = 0 and 1)."""
    from scipy import special
    data = informative_sigma(13, 600)
    c = corr.fit_corrections(*data, THRESHOLDS, prior_strength=300.0, **FAST)
    tmu, tsig, _ = informative_sigma(14, 300)
    x = dec.features(tmu, tsig, c.thresholds, c.z, c.dof)
    probs = c.predict(tmu, tsig)[1]
    for name, value, event, log_odds in [
            ("hyper", 5.5, data[2] > 5.5,
             stats.norm.logsf(5.5, tmu, tsig) - stats.norm.logcdf(5.5, tmu, tsig)),
            ("hypo", 3.5, data[2] < 3.5,
             stats.norm.logcdf(3.5, tmu, tsig) - stats.norm.logsf(3.5, tmu, tsig))]:
        m = min(event.sum(), event.size - event.sum())
        w = 300.0 / (300.0 + m)
        assert 0.1 < w < 0.9 and c.gaussian_weights[name] == pytest.approx(w)
        boosted = np.mean([clf.decision_function(x) for clf in c.classifiers[name]], axis=0)
        want = special.expit((1 - w) * boosted + w * log_odds)
        np.testing.assert_allclose(probs[name], want, rtol=1e-9, atol=1e-12)


def test_gaussian_log_odds_and_full_shrinkage_match_scipy():
    mu, sigma = np.array([3.0, 5.0, 6.0, 40.0]), np.array([0.5, 1.0, 0.3, 0.5])
    spec = corr.as_thresholds([("hyper", 5.5, "above")])[0]
    p = stats.norm.sf(5.5, loc=mu, scale=sigma)
    lo = dec.gaussian_log_odds(mu, sigma, spec)
    np.testing.assert_allclose(lo[:3], np.log(p[:3] / (1 - p[:3])), rtol=1e-10)
    assert np.isfinite(lo[3]) and lo[3] > 100  # P rounds to 1 there; log-odds do not
    below = corr.as_thresholds([("hypo", 5.5, "below")])[0]
    np.testing.assert_allclose(dec.gaussian_log_odds(mu, sigma, below), -lo)
    # n0 = inf: the decision is exactly the calibrated Gaussian's event probability.
    data = informative_sigma(13, 600)
    c = corr.fit_corrections(*data, THRESHOLDS, prior_strength=np.inf, **FAST)
    tmu, tsig, _ = informative_sigma(14, 300)
    probs = c.predict(tmu, tsig)[1]
    np.testing.assert_allclose(probs["hyper"], stats.norm.sf(5.5, loc=tmu, scale=tsig),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(probs["hypo"], stats.norm.cdf(3.5, loc=tmu, scale=tsig),
                               rtol=1e-9, atol=1e-12)
    labels = (data[2] > 5.5).astype(int)
    m = min(labels.sum(), labels.size - labels.sum())
    assert dec.gaussian_weight(labels, 30.0) == pytest.approx(30.0 / (30.0 + m))
    assert dec.gaussian_weight(labels, 0.0) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"class_weight": "auto"}, "class_weight"),
    ({"prior_strength": -1.0}, "prior_strength"),
    ({"prior_strength": np.nan}, "prior_strength"),
    ({"classifier_params": {"depth": 3}}, "classifier_params"),
])
def test_bad_decision_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        corr.fit_corrections(*biased(8, 100), [("hyper", 5.5, "above")], **kwargs)


def test_pure_boosting_stays_finite_where_the_gaussian_log_odds_overflow():
    # n0 = 0: the probability is expit(mean member log-odds) alone; the Gaussian
    # term's 0 * inf (mu = 1e300, or sigma = 1e-160) used to make it NaN.
    from scipy import special
    data = informative_sigma(13, 600)
    c = corr.fit_corrections(*data, THRESHOLDS, prior_strength=0.0, **FAST)
    tmu, tsig = np.array([1e300, 4.0, 4.5]), np.array([1.0, 1e-160, 0.3])
    assert not np.isfinite(dec.gaussian_log_odds(tmu, tsig, c.thresholds[0])[:2]).any()
    x = dec.features(tmu, tsig, c.thresholds, c.z, c.dof)
    probs = c.predict(tmu, tsig)[1]
    for name in ("hyper", "hypo"):
        boosted = np.mean([clf.decision_function(x) for clf in c.classifiers[name]], axis=0)
        np.testing.assert_allclose(probs[name], special.expit(boosted), rtol=1e-12)
        # numpy weights (the public API) and no 0 * inf computed, not only masked
        with np.errstate(invalid="raise"):
            got = dec.predict_decisions(c.classifiers, {k: np.float32(0.0) for k in
                                                        c.gaussian_weights},
                                        tmu, tsig, c.thresholds, c.z, c.dof)[name]
        np.testing.assert_allclose(got, special.expit(boosted), rtol=1e-12)
