"""The calibrated predictive's tail: a unit-variance Student-t of fitted dof.

References are independent of the code under test: scipy.stats.t with scale
sqrt((dof - 2) / dof), numerical integration (scipy.integrate.quad), and
uncertainty-toolbox after a probability-integral transform to the Gaussian.
"""
import json
import math

import numpy as np
import pytest
import uncertainty_toolbox as uct
from scipy import integrate, stats

from hypuc_jax import (calibration, corrections, decisions, flagging, losses, metrics,
                       uncertainty)
from hypuc_jax import _predictions as pred

DOFS = (2.5, 4.0, 9.0, 40.0)


def _scale(dof):
    return math.sqrt((dof - 2.0) / dof)


@pytest.mark.parametrize("dof", DOFS)
def test_family_is_unit_variance_student_t(dof):
    z = np.linspace(-6.0, 6.0, 41)
    c = _scale(dof)
    np.testing.assert_allclose(pred.std_logpdf(z, dof), stats.t.logpdf(z, dof, scale=c),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.std_cdf(z, dof), stats.t.cdf(z, dof, scale=c), rtol=1e-12)
    var = integrate.quad(lambda x: x * x * math.exp(pred.std_logpdf(x, dof)), -np.inf, np.inf)[0]
    assert var == pytest.approx(1.0, rel=1e-6)
    assert pred.std_entropy(dof) == pytest.approx(float(stats.t.entropy(dof, scale=c)), rel=1e-10)
    assert pred.central_z(0.9, dof=dof) == pytest.approx(stats.t.interval(0.9, dof, scale=c)[1])
    logsf, logcdf = pred.std_logsf_logcdf(z, dof)
    np.testing.assert_allclose(logsf, stats.t.logsf(z, dof, scale=c), rtol=1e-10)
    np.testing.assert_allclose(logcdf, stats.t.logcdf(z, dof, scale=c), rtol=1e-10)


def _t_logpdf_far(z, dof):
    """Unit-variance t log density by the closed form, log1p(u^2 / dof) written as
    2 log|u| - log dof + log1p(dof / u^2): no square formed (valid for |u| > 1)."""
    from scipy.special import gammaln
    c = _scale(dof)
    a = np.abs(np.asarray(z, np.float64) / c)
    log1p_u2 = 2 * np.log(a) - math.log(dof) + np.log1p(dof / a / a)
    return (gammaln((dof + 1) / 2) - gammaln(dof / 2) - 0.5 * math.log(dof * math.pi)
            - (dof + 1) / 2 * log1p_u2 - math.log(c))


@pytest.mark.parametrize("dof", (3.0, 30.0, 1e6))
def test_student_t_log_density_stays_finite_far_out(dof):
    """scipy squares u and overflows beyond |u| ~ 1e154, where the log density is
    finite (~ -(dof + 1) log|u|); so was the NLL of a finite label (evaluate: None)."""
    z = np.array([-1e300, -1e160, 1e99, 1e101, 1e155, 1e200])
    got = pred.std_logpdf(z, dof)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _t_logpdf_far(z, dof), rtol=1e-10)
    nll = uncertainty.nll(np.ones(1), np.zeros(1), np.full(1, 1e-160), dof=dof)
    assert nll == pytest.approx(math.log(1e-160) - float(_t_logpdf_far(1e160, dof)), rel=1e-10)


@pytest.mark.parametrize("dof", (3.0, 4.0, 30.0, 50.0, 1e3))
def test_student_t_tail_probabilities_stay_finite_where_scipy_underflows(dof):
    """scipy's t.logsf is the log of a probability that underflows to 0 (log -inf)
    once P < ~1e-308 (|u| ~ 1e6 at dof 50), so the decisions' log-odds became -inf
    and a blended decision probability exactly 0. Reference: mpmath's regularised
    incomplete beta at 60 digits, P(T > u) = I_x(dof/2, 1/2) / 2, x = dof/(dof+u^2)."""
    import mpmath as mp
    c = _scale(dof)

    def ref(z):
        with mp.workdps(60):
            u = mp.mpf(abs(z)) / mp.sqrt(mp.mpf(dof - 2) / dof)
            x = dof / (dof + u * u)
            return float(mp.log(mp.betainc(mp.mpf(dof) / 2, mp.mpf(1) / 2, 0, x,
                                           regularized=True) / 2))
    z = np.array([1e6, 1e10, 1e40, 1e150, 1e300, 1.7e308]) * c
    z = z[~(stats.t.logsf(z / c, dof) > -700)]              # where scipy's tail fails
    assert z.size >= 3
    logsf, logcdf = pred.std_logsf_logcdf(np.r_[z, -z], dof)
    want = np.array([ref(v) for v in z])
    np.testing.assert_allclose(logsf[:z.size], want, rtol=1e-12)
    np.testing.assert_allclose(logcdf[z.size:], want, rtol=1e-12)        # symmetric
    np.testing.assert_array_equal(logcdf[:z.size], 0.0)
    near = np.linspace(-30, 30, 13)                         # scipy's values kept here
    got = pred.std_logsf_logcdf(near, dof)
    np.testing.assert_array_equal(got[0], stats.t.logsf(near / c, dof))
    spec = pred.as_threshold(("K>1.5", 1.5, "above"))
    log_odds = decisions.gaussian_log_odds(np.zeros(1), np.full(1, 1.5 / z[0]), spec, dof)
    assert log_odds[0] == pytest.approx(want[0], rel=1e-12)


@pytest.mark.parametrize("dof", (5e5, 1e6, 1e9))
def test_student_t_tail_at_a_huge_dof_where_the_hypergeometric_series_fails(dof):
    """scipy's 2F1 returns NaN for x = dof / (dof + u^2) near 1, which left a band of
    z (u ~ 38-60 at dof 1e6) with log P = -inf; the tail's asymptotic series takes
    over there. Reference: mpmath's incomplete beta."""
    import mpmath as mp
    c = _scale(dof)
    u = np.array([37.8, 40.0, 50.0, 58.0])

    def ref(v):
        with mp.workdps(60):
            x = mp.mpf(dof) / (dof + mp.mpf(v) ** 2)
            return float(mp.log(mp.betainc(mp.mpf(dof) / 2, mp.mpf(1) / 2, 0, x,
                                           regularized=True) / 2))
    logsf, logcdf = pred.std_logsf_logcdf(np.r_[u, -u] * c, dof)
    want = np.array([ref(v) for v in u])
    np.testing.assert_allclose(logsf[:4], want, rtol=2e-6)
    np.testing.assert_allclose(logcdf[4:], want, rtol=2e-6)


def test_student_t_log_density_of_a_residual_near_float_max():
    """|z| / c overflowed for c < 1 although log|z / c| is finite: NLL inf."""
    z, dof = 1.7e308, 3.0
    c = _scale(dof)
    log_u = math.log(z) - math.log(c)
    from scipy.special import gammaln
    ref = (gammaln(2.0) - gammaln(1.5) - 0.5 * math.log(3 * math.pi)
           - 2.0 * (2 * log_u - math.log(3)) - math.log(c))
    assert pred.std_logpdf(z, dof) == pytest.approx(ref, rel=1e-12)


def test_gaussian_is_infinite_dof():
    z = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(pred.std_logpdf(z, math.inf), stats.norm.logpdf(z), rtol=1e-12)
    np.testing.assert_allclose(pred.std_cdf(z, 1e7), stats.norm.cdf(z), atol=1e-6)
    assert pred.std_entropy() == pytest.approx(float(stats.norm.entropy()))
    assert pred.check_dof(None) == math.inf and pred.dof_to_json(math.inf) is None
    # a large dof approaches the Gaussian
    assert pred.central_z(0.95, dof=1e6) == pytest.approx(stats.norm.ppf(0.975), rel=1e-5)


@pytest.mark.parametrize("level", [1e-300, 1e-17, 1.0 - 1e-16])
def test_a_coverage_whose_central_quantile_float64_cannot_resolve_is_refused(level):
    """0.5 + level / 2 rounds to 0.5 (z = 0: hyperfine factors r / 0) or to 1 (z = inf)."""
    for fn in (lambda: pred.central_z(level, "xi"), lambda: pred.central_bounds(level, "xi")):
        with pytest.raises(ValueError, match="xi: expected a coverage whose central quantile"):
            fn()
    assert pred.central_z(1e-6, "xi") == pytest.approx(stats.norm.ppf(0.5 + 5e-7), rel=1e-6)


@pytest.mark.parametrize("bad", [2.0, 1, -3.0, float("nan"), "5", True])
def test_check_dof_rejects(bad):
    with pytest.raises(ValueError, match="dof"):
        pred.check_dof(bad)


_Y, _MU, _SIGMA = np.r_[1.0, 2.0, 3.5], np.r_[1.1, 2.2, 3.0], np.r_[0.5, 0.4, 0.6]


@pytest.mark.parametrize("bad", [2.0, 1, -3.0, float("nan"), "5"])
@pytest.mark.parametrize("score", [
    lambda dof: uncertainty.nll(_Y, _MU, _SIGMA, dof=dof),
    lambda dof: uncertainty.crps(_Y, _MU, _SIGMA, dof=dof),
    lambda dof: uncertainty.coverage(_Y, _MU, _SIGMA, 0.9, dof=dof),
    lambda dof: uncertainty.width(_SIGMA, 0.9, dof=dof),
    lambda dof: uncertainty.uce(_Y, _MU, _SIGMA, dof=dof),
    lambda dof: decisions.features(_MU, _SIGMA, dof=dof),
    lambda dof: pred.central_z(0.9, dof=dof),
    lambda dof: pred.std_entropy(dof),
    lambda dof: pred.std_cdf(0.3, dof),
])
def test_every_score_names_a_bad_dof(score, bad):
    """Below 2 the t has no variance: a named error, not 'math domain error' or inf."""
    with pytest.raises(ValueError, match="dof: expected"):
        score(bad)


@pytest.mark.parametrize("dof", [np.float32(9.0), np.int64(9)])
def test_numpy_scalar_dofs_are_accepted(dof):
    assert uncertainty.nll(_Y, _MU, _SIGMA, dof=dof) == pytest.approx(
        -np.mean(stats.t.logpdf(_Y, 9.0, loc=_MU, scale=_SIGMA * _scale(9.0))), rel=1e-12)


def _draw(rng, n, dof):
    mu = rng.normal(5.0, 1.0, n)
    sigma = rng.uniform(0.2, 1.5, n)
    if math.isinf(dof):
        z = rng.standard_normal(n)
    else:
        z = stats.t.rvs(dof, size=n, random_state=rng) * _scale(dof)
    return mu + sigma * z, mu, sigma


@pytest.mark.parametrize("dof", (3.0, 7.0))
def test_scores_match_scipy_and_quadrature(dof):
    rng = np.random.default_rng(1)
    y, mu, sigma = _draw(rng, 12, dof)
    s = sigma * _scale(dof)
    assert uncertainty.nll(y, mu, sigma, dof) == pytest.approx(
        -np.mean(stats.t.logpdf(y, dof, mu, s)), rel=1e-12)
    ref = []
    for yi, mi, si in zip(y, mu, s):
        f = lambda x: (stats.t.cdf(x, dof, mi, si) - (x >= yi)) ** 2  # noqa: E731
        ref.append(integrate.quad(f, -np.inf, yi)[0] + integrate.quad(f, yi, np.inf)[0])
    assert uncertainty.crps(y, mu, sigma, dof) == pytest.approx(np.mean(ref), rel=1e-7)
    lo, hi = stats.t.interval(0.9, dof, mu, s)
    assert uncertainty.coverage(y, mu, sigma, 0.9, dof) == pytest.approx(
        np.mean((y >= lo) & (y <= hi)))
    assert uncertainty.width(sigma, 0.9, dof) == pytest.approx(np.mean(hi - lo))


def test_uce_equals_toolbox_after_transform_to_gaussian():
    """Central coverage is invariant under the monotone map z -> Phi^-1(F_t(z)):
    the UCE of a t predictive equals uncertainty-toolbox's Gaussian UCE of the
    transformed residuals."""
    dof = 5.0
    rng = np.random.default_rng(2)
    y, mu, sigma = _draw(rng, 3000, dof)
    y = mu + 1.15 * (y - mu)  # miscalibrated on purpose
    u = stats.norm.ppf(stats.t.cdf((y - mu) / (sigma * _scale(dof)), dof))
    ref = uct.mean_absolute_calibration_error(np.zeros_like(u), np.ones_like(u), u,
                                              num_bins=100, prop_type="interval")
    assert uncertainty.uce(y, mu, sigma, dof) == pytest.approx(ref, abs=1e-12)
    ref_area = uct.miscalibration_area(np.zeros_like(u), np.ones_like(u), u, num_bins=100,
                                       prop_type="interval")
    assert uncertainty.miscalibration_area(y, mu, sigma, dof) == pytest.approx(ref_area, abs=1e-9)


def test_evaluate_and_entropy_take_dof():
    dof = 6.0
    rng = np.random.default_rng(3)
    y, mu, sigma = _draw(rng, 400, dof)
    block = metrics.evaluate(y, mu, sigma, dof=dof)["overall"]
    s = sigma * _scale(dof)
    assert block["nll"] == pytest.approx(-np.mean(stats.t.logpdf(y, dof, mu, s)))
    lo, hi = stats.t.interval(0.95, dof, mu, s)
    assert block["coverage_95"] == pytest.approx(np.mean((y >= lo) & (y <= hi)))
    assert block["width_95"] == pytest.approx(np.mean(hi - lo))
    np.testing.assert_allclose(flagging.predictive_entropy(sigma, dof),
                               stats.t.entropy(dof, scale=s), rtol=1e-10)
    with pytest.raises(ValueError, match="dof"):
        metrics.evaluate(y, mu, sigma, dof=1.5)


def test_event_probabilities_and_log_odds_take_dof():
    dof = 4.0
    mu, sigma = np.array([4.0, 5.4, 7.0, 12.0]), np.array([0.3, 0.5, 0.4, 0.2])
    spec = pred.ThresholdSpec("K>5.5", 5.5, "above")
    s = sigma * _scale(dof)
    p = stats.t.sf(5.5, dof, mu, s)
    np.testing.assert_allclose(pred.exceed_prob(mu, sigma, spec, dof), p, rtol=1e-10)
    below = pred.ThresholdSpec("K<3.5", 3.5, "below")
    np.testing.assert_allclose(pred.exceed_prob(mu, sigma, below, dof),
                               stats.t.cdf(3.5, dof, mu, s), rtol=1e-10)
    lo = decisions.gaussian_log_odds(mu, sigma, spec, dof)
    np.testing.assert_allclose(lo[:3], np.log(p[:3] / (1 - p[:3])), rtol=1e-8)
    assert np.isfinite(lo[3])  # 32 sd above: log-odds, not a saturated probability


def _bin_halfwidths(mu, sigma, y, n_bins, xi):
    """SPEC hyperfine central-xi half-width per validation bin, in numpy:
    s* sigma times the xi-quantile of |y - mu| / (s* sigma) in each quantile bin of mu."""
    s = np.sqrt(np.mean(((y - mu) / sigma) ** 2))
    edges = np.quantile(mu, np.linspace(0, 1, n_bins + 1))[1:-1]
    b = np.searchsorted(edges, mu, side="right")
    q = np.array([np.quantile(np.abs(y - mu)[b == k] / (s * sigma[b == k]), xi)
                  for k in range(n_bins)])
    return edges, q * s


@pytest.mark.parametrize("tail", ("gaussian", 3.0, 12.0, "auto"))
def test_central_xi_interval_does_not_depend_on_the_tail(tail):
    rng = np.random.default_rng(4)
    y, mu, sigma = _draw(rng, 2000, 5.0)
    cal = calibration.fit_hyperfine(mu, sigma, y, n_bins=5, min_count=30, xi=0.9, tail=tail)
    edges, hw = _bin_halfwidths(mu, sigma, y, 5, 0.9)
    np.testing.assert_allclose(cal.edges, edges)
    half = pred.central_z(0.9, dof=cal.predictive_dof) * cal.apply(mu, sigma)
    np.testing.assert_allclose(half, hw[np.searchsorted(edges, mu, side="right")] * sigma,
                               rtol=1e-10)


def test_auto_tail_recovers_heavy_tails_and_keeps_gaussian():
    rng = np.random.default_rng(5)
    y, mu, sigma = _draw(rng, 6000, 5.0)
    heavy = calibration.fit_hyperfine(mu, sigma, y, n_bins=5, min_count=30, tail="auto")
    assert heavy.dof in (4.0, 5.0, 6.0, 8.0)
    assert heavy.tail == "auto"
    assert [d for d, _ in heavy.dof_search] == [calibration.DOF_GRID[i] if i < 10 else None
                                                for i in range(11)]
    y, mu, sigma = _draw(rng, 6000, math.inf)
    light = calibration.fit_hyperfine(mu, sigma, y, n_bins=5, min_count=30, tail="auto")
    assert light.predictive_dof >= 30


def test_auto_tail_lowers_held_out_uce_on_heavy_tails():
    rng = np.random.default_rng(6)
    val, test = _draw(rng, 3000, 6.0), _draw(rng, 3000, 6.0)
    scores = {}
    for tail in ("gaussian", "auto"):
        cal = calibration.fit_hyperfine(val[1], val[2], val[0], n_bins=5, min_count=30, tail=tail)
        scores[tail] = uncertainty.uce(test[0], test[1], cal.apply(test[1], test[2]),
                                       cal.predictive_dof)
    # Gaussian intervals on t(6) residuals miss every level but the fitted one.
    assert scores["auto"] < 0.6 * scores["gaussian"]


def test_tail_round_trips_and_old_files_load_as_gaussian(tmp_path):
    rng = np.random.default_rng(7)
    y, mu, sigma = _draw(rng, 1500, 4.0)
    cal = calibration.fit_hyperfine(mu, sigma, y, n_bins=4, min_count=30, tail="auto",
                                    task="potassium")
    cal.save(tmp_path / "c.json")
    back = calibration.load_calibrator(tmp_path / "c.json", task="potassium")
    assert back == cal and math.isfinite(back.predictive_dof)
    d = json.loads((tmp_path / "c.json").read_text())
    del d["dof"], d["dof_search"], d["tail"]  # a calibration.json written before tails existed
    d["format_version"] = 1
    old = calibration.calibrator_from_dict(d)
    assert old.predictive_dof == math.inf and old.etas == cal.etas
    del d["etas"]
    with pytest.raises(ValueError, match="etas"):
        calibration.calibrator_from_dict(d)


def test_ties_go_to_the_lighter_tail(monkeypatch):
    rng = np.random.default_rng(11)
    y, mu, sigma = _draw(rng, 600, 4.0)
    monkeypatch.setattr(calibration, "uce", lambda *a, **k: 0.0)  # every candidate ties
    cal = calibration.fit_hyperfine(mu, sigma, y, n_bins=2, min_count=30, tail="auto")
    assert cal.dof is None and len(cal.dof_search) == len(calibration.DOF_GRID)


def test_dof_is_stored_in_json_form():
    cal = calibration.HyperfineCalibrator(global_scale=1.0, edges=[], etas=[1.0], counts=[9],
                                          dof=math.inf)
    assert cal.dof is None and cal.predictive_dof == math.inf
    json.dumps(cal.to_dict(), allow_nan=False)  # no Infinity in the file
    with pytest.raises(ValueError, match="dof"):
        calibration.HyperfineCalibrator(global_scale=1.0, edges=[], etas=[1.0], counts=[9], dof=1.0)
    with pytest.raises(ValueError, match="tail"):
        calibration.HyperfineCalibrator(global_scale=1.0, edges=[], etas=[1.0], counts=[9],
                                        tail="heavy")
    assert corrections.Corrector([], {}, (), 1.96, dof=None).dof == math.inf


def test_small_validation_sets_keep_the_gaussian():
    rng = np.random.default_rng(8)
    y, mu, sigma = _draw(rng, calibration.MIN_TAIL_SAMPLES - 1, 3.0)
    cal = calibration.fit_hyperfine(mu, sigma, y, n_bins=2, min_count=30, tail="auto")
    assert cal.dof is None and cal.dof_search is None and cal.tail == "auto"


def test_auto_tail_keeps_the_gaussian_when_the_folds_are_too_small_for_the_bins():
    """300 samples in 300 bins of one: each 5-fold fit holds 240, too few for the
    bins, so "auto" cannot search and gives the Gaussian fit (which 300 samples allow)."""
    rng = np.random.default_rng(8)
    y, mu, sigma = _draw(rng, 300, 3.0)
    auto = calibration.fit_hyperfine(mu, sigma, y, n_bins=300, min_count=1, tail="auto")
    gauss = calibration.fit_hyperfine(mu, sigma, y, n_bins=300, min_count=1)
    assert auto.dof is None and auto.dof_search is None
    assert auto.etas == gauss.etas and len(auto.etas) == 300
    # Two validation samples: the folds of the (unused) tail search are not the error.
    with pytest.raises(ValueError, match="mu: expected at least n_bins=10"):
        calibration.fit_hyperfine(mu[:2], sigma[:2], y[:2], tail="auto")


@pytest.mark.parametrize("kwargs, match", [({"tail": "student"}, "tail"), ({"tail": 2.0}, "tail"),
                                           ({"tail": True}, "tail"), ({"folds": 1}, "folds"),
                                           ({"tail": "auto", "folds": 301},
                                            r"folds: expected an integer in \[2, 300\]")])
def test_bad_tail_arguments(kwargs, match):
    rng = np.random.default_rng(9)
    y, mu, sigma = _draw(rng, 300, 5.0)
    with pytest.raises(ValueError, match=match):
        calibration.fit_hyperfine(mu, sigma, y, n_bins=2, min_count=30, **kwargs)
    if "folds" in kwargs:
        with pytest.raises(ValueError, match="folds"):
            calibration.cross_fit(mu, sigma, y, folds=kwargs["folds"])


def test_corrector_keeps_its_dof(tmp_path):
    rng = np.random.default_rng(10)
    y, mu, sigma = _draw(rng, 800, 5.0)
    ths = (("K>6", 6.0, "above"),)
    corr = corrections.fit_corrections(mu, sigma, y, ths, n_models=1, max_iter=20, dof=5.0)
    x = corrections.features(mu, sigma, ths, dof=5.0)
    np.testing.assert_allclose(x[:, 4], stats.t.sf(6.0, 5.0, mu, sigma * _scale(5.0)), rtol=1e-10)
    corr.save(tmp_path / "c")
    back = corrections.load_corrector(tmp_path / "c")
    assert back.dof == 5.0
    for a, b in zip(corr.predict(mu, sigma), back.predict(mu, sigma)):
        if isinstance(a, dict):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="dof"):
        corrections.fit_corrections(mu, sigma, y, ths, n_models=1, max_iter=20, dof=2.0)


def test_cross_fit_never_calibrates_a_sample_with_its_own_label():
    rng = np.random.default_rng(12)
    y, mu, sigma = _draw(rng, 600, 5.0)
    held, dofs = calibration.cross_fit(mu, sigma, y, folds=4, seed=1, n_bins=3, min_count=30)
    assert held.shape == (600,) and np.all(dofs == math.inf)
    y2 = y.copy()
    y2[7] += 50.0  # an outlier label: moves the mu-bin factor of the fits that see it
    held2, _ = calibration.cross_fit(mu, sigma, y2, folds=4, seed=1, n_bins=3, min_count=30)
    assert held2[7] == held[7]
    assert np.sum(held2 != held) > 100


def test_scalar_options_take_concrete_jax_and_numpy_scalars():
    """dof, level and beta given as 0-d arrays were refused with a range error
    ('expected a number > 2 or inf, got Array(5.)'); they are their values. A traced
    one is still refused by name, a bool array too."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    y, mu, sigma = rng.normal(size=50), np.zeros(50), np.ones(50)
    assert pred.check_dof(jnp.array(5.0)) == 5.0 and pred.check_dof(np.float32(5.0)) == 5.0
    level32 = float(np.float32(0.9))                     # jnp.array(0.9) is float32
    assert uncertainty.width(sigma, jnp.array(0.9)) == pytest.approx(
        2 * stats.norm.ppf(0.5 + level32 / 2), rel=1e-12)
    assert uncertainty.coverage(y, mu, sigma, np.array(0.95)) == pytest.approx(
        np.mean(np.abs(y) <= stats.norm.ppf(0.975)))
    assert metrics.evaluate(y, mu, sigma, dof=jnp.array(5.0))["overall"]["nll"] == \
        pytest.approx(uncertainty.nll(y, mu, sigma, dof=5.0))
    nll, var = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.uniform(0.5, 2, 5))
    np.testing.assert_array_equal(losses.variance_weighted(nll, var, jnp.array(0.5)),
                                  losses.variance_weighted(nll, var, 0.5))
    with pytest.raises(ValueError, match="^dof: expected a number"):
        pred.check_dof(jnp.array(True))
    with pytest.raises(ValueError, match="^level: expected a coverage"):
        jax.jit(lambda lv: uncertainty.width(sigma, lv))(0.9)


def test_more_scalar_options_take_concrete_0d_arrays():
    """z, fraction, specificity, a calibrator's scale, sigma_min, dropout: a concrete
    0-d array is its value (refused before as out of range)."""
    import jax.numpy as jnp
    from flax import nnx
    from hypuc_jax import models
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=40), rng.uniform(0.5, 2.0, 40)
    np.testing.assert_array_equal(decisions.features(mu, sigma, z=jnp.array(2.0)),
                                  decisions.features(mu, sigma, z=2.0))
    np.testing.assert_array_equal(flagging.flag_unreliable(sigma, sigma, np.array(0.25)),
                                  flagging.flag_unreliable(sigma, sigma, 0.25))
    yb = (mu > 0).astype(int)
    assert metrics.decision_metrics(yb, mu, specificity=jnp.array(0.5)) == \
        metrics.decision_metrics(yb, mu, specificity=float(np.float32(0.5)))
    assert calibration.GlobalCalibrator(scale=jnp.array(2.0)).scale == 2.0
    model = models.create_model("mlp", (3,), "gaussian", sigma_min=np.array(1e-3),
                                 dropout=jnp.array(0.0), rngs=nnx.Rngs(0))
    assert model.out.sigma_min == pytest.approx(1e-3)
