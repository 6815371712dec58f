"""experiments/isotonic_family.py on a hand-made run directory: its rows against
scipy's normal (the Gaussian readings) and direct counts inside the isotonic
calibrator's own intervals."""
import json

import numpy as np
import pytest
from scipy import stats

from experiment_scripts import load
from hypuc_jax import calibration, config as config_lib

script = load("isotonic_family")


@pytest.fixture()
def rundir(tmp_path):
    rng = np.random.default_rng(3)
    for split in ("val", "test"):
        mu = rng.uniform(3.0, 6.0, 900)
        sigma = rng.uniform(0.1, 0.3, 900)
        y = mu + sigma * 1.4 * (rng.gamma(2.0, 1.0, 900) - 2.0)       # skewed, too wide
        np.savez(tmp_path / f"predictions_{split}.npz", y=y, mu=mu, sigma=sigma)
    cfg = config_lib.get_config("tiny").to_dict()
    cfg["calibration"].update(bins=3, min_count=30)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_rows_are_the_calibrations_scores(rundir, tmp_path):
    out = tmp_path / "table.md"
    script.main(["--workdir", str(rundir), "--out", str(out)])
    val, test = ({k: v for k, v in np.load(rundir / f"predictions_{s}.npz").items()}
                 for s in ("val", "test"))
    rows = dict(script.run_rows(rundir, val, test))
    y, mu, sigma = test["y"], test["mu"], test["sigma"]
    iso = calibration.fit_isotonic(val["mu"], val["sigma"], val["y"])
    p_knots = np.r_[0.0, stats.norm.cdf(iso.knots), 1.0]       # R^-1 by np.interp
    freqs = np.r_[0.0, iso.freqs, 1.0]
    for p in (0.68, 0.9, 0.95):
        z_lo, z_hi = stats.norm.ppf(np.interp([0.5 - p / 2, 0.5 + p / 2], freqs, p_knots))
        lo, hi = mu + z_lo * sigma, mu + z_hi * sigma
        assert rows["isotonic"][f"cov{int(100 * p)}"] == pytest.approx(
            np.mean((y >= lo) & (y <= hi)), abs=1.5 / y.size)
        s = iso.apply(mu, sigma)
        lo_g, hi_g = stats.norm.interval(p, mu, s)
        assert rows["isotonic as Gaussian (before)"][f"cov{int(100 * p)}"] == pytest.approx(
            np.mean((y >= lo_g) & (y <= hi_g)))
    # the same 95% width either way (sigma_cal is the Gaussian-equivalent scale)
    assert rows["isotonic"]["width95"] == pytest.approx(
        rows["isotonic as Gaussian (before)"]["width95"], rel=1e-9)
    # the isotonic NLL from the density slope_j phi(w) of R(Phi(w)), segment masses here
    k = np.r_[-np.inf, iso.knots, np.inf]
    mass = np.where(k[1:] <= 0, np.diff(stats.norm.cdf(k)), -np.diff(stats.norm.sf(k)))
    slope = np.diff(freqs) / mass
    w = (y - mu) / sigma
    dens = slope[np.searchsorted(iso.knots, w)] * stats.norm.pdf(w) / sigma
    assert rows["isotonic"]["nll"] == pytest.approx(-np.mean(np.log(dens)), rel=1e-9)
    nll_gauss = -np.mean(stats.norm.logpdf(y, mu, sigma))
    assert rows["uncalibrated"]["nll"] == pytest.approx(nll_gauss)
    text = out.read_text()
    assert text.startswith("# Isotonic calibration") and "| isotonic |" in text


@pytest.mark.parametrize("case", ["no run", "out is a folder", "NaN mu", "no sigma key"])
def test_bad_input_is_refused_before_any_fit(rundir, tmp_path, capsys, monkeypatch, case):
    """A missing run, an --out that is a folder, or unusable predictions: one error
    naming the argument before any calibration is fitted (a traceback after every
    fit before)."""
    monkeypatch.setattr(script, "run_rows", lambda *a: pytest.fail("a fit started"))
    argv = ["--workdir", str(rundir), "--out", str(tmp_path / "t.md")]
    if case == "no run":
        argv += ["--workdir", str(tmp_path / "missing")]
    elif case == "out is a folder":
        argv[-1] = str(tmp_path)
    else:
        z = dict(np.load(rundir / "predictions_test.npz"))
        if case == "NaN mu":
            z["mu"][0] = np.nan
        else:
            del z["sigma"]
        np.savez(rundir / "predictions_test.npz", **z)
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert ("--out" if case == "out is a folder" else "--workdir") in err
    assert not (tmp_path / "t.md").exists()
