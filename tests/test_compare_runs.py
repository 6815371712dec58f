"""experiments/compare_runs.py: per-variant val/test MAEs over seeds, against numpy here."""
import numpy as np
import pytest

from experiment_scripts import load
from hypuc_jax import rundir
from hypuc_jax.config import get_config

compare_runs = load("compare_runs")

THRESHOLDS = (("K>5.5", 5.5, "above"), ("K<3.5", 3.5, "below"))


def _labels(seed, split, per_seed=False, n=200):
    """The split's labels: one data split for every seed, or (``per_seed``) one per seed."""
    key = [seed if per_seed else 0, SPLITS.index(split), 7]
    return np.random.default_rng(key).uniform(2.5, 7.5, n)


SPLITS = ("val", "test")


def _variant(root, seeds, shift, rng, per_seed=False, labels=_labels):
    """Fake finished runs: labels and mu = y + shift + noise per split; returns the arrays."""
    arrays = {}
    for s in seeds:
        d = root / f"seed{s}"
        d.mkdir(parents=True)
        rundir.write_json(d / rundir.CONFIG, get_config("tiny").to_dict())
        rundir.write_json(d / rundir.TASK, rundir.Task(
            name="potassium", target="K", unit="mmol/L", regions={}, thresholds=THRESHOLDS,
            kind="signal", input_shape=(64, 12)).to_dict())
        for split in SPLITS:
            y = labels(s, split, per_seed)
            mu = y + shift + 0.1 * rng.normal(size=y.size)
            np.savez(d / f"predictions_{split}.npz", y=y, mu=mu, sigma=np.ones_like(y))
            arrays[(s, split)] = (y, mu)
    return arrays


def test_variant_maes_and_table_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    ref = _variant(tmp_path / "none", [0, 1, 2], 0.3, rng)
    other = _variant(tmp_path / "hypuc", [0, 2, 10], 0.15, rng)
    seeds, cols = compare_runs.variant_maes(tmp_path / "hypuc")
    assert seeds == [0, 2, 10]                                # numeric seed order
    for i, s in enumerate(seeds):
        y, mu = other[(s, "test")]
        assert cols["test mae"][i] == pytest.approx(np.mean(np.abs(y - mu)))
        assert cols["test mae[y>5.5]"][i] == pytest.approx(np.mean(np.abs(y - mu)[y > 5.5]))
        y, mu = other[(s, "val")]
        assert cols["val mae[y<3.5]"][i] == pytest.approx(np.mean(np.abs(y - mu)[y < 3.5]))
    text = compare_runs.table(("none", tmp_path / "none"), [("hypuc", tmp_path / "hypuc")])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    m_ref = np.mean([np.mean(np.abs(y - mu)) for (s, sp), (y, mu) in ref.items() if sp == "test"])
    m = np.mean(cols["test mae"])
    sd = np.std(cols["test mae"], ddof=1)
    assert f"{m:.3f} ± {sd:.3f} ({100 * (m / m_ref - 1):+.0f}%)" in rows["hypuc"]
    assert "%" not in rows["none"]                            # the reference has no change


def test_corrected_value_scores_the_evaluated_test_outputs(tmp_path):
    rng = np.random.default_rng(3)
    arrays = _variant(tmp_path / "v", [0, 1], 0.2, rng)
    corrected = {}
    for s in (0, 1):
        y, mu = arrays[(s, "test")]
        corrected[s] = mu - 0.15 + 0.05 * rng.normal(size=y.size)
        np.savez(tmp_path / "v" / f"seed{s}" / "outputs_test.npz", y=y, mu=mu,
                 corrected=corrected[s])
    seeds, cols = compare_runs.variant_maes(tmp_path / "v", value="corrected")
    assert seeds == [0, 1] and not any(k.startswith("val") for k in cols)
    for i, s in enumerate(seeds):
        y, _ = arrays[(s, "test")]
        err = np.abs(y - corrected[s])
        assert cols["test mae"][i] == pytest.approx(np.mean(err))
        assert cols["test mae[y>5.5]"][i] == pytest.approx(np.mean(err[y > 5.5]))
    (tmp_path / "v" / "seed1" / "outputs_test.npz").unlink()     # not evaluated yet
    with pytest.raises(ValueError, match="outputs_test.npz: no evaluated test outputs"):
        compare_runs.variant_maes(tmp_path / "v", value="corrected")


def test_seed_selection(tmp_path):
    rng = np.random.default_rng(1)
    runs = _variant(tmp_path / "v", [1, 2, 3], 0.2, rng)
    seeds, cols = compare_runs.variant_maes(tmp_path / "v", seeds=[3, 1])
    assert seeds == [1, 3]
    y, mu = runs[(3, "val")]
    assert cols["val mae"][1] == pytest.approx(np.mean(np.abs(y - mu)))
    with pytest.raises(ValueError, match="--seeds: .* no run for seeds \\[4\\]"):
        compare_runs.variant_maes(tmp_path / "v", seeds=[1, 4])
    (tmp_path / "v" / "seed_old").mkdir()                    # not a seed<N>/ run: ignored
    assert compare_runs.variant_maes(tmp_path / "v")[0] == [1, 2, 3]


def _error(capsys, argv):
    """The one-line argparse error (exit code 2) of compare_runs.main(argv)."""
    with pytest.raises(SystemExit) as e:
        compare_runs.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    return err[-1]


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _variant(tmp_path / "v", [0], 0.1, np.random.default_rng(2))
    assert "--ref: no seed<N>/ run directories" in _error(
        capsys, ["--ref", f"a={tmp_path / 'empty'}", "--runs", f"b={tmp_path / 'v'}"])
    assert "--runs: no seed<N>/ run directories" in _error(
        capsys, ["--ref", f"a={tmp_path / 'v'}", "--runs", f"b={tmp_path / 'empty'}"])
    assert "--runs: labels must differ" in _error(
        capsys, ["--ref", f"a={tmp_path / 'v'}", "--runs", f"a={tmp_path / 'v'}"])
    assert f"--ref {tmp_path / 'missing'}: no such folder" in _error(
        capsys, ["--ref", f"a={tmp_path / 'missing'}", "--runs", f"b={tmp_path / 'v'}"])
    (tmp_path / "file").write_text("")
    assert "--out" in _error(capsys, ["--ref", f"a={tmp_path / 'v'}", "--runs",
                                      f"b={tmp_path / 'v'}", "--out", str(tmp_path / "file" / "x")])


def test_empty_tails_show_a_dash_not_nan(tmp_path):
    rng = np.random.default_rng(4)
    y = np.random.default_rng(5).uniform(4.0, 5.0, 50)      # no label beyond 5.5 or below 3.5
    for name in ("none", "hypuc"):
        _variant(tmp_path / name, [0, 1], 0.1, rng)
        for s in (0, 1):
            for split in ("val", "test"):
                np.savez(tmp_path / name / f"seed{s}" / f"predictions_{split}.npz", y=y,
                         mu=y + 0.1, sigma=np.ones_like(y))
    text = compare_runs.table(("none", tmp_path / "none"), [("hypuc", tmp_path / "hypuc")])
    assert "nan" not in text
    row = next(line for line in text.splitlines() if line.startswith("| hypuc |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0.100 ± 0.000 (+0%)" and cells[3] == "—"   # val mae, val mae[y>5.5]


def test_a_tail_of_fewer_than_ten_records_has_no_mae(tmp_path):
    # as eval.json's regions (metrics.MIN_COUNT): 9 records give None, 10 a MAE
    _variant(tmp_path / "v", [0], 0.1, np.random.default_rng(8))
    rng = np.random.default_rng(9)
    y = np.r_[rng.uniform(4.0, 5.0, 30), rng.uniform(5.6, 7.0, 9), rng.uniform(2.6, 3.4, 10)]
    mu = y + rng.normal(size=y.size)
    np.savez(tmp_path / "v" / "seed0" / "predictions_test.npz", y=y, mu=mu,
             sigma=np.ones_like(y))
    _, cols = compare_runs.variant_maes(tmp_path / "v")
    assert np.isnan(cols["test mae[y>5.5]"][0])
    assert cols["test mae[y<3.5]"][0] == pytest.approx(np.mean(np.abs(y - mu)[y < 3.5]))


def test_a_variant_of_another_split_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(6)
    _variant(tmp_path / "shared", [0, 1, 2], 0.3, rng)
    _variant(tmp_path / "splits", [0, 1, 2], 0.2, rng, per_seed=True)
    # seed 0 of the split-per-seed variant has the shared split; seed 1 does not
    err = _error(capsys, ["--ref", f"none={tmp_path / 'shared'}",
                          "--runs", f"spl={tmp_path / 'splits'}"])
    assert err.endswith("--runs spl: seed 1's val labels differ from the reference's "
                        "(--ref none): another data split (compare variants of one split "
                        "protocol)")
    # the same seeds of one protocol compare; a seed the per-seed reference lacks cannot
    _variant(tmp_path / "splits2", [1, 2, 5], 0.1, rng, per_seed=True)
    text = compare_runs.table(("a", tmp_path / "splits"), [("b", tmp_path / "splits2")],
                              seeds=[1, 2])
    assert "| b | 1 2 |" in text
    with pytest.raises(ValueError, match=r"--runs b: seeds \[1, 2, 5\] differ from the "
                                         r"reference's \[0, 1, 2\], which has a split per seed"):
        compare_runs.table(("a", tmp_path / "splits"), [("b", tmp_path / "splits2")])
    # a subset of the per-seed reference's seeds, identical on its one seed, read +67%
    _variant(tmp_path / "only0", [0], 0.2, rng, per_seed=True)
    with pytest.raises(ValueError, match=r"seeds \[0\] differ from the reference's \[0, 1, 2\]"):
        compare_runs.table(("a", tmp_path / "splits"), [("c", tmp_path / "only0")])
    assert "| c | 0 |" in compare_runs.table(("a", tmp_path / "splits"),
                                             [("c", tmp_path / "only0")], seeds=[0])


def test_repeated_runs_and_seeds_flags_accumulate(tmp_path, capsys):
    rng = np.random.default_rng(8)
    for name in ("r", "a", "b"):
        _variant(tmp_path / name, [0, 1], 0.1, rng)
    compare_runs.main(["--ref", f"r={tmp_path / 'r'}", "--runs", f"a={tmp_path / 'a'}",
                       "--runs", f"b={tmp_path / 'b'}", "--seeds", "0", "--seeds", "1", "0"])
    out = capsys.readouterr().out
    assert "| a | 0 1 |" in out and "| b | 0 1 |" in out


def test_a_mean_over_fewer_seeds_than_the_row_is_marked(tmp_path):
    def labels(s, split, per_seed):                          # seed 1: no label above 5.5
        return np.linspace(3.6, 5.4 if s == 1 else 7.0, 40)
    rng = np.random.default_rng(7)
    ref = _variant(tmp_path / "none", [0, 1], 0.3, rng, labels=labels)
    other = _variant(tmp_path / "hypuc", [0, 1], 0.1, rng, labels=labels)
    text = compare_runs.table(("none", tmp_path / "none"), [("hypuc", tmp_path / "hypuc")])
    row = next(line for line in text.splitlines() if line.startswith("| hypuc |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys = text.splitlines()[0].strip("|").split("|")
    col = [k.strip() for k in keys].index("test mae[y>5.5]")
    y, mu = other[(0, "test")]
    m = np.mean(np.abs(y - mu)[y > 5.5])
    y0, mu0 = ref[(0, "test")]
    m_ref = np.mean(np.abs(y0 - mu0)[y0 > 5.5])
    assert cells[col] == f"{m:.3f} ± — (n=1) ({100 * (m / m_ref - 1):+.0f}%)"
    assert "(n=" not in cells[col - 1]                       # test mae: both seeds


def test_a_label_written_as_the_threshold_is_not_beyond_it(tmp_path):
    # Labels rounded to 0.1 and stored as float64 copies of float32 (as every run
    # does): 4.3 is 4.3000002 there and used to count in the tail above a 4.3
    # threshold, unlike eval.json. Reference: the decimals, compared as written.
    from decimal import Decimal
    _variant(tmp_path / "v", [0], 0.1, np.random.default_rng(8))
    d = tmp_path / "v" / "seed0"
    task = rundir.read_json(d / rundir.TASK, "task")
    task["thresholds"] = [["K>4.3", 4.3, "above"], ["K<4.1", 4.1, "below"]]
    rundir.write_json(d / rundir.TASK, task)
    text = [f"{v:.1f}" for v in np.random.default_rng(3).uniform(3.5, 5.0, 300)]
    y = np.array([float(t) for t in text], np.float32).astype(np.float64)
    mu = y + np.random.default_rng(4).normal(size=y.size)
    np.savez(d / "predictions_test.npz", y=y, mu=mu, sigma=np.ones_like(y))
    _, cols = compare_runs.variant_maes(tmp_path / "v")
    above = np.array([Decimal(t) > Decimal("4.3") for t in text])
    below = np.array([Decimal(t) < Decimal("4.1") for t in text])
    assert (y == np.float32(4.3)).sum() > 5 and (y == np.float32(4.1)).sum() > 5
    assert cols["test mae[y>4.3]"][0] == pytest.approx(np.mean(np.abs(y - mu)[above]))
    assert cols["test mae[y<4.1]"][0] == pytest.approx(np.mean(np.abs(y - mu)[below]))
