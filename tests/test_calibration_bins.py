"""experiments/calibration_bins.py: out-of-fold hyperfine calibration fixes a known miscalibration."""
import json

import numpy as np
import pytest
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


def _uce(y, mu, sigma):
    """UCE by hand: mean |coverage - level| of the Gaussian central intervals, 100 levels."""
    levels = np.linspace(0.0, 1.0, 100)
    z = np.abs(y - mu) / sigma
    return np.mean(np.abs([np.mean(z <= stats.norm.ppf(0.5 + p / 2)) for p in levels] - levels))


def _point_run(d, rng, const=0.5, n=400):
    """A point model's seed run (as the pipeline saves it): NaN sigma in the validation
    predictions, task.json's constant_sigma, evaluated test outputs with that constant."""
    d.mkdir(parents=True)
    (d / "task.json").write_text(json.dumps({"name": "potassium", "constant_sigma": const}))
    data = {}
    for split in ("val", "test"):
        mu = rng.normal(size=n)
        y = mu + 0.8 * rng.standard_normal(n)
        data[split] = (y, mu)
    y, mu = data["val"]
    np.savez(d / "predictions_val.npz", y=y, mu=mu, sigma=np.full(n, np.nan))
    y, mu = data["test"]
    np.savez(d / "outputs_test.npz", y=y, mu=mu, sigma=np.full(n, const))
    return data


def _cells(text, run):
    row = next(line for line in text.splitlines() if line.startswith(f"| {run} "))
    return [c.strip() for c in row.strip("|").split("|")]


def test_point_model_runs_use_the_constant_sigma_and_only_seed_folders(tmp_path, capsys):
    rng = np.random.default_rng(2)
    data = {s: _point_run(tmp_path / "bmc" / f"seed{s}", rng) for s in (1, 2)}
    _point_run(tmp_path / "bmc" / "seed1_old", rng, const=5.0)     # leftover: not a seed
    assert calibration_bins.main(["--runs", str(tmp_path / "bmc"), "--bins", "1",
                                  "--tails", "gaussian"]) == 0
    cells = _cells(capsys.readouterr().out, tmp_path / "bmc")
    assert cells[0].endswith("(2 seeds)")
    # One bin, Gaussian tail: the calibrated sigma is the validation 95% quantile of
    # |y - mu| over z_0.975 (numpy's linear quantile), whatever the constant.
    unc, cal = [], []
    for s in (1, 2):
        (vy, vmu), (ty, tmu) = data[s]["val"], data[s]["test"]
        scale = np.quantile(np.abs(vy - vmu), 0.95) / stats.norm.ppf(0.975)
        unc.append(_uce(ty, tmu, np.full(ty.size, 0.5)))
        cal.append(_uce(ty, tmu, np.full(ty.size, scale)))
    assert cells[5] == f"{np.mean(unc):.4f}" and cells[6] == f"{np.mean(cal):.4f}"
    assert calibration_bins.main(["--runs", str(tmp_path / "bmc"), "--bins", "1", "--tails",
                                  "gaussian", "--seeds", "2"]) == 0
    cells = _cells(capsys.readouterr().out, tmp_path / "bmc")
    assert cells[0].endswith("(1 seeds)") and cells[5] == f"{unc[1]:.4f}"


def test_bad_runs_and_seeds_are_one_line_errors(tmp_path, capsys):
    _point_run(tmp_path / "v" / "seed0", np.random.default_rng(3))
    cases = [(["--runs", tmp_path / "missing"], f"--runs {tmp_path / 'missing'}: no such folder"),
             (["--runs", tmp_path / "v", "--seeds", "0", "1"], "no run for seeds [1]"),
             (["--runs", tmp_path / "v", tmp_path / "v", "--seeds", "0", "--seeds", "0",
               "--seeds", "0"], "--seeds: given 3 times for 2 --runs folders"),
             (["--runs", tmp_path / "v", "--out", tmp_path / "v" / "seed0" / "task.json" / "x"],
              "--out")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            calibration_bins.main([str(a) for a in argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "v" / "seed0" / "outputs_test.npz").unlink()       # an unfinished seed
    with pytest.raises(SystemExit):
        calibration_bins.main(["--runs", str(tmp_path / "v")])
    assert f"--runs {tmp_path / 'v' / 'seed0'}: no outputs_test.npz" in capsys.readouterr().err


@pytest.mark.parametrize("tail", ["gaussian", "auto"])
def test_cv_uce_scores_a_residual_far_beyond_the_predictive(tail):
    # One held-out residual at 9 (then 60) calibrated sigmas: Phi(z) rounds to
    # 1 there, and the Gaussian map used to turn it into inf and fail. Expected:
    # the out-of-fold coverage scored by hand, each record against its own
    # fold's central-interval half-widths (scipy's quantiles of its family).
    from hypuc_jax import calibration
    from hypuc_jax._predictions import std_ppf
    rng = np.random.default_rng(0)
    n = 400
    mu, sigma = np.zeros(n), np.ones(n)
    for far in (9.0, 60.0):
        y = rng.normal(size=n)
        y[0] = far
        held, dofs = calibration.cross_fit(mu, sigma, y, 5, 0, n_bins=5, min_count=20, tail=tail)
        levels = np.linspace(0.0, 1.0, 100)
        half = np.stack([std_ppf(0.5 + levels / 2, float(d)) for d in dofs])     # [n, levels]
        r = np.abs(y - mu) / held
        expected = np.mean(np.abs((r[:, None] <= half).mean(0) - levels))
        got = calibration_bins.cv_uce(mu, sigma, y, bins=5, tail=tail)
        assert np.isfinite(got)
        assert abs(got - expected) < 1e-12
