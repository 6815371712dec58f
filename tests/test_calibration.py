"""Tests for hypuc_jax.calibration.

References: the global scale against a numerical minimiser of the SPEC
objective (scipy); hyperfine calibration on synthetic predictions whose true
scale is known; isotonic recalibration against uncertainty-toolbox's
``iso_recal``; coverage against fresh samples from the same generator.
"""
import json
import math

import numpy as np
import pytest
import uncertainty_toolbox as uct
from scipy import optimize, stats
from uncertainty_toolbox.recalibration import iso_recal

from hypuc_jax import calibration as cal

Z95 = stats.norm.ppf(0.975)


def generator(seed, n):
    """mu ~ U(0, 10), reported sigma = 0.3 + 0.1 mu; the truth is 2x sigma for 3 <= mu < 5."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 10.0, n)
    sigma = 0.3 + 0.1 * mu
    true_sigma = np.where((mu >= 3.0) & (mu < 5.0), 2.0, 1.0) * sigma
    y = mu + true_sigma * rng.standard_normal(n)
    return mu, sigma, y


def covered(y, mu, sigma):
    return np.abs(y - mu) <= Z95 * sigma


@pytest.fixture(scope="module")
def val():
    return generator(0, 20_000)


@pytest.fixture(scope="module")
def test_split():
    return generator(1, 50_000)


def test_global_scale_minimises_spec_objective(val):
    mu, sigma, y = val

    def objective(s):
        return np.sum((y - mu) ** 2 / (s ** 2 * sigma ** 2) + 2 * np.log(s * sigma))

    best = optimize.minimize_scalar(objective, bounds=(0.1, 10.0), method="bounded",
                                    options={"xatol": 1e-10})
    g = cal.fit_global(mu, sigma, y)
    assert g.scale == pytest.approx(best.x, rel=1e-6)
    np.testing.assert_allclose(g.apply(mu, sigma), best.x * sigma, rtol=1e-6)


def test_global_alone_miscovers_the_bad_range_hyperfine_fixes_every_bin(val, test_split):
    mu, sigma, y = val
    tmu, tsig, ty = test_split
    bad = (tmu >= 3.0) & (tmu < 5.0)
    g = cal.fit_global(mu, sigma, y)
    cov_global = covered(ty, tmu, g.apply(tmu, tsig))
    assert cov_global[bad].mean() < 0.85  # far below 95% where sigma is 2x too small
    assert cov_global[~bad].mean() > 0.97  # and too wide elsewhere

    h = cal.fit_hyperfine(mu, sigma, y, n_bins=10, min_count=100, xi=0.95)
    assert h.global_scale == pytest.approx(g.scale)
    cov = covered(ty, tmu, h.apply(tmu, tsig))
    bins = h.bin_index(tmu)
    assert len(h.etas) == 10
    for b in range(len(h.etas)):
        assert abs(cov[bins == b].mean() - 0.95) <= 0.02, (b, cov[bins == b].mean())
    # Bins entirely inside the bad range get a factor about 2x the others'.
    etas = np.asarray(h.etas)
    centres = np.array([np.median(tmu[bins == b]) for b in range(etas.size)])
    inside = (centres > 3.5) & (centres < 4.5)
    outside = (centres < 2.5) | (centres > 5.5)
    assert np.all(etas[inside] > 1.7 * etas[outside].max())


def test_hyperfine_eta_is_the_per_bin_quantile(val):
    mu, sigma, y = val
    h = cal.fit_hyperfine(mu, sigma, y, n_bins=4, min_count=10, xi=0.9)
    s = np.sqrt(np.mean(((y - mu) / sigma) ** 2))
    edges = np.quantile(mu, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(h.edges, edges)
    z = stats.norm.ppf(0.95)
    for b, (lo, hi) in enumerate(zip(np.r_[-np.inf, edges], np.r_[edges, np.inf])):
        m = (mu >= lo) & (mu < hi)
        ref = np.quantile(np.abs(y[m] - mu[m]) / (z * s * sigma[m]), 0.9)
        assert h.etas[b] == pytest.approx(ref)
        assert h.counts[b] == int(m.sum())


def test_hyperfine_edge_bins_extend_and_sparse_bins_merge():
    rng = np.random.default_rng(3)
    mu = np.r_[np.zeros(60), rng.uniform(1, 2, 40)]  # 60 ties: quantile edges collapse
    sigma = np.ones(100)
    y = mu + rng.standard_normal(100)
    h = cal.fit_hyperfine(mu, sigma, y, n_bins=10, min_count=15)
    assert min(h.counts) >= 15 and sum(h.counts) == 100
    assert len(h.edges) == len(h.etas) - 1
    far = h.apply(np.array([-1e6, 1e6]), np.ones(2))
    np.testing.assert_allclose(far, [h.etas[0] * h.global_scale, h.etas[-1] * h.global_scale])
    one_bin = cal.fit_hyperfine(mu, sigma, y, n_bins=10, min_count=100)
    assert one_bin.edges == [] and one_bin.counts == [100]


def test_a_tie_group_keeps_one_bin_and_the_records_beyond_it_get_their_own():
    # a saturated head: 920 predictions at 0 and 80 at 5. Every decile falls on
    # the tie at 0; the bins used to collapse to one and the 80 were covered at 61%.
    rng = np.random.default_rng(0)
    mu = np.r_[np.zeros(920), np.full(80, 5.0)]
    sigma = np.ones(1000)
    y = mu + rng.standard_normal(1000) * np.where(mu > 0, 3.0, 1.0)
    h = cal.fit_hyperfine(mu, sigma, y, xi=0.95, tail="gaussian")
    assert h.edges == [5.0] and h.counts == [920, 80]
    s = np.sqrt(np.mean((y - mu) ** 2))
    z = stats.norm.ppf(0.975)
    out = h.apply(mu, sigma)
    for m in (mu == 0, mu == 5):                 # numpy: each group's own 95% quantile
        eta = np.quantile(np.abs(y[m] - mu[m]) / (z * s), 0.95)
        np.testing.assert_allclose(out[m], s * eta, rtol=1e-12)
        assert np.mean(np.abs(y[m] - mu[m]) <= z * out[m]) == pytest.approx(0.95, abs=0.01)


def test_quantile_edges_move_off_a_tie_to_its_nearer_end():
    x = np.arange(10.0)
    np.testing.assert_allclose(cal.quantile_edges(x, 5), np.quantile(x, [0.2, 0.4, 0.6, 0.8]))
    # the 0.25 and 0.5 quantiles fall inside the tie [2, 2, 2, 2, 2] at ranks 1-5
    # of 8 values: the cut at 2 records moves down to 1, the one at 4 up to 6
    x = np.array([1.0, 2, 2, 2, 2, 2, 3, 4])
    np.testing.assert_allclose(cal.quantile_edges(x, 4), [2.0, np.quantile(x, 0.75), 3.0])
    assert cal.quantile_edges(np.full(7, 3.0), 3).size == 0      # one value: one bin


def test_isotonic_matches_uncertainty_toolbox():
    rng = np.random.default_rng(4)
    n = 5000
    mu = rng.uniform(0, 10, n)
    sigma = rng.uniform(0.5, 1.5, n)
    y = mu + sigma * (1.2 * rng.standard_t(5, n) + 0.3)  # heavy tails and a bias
    iso = cal.fit_isotonic(mu, sigma, y)
    # uncertainty-toolbox defines residuals as prediction - label, so its
    # "quantile" proportions are of (mu - y) / sigma; negating mu and y gives
    # the proportions of (y - mu) / sigma, the predicted CDF levels of Kuleshov
    # et al. Its model maps a target level q to the level to ask of the
    # Gaussian, i.e. R^-1, on a 100-level grid (spacing 0.0101).
    exp_props, obs_props = uct.get_proportion_lists_vectorized(-mu, sigma, -y, prop_type="quantile")
    ref = iso_recal(exp_props, obs_props)
    q = np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(iso.inverse_level(q), ref.predict(q), atol=0.01)
    np.testing.assert_allclose(iso.recalibrate_level(iso.inverse_level(q)), q, atol=1e-9)

    # On fresh samples the recalibrated quantiles hit their levels, the raw ones do not.
    rng = np.random.default_rng(5)
    m2, s2 = rng.uniform(0, 10, 40_000), rng.uniform(0.5, 1.5, 40_000)
    y2 = m2 + s2 * (1.2 * rng.standard_t(5, 40_000) + 0.3)
    for level in (0.05, 0.5, 0.95):
        assert np.mean(y2 <= iso.quantile(m2, s2, level)) == pytest.approx(level, abs=0.015)
    assert abs(np.mean(y2 <= m2) - 0.5) > 0.05
    lo, hi = iso.interval(m2, s2, 0.9)
    assert np.mean((y2 >= lo) & (y2 <= hi)) == pytest.approx(0.9, abs=0.015)
    levels = iso.cdf(m2, s2, y2)
    assert stats.kstest(levels, "uniform").statistic < 0.02
    # apply: Gaussian-equivalent sigma with the recalibrated 95% interval's width.
    lo95, hi95 = iso.interval(m2, s2, 0.95)
    np.testing.assert_allclose(iso.apply(m2, s2), (hi95 - lo95) / (2 * Z95), rtol=1e-10)


@pytest.mark.parametrize("method, kwargs", [("global", {}), ("hyperfine", {"n_bins": 5}),
                                            ("isotonic", {})])
def test_save_load_round_trip_and_task_check(tmp_path, val, method, kwargs):
    mu, sigma, y = (a[:2000] for a in val)
    c = cal.fit_calibrator(method, mu, sigma, y, task="potassium", **kwargs)
    path = tmp_path / "calibration.json"
    c.save(path)
    json.loads(path.read_text())
    for loaded in (cal.load_calibrator(path, task="potassium"), type(c).load(path),
                   cal.calibrator_from_dict(c.to_dict())):
        assert type(loaded) is type(c) and loaded.task == "potassium"
        np.testing.assert_array_equal(loaded.apply(mu, sigma), c.apply(mu, sigma))
    with pytest.raises(ValueError, match="task"):
        cal.load_calibrator(path, task="lvef")
    with pytest.raises(ValueError, match="task"):
        type(c).load(path, task="lvef")


@pytest.mark.parametrize("sigma", [1e170, 1e-170, 1e-100, 1.0])
def test_global_scale_at_extreme_magnitudes(sigma):
    """s* = sqrt(mean(r^2)) / sigma in closed form, where squaring r / sigma
    overflows (sigma 1e-170) or underflows (1e170)."""
    r = np.array([1.0, -2.0, 3.0])
    g = cal.fit_global(np.zeros(3), np.full(3, sigma), r)
    assert g.scale == pytest.approx(math.sqrt(14.0 / 3.0) / sigma, rel=1e-12)


def test_from_dict_rejects_other_methods(val):
    d = cal.fit_global(*val).to_dict()
    with pytest.raises(ValueError, match="d:"):
        cal.HyperfineCalibrator.from_dict(d)
    with pytest.raises(ValueError, match="d:"):
        cal.calibrator_from_dict({"method": "platt"})


@pytest.mark.parametrize("fn, args, kwargs, match", [
    (cal.fit_global, (np.ones(5), np.ones(4), np.ones(5)), {}, "mu and sigma"),
    (cal.fit_global, (np.ones(5), np.ones(5), np.ones(6)), {}, "mu and y"),
    (cal.fit_global, (np.ones(3), np.r_[1.0, 0.0, 1.0], np.r_[1.0, 2.0, 3.0]), {}, "sigma"),
    (cal.fit_global, (np.ones(3), np.r_[1.0, np.nan, 1.0], np.r_[1.0, 2.0, 3.0]), {}, "sigma"),
    (cal.fit_global, (np.ones(3), np.ones(3), np.r_[1.0, np.inf, 3.0]), {}, "y"),
    (cal.fit_global, (np.ones(3), np.ones(3), np.ones(3)), {}, "y"),
    (cal.fit_hyperfine, (np.arange(5.0), np.ones(5), np.arange(5.0) + 1), {"n_bins": 10}, "mu"),
    (cal.fit_hyperfine, (np.arange(50.0), np.ones(50), np.arange(50.0) + 1),
     {"n_bins": 2, "min_count": 0}, "min_count"),
    (cal.fit_hyperfine, (np.arange(50.0), np.ones(50), np.arange(50.0) + 1),
     {"n_bins": 2, "min_count": 5, "xi": 1.0}, "xi"),
    (cal.fit_isotonic, (np.ones(3), -np.ones(3), np.ones(3)), {}, "sigma"),
    (cal.fit_hyperfine, (np.arange(50.0), np.ones(50), np.arange(50.0) + 1),
     {"n_bins": 2, "min_count": 5, "xi": "0.9"}, "xi: expected a coverage"),
    (cal.fit_isotonic, (np.zeros(3), np.ones(3), np.r_[1.0, -2.0, 3.0]), {"xi": "0.9"},
     "xi: expected a coverage"),
    (cal.fit_global, (np.zeros(3), np.full(3, 1e-300), np.r_[1e10, -2.0, 3.0]), {},
     "sigma: \\(y - mu\\) / sigma overflows"),
    (cal.fit_isotonic, (np.zeros(3), np.full(3, 1e-310), np.r_[1.0, 2.0, 3.0]), {},
     "sigma: \\(y - mu\\) / sigma overflows"),
])
def test_bad_inputs_raise(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_apply_checks_inputs_and_dispatcher_checks_method(val):
    g = cal.fit_global(*val)
    with pytest.raises(ValueError, match="sigma"):
        g.apply(np.ones(3), np.r_[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="method"):
        cal.fit_calibrator("platt", *val)


@pytest.mark.parametrize("method, change, match", [
    ("global", {"scale": -1.0}, "scale"),
    ("global", {"scale": float("nan")}, "scale"),
    ("global", {"scale": "2"}, "scale"),
    ("hyperfine", {"global_scale": 0.0}, "global_scale"),
    ("hyperfine", {"etas": [1.0]}, "etas"),                 # 3 bins need 3 factors
    ("hyperfine", {"etas": [1.0, -0.5, 1.0]}, "etas"),
    ("hyperfine", {"etas": [1.0, 0.0, 1.0]}, "etas"),
    ("hyperfine", {"etas": [1.0, float("inf"), 1.0]}, "etas"),
    ("hyperfine", {"edges": [1.0, 0.5]}, "edges"),          # not increasing
    ("hyperfine", {"counts": [10, 10]}, "counts"),
    ("hyperfine", {"xi": 1.5}, "xi"),
    ("hyperfine", {"dof": 1.0}, "dof"),
    ("isotonic", {"freqs": [0.0, 0.7, 0.4, 1.0]}, "freqs"),  # R must be non-decreasing
    ("isotonic", {"levels": [0.0, 0.5, 0.5, 1.0]}, "levels"),
    ("isotonic", {"levels": [0.0, 1.0], "freqs": [0.0, 1.2]}, "freqs"),
    ("isotonic", {"freqs": [0.0, 1.0]}, "freqs"),           # one per knot
])
def test_from_dict_refuses_corrupt_parameters_by_name(method, change, match):
    """A hand-edited or corrupt calibration.json gets a named error, not a calibrator
    that returns negative, NaN or mis-binned sigmas."""
    good = {"global": {"scale": 1.3},
            "hyperfine": {"global_scale": 1.2, "edges": [0.0, 1.0], "etas": [0.9, 1.1, 1.0],
                          "counts": [40, 40, 40]},
            "isotonic": {"levels": [0.0, 0.3, 0.6, 1.0], "freqs": [0.0, 0.2, 0.7, 1.0]}}[method]
    d = {"method": method, "format_version": 2, **good}
    cal.calibrator_from_dict(d)                             # the unchanged dict loads
    with pytest.raises(ValueError, match=match):
        cal.calibrator_from_dict({**d, **change})


def test_hyperfine_accepts_numpy_integer_sizes_and_refuses_bool(val):
    mu, sigma, y = (a[:2000] for a in val)
    ref = cal.fit_hyperfine(mu, sigma, y, n_bins=4, min_count=50)
    got = cal.fit_hyperfine(mu, sigma, y, n_bins=np.int64(4), min_count=np.int32(50))
    assert got.etas == ref.etas and got.edges == ref.edges
    with pytest.raises(ValueError, match="n_bins"):
        cal.fit_hyperfine(mu, sigma, y, n_bins=True)


@pytest.mark.parametrize("ratio", [5.0, 20.0])
def test_isotonic_recalibrates_a_badly_overconfident_model(ratio):
    """Residuals 5-20x the predicted sigma put standardised levels at Phi(z) with
    |z| up to ~80, where Phi rounds to 0 / 1. The recalibrated quantiles must still
    be the empirical quantiles of z (between neighbouring order statistics), the
    CDF a CDF, and apply() the interval-equivalent sigma."""
    rng = np.random.default_rng(0)
    n = 2000
    mu, sigma = np.zeros(n), np.ones(n)
    y = ratio * rng.normal(size=n)
    iso = cal.fit_isotonic(mu, sigma, y)
    z = np.sort(y)
    for q in (0.001, 0.025, 0.5, 0.975, 0.999):
        got = float(iso.quantile(mu[:1], sigma[:1], q)[0])
        k = q * n                                  # the empirical q-quantile lies near z[k-1]
        lo, hi = z[max(int(np.floor(k)) - 2, 0)], z[min(int(np.ceil(k)) + 1, n - 1)]
        assert lo <= got <= hi, (q, got, lo, hi)
    lo95, hi95 = np.quantile(z, [0.025, 0.975])
    assert iso.apply(mu[:1], sigma[:1])[0] == pytest.approx((hi95 - lo95) / (2 * Z95), rel=0.02)
    levels = iso.cdf(np.zeros(4), np.ones(4), np.r_[-1e6, z[0] - 1e-9, z[-1], 1e6])
    np.testing.assert_allclose(levels[[0, 3]], [0.0, 1.0], atol=1e-12)
    assert levels[1] <= 1.0 / n + 1e-12 and levels[2] == pytest.approx(n / (n + 1))
    ecdf = np.searchsorted(z, z[::50], side="right") / (n + 1)   # plotting positions
    np.testing.assert_allclose(iso.cdf(np.zeros(40), np.ones(40), z[::50]), ecdf, atol=1e-12)


@pytest.mark.parametrize("scale", [1e14, 1e16, 1e30])
def test_isotonic_keeps_every_knot_when_sigma_dwarfs_the_residuals(scale):
    """sklearn merges inputs closer than 1e-15; fitted on z ~ 1e-16 the knots used to
    collapse to one and apply() returned sigma unchanged (no calibration). The fit
    depends only on the order of z: the knots are those of sigma = 1 divided by the
    scale, the frequencies the same. Between knots R is linear in Phi(z), which is
    linear in z this near 0: the reference quantiles interpolate the knots in z."""
    rng = np.random.default_rng(3)
    n = 300
    mu, y = np.zeros(n), rng.normal(size=n)
    ref = cal.fit_isotonic(mu, np.ones(n), y)
    iso = cal.fit_isotonic(mu, np.full(n, scale), y)
    assert len(iso.knots) == len(ref.knots) == n
    knots, freqs = np.asarray(ref.knots) / scale, np.asarray(ref.freqs)
    np.testing.assert_allclose(iso.knots, knots, rtol=1e-12)
    np.testing.assert_allclose(iso.freqs, freqs, rtol=1e-12)

    def quantile_z(q):                 # smallest z with R >= q, linear in z between knots
        j = int(np.argmax(freqs >= q))
        t = (q - freqs[j - 1]) / (freqs[j] - freqs[j - 1])
        return knots[j - 1] + t * (knots[j] - knots[j - 1])
    lo, hi = quantile_z(0.025), quantile_z(0.975)
    np.testing.assert_allclose(iso.quantile_z(np.r_[0.025, 0.975]), [lo, hi], rtol=1e-9)
    assert iso.apply(mu[:1], np.full(1, scale))[0] == pytest.approx(
        (hi - lo) * scale / (2 * Z95), rel=1e-9)
    assert iso.cdf(np.zeros(1), np.full(1, scale), np.r_[0.5 * (knots[9] + knots[10]) * scale]
                   )[0] == pytest.approx(0.5 * (freqs[9] + freqs[10]), rel=1e-9)


def test_isotonic_names_sigma_when_residuals_are_beyond_float_range_of_it():
    # |z| ~ 1e160: log Phi(z) overflows, so no interval exists in float64; the error
    # used to advise more validation samples
    rng = np.random.default_rng(0)
    iso = cal.fit_isotonic(np.zeros(300), np.full(300, 1e-160), rng.normal(size=300))
    with pytest.raises(ValueError, match="^sigma: the fitted residuals reach"):
        iso.apply(np.zeros(1), np.ones(1))


def test_isotonic_maps_refuse_nan_and_levels_outside_0_1():
    """A NaN z or level used to come back as level 1.0 (or z = inf): a silent,
    plausible-looking number. The infinite ends stay defined: R(-inf) = 0,
    R(+inf) = 1, and the levels 0 / 1 map to 0 / 1 (closed form of the anchors)."""
    rng = np.random.default_rng(0)
    iso = cal.fit_isotonic(np.zeros(50), np.ones(50), rng.normal(size=50))
    for method, arg, value in [("recalibrate_z", "z", np.nan),
                               ("recalibrate_level", "p", np.nan),
                               ("recalibrate_level", "p", 2.0),
                               ("quantile_z", "q", np.nan), ("quantile_z", "q", 1.5),
                               ("inverse_level", "q", -0.1)]:
        with pytest.raises(ValueError, match=f"{arg}: expected"):
            getattr(iso, method)(np.array([0.5, value]))
    np.testing.assert_array_equal(iso.recalibrate_z([-np.inf, np.inf]), [0.0, 1.0])
    np.testing.assert_array_equal(iso.recalibrate_level([0.0, 1.0]), [0.0, 1.0])


def test_isotonic_reads_format_2_levels(val):
    """Version-2 files stored R at knots p = Phi(z) with explicit (0, 0) and (1, 1)
    anchors; they read into the same map (compared on the stored knots)."""
    levels = [0.0, 0.1, 0.4, 0.5, 0.9, 1.0]
    freqs = [0.0, 0.05, 0.3, 0.55, 0.93, 1.0]
    old = cal.calibrator_from_dict({"method": "isotonic", "format_version": 2,
                                    "levels": levels, "freqs": freqs, "xi": 0.9})
    np.testing.assert_allclose(old.recalibrate_level(levels), freqs, atol=1e-12)
    mid = np.array([0.05, 0.25, 0.7, 0.95])          # linear in p between the knots
    np.testing.assert_allclose(old.recalibrate_level(mid), np.interp(mid, levels, freqs),
                               atol=1e-12)
    assert cal.calibrator_from_dict(old.to_dict()) == old


def test_bin_quantile_conformal_is_the_order_statistic():
    rng = np.random.default_rng(3)
    for n, xi in ((10, 0.5), (30, 0.95), (100, 0.9), (7, 0.95)):
        scores = rng.exponential(size=n)
        k = math.ceil((n + 1) * xi)
        want = np.sort(scores)[min(k, n) - 1]        # beyond n: the largest score
        assert cal.bin_quantile(scores, xi, "conformal") == want
        assert cal.bin_quantile(scores, xi) == np.quantile(scores, xi)
    # (n + 1) xi is an integer in exact arithmetic, one ulp above it in floats
    # (75 * 0.68 = 51.00000000000001): the rank is 51, not 52.
    for n, xi, rank in ((74, 0.68, 51), (149, 0.68, 102), (19, 0.95, 19)):
        for x in (xi, np.float64(xi), np.float32(xi)):        # float32 0.68 is 0.6800000072
            assert cal.bin_quantile(np.arange(1.0, n + 1), x, "conformal") == rank
    with pytest.raises(ValueError, match="quantile"):
        cal.bin_quantile(scores, 0.9, "median")
    with pytest.raises(ValueError, match="quantile"):
        cal.fit_hyperfine(np.arange(50.0), np.ones(50), np.arange(50.0) + 1, n_bins=2,
                          min_count=5, quantile="exact")


@pytest.mark.parametrize("kind, expected", [("conformal", 30 / 31), ("linear", 28.55 / 31)])
def test_hyperfine_coverage_on_small_bins_matches_the_order_statistic_closed_form(kind, expected):
    """A perfectly calibrated model, 4 bins of 30 validation samples. The bin factor
    is the k-th smallest of 30 continuous scores (s* cancels), so a new sample is
    covered with probability k / (n + 1): 30/31 for the conformal quantile
    (k = ceil(31 * 0.95)), and about (1 + 29 * 0.95) / 31 for the interpolated one,
    below the nominal 0.95. Monte Carlo over 300 validation sets."""
    rng = np.random.default_rng(0)
    z = stats.norm.ppf(0.975)
    cov = []
    for _ in range(300):
        mu, s = rng.uniform(0, 1, 120), rng.uniform(0.5, 2, 120)
        c = cal.fit_hyperfine(mu, s, mu + s * rng.normal(size=120), n_bins=4, min_count=30,
                              quantile=kind)
        assert c.counts == [30, 30, 30, 30] and c.quantile == kind
        m2, s2 = rng.uniform(0, 1, 2000), rng.uniform(0.5, 2, 2000)
        y2 = m2 + s2 * rng.normal(size=2000)
        cov.append(np.mean(np.abs(y2 - m2) <= z * c.apply(m2, s2)))
    assert np.mean(cov) == pytest.approx(expected, abs=0.004)      # ~4 Monte Carlo SE
    loaded = cal.calibrator_from_dict(c.to_dict())
    assert loaded.quantile == kind and loaded == c
