"""Tests for hypuc_jax.report: figures, report.md and the claim checks."""
import dataclasses

import numpy as np
import pytest
from scipy import stats

from hypuc_jax import metrics, report

THRESHOLDS = (("K>5.5", 5.5, "above"), ("K<3.5", 3.5, "below"))
REGIONS = {"low": (-np.inf, 3.5), "normal": (3.5, 5.5), "high": (5.5, np.inf)}


def _run(name, slope, *, seed=0, n=400, sigma_scale=1.0):
    """Synthetic run: mu shrinks toward 4.2 by ``slope``; sigma too small by ``sigma_scale``."""
    rng = np.random.default_rng(seed)
    ytr = np.clip(rng.gamma(9.0, 0.47, 1500), 2.5, 8.0)
    y = np.clip(rng.gamma(9.0, 0.47, n), 2.5, 8.0)
    true_sd = 0.2 + 0.05 * np.abs(y - 4.2)
    mu = y - slope * (y - 4.2) + rng.normal(0.0, true_sd)
    sigma = true_sd / sigma_scale
    sigma_cal = true_sd * np.sqrt(1 + slope)
    probs = {n_: stats.norm.sf((v - mu) / sigma_cal) if d == "above"
             else stats.norm.cdf((v - mu) / sigma_cal) for n_, v, d in THRESHOLDS}
    ev = {"split": "test", "n": n}
    for stage, (m, s) in {"uncalibrated": (mu, sigma), "calibrated": (mu, sigma_cal),
                          "corrected": (mu, sigma_cal)}.items():
        ev[stage] = metrics.evaluate(y, m, s, train_labels=ytr, regions=REGIONS)
    ev["decisions"] = {k: {"auroc": 0.9, "auprc": 0.5, "baseline_auroc": 0.8} for k in probs}
    ev["flagging"] = {"mae_kept_at": {"0.0": 0.3, "0.1": 0.25}}
    grid = np.linspace(ytr.min(), ytr.max(), 50)
    dens = stats.gaussian_kde(ytr)(grid)
    return report.RunOutputs(name, ev, y, mu, sigma, sigma_cal, mu, probs, THRESHOLDS, ytr,
                             REGIONS, (grid, dens, dens ** -0.5), "mmol/L")


@pytest.fixture(scope="module")
def runs():
    return [_run("baseline", 0.4, sigma_scale=2.0), _run("hypuc", 0.05, sigma_scale=2.0)]


def test_write_report_makes_every_figure_and_markdown(tmp_path, runs):
    path = report.write_report(tmp_path, runs, extra=["Data: synthetic."])
    figs = sorted((tmp_path / "figures").glob("*.png"))
    assert sorted(f.stem for f in figs) == sorted(report.FIGURES)
    for f in figs:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f
    text = path.read_text()
    for name in report.FIGURES:
        assert f"figures/{name}.png" in text
    assert "Data: synthetic." in text and "| hypuc | calibrated |" in text
    # no temporary files left behind
    assert not [p for p in tmp_path.rglob("*") if p.suffix == ".tmp" or p.name.startswith(".")]
    # a task without decisions: no ROC figure (the old one removed), a sentence instead
    bare = [dataclasses.replace(r, decision_probs={}, thresholds=(),
                                eval={**r.eval, "decisions": {}}) for r in runs]
    text = report.write_report(tmp_path, bare).read_text()
    assert not (tmp_path / "figures" / "roc.png").exists() and "roc.png" not in text
    assert "No decision thresholds" in text and "threshold-mu AUROC |" not in text


def test_mu_bin_coverage_matches_direct_loop():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=500)
    y = mu + rng.normal(size=500) * (1 + (mu > 0))
    sigma = np.ones(500)
    centres, cov, counts = report.mu_bin_coverage(y, mu, sigma, n_bins=5)
    edges = np.quantile(mu, np.linspace(0, 1, 6))
    for b in range(5):
        sel = (mu >= edges[b]) & ((mu < edges[b + 1]) if b < 4 else (mu <= edges[b + 1]))
        assert counts[b] == sel.sum()
        assert cov[b] == pytest.approx(np.mean(np.abs(y[sel] - mu[sel]) <= 1.959964))
    assert counts.sum() == 500


def test_checks_against_hand_computed_numbers(runs):
    base, meth = runs
    rows = {r["claim"]: r for r in report.checks(base, meth)}
    tail = base.y > 5.5
    mae_b = np.mean(np.abs(base.y[tail] - base.mu[tail]))
    mae_m = np.mean(np.abs(meth.y[meth.y > 5.5] - meth.mu[meth.y > 5.5]))
    row = rows["MAE for y > 5.5 at least 20% below baseline"]
    assert row["passed"] == (mae_m <= 0.8 * mae_b)
    assert f"{mae_m:.4f} vs {mae_b:.4f}" in row["measured"]
    # the "below" threshold is checked on its own side (a low-tail rare range)
    low = meth.y < 3.5
    mae_bl = np.mean(np.abs(base.y[base.y < 3.5] - base.mu[base.y < 3.5]))
    mae_ml = np.mean(np.abs(meth.y[low] - meth.mu[low]))
    row = rows["MAE for y < 3.5 at least 20% below baseline"]
    assert row["passed"] == (mae_ml <= 0.8 * mae_bl) and f"n={int(low.sum())}" in row["measured"]
    assert not any("y > 3.5" in c for c in rows)
    # a tail without a boosted decision (tails) is still checked; an empty one is undefined
    extra = dataclasses.replace(meth, tails=(*THRESHOLDS, ("K>99", 99.0, "above")))
    rows = {r["claim"]: r for r in report.checks(base, extra)}
    assert rows["MAE for y > 99 at least 20% below baseline"] == {
        "claim": "MAE for y > 99 at least 20% below baseline",
        "measured": "no test records with y > 99", "passed": None}
    cov = meth.eval["calibrated"]["overall"]["coverage_95"]
    assert rows["calibrated 95% coverage within ±2 pp overall"]["passed"] == (abs(cov - 0.95) <= 0.02)
    u0 = meth.eval["uncalibrated"]["overall"]["uce"]
    u1 = meth.eval["calibrated"]["overall"]["uce"]
    assert rows["UCE at least 50% below uncalibrated"]["passed"] == (u1 <= 0.5 * u0)


def test_checks_report_a_miss():
    # The "method" is the heavily shrunk model here: its tail MAE is worse.
    base, meth = _run("good", 0.05, seed=3), _run("bad", 0.5, seed=3)
    rows = {r["claim"]: r for r in report.checks(base, meth)}
    assert rows["MAE for y > 5.5 at least 20% below baseline"]["passed"] is False
    assert rows["overall MAE no more than 5% above baseline"]["passed"] is False


def test_write_figures_needs_runs(tmp_path):
    with pytest.raises(ValueError, match="runs"):
        report.write_figures([], tmp_path)
