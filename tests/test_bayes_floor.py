"""experiments/bayes_floor.py: the oracle reader against the Gaussian closed form."""
import numpy as np
import pytest

from experiment_scripts import load
from hypuc_jax.data.tasks import LabelDistribution, get_preset, get_task

bayes_floor = load("bayes_floor")


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.75])
def test_oracle_reader_matches_conjugate_gaussian_posterior(lam):
    # Prior N(m, s0^2) (no tail, clip far away), constant noise s: the
    # tempered prior rho^(1 - lam) is N(m, s0^2 / (1 - lam)), so the
    # posterior mean is the precision-weighted average of e and m.
    m, s0, s = 4.0, 0.5, 0.3
    dist = LabelDistribution(mean=m, sd=s0, tail_weight=0.0, tail_start=0.0, tail_scale=1.0,
                             tail_sign=1.0, clip=(m - 8 * s0, m + 8 * s0), noise_base=s,
                             noise_slope=0.0)
    reader = bayes_floor.OracleReader(dist, np.random.default_rng(0))
    e = np.linspace(m - 1.0, m + 1.0, 21)
    prior_prec, noise_prec = (1.0 - lam) / s0 ** 2, 1.0 / s ** 2
    closed = (noise_prec * e + prior_prec * m) / (noise_prec + prior_prec)
    np.testing.assert_allclose(reader(e, lam), closed, atol=5e-3)
    # the posterior is Gaussian, so its median is the same closed form
    np.testing.assert_allclose(reader(e, lam, "median"), closed, atol=5e-3)


def test_oracle_median_matches_scipy_for_a_skewed_posterior():
    # Uniform prior (no tail) and noise growing with |y - m|: the posterior
    # q(y | e) ~ N(e; y, s(y)^2) is skewed; its median from scipy's quadrature.
    from scipy import integrate, optimize
    m, s0 = 4.0, 0.5
    dist = LabelDistribution(mean=m, sd=s0, tail_weight=0.0, tail_start=0.0, tail_scale=1.0,
                             tail_sign=1.0, clip=(m - 8 * s0, m + 8 * s0), noise_base=0.1,
                             noise_slope=0.3)
    reader = bayes_floor.OracleReader(dist, np.random.default_rng(0))
    e, lam = np.array([4.6, 5.2]), 0.5

    def density(y, ei):
        sd = 0.1 + 0.3 * abs(y - m)
        prior = np.exp(-0.5 * ((y - m) / s0) ** 2) ** (1 - lam)
        return np.exp(-0.5 * ((ei - y) / sd) ** 2) / sd * prior

    lo, hi = dist.clip
    for ei, got in zip(e, reader(e, lam, "median")):
        total = integrate.quad(density, lo, hi, args=(ei,), points=[m, ei], limit=200)[0]
        med = optimize.brentq(lambda t: integrate.quad(density, lo, t, args=(ei,), points=[m],
                                                       limit=200)[0] - total / 2, lo, hi)
        assert got == pytest.approx(med, abs=5e-3)


def test_sampled_labels_follow_the_mixture_and_regions_use_thresholds():
    preset = get_preset("potassium")
    y = bayes_floor.sample_labels(preset.labels, 400_000, np.random.default_rng(1))
    # Fractions documented in hypuc_jax/data/tasks.py (from the mixture's CDF).
    assert np.mean(y > 5.5) == pytest.approx(0.037, abs=0.002)
    assert np.mean(y < 3.5) == pytest.approx(0.020, abs=0.002)
    regs = bayes_floor.regions(preset.task)
    assert set(regs) == {"overall", "y > 5.5", "y > 6.5", "y < 3.5"}
    np.testing.assert_array_equal(regs["y > 6.5"](y), y > 6.5)


def test_runs_without_outputs_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--runs"):
        bayes_floor.run_mae(tmp_path, bayes_floor.regions(get_task("potassium")))
