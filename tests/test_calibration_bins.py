"""experiments/calibration_bins.py: out-of-fold hyperfine calibration fixes a known miscalibration."""
import numpy as np
from scipy import stats

from experiment_scripts import load

calibration_bins = load("calibration_bins")


def test_cv_uce_recovers_a_doubled_scale():
    # y ~ N(mu, (2 sigma)^2) but sigma is reported: the central-p interval
    # covers 2 Phi(z_p / 2) - 1 (closed form), far below p; out-of-fold
    # calibration must bring UCE near the finite-sample floor.
    rng = np.random.default_rng(0)
    n = 4000
    mu = rng.normal(size=n)
    sigma = np.exp(rng.normal(-1.0, 0.3, n))
    y = mu + 2.0 * sigma * rng.standard_normal(n)
    levels = np.linspace(0.0, 1.0, 100)
    closed = np.mean(np.abs(2 * stats.norm.cdf(stats.norm.ppf(0.5 + levels / 2) / 2) - 1 - levels))
    from hypuc_jax import uncertainty
    assert abs(uncertainty.uce(y, mu, sigma) - closed) < 0.02
    assert calibration_bins.cv_uce(mu, sigma, y, bins=5) < 0.2 * closed


def test_cv_uce_with_a_fitted_tail_beats_the_gaussian_on_t_residuals():
    # Residuals Student-t(4): Gaussian hyperfine matches 95% but misses the
    # other levels; the fitted tail matches them all (out of fold).
    rng = np.random.default_rng(1)
    n = 4000
    mu = rng.normal(size=n)
    sigma = np.exp(rng.normal(-1.0, 0.3, n))
    y = mu + sigma * stats.t.rvs(4.0, size=n, random_state=rng)
    gauss = calibration_bins.cv_uce(mu, sigma, y, bins=5, tail="gaussian")
    auto = calibration_bins.cv_uce(mu, sigma, y, bins=5, tail="auto")
    assert auto < 0.6 * gauss
