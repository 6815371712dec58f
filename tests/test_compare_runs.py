"""experiments/compare_runs.py: per-variant val/test MAEs over seeds, against numpy here."""
import numpy as np
import pytest

from experiment_scripts import load
from hypuc_jax import rundir
from hypuc_jax.config import get_config

compare_runs = load("compare_runs")

THRESHOLDS = (("K>5.5", 5.5, "above"), ("K<3.5", 3.5, "below"))


def _variant(root, seeds, shift, rng):
    """Fake finished runs: labels and mu = y + shift + noise per split; returns the arrays."""
    arrays = {}
    for s in seeds:
        d = root / f"seed{s}"
        d.mkdir(parents=True)
        rundir.write_json(d / rundir.CONFIG, get_config("tiny").to_dict())
        rundir.write_json(d / rundir.TASK, rundir.Task(
            name="potassium", target="K", unit="mmol/L", regions={}, thresholds=THRESHOLDS,
            kind="signal", input_shape=(64, 12)).to_dict())
        for split in ("val", "test"):
            y = rng.uniform(2.5, 7.5, 200)
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


def test_bad_arguments_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    _variant(tmp_path / "v", [0], 0.1, np.random.default_rng(2))
    with pytest.raises(SystemExit, match="--ref: no seed<N>/ run directories"):
        compare_runs.main(["--ref", f"a={tmp_path / 'empty'}", "--runs", f"b={tmp_path / 'v'}"])
    with pytest.raises(SystemExit, match="--runs: no seed<N>/ run directories"):
        compare_runs.main(["--ref", f"a={tmp_path / 'v'}", "--runs", f"b={tmp_path / 'empty'}"])
    with pytest.raises(SystemExit, match="--runs: labels must differ.*\\['a'\\]"):
        compare_runs.main(["--ref", f"a={tmp_path / 'v'}", "--runs", f"a={tmp_path / 'v'}"])


def test_empty_tails_show_a_dash_not_nan(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("none", "hypuc"):
        _variant(tmp_path / name, [0, 1], 0.1, rng)
        for s in (0, 1):                                     # no label beyond 5.5 or below 3.5
            y = rng.uniform(4.0, 5.0, 50)
            for split in ("val", "test"):
                np.savez(tmp_path / name / f"seed{s}" / f"predictions_{split}.npz", y=y,
                         mu=y + 0.1, sigma=np.ones_like(y))
    text = compare_runs.table(("none", tmp_path / "none"), [("hypuc", tmp_path / "hypuc")])
    assert "nan" not in text
    row = next(line for line in text.splitlines() if line.startswith("| hypuc |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0.100 ± 0.000 (+0%)" and cells[3] == "—"   # val mae, val mae[y>5.5]
