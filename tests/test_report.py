"""Tests for hypuc_jax.report: figures, report.md and the claim checks."""
import dataclasses
from fractions import Fraction

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
    assert "This task has no decision thresholds." in text and "threshold-mu AUROC |" not in text


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


def test_mu_bin_coverage_keeps_a_tie_group_apart_from_the_rest():
    # 90% of the predictions tied at 0: the plain quantile bins were one bin
    rng = np.random.default_rng(2)
    mu = np.r_[np.zeros(450), rng.uniform(1.0, 2.0, 50)]
    y = mu + rng.normal(size=500) * np.where(mu > 0, 3.0, 1.0)
    centres, cov, counts = report.mu_bin_coverage(y, mu, np.ones(500), n_bins=5)
    assert counts[0] == 450 and counts.sum() == 500 and len(counts) >= 2
    tied = mu == 0
    assert cov[0] == pytest.approx(np.mean(np.abs(y[tied]) <= 1.959964))
    assert centres[0] == 0.0 and min(centres[1:]) >= 1.0


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
    # fewer test records than eval.json computes region metrics on: shown, not judged
    b60, m60 = _run("b", 0.4, n=60, seed=5), _run("m", 0.05, n=60, seed=5)
    top = float(np.sort(m60.y)[-4])
    few = dataclasses.replace(m60, tails=(("top", top, "above"),))
    (row,) = [r for r in report.checks(b60, few) if r["claim"].startswith("MAE for")]
    sel = m60.y > top
    mae_f = np.mean(np.abs(m60.y[sel] - m60.mu[sel]))
    assert sel.sum() == 3 and row["passed"] is None and f"{mae_f:.4f} vs" in row["measured"]
    assert "n=3; fewer than 10 test records: not judged" in row["measured"]
    at_min = float(np.sort(m60.y)[-11])               # exactly 10 records: judged, as eval.json
    (row,) = [r for r in report.checks(b60, dataclasses.replace(
        m60, tails=(("top", at_min, "above"),))) if r["claim"].startswith("MAE for")]
    assert (m60.y > at_min).sum() == 10 and row["passed"] is not None, row
    assert "not judged" not in row["measured"]
    cov = meth.eval["calibrated"]["overall"]["coverage_95"]
    assert rows["calibrated 95% coverage within ±2 pp overall"]["passed"] == (abs(cov - 0.95) <= 0.02)
    u0 = meth.eval["uncalibrated"]["overall"]["uce"]
    u1 = meth.eval["calibrated"]["overall"]["uce"]
    assert rows["UCE at least 50% below uncalibrated"]["passed"] == (u1 <= 0.5 * u0)
    # the paper's comparison: against the unweighted NLL's uncalibrated UCE; a
    # baseline calibrated as trained (sigma_scale 1) makes it a miss
    paper = "UCE at least 50% below the unweighted NLL's uncalibrated UCE (the paper's comparison)"
    verdicts = []
    for b in (base, _run("calibrated baseline", 0.05, sigma_scale=1.0)):
        ub = b.eval["uncalibrated"]["overall"]["uce"]
        row = {r["claim"]: r for r in report.checks(b, meth)}[paper]
        assert row["passed"] == (u1 <= 0.5 * ub) and f"{u1:.4g} vs {ub:.4g}" in row["measured"]
        verdicts.append(row["passed"])
    assert verdicts == [True, False]


def test_checks_report_a_miss():
    # The "method" is the heavily shrunk model here: its tail MAE is worse.
    base, meth = _run("good", 0.05, seed=3), _run("bad", 0.5, seed=3)
    rows = {r["claim"]: r for r in report.checks(base, meth)}
    assert rows["MAE for y > 5.5 at least 20% below baseline"]["passed"] is False
    assert rows["overall MAE no more than 5% above baseline"]["passed"] is False


def _with_eval(run, stage, **overall):
    ev = dict(run.eval)
    ev[stage] = dict(ev[stage], overall=dict(ev[stage]["overall"], **overall))
    return dataclasses.replace(run, eval=ev)


def test_coverage_verdicts_count_whole_records_at_the_2pp_boundary(runs):
    # 0.97 - 0.95 is 0.020000000000000018 in floats: 97.0% used to miss, 93.0% pass
    base, meth = runs
    n = meth.y.size
    for covered in (int(0.93 * n) - 1, int(0.93 * n), int(0.97 * n), int(0.97 * n) + 1):
        want = abs(Fraction(covered, n) - Fraction(95, 100)) <= Fraction(2, 100)
        rows = {r["claim"]: r for r in report.checks(
            base, _with_eval(meth, "calibrated", coverage_95=covered / n))}
        assert rows["calibrated 95% coverage within ±2 pp overall"]["passed"] is want, covered
    for m in (50, 64, 400, 1600):                 # the per-bin check uses the same rule
        for covered in range(m + 1):
            want = abs(Fraction(covered, m) - Fraction(95, 100)) <= Fraction(2, 100)
            assert report._within(covered / m, m, 0.95, 0.02) is want, (covered, m)


def test_changes_print_enough_digits_to_show_their_side_of_the_limit():
    assert report._change(0.80016, 1.0, -20.0) == "-19.98%"     # "-20.0%" beside a miss
    assert report._change(0.797, 1.0, -20.0) == "-20.3%"
    assert report._change(1.04996, 1.0, 5.0) == "+5.0%"
    assert report._change(1.05004, 1.0, 5.0) == "+5.004%"
    assert report._change(0.8000001, 1.0, -20.0) == "-20.0000%, just above -20%"


def test_decisions_on_fewer_than_ten_records_of_one_outcome_are_not_judged(runs):
    base, meth = runs
    n = meth.y.size
    dec = {"K<3.5": {"auroc": 0.5, "auprc": 0.1, "baseline_auroc": 0.6, "n_positive": 9, "n": n},
           "K>5.5": {"auroc": 0.5, "auprc": 0.1, "baseline_auroc": 0.6, "n_positive": 10,
                     "n": n}}
    rows = {r["claim"]: r for r in report.checks(base, dataclasses.replace(
        meth, eval=dict(meth.eval, decisions=dec)))}
    low = rows["decision K<3.5: boosted AUROC >= thresholding-mu AUROC"]
    assert low["passed"] is None and "9 of 400 test records positive" in low["measured"]
    assert rows["decision K>5.5: boosted AUROC >= thresholding-mu AUROC"]["passed"] is False


def test_isotonic_uce_is_judged_like_any_calibration(runs):
    """eval.json scores an isotonic run under its recalibrated family, so its UCE
    counts (it used to be a Gaussian stand-in, reported as not judged)."""
    base, meth = runs
    rows = {r["claim"]: r for r in report.checks(
        base, dataclasses.replace(meth, calibration="isotonic"))}
    row = rows["UCE at least 50% below uncalibrated"]
    u0 = meth.eval["uncalibrated"]["overall"]["uce"]
    u1 = meth.eval["calibrated"]["overall"]["uce"]
    assert row["passed"] is (u1 <= 0.5 * u0) and "not judged" not in row["measured"]


def test_report_draws_an_isotonic_interval_that_misses_mu(tmp_path, runs):
    """A biased model's isotonic 95% interval can lie wholly above mu (every
    validation residual positive): the scatter used to raise on negative error
    bars. The report text names the family and the scale."""
    from hypuc_jax._recalibrated import RecalibratedNormal

    knots = np.linspace(1.0, 3.0, 21)               # R's mass all above w = 1
    fam = RecalibratedNormal(tuple(knots), tuple(np.linspace(0.02, 0.98, 21)))
    assert fam.ppf(0.025) > 0
    iso = [dataclasses.replace(r, dof=fam, calibration="isotonic") for r in runs]
    path = report.write_report(tmp_path, iso)
    assert (tmp_path / "figures" / "pred_vs_true.png").stat().st_size > 5000
    text = path.read_text()
    assert "isotonic recalibration" in text and "Gaussian-equivalent scale" in text


def test_constant_labels_draw_every_figure_without_a_warning(tmp_path, runs):
    """Every test label 4.0 (a constant target): the scatter's x-range had width 0
    and matplotlib warned about identical limits on every `hypuc run`."""
    import warnings
    flat = [dataclasses.replace(r, y=np.full_like(r.y, 4.0)) for r in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = report.write_figures(flat, tmp_path / "figures")
    assert figs["pred_vs_true"].stat().st_size > 5000


def test_scatter_keeps_every_record_in_the_tails_of_y():
    y = np.random.default_rng(0).normal(size=1600)
    rows, k, kt = report.scatter_rows(y)
    order = np.argsort(y)
    assert (k, kt) == (2, 1) and set(order[:80]) | set(order[-80:]) <= set(rows.tolist())
    assert len(rows) == len(set(rows.tolist())) == 80 + 80 + 720
    small, k, _ = report.scatter_rows(y[:500])
    assert k == 1 and sorted(small.tolist()) == list(range(500))
    # many records: at most 300 a side in the tails, the extremes always drawn
    big = np.random.default_rng(1).normal(size=100_000)
    rows, k, kt = report.scatter_rows(big)
    order = np.argsort(big)
    assert (k, kt) == (166, 17)
    low, high = np.isin(rows, order[:5000]).sum(), np.isin(rows, order[-5000:]).sum()
    assert low == high == 295 and {order[0], order[-1]} <= set(rows.tolist())


def test_write_figures_needs_runs(tmp_path):
    with pytest.raises(ValueError, match="runs"):
        report.write_figures([], tmp_path)


def _kept_mae(y, mu, sigma, fraction):
    """MAE after dropping the ``fraction`` largest-entropy (largest sigma) records."""
    keep = np.argsort(sigma, kind="stable")[:int(round(len(y) * (1 - fraction)))]
    return float(np.mean(np.abs(y[keep] - mu[keep])))


def test_every_other_claim_row_against_an_independent_recomputation(runs):
    """The overall-MAE allowance, the per-mu-bin coverage, the decision and the
    flagging rows, each recomputed here and each shown to flip: a 1.05 factor,
    a 0.02 gap, a >= and a < that are wrong would otherwise pass."""
    base, meth = runs
    assert np.array_equal(base.y, meth.y)
    err_b = base.mu - base.y

    def row(b, m, start, **kw):
        return next(r for r in report.checks(b, m, **kw) if r["claim"].startswith(start))

    for factor, ok in ((1.04, True), (1.06, False)):       # overall MAE, 5% allowance
        scaled = dataclasses.replace(meth, mu=base.y + factor * err_b)
        assert row(base, scaled, "overall MAE")["passed"] is ok
    # 95% coverage per quantile bin of test mu (10 bins of 40; min_bin 30 admits them)
    for sig_scale in (1.0, 0.8):
        m = dataclasses.replace(meth, sigma_cal=meth.sigma_cal * sig_scale)
        edges = np.quantile(m.mu, np.linspace(0, 1, 11))
        gaps = []
        for b in range(10):
            sel = (m.mu >= edges[b]) & ((m.mu < edges[b + 1]) if b < 9 else (m.mu <= edges[b + 1]))
            gaps.append(abs(np.mean(np.abs(m.y[sel] - m.mu[sel])
                                    <= stats.norm.ppf(0.975) * m.sigma_cal[sel]) - 0.95))
        r = row(base, m, "calibrated 95% coverage within ±2 pp in every", min_bin=30)
        assert f"worst gap {max(gaps) * 100:.1f} pp over 10 bins" == r["measured"]
        assert r["passed"] is bool(max(gaps) <= 0.02)
    assert row(base, dataclasses.replace(meth, sigma_cal=meth.sigma_cal * 0.8),
               "calibrated 95% coverage within ±2 pp in every", min_bin=30)["passed"] is False
    # decisions: boosted AUROC >= thresholding mu, straight from eval.json
    for auroc, ok in ((0.9, True), (0.8, True), (0.7, False)):
        ev = {**meth.eval, "decisions": {"K>5.5": {"auroc": auroc, "baseline_auroc": 0.8}}}
        assert row(base, dataclasses.replace(meth, eval=ev), "decision K>5.5")["passed"] is ok
    # no positive test record: AUROC undefined, and the row says why
    ev = {**meth.eval, "decisions": {"K>5.5": {"n": 400, "n_positive": 0, "auroc": None,
                                               "baseline_auroc": None}}}
    r = row(base, dataclasses.replace(meth, eval=ev), "decision K>5.5")
    assert r["passed"] is None and r["measured"].startswith("undefined: 0 of 400 test records")
    # flagging: the 10% largest sigmas (largest Gaussian entropy) dropped
    r = row(base, meth, "flagging")
    kept, full = _kept_mae(meth.y, meth.mu, meth.sigma_cal, 0.1), np.mean(np.abs(meth.mu - meth.y))
    assert r["measured"] == f"{kept:.4f} vs {full:.4f}" and r["passed"] is bool(kept < full)
    assert r["passed"] is True
    upside_down = dataclasses.replace(meth, sigma_cal=1.0 / (np.abs(meth.mu - meth.y) + 0.01))
    assert row(base, upside_down, "flagging")["passed"] is False


def _table(text, heading):
    """{(first cell, second cell): [cells...]} of the markdown table under ``heading``."""
    lines = text.split(f"## {heading}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _close(cell, value):
    if value is None:
        return cell == "—"
    return abs(float(cell) - value) <= 5e-4 * abs(value) + 1e-12       # 4 significant digits


def test_report_tables_show_the_eval_numbers_of_each_stage(runs):
    """report.md's overall table shows each stage's overall block; its region
    table MAE of mu (uncalibrated) and coverage / NLL after calibration, as the
    report's text says. Read back from the markdown, compared with eval.json."""
    text = report.render_markdown(runs, {})
    keys = ("n", "mae", "rmse", "gm", "pearson", "spearman", "nll", "crps", "coverage_68",
            "coverage_90", "coverage_95", "width_95", "uce", "ence")
    rows = _table(text, "Overall metrics (eval.json)")
    assert len(rows) == 6
    for run_name, stage, *cells in rows:
        ev = next(r for r in runs if r.name == run_name).eval[stage]["overall"]
        assert all(_close(c, ev[k]) for c, k in zip(cells, keys)), (run_name, stage)
    unc, cal = (runs[1].eval[s]["overall"] for s in ("uncalibrated", "calibrated"))
    assert unc["nll"] != pytest.approx(cal["nll"], rel=1e-3)          # the stages differ
    regions = _table(text, "Per region")
    assert {r[0] for r in regions} >= {"low", "normal", "high", "many", "few"}
    for reg, *cells in regions:
        for i, run in enumerate(runs):
            u = run.eval["uncalibrated"]["regions"][reg]
            c = run.eval["calibrated"]["regions"][reg]
            got = cells[4 * i:4 * i + 4]
            want = (u["n"], u["mae"], c.get("coverage_95"), c.get("nll"))
            assert all(_close(g, w) for g, w in zip(got, want)), (reg, run.name)


def test_selective_mae_has_one_value_per_requested_fraction(runs):
    from hypuc_jax.report_figures import selective_mae
    m = runs[1]
    sigma = np.random.default_rng(0).uniform(0.1, 1.0, m.y.size)     # no ties to share out
    got = selective_mae(m.y, m.mu, sigma, (0.1, 0.1, 0.2))
    want = [_kept_mae(m.y, m.mu, sigma, q) for q in (0.1, 0.1, 0.2)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_predicts_flag_is_judged_from_eval_json(runs):
    base, meth = runs
    claim = "... with `predict`'s flag (the validation split's top-10% cut)"
    assert claim not in {r["claim"] for r in report.checks(base, meth)}   # older eval.json
    overall = np.mean(np.abs(meth.y - meth.mu))
    for kept, flagged, passed in ((0.9 * overall, 0.12, True), (1.1 * overall, 0.12, False),
                                  (overall, 0.0, None)):
        ev = {**meth.eval, "flagging": {**meth.eval["flagging"], "validation_cut": {
            "fraction": 0.1, "flagged": flagged, "mae_kept": kept, "mae_flagged": 0.5}}}
        rows = {r["claim"]: r for r in report.checks(base, dataclasses.replace(meth, eval=ev))}
        assert rows[claim]["passed"] is passed
        assert rows[claim]["measured"] == (f"{kept:.4f} vs {overall:.4f} "
                                           f"({100 * flagged:.1f}% of test flagged)")
