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
    # the mixture's tail fractions from scipy: (1 - w) N(mean, sd) + w (start + Exp(scale))
    from scipy import stats
    d = preset.labels
    assert d.tail_sign > 0 and d.clip[0] < 3.5 and d.clip[1] > 5.5
    above = (1 - d.tail_weight) * stats.norm.sf(5.5, d.mean, d.sd) + d.tail_weight * stats.expon.sf(
        5.5 - d.tail_start, scale=d.tail_scale)
    below = (1 - d.tail_weight) * stats.norm.cdf(3.5, d.mean, d.sd)  # the tail starts above
    assert d.tail_start > 3.5
    assert np.mean(y > 5.5) == pytest.approx(above, abs=0.002)
    assert np.mean(y < 3.5) == pytest.approx(below, abs=0.002)
    regs = bayes_floor.regions(preset.task)
    assert set(regs) == {"overall", "y > 5.5", "y > 6.5", "y < 3.5"}
    np.testing.assert_array_equal(regs["y > 6.5"](y), y > 6.5)


def test_runs_without_outputs_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--runs"):
        bayes_floor.run_mae(tmp_path, bayes_floor.regions(get_task("potassium")))


def _run(root, seeds, labels, rng, shift=0.2):
    """Fake variant folder: seed k's labels labels(k, split), mu = y + shift + noise."""
    out = {}
    for s in seeds:
        d = root / f"seed{s}"
        d.mkdir(parents=True)
        for split, name in (("test", "outputs_test.npz"), ("val", "predictions_val.npz")):
            y = labels(s, split)
            mu = y + shift + 0.05 * rng.standard_normal(y.size)
            np.savez(d / name, y=y, mu=mu, sigma=np.ones_like(y))
            out[(s, split)] = (y, mu)
    return out


def _shared(s, split):
    return np.random.default_rng(0 if split == "test" else 1).uniform(3.0, 7.0, 300)


@pytest.fixture
def no_oracle(monkeypatch):
    """Argument errors must come before the slow oracle: building it fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the oracle was built before the arguments were checked")
    monkeypatch.setattr(bayes_floor, "OracleReader", refuse)


def _error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        bayes_floor.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    return err


def test_every_seed_of_every_run_must_have_the_reference_labels(tmp_path, capsys, no_oracle):
    rng = np.random.default_rng(0)
    _run(tmp_path / "a", [0, 1], _shared, rng)
    # b: seed 0 shares the split, seed 1 has its own test split (split per seed)
    _run(tmp_path / "b", [0, 1], lambda s, sp: _shared(s, sp) + (0.1 if s == 1 and sp == "test"
                                                                  else 0.0), rng)
    err = _error(capsys, ["--runs", tmp_path / "a", tmp_path / "b"])
    assert "--runs" in err and str(tmp_path / "b" / "seed1") in err and "test labels" in err
    # the first run's own later seed counts too, and the validation labels as well
    _run(tmp_path / "c", [0, 1], lambda s, sp: _shared(s, sp) + (0.1 if s == 1 and sp == "val"
                                                                  else 0.0), rng)
    err = _error(capsys, ["--runs", tmp_path / "c"])
    assert str(tmp_path / "c" / "seed1") in err and "val labels" in err


def test_run_mae_averages_over_the_seeds_with_records_and_skips_non_seed_folders(tmp_path):
    rng = np.random.default_rng(1)
    # y > 5.5: seed 0 has 10 records, seed 1 only 9 (< metrics.MIN_COUNT: not averaged).
    labels = {0: np.r_[np.linspace(3.6, 5.0, 10), np.linspace(5.6, 7.0, 10)],
              1: np.r_[np.linspace(3.6, 5.0, 10), np.linspace(5.6, 7.0, 9)]}
    runs = _run(tmp_path / "v", [0, 1], lambda s, sp: labels[s], rng)
    old = tmp_path / "v" / "seed1_old"                       # a leftover folder, not a seed
    old.mkdir()
    np.savez(old / "outputs_test.npz", y=labels[1], mu=labels[1] + 9.0)
    regs = bayes_floor.regions(get_task("potassium"))
    means, counts, ys = bayes_floor.run_mae(tmp_path / "v", regs)
    err = {s: np.abs(runs[(s, "test")][0] - runs[(s, "test")][1]) for s in (0, 1)}
    assert [d.name for d, _ in ys] == ["seed0", "seed1"]
    assert means["overall"] == pytest.approx(np.mean([err[0].mean(), err[1].mean()]))
    assert means["y > 5.5"] == pytest.approx(err[0][labels[0] > 5.5].mean())
    assert (counts["overall"], counts["y > 5.5"]) == (2, 1)
    assert np.isnan(means["y < 3.5"]) and counts["y < 3.5"] == 0
    means, counts, _ = bayes_floor.run_mae(tmp_path / "v", regs, seeds=[1])
    assert means["overall"] == pytest.approx(err[1].mean()) and counts["overall"] == 1


def test_main_prints_dashes_for_empty_regions_and_creates_the_out_folder(tmp_path, capsys):
    rng = np.random.default_rng(2)
    runs = _run(tmp_path / "v", [1, 2], lambda s, sp: np.linspace(4.0, 6.0, 50), rng)
    out = tmp_path / "new" / "floor.md"
    argv = ["--samples", "2000", "--draws", "2", "--lams", "0", "--runs", str(tmp_path / "v"),
            "--seeds", "2", "--out", str(out)]
    assert bayes_floor.main(argv) == 0
    text = out.read_text()
    assert text.startswith(f"Command: `python experiments/bayes_floor.py {' '.join(argv)}`")
    row = next(line for line in text.splitlines() if line.startswith(f"| {tmp_path / 'v'} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    y, mu = runs[(2, "test")]                                # --seeds 2: seed 2 only
    assert cells[1] == f"{np.mean(np.abs(y - mu)):.3f}"
    assert cells[4] == "—" and "nan" not in text             # no label below 3.5


def test_argument_errors_are_one_line_and_come_first(tmp_path, capsys, no_oracle):
    _run(tmp_path / "v", [0], _shared, np.random.default_rng(3))
    assert "--sim-n" in _error(capsys, ["--sim-seed", "0", "--runs", tmp_path / "v"])
    assert "--sim-seed" in _error(capsys, ["--sim-n", "8000", "--runs", tmp_path / "v"])
    assert "need --runs" in _error(capsys, ["--sim-seed", "0", "--sim-n", "8000"])
    err = _error(capsys, ["--runs", tmp_path / "missing"])
    assert err.endswith(f"--runs {tmp_path / 'missing'}: no such folder")
    assert "no run for seeds [4]" in _error(capsys, ["--runs", tmp_path / "v", "--seeds", "4"])
    (tmp_path / "file").write_text("")
    err = _error(capsys, ["--runs", tmp_path / "v", "--out", tmp_path / "file" / "x.md"])
    assert "--out" in err


def test_label_bins_cut_at_the_task_thresholds_and_split_ties_off_the_tail():
    """K < 3.5 and K > 5.5 / 6.5: a label on a cut is not in that threshold's tail,
    so the first range is exactly y < 3.5 and the last two are 5.5 < y <= 6.5, y > 6.5."""
    bins = bayes_floor.label_bins(get_task("potassium"))
    assert bins == [("(-inf, 3.5)", -np.inf, 3.5, False), ("[3.5, 5.5]", 3.5, 5.5, True),
                    ("(5.5, 6.5]", 5.5, 6.5, False), ("(6.5, inf)", 6.5, np.inf, False)]
    y = np.array([3.4, 3.5, 3.6, 5.5, 5.6, 6.5, 6.6])
    # each label in exactly one range, ties on the side away from the tail
    masks = [bayes_floor._in_bin(y, lo, hi, closed, bins[k + 1][3] if k + 1 < len(bins) else False)
             for k, (_, lo, hi, closed) in enumerate(bins)]
    assert [list(y[m]) for m in masks] == [[3.4], [3.5, 3.6, 5.5], [5.6, 6.5], [6.6]]


def test_gap_rows_average_each_range_over_records_and_seeds(tmp_path):
    y = np.array([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    oracle = np.array([3.2, 4.1, 4.8, 5.7, 6.5, 7.0])
    mus = {0: np.array([3.5, 4.0, 5.0, 5.0, 6.0, 6.0]), 3: np.array([2.5, 4.2, 5.2, 6.5, 7.5, 9.0])}
    for s, mu in mus.items():
        (tmp_path / "v" / f"seed{s}").mkdir(parents=True)
        np.savez(tmp_path / "v" / f"seed{s}" / "outputs_test.npz", y=y, mu=mu)
    bins = [("low", -np.inf, 4.0, False), ("mid", 4.0, 6.0, False), ("high", 6.0, np.inf, False),
            ("none", 9.0, 10.0, False)]
    (row,) = bayes_floor.gap_rows([(tmp_path / "v", None)], "outputs_test.npz", y, oracle, bins)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == str(tmp_path / "v")
    # by hand: range (lo, hi]; gap = mean over seeds and records of |y-mu| - |y-oracle|
    for cell, members in zip(cells[1:4], ([0, 1], [2, 3], [4, 5])):
        gap = np.mean([abs(y[i] - mus[s][i]) - abs(y[i] - oracle[i]) for s in mus for i in members])
        bias = np.mean([mus[s][i] - oracle[i] for s in mus for i in members])
        assert cell == f"{len(members)}: {gap:+.3f} / {bias:+.3f}"
    assert cells[4] == "0: —"
    (row,) = bayes_floor.gap_rows([(tmp_path / "v", [3])], "outputs_test.npz", y, oracle, bins)
    gap = np.mean([abs(y[i] - mus[3][i]) - abs(y[i] - oracle[i]) for i in (4, 5)])
    assert f"2: {gap:+.3f}" in row.split("|")[4]


def test_gap_lam_needs_the_realized_labels(tmp_path, capsys, no_oracle):
    _run(tmp_path / "v", [0], _shared, np.random.default_rng(4))
    assert "--gap-lam" in _error(capsys, ["--gap-lam", "0.5", "--runs", tmp_path / "v"])


@pytest.mark.parametrize("e", [2.4, 2.8, 4.2, 5.5, 6.5])
def test_oracle_on_the_potassium_prior_matches_quadrature(e):
    """The grid density is exact (no histogram floor): f_lam(e) against scipy's
    quadrature of the mixture's density, including the far low tail, where a
    2e6-draw histogram with +0.5 per bin was off by up to 0.18. (Far from the clip
    at 9, whose point mass the grid holds in its last cell.)"""
    from scipy import integrate, stats
    d = get_preset("potassium").labels
    assert d.tail_sign > 0

    def pdf(y):
        return ((1 - d.tail_weight) * stats.norm.pdf(y, d.mean, d.sd)
                + d.tail_weight * stats.expon.pdf(y - d.tail_start, scale=d.tail_scale))

    lam = 0.5

    def q(y):
        sd = d.noise_base + d.noise_slope * abs(y - d.mean)
        return stats.norm.pdf(e, y, sd) * pdf(y) ** (1 - lam)

    lo, hi = d.clip
    pts = [d.tail_start, e]
    num = integrate.quad(lambda y: y * q(y), lo, hi, points=pts, limit=400)[0]
    den = integrate.quad(q, lo, hi, points=pts, limit=400)[0]
    reader = bayes_floor.OracleReader(d)
    assert reader(np.array([e]), lam)[0] == pytest.approx(num / den, abs=2e-3)
