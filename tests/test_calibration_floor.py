"""experiments/calibration_floor.py against the conjugate Gaussian closed form."""
import numpy as np
import pytest
from scipy import stats

from experiment_scripts import load
from hypuc_jax.data.tasks import LabelDistribution, Threshold

floor = load("calibration_floor")

# Prior N(M, S0^2) without tail, constant noise S: the posterior given e is
# N(post_mean(e), POST_SD^2); the lam-tempered prior rho^(1 - lam) is
# N(M, S0^2 / (1 - lam)), so f_lam(e) is a precision-weighted mean too.
M, S0, S = 4.0, 0.5, 0.3
POST_SD = (1 / S0 ** 2 + 1 / S ** 2) ** -0.5


def _post_mean(e, lam=0.0):
    prior_prec, noise_prec = (1.0 - lam) / S0 ** 2, 1.0 / S ** 2
    return (noise_prec * e + prior_prec * M) / (noise_prec + prior_prec)


@pytest.fixture(scope="module")
def reader():
    dist = LabelDistribution(mean=M, sd=S0, tail_weight=0.0, tail_start=0.0, tail_scale=1.0,
                             tail_sign=1.0, clip=(M - 8 * S0, M + 8 * S0), noise_base=S,
                             noise_slope=0.0)
    return floor.OracleReader(dist, np.random.default_rng(0))


E = np.linspace(M - 0.8, M + 0.8, 9)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_conditional_scales_match_the_folded_normal(reader, lam):
    m = reader(E, lam)
    rms, s95 = floor.conditional_scales(reader.grid, reader.weights(E, 0.0), m)
    bias = _post_mean(E) - m  # y - m ~ N(bias, POST_SD^2) given e
    np.testing.assert_allclose(rms, np.sqrt(POST_SD ** 2 + bias ** 2), rtol=1e-2)
    q95 = stats.foldnorm.ppf(0.95, np.abs(bias) / POST_SD, scale=POST_SD)
    np.testing.assert_allclose(s95, q95 / stats.norm.ppf(0.975), rtol=1e-2)


def test_mean_coverage_and_scores_match_the_closed_form(reader):
    lam = 0.5
    m = reader(E, lam)
    w = reader.weights(E, 0.0)
    sigma = np.full(E.size, 0.2)
    m_t = floor.mean_coverage(reader.grid, w, m, sigma)
    bias = _post_mean(E) - m
    t = floor.T_GRID[:, None] * sigma[None, :]
    closed = (stats.norm.cdf((t - bias) / POST_SD) - stats.norm.cdf((-t - bias) / POST_SD)).mean(1)
    np.testing.assert_allclose(m_t, closed, atol=3e-3)
    # lam 0, variance-matched sigma: the posterior is Gaussian, so calibration is exact.
    m0 = reader(E, 0.0)
    rms, _ = floor.conditional_scales(reader.grid, w, m0)
    scores = floor.curve_scores(floor.mean_coverage(reader.grid, w, m0, rms))
    assert scores["uce"] < 3e-3
    assert scores["cov95"] == pytest.approx(0.95, abs=3e-3)
    assert scores["cov68"] == pytest.approx(0.68, abs=3e-3)
    # A factor c scales every interval: coverage of 95% becomes P(|Z| <= 1.96 c).
    c = 0.9
    assert floor.curve_scores(floor.mean_coverage(reader.grid, w, m0, rms), c)["cov95"] == \
        pytest.approx(2 * stats.norm.cdf(stats.norm.ppf(0.975) * c) - 1, abs=3e-3)


def test_tail_probability_is_the_posterior_tail(reader):
    t = Threshold("y>4.3", 4.3, "above")
    p = floor.tail_probabilities(reader, E, [t])[:, 0]
    np.testing.assert_allclose(p, stats.norm.sf(4.3, _post_mean(E), POST_SD), atol=5e-3)
    below = floor.tail_probabilities(reader, E, [Threshold("y<4.3", 4.3, "below")])[:, 0]
    np.testing.assert_allclose(below, 1.0 - p, atol=5e-3)


def test_best_factor_recovers_a_known_miscalibration(reader):
    m0 = reader(E, 0.0)
    w = reader.weights(E, 0.0)
    m_t = floor.mean_coverage(reader.grid, w, m0, np.full(E.size, POST_SD * 1.2))
    assert floor.best_factor(m_t) == pytest.approx(1 / 1.2, abs=5e-3)


def test_run_rows_score_saved_outputs_and_name_missing_runs(tmp_path):
    rng = np.random.default_rng(0)
    for k, scale in enumerate((1.0, 1.3)):
        d = tmp_path / "v" / f"seed{k}"
        d.mkdir(parents=True)
        y = rng.standard_normal(2000)
        np.savez(d / "outputs_test.npz", y=y, mu=np.zeros(2000), sigma=np.full(2000, scale),
                 sigma_cal=np.ones(2000))
    row = floor.run_uce_row(tmp_path / "v")
    # Reference: UCE as mean |coverage - level| over 100 levels, by hand with scipy.
    ref = []
    for k, scale in enumerate((1.0, 1.3)):
        z = np.load(tmp_path / "v" / f"seed{k}" / "outputs_test.npz")["y"]
        levels = np.linspace(0, 1, 100)
        cov = [np.mean(np.abs(z) <= scale * stats.norm.ppf(0.5 + p / 2)) for p in levels]
        ref.append(np.mean(np.abs(np.array(cov) - levels)))
    assert f"| {np.mean(ref):.4f} ± {np.std(ref, ddof=1):.4f} |" in row
    with pytest.raises(FileNotFoundError, match="--runs"):
        floor.run_uce_row(tmp_path / "missing")
    # a leftover seed1_old/ is not a seed; --seeds picks seeds
    old = tmp_path / "v" / "seed1_old"
    old.mkdir()
    np.savez(old / "outputs_test.npz", y=np.zeros(10), mu=np.zeros(10), sigma=np.ones(10),
             sigma_cal=np.ones(10))
    assert floor.run_uce_row(tmp_path / "v") == row
    assert f"| {tmp_path / 'v'} | 1 | {ref[1]:.4f} ± — |" in floor.run_uce_row(
        tmp_path / "v", seeds=[1])
    with pytest.raises(ValueError, match=r"--seeds: .* no run for seeds \[2\]"):
        floor.run_uce_row(tmp_path / "v", seeds=[2])


def test_bad_runs_fail_before_the_population_computation(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the population was computed before --runs was checked")
    monkeypatch.setattr(floor, "OracleReader", refuse)
    (tmp_path / "v" / "seed0").mkdir(parents=True)              # no outputs_test.npz yet
    for argv, message in ((["--runs", tmp_path / "missing"], "--runs"),
                          (["--runs", tmp_path / "v"], "--runs"),
                          (["--runs", tmp_path / "v", "--seeds", "3"], "no run for seeds [3]"),
                          (["--out", tmp_path / "v"], f"--out {tmp_path / 'v'}: is a folder")):
        with pytest.raises(SystemExit) as e:
            floor.main([str(a) for a in argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("n,bins", [(1600, 5), (1600, 10), (400, 4)])
def test_per_bin_pass_probability_matches_simulation(n, bins):
    rng = np.random.default_rng(1)
    covered = rng.binomial(n // bins, 0.95, size=(40_000, bins)) / (n // bins)
    sim = np.mean(np.all(np.abs(covered - 0.95) <= 0.02 + 1e-12, axis=1))
    assert floor.per_bin_pass_probability(n, bins) == pytest.approx(sim, abs=0.01)
