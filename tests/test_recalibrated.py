"""Tests for the isotonic-recalibrated predictive family (hypuc_jax._recalibrated)
and for the scores, decisions and entropy computed under it.

References are independent of the module: scipy's normal distribution (an
identity recalibration is the Gaussian), a numpy CDF written here as
np.interp of Phi(w) over the knots (uncertainty-toolbox's linear-in-p
recalibration), its finite-difference density, and scipy.integrate.quad of
the CRPS, moment and entropy integrals.
"""
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from hypuc_jax import calibration, flagging, uncertainty
from hypuc_jax._predictions import (ThresholdSpec, central_bounds, central_z, check_dof,
                                    dof_from_json, dof_to_json, exceed_prob, std_entropy,
                                    std_logpdf)
from hypuc_jax._recalibrated import RecalibratedNormal
from hypuc_jax.decisions import gaussian_log_odds

Z95 = stats.norm.ppf(0.975)


def _skewed_family(seed=0, n_knots=25):
    rng = np.random.default_rng(seed)
    knots = np.sort(rng.normal(0.3, 1.5, n_knots))
    freqs = np.sort(rng.uniform(0.02, 0.97, n_knots))
    freqs[5] = freqs[6]                                  # a flat piece of R: zero density
    return knots, freqs


class _Reference:
    """W's CDF as np.interp in p = Phi(w), and integrals of it by scipy quad."""

    def __init__(self, knots, freqs):
        self.knots = np.asarray(knots)
        self.p = np.concatenate([[0.0], stats.norm.cdf(knots), [1.0]])
        self.minus_sf = np.concatenate([[-1.0], -stats.norm.sf(knots), [0.0]])
        self.f = np.concatenate([[0.0], freqs, [1.0]])

    def cdf(self, w):
        # linear in Phi = linear in -(1 - Phi): the upper half interpolates in the
        # survival function, which float64 resolves where Phi rounds to 1
        w = np.asarray(w, dtype=np.float64)
        return np.where(w < 0, np.interp(stats.norm.cdf(w), self.p, self.f),
                        np.interp(-stats.norm.sf(w), self.minus_sf, self.f))

    def pdf(self, w):
        """Density slope_j phi(w): segment masses from Phi below 0 and 1 - Phi above."""
        k = np.r_[-np.inf, self.knots, np.inf]
        mass = np.where(k[1:] <= 0, np.diff(stats.norm.cdf(k)), -np.diff(stats.norm.sf(k)))
        slope = np.diff(self.f) / mass
        j = np.searchsorted(self.knots, w, side="right")
        return slope[j] * stats.norm.pdf(w)

    def quad(self, fn, extra=()):
        edges = np.unique(np.r_[-40.0, self.knots, list(extra), 40.0])
        return sum(integrate.quad(fn, a, b, limit=200, epsabs=1e-13)[0]
                   for a, b in zip(edges[:-1], edges[1:]))

    def entropy(self):
        def neg_g_log_g(w):
            g = float(self.pdf(w))
            return -g * math.log(g) if g > 0 else 0.0
        return self.quad(neg_g_log_g)


def test_identity_recalibration_is_the_gaussian():
    knots = np.linspace(-5, 5, 101)
    fam = RecalibratedNormal(tuple(knots), tuple(stats.norm.cdf(knots)))
    assert fam.scale == pytest.approx(1.0, abs=1e-12) and fam.mean == pytest.approx(0, abs=1e-12)
    z = np.array([-7.0, -3.1, -0.4, 0.0, 0.25, 1.7, 4.9, 9.0])
    np.testing.assert_allclose(fam.cdf(z), stats.norm.cdf(z), atol=1e-14)
    np.testing.assert_allclose(fam.logpdf(z), stats.norm.logpdf(z), atol=1e-12)
    logsf, logcdf = fam.logsf_logcdf(z)
    np.testing.assert_allclose(logsf, stats.norm.logsf(z), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(logcdf, stats.norm.logcdf(z), rtol=1e-9, atol=1e-15)
    q = np.array([0.001, 0.025, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(fam.ppf(q), stats.norm.ppf(q), atol=1e-12)
    assert fam.entropy == pytest.approx(stats.norm.entropy(), abs=1e-12)
    gauss_crps = z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    np.testing.assert_allclose(fam.crps(z), gauss_crps, atol=1e-12)
    assert central_bounds(0.95, dof=fam) == pytest.approx((-Z95, Z95), abs=1e-12)


def test_moments_entropy_and_crps_match_quadrature():
    knots, freqs = _skewed_family()
    fam = RecalibratedNormal(tuple(knots), tuple(freqs))
    ref = _Reference(knots, freqs)
    m1 = ref.quad(lambda w: w * ref.pdf(w))
    assert fam.mean * fam.scale == pytest.approx(m1, abs=1e-10)
    # entropy of Z = W / s is H(W) - log s
    assert fam.entropy == pytest.approx(ref.entropy() - math.log(fam.scale), abs=1e-10)
    s = fam.scale
    for z in (-9.0, -3.0, -0.7, 0.1, 0.9, 2.5, 12.0):
        w = s * z
        want = ref.quad(lambda t: (ref.cdf(t) - (t >= w)) ** 2, extra=[w])
        assert fam.crps(np.array([z]))[0] * s == pytest.approx(want, abs=1e-9), z
    # the scale: the recalibrated central 95% interval over the Gaussian's
    qlo = optimize.brentq(lambda t: ref.cdf(t) - 0.025, -40, 40, xtol=1e-14)
    qhi = optimize.brentq(lambda t: ref.cdf(t) - 0.975, -40, 40, xtol=1e-14)
    assert s == pytest.approx((qhi - qlo) / (2 * Z95), rel=1e-9)


def test_density_cdf_and_tails_match_the_numpy_reference():
    knots, freqs = _skewed_family(1)
    fam = RecalibratedNormal(tuple(knots), tuple(freqs))
    ref = _Reference(knots, freqs)
    s = fam.scale
    w = np.r_[np.linspace(knots[0] - 3, knots[-1] + 3, 201)]
    w = w[np.min(np.abs(w[:, None] - knots[None, :]), axis=1) > 1e-3]   # off the kinks
    np.testing.assert_allclose(fam.cdf(w / s), ref.cdf(w), atol=1e-12)
    got = np.exp(fam.logpdf(w / s)) / s                                 # density of W
    np.testing.assert_allclose(got, ref.pdf(w), rtol=1e-10)
    fd = (ref.cdf(w + 1e-6) - ref.cdf(w - 1e-6)) / 2e-6                 # and the CDF's slope
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-9)
    logsf, logcdf = fam.logsf_logcdf(w / s)
    np.testing.assert_allclose(np.exp(logcdf), ref.cdf(w), atol=1e-12)
    np.testing.assert_allclose(np.exp(logsf), 1 - ref.cdf(w), atol=1e-12)
    # far beyond the end knots: Gaussian tails, in logs where the CDF underflows
    far = np.array([-45.0, 45.0])
    logsf, logcdf = fam.logsf_logcdf(far / s)
    assert logcdf[0] == pytest.approx(math.log(freqs[0]) + stats.norm.logcdf(-45.0)
                                      - stats.norm.logcdf(knots[0]), rel=1e-12)
    assert logsf[1] == pytest.approx(math.log(1 - freqs[-1]) + stats.norm.logsf(45.0)
                                     - stats.norm.logsf(knots[-1]), rel=1e-12)
    # a flat piece of R carries no probability: density 0, log density -inf
    inside = 0.5 * (knots[5] + knots[6]) / s
    assert fam.logpdf(np.array([inside]))[0] == -np.inf


def test_round_trip_and_bad_families():
    knots, freqs = _skewed_family()
    fam = RecalibratedNormal(tuple(knots), tuple(freqs), 0.9)
    assert dof_from_json(dof_to_json(fam)) == fam and check_dof(fam) is fam
    centred = fam.centred()
    assert dof_from_json(dof_to_json(centred)) == centred != fam
    with pytest.raises(ValueError, match="central_bounds"):
        central_z(0.95, dof=fam)
    for bad in ({"family": "isotonic", "knots": [1.0, 0.0], "freqs": [0.1, 0.2]},
                {"family": "isotonic", "knots": [0.0, 1.0], "freqs": [0.3, 0.2]},
                {"family": "other"}):
        with pytest.raises(ValueError, match="family"):
            dof_from_json(bad)
    with pytest.raises(ValueError, match="dof: expected a number"):
        check_dof(dof_to_json(fam))        # a dict is read only where JSON is (dof_from_json)
    with pytest.raises(ValueError, match="z: expected"):
        fam.logpdf(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="xi"):
        RecalibratedNormal((0.0,), (0.5,), 1.5)


@pytest.fixture(scope="module")
def skewed_fit():
    """Validation and test predictions with skewed, over-dispersed residuals, and
    the isotonic calibration fitted on the validation half."""
    rng = np.random.default_rng(7)
    n, m = 800, 5000
    mu = rng.uniform(3.0, 6.0, n + m)
    sigma = rng.uniform(0.1, 0.3, n + m)
    y = mu + sigma * (rng.gamma(2.0, 1.0, n + m) - 2.0) * 1.3           # right-skewed
    iso = calibration.fit_isotonic(mu[:n], sigma[:n], y[:n])
    val = (y[:n], mu[:n], sigma[:n])
    test = (y[n:], mu[n:], sigma[n:])
    return iso, val, test


def test_scores_under_the_family_are_the_recalibrated_cdfs(skewed_fit):
    iso, (y, mu, sigma), (yt, mut, sigmat) = skewed_fit
    fam, sig_cal = iso.predictive_dof, iso.apply(mu, sigma)
    n = y.size
    # In sample, R is the empirical CDF of z: every central interval holds its level.
    for level in (0.1, 0.5, 0.68, 0.9, 0.95):
        got = uncertainty.coverage(y, mu, sig_cal, level, fam)
        assert got == pytest.approx(level, abs=2.0 / n), level
    assert uncertainty.uce(y, mu, sig_cal, fam) < 2.0 / n
    # the Gaussian of equal 95% width (what the stages scored before) misses the skew
    assert uncertainty.uce(y, mu, sig_cal) > 10 * uncertainty.uce(y, mu, sig_cal, fam)
    # coverage and width on fresh records from the exact recalibrated interval
    lo, hi = iso.interval(mut, sigmat, 0.9)                  # in units of the raw sigma
    sc = iso.apply(mut, sigmat)
    assert uncertainty.coverage(yt, mut, sc, 0.9, fam) == pytest.approx(
        np.mean((yt >= lo) & (yt <= hi)), abs=1e-12)
    assert uncertainty.width(sc, 0.9, fam) == pytest.approx(np.mean(hi - lo), rel=1e-9)
    # NLL and CRPS against the numpy reference CDF in units of the raw sigma
    ref = _Reference(iso.knots, iso.freqs)
    wt = (yt - mut) / sigmat
    nll_ref = np.mean(np.log(sigmat) - np.log(ref.pdf(wt)))
    assert uncertainty.nll(yt, mut, sc, fam) == pytest.approx(nll_ref, abs=1e-10)
    sub = slice(0, 5)
    crps_ref = np.mean([s * ref.quad(lambda t, w=w: (ref.cdf(t) - (t >= w)) ** 2, extra=[w])
                        for w, s in zip(wt[sub], sigmat[sub])])
    assert uncertainty.crps(yt[sub], mut[sub], sc[sub], fam) == pytest.approx(crps_ref, abs=1e-8)
    # On fresh records the recalibrated CDF beats the Gaussian stand-in on CRPS; its
    # density, piecewise from 800 validation residuals, is too rough to do so on NLL.
    assert uncertainty.crps(yt, mut, sc, fam) < uncertainty.crps(yt, mut, sc)
    assert uncertainty.uce(yt, mut, sc, fam) < 0.5 * uncertainty.uce(yt, mut, sc)


def test_event_probabilities_entropy_and_log_odds_under_the_family(skewed_fit):
    iso, _, (yt, mut, sigmat) = skewed_fit
    fam, sc = iso.predictive_dof, iso.apply(mut, sigmat)
    ref = _Reference(iso.knots, iso.freqs)
    for value, direction in ((5.5, "above"), (3.5, "below")):
        spec = ThresholdSpec("t", value, direction)
        below = ref.cdf((value - mut) / sigmat)
        want = 1.0 - below if direction == "above" else below
        np.testing.assert_allclose(exceed_prob(mut, sc, spec, fam), want, atol=1e-12)
        ok = (want > 1e-9) & (want < 1 - 1e-9)
        np.testing.assert_allclose(gaussian_log_odds(mut, sc, spec, fam)[ok],
                                   np.log(want[ok] / (1 - want[ok])), rtol=1e-6, atol=1e-6)
    h_w = ref.entropy()
    np.testing.assert_allclose(flagging.predictive_entropy(sc[:5], fam),
                               h_w + np.log(sigmat[:5]), atol=1e-9)
    assert std_entropy(fam) == pytest.approx(h_w - math.log(fam.scale), abs=1e-9)
    assert np.all(np.isfinite(std_logpdf((yt - mut) / sc, fam)))


def _mp_reference(knots, freqs):
    """mpmath (40 digits) CDF and density of W and integrals over its pieces, with
    breakpoints at the knots, +-40 and 60 / |k| beyond the end knots."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    k = [mp.mpf(v) for v in knots]
    f = [mp.mpf(0)] + [mp.mpf(v) for v in freqs] + [mp.mpf(1)]
    ext = [-mp.inf] + k + [mp.inf]
    def below(a, t):            # Phi(t) - Phi(a), from the tail that keeps its digits
        return mp.ncdf(t) - mp.ncdf(a) if a < 0 else mp.ncdf(-a) - mp.ncdf(-t)
    mass = [below(a, b) for a, b in zip(ext[:-1], ext[1:])]

    def seg(t):
        return next(i for i in range(len(ext) - 1) if t <= ext[i + 1])

    def cdf(t):
        i = seg(t)
        return f[i] + (f[i + 1] - f[i]) * below(ext[i], t) / mass[i]

    def pdf(t):
        i = seg(t)
        return (f[i + 1] - f[i]) / mass[i] * mp.npdf(t)

    near = [v + d * 60 / max(1, abs(v)) for v in k for d in (-1, 1)]   # where g is, by a knot
    points = sorted(set(k + near + [mp.mpf(-40), mp.mpf(40)]))

    def integral(fn, extra=()):
        pts = sorted(set(points + [mp.mpf(e) for e in extra]))
        return mp.quad(fn, pts)
    return mp, cdf, pdf, integral


@pytest.mark.parametrize("x", [30.0, 1e3, 1e5, 1e8])
def test_far_knots_match_high_precision_quadrature(x):
    """Knots thousands to 1e8 predicted sigmas out (a badly over-confident model):
    the tails' moments, entropy, CRPS and log density come from erfcx-based Mills
    ratios, with nothing of order x^2 cancelling (they used to overflow or drift)."""
    knots, freqs = (-x, -0.5, 0.7, x), (0.1, 0.35, 0.6, 0.85)
    fam = RecalibratedNormal(knots, freqs)
    mp, cdf, pdf, integral = _mp_reference(knots, freqs)
    mean = integral(lambda t: t * pdf(t))
    ent = integral(lambda t: -pdf(t) * mp.log(pdf(t)) if pdf(t) > 0 else 0)
    s = fam.scale
    assert fam.mean * s == pytest.approx(float(mean), rel=1e-9, abs=1e-9 * x)
    assert fam.entropy + math.log(s) == pytest.approx(float(ent), rel=1e-9, abs=1e-9)
    for w in (-x - 3.0 / x, -x + 0.25, 0.1, x + 2.0 / x):
        want = integral(lambda t: (cdf(t) - (1 if t >= w else 0)) ** 2, extra=[w])
        assert fam.crps(np.array([w / s]))[0] * s == pytest.approx(float(want), rel=1e-9), w
        logp = float(mp.log(pdf(mp.mpf(w))))
        assert fam.logpdf(np.array([w / s]))[0] - math.log(s) == pytest.approx(logp, rel=1e-9,
                                                                                abs=1e-9)
    logsf, logcdf = fam.logsf_logcdf(np.array([(-x - 3.0 / x) / s, (x + 2.0 / x) / s]))
    assert logcdf[0] == pytest.approx(float(mp.log(cdf(mp.mpf(-x - 3.0 / x)))), rel=1e-9)
    assert logsf[1] == pytest.approx(float(mp.log(1 - cdf(mp.mpf(x + 2.0 / x)))), rel=1e-9)


def test_nearly_coincident_knots_match_high_precision_quadrature():
    """Knots 1e-12 apart: the numerical branch for narrow segments and the tiny-mass
    form of log(Phi(b) - Phi(a)), and a record inside the narrow segment."""
    g = 1e-12
    knots, freqs = (-1.5, -0.5, 1.0, 1.0 + g, 2.0), (0.1, 0.3, 0.5, 0.7, 0.9)
    fam = RecalibratedNormal(knots, freqs)
    mp, cdf, pdf, integral = _mp_reference(knots, freqs)
    s = fam.scale
    gini = 2 * integral(lambda t: cdf(t) * (1 - cdf(t)))
    assert fam._moments["gini"] == pytest.approx(float(gini), rel=1e-9)
    ent = integral(lambda t: -pdf(t) * mp.log(pdf(t)))
    assert fam.entropy + math.log(s) == pytest.approx(float(ent), rel=1e-8)
    for w in (1.0, 1.0 + g / 2, 1.0 + g, 1.5):
        want = integral(lambda t: (cdf(t) - (1 if t >= w else 0)) ** 2, extra=[w])
        assert fam.crps(np.array([w / s]))[0] * s == pytest.approx(float(want), rel=1e-9), w
    inside = np.array([(1.0 + g / 2) / s])
    assert fam.logpdf(inside)[0] - math.log(s) == pytest.approx(
        float(mp.log(pdf(mp.mpf(1.0) + mp.mpf(g) / 2))), rel=1e-6)


def test_centred_family_has_mean_zero_and_the_same_shape():
    knots, freqs = _skewed_family(2)
    fam = RecalibratedNormal(tuple(knots), tuple(freqs))
    c = fam.centred()
    assert c.mean == pytest.approx(0.0, abs=1e-12) and fam.mean != pytest.approx(0.0, abs=1e-3)
    z = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(c.cdf(z - fam.mean), fam.cdf(z), atol=1e-12)
    np.testing.assert_allclose(c.crps(z - fam.mean), fam.crps(z), atol=1e-12)
    assert c.entropy == pytest.approx(fam.entropy) and c.sd == pytest.approx(fam.sd)


@pytest.mark.parametrize("x", [1e4, 1e6])
def test_interior_segments_far_out_match_high_precision_quadrature(x):
    """Segments between two far knots ([-2x, -x], [x, 2x]): their log density, mass
    and entropy come from Mills ratios about the end nearest 0 (log(Phi(b) - Phi(a))
    and the density's w^2 / 2 used to cancel: entropy 1208 for -4.4 at x = 1e5)."""
    knots, freqs = (-2 * x, -x, x, 2 * x), (0.1, 0.3, 0.7, 0.9)
    fam = RecalibratedNormal(knots, freqs)
    mp, cdf, pdf, integral = _mp_reference(knots, freqs)
    s = fam.scale
    ent = integral(lambda t: -pdf(t) * mp.log(pdf(t)) if pdf(t) > 0 else 0)
    assert fam.entropy + math.log(s) == pytest.approx(float(ent), rel=1e-9, abs=1e-9)
    for w in (x + 0.5 / x, 1.5 * x, -x - 2.0 / x):
        assert fam.cdf(np.array([w / s]))[0] == pytest.approx(float(cdf(mp.mpf(w))), rel=1e-9)
        assert fam.logpdf(np.array([w / s]))[0] - math.log(s) == pytest.approx(
            float(mp.log(pdf(mp.mpf(w)))), rel=1e-9)


def test_all_residuals_far_on_one_side_of_zero():
    """Every validation residual beyond 27 (or 3e7) predicted sigmas on one side: the
    lower tail then holds 0 (x = -k_1 < 0). Its moments used to divide 0 by 0, and
    its CDF from Mills ratios drifted above F(k_1) and back (not monotone)."""
    fam = RecalibratedNormal((30.0, 31.0), (0.3, 0.6))
    mp, cdf, pdf, integral = _mp_reference((30.0, 31.0), (0.3, 0.6))
    assert fam.mean * fam.scale == pytest.approx(float(integral(lambda t: t * pdf(t))),
                                                 rel=1e-9)
    gini = 2 * integral(lambda t: cdf(t) * (1 - cdf(t)))
    assert fam._moments["gini"] == pytest.approx(float(gini), rel=1e-9)
    ent = integral(lambda t: -pdf(t) * mp.log(pdf(t)) if pdf(t) > 0 else 0)
    assert fam.entropy + math.log(fam.scale) == pytest.approx(float(ent), rel=1e-9)
    c = 3.21e7
    far = RecalibratedNormal((c, c + 1, c + 2), (0.25, 0.5, 0.75))
    w = np.array([0.0, 8.19e6, c - 1e-3, c - 1e-6, c])
    np.testing.assert_allclose(far.w_cdf(w), [0.125, 0.25, 0.25, 0.25, 0.25], rtol=1e-12)
    # density at 0: 0.25 phi(0) / Phi(c), Phi(c) = 1 in float64
    assert far.logpdf(np.array([-far.loc / far.scale]))[0] - math.log(far.scale) == \
        pytest.approx(math.log(0.25) + stats.norm.logpdf(0.0), rel=1e-12)


def test_scalar_inputs_give_scalars_on_every_piece():
    """A scalar in a tail used to raise TypeError (an item assignment into a numpy
    scalar): every method returns what the same value in an array gives."""
    cal = calibration.fit_isotonic(np.zeros(200), np.ones(200),
                                   np.random.default_rng(0).normal(size=200))
    fam = cal.predictive_dof
    for z in (-6.0, -0.3, 0.2, 6.0):
        for method in (fam.cdf, fam.logpdf, fam.crps):
            got = method(z)
            assert np.ndim(got) == 0 and got == method(np.array([z]))[0], (method, z)
        logsf, logcdf = fam.logsf_logcdf(z)
        assert np.ndim(logsf) == 0 and logcdf == fam.logsf_logcdf(np.array([z]))[1][0]
    assert cal.recalibrate_z(-5.0) == cal.recalibrate_z(np.array([-5.0]))[0]
    spec = ThresholdSpec("K>5.5", 5.5, "above")
    assert exceed_prob(4.3, 0.2, spec, fam) == exceed_prob(np.array([4.3]), np.array([0.2]),
                                                           spec, fam)[0]
    assert np.shape(fam.cdf(np.zeros((2, 3)))) == (2, 3)
