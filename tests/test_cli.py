"""End-to-end tests of the ``hypuc`` command line on the tiny preset.

Commands run in-process through ``cli.main`` (the test session already has
8 simulated CPU devices from conftest.py), so the multi-device equivalence
of ``--parallel none / sharding / pmap`` is checked from the CLI itself.
The finished ``hypuc run --quick`` they share is conftest's ``quick_run``;
locks and Ctrl-C are in test_cli_interrupts.py.
"""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cli_helpers import FAST, TINY, hypuc, one_line_error
from hypuc_jax import cli, comparison, train, workflow
from hypuc_jax import data as data_lib

METRIC_KEYS = ("n", "mae", "mse", "rmse", "gm", "pearson", "spearman", "nll", "crps",
               "coverage_68", "coverage_90", "coverage_95", "width_95", "uce", "ence")


def test_run_quick_writes_report_and_eval(quick_run):
    for run in ("baseline", "hypuc"):
        ev = json.loads((quick_run / run / "eval.json").read_text())
        assert ev["split"] == "test" and ev["n"] > 0
        for stage in ("uncalibrated", "calibrated", "corrected"):
            assert set(METRIC_KEYS) <= set(ev[stage]["overall"])
            assert {"many", "medium", "few", "hyper", "normal"} <= set(ev[stage]["regions"])
        for d in ev["decisions"].values():
            assert {"auroc", "auprc", "baseline_auroc"} <= set(d)
        assert {"0.0", "0.1"} <= set(ev["flagging"]["mae_kept_at"])
    base_cfg = json.loads((quick_run / "baseline" / "config.json").read_text())
    hyp_cfg = json.loads((quick_run / "hypuc" / "config.json").read_text())
    assert base_cfg["weighting"]["scheme"] == "none" and hyp_cfg["weighting"]["scheme"] == "hypuc"
    assert base_cfg["train"] == hyp_cfg["train"]  # same seed and budget
    text = (quick_run / "report.md").read_text()
    for name in ("labels_kde_weights", "pred_vs_true", "mae_per_region", "reliability",
                 "coverage_per_bin", "selective_risk", "roc"):
        png = quick_run / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"figures/{name}.png" in text


def test_stage_commands_rerun_on_a_trained_dir(trained, capsys):
    ev_before = json.loads((trained / "eval.json").read_text())
    for argv in (["calibrate", "--workdir", trained, "--method", "global"],
                 ["correct", "--workdir", trained], ["evaluate", "--workdir", trained]):
        rc, out, err = hypuc(capsys, *argv)
        assert rc == 0, err
    assert "eval ->" in out and "calibrated" in out and "in-sample" not in out
    rc, out, err = hypuc(capsys, "evaluate", "--workdir", trained, "--split", "val")
    assert rc == 0 and out.splitlines()[-1].startswith("note: in-sample numbers"), err
    ev = json.loads((trained / "eval.json").read_text())
    assert ev["uncalibrated"] == ev_before["uncalibrated"]  # same model, same predictions
    cal = json.loads((trained / "calibration.json").read_text())
    assert cal["method"] == "global"
    for tail in ("gaussian", "auto"):  # the tiny run's validation set keeps the Gaussian
        rc, out, err = hypuc(capsys, "calibrate", "--workdir", trained, "--tail", tail)
        assert rc == 0 and "Gaussian tail" in out, err
        cal = json.loads((trained / "calibration.json").read_text())
        assert cal["tail"] == tail and cal["dof"] is None
    rc, _, err = hypuc(capsys, "calibrate", "--workdir", trained, "--method", "global",
                        "--tail", "auto")
    assert "--tail" in one_line_error(rc, err)
    for argv in (["calibrate", "--workdir", trained], ["correct", "--workdir", trained],
                 ["evaluate", "--workdir", trained]):  # back to the config's hyperfine
        assert cli.main([str(a) for a in argv]) == 0


def test_predict_writes_every_column(trained, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    spec = TINY.replace("n=256", "n=40")
    rc, stdout, err = hypuc(capsys, "predict", "--workdir", trained, "--data", spec,
                             "--output", out)
    assert rc == 0, err
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    cols = set(rows[0])
    assert {"mu", "sigma", "sigma_cal", "lower_95", "upper_95", "corrected", "entropy",
            "flag"} <= cols and any(c.startswith("p_") for c in cols)
    r = {k: float(v) for k, v in rows[0].items()}
    z = stats.norm.ppf(0.975)                   # floats are written exactly (repr)
    assert r["lower_95"] == pytest.approx(r["mu"] - z * r["sigma_cal"], rel=1e-13, abs=1e-13)
    assert r["upper_95"] == pytest.approx(r["mu"] + z * r["sigma_cal"], rel=1e-13, abs=1e-13)
    assert r["entropy"] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * r["sigma_cal"] ** 2),
                                         rel=1e-4, abs=1e-4)
    # corrected / p_* / flag, rebuilt from the stored sklearn models and the validation
    # sigmas: mu + mean residual fit; expit of the log-odds mix (scipy for the
    # Gaussian's); flagged above the 90% quantile of the calibrated validation sigmas
    from scipy import special
    from hypuc_jax import corrections, decisions
    col = {k: np.array([float(row[k]) for row in rows]) for k in rows[0]}
    mu, sig = col["mu"], col["sigma_cal"]
    cal = json.loads((trained / "calibration.json").read_text())
    assert cal["method"] == "hyperfine" and len(cal["etas"]) == len(cal["edges"]) + 1 > 1
    np.testing.assert_allclose(sig, _hyperfine_by_hand(cal, mu, col["sigma"]), rtol=1e-6)
    assert len({round(e, 12) for e in sig / col["sigma"]}) > 1   # rows in several bins
    c = corrections.load_corrector(trained / "corrections")
    assert c.target == "residual" and np.isinf(c.dof)
    x = decisions.features(mu, sig, c.thresholds, c.z, c.dof)
    np.testing.assert_allclose(col["corrected"],
                               mu + np.mean([m.predict(x) for m in c.regressors], axis=0),
                               rtol=1e-12, atol=1e-12)
    assert np.any(col["corrected"] != mu)
    for t in c.thresholds:
        log_sf, log_cdf = stats.norm.logsf(t.value, mu, sig), stats.norm.logcdf(t.value, mu, sig)
        gauss = log_sf - log_cdf if t.direction == "above" else log_cdf - log_sf
        w = c.gaussian_weights[t.name]
        boosted = np.mean([m.decision_function(x) for m in c.classifiers[t.name]], axis=0)
        np.testing.assert_allclose(col[f"p_{t.name}"],
                                   special.expit((1 - w) * boosted + w * gauss), rtol=1e-9,
                                   atol=1e-12)
    val = np.load(trained / "predictions_val.npz")
    cut = np.quantile(_hyperfine_by_hand(cal, val["mu"], val["sigma"]), 0.9)
    np.testing.assert_array_equal(col["flag"], (sig > cut).astype(float))


def _hyperfine_by_hand(cal: dict, mu, sigma) -> np.ndarray:
    """SPEC 4 from a stored calibration.json: eta_b * s* * sigma, b the bin of mu
    between the stored edges (a mu on an edge in the upper bin)."""
    eta = np.array([cal["etas"][sum(m >= e for e in cal["edges"])] for m in mu])
    return eta * cal["global_scale"] * np.asarray(sigma, np.float64)


def _correct_and_predict_40(wd, tmp_path, capsys) -> list[dict]:
    """Fits the corrections of run ``wd`` and predicts 40 tiny records: the CSV rows."""
    workflow.correct_stage(wd)
    out = tmp_path / "preds.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                        TINY.replace("n=256", "n=40"), "--output", out)
    assert rc == 0, err
    with open(out) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_predict_with_a_student_t_tail(trained, tmp_path, capsys):
    """A calibration with a fixed Student-t tail (library API): predict's interval
    and entropy are the t's (scipy.stats.t), and corrections fitted for another
    family are refused."""
    from scipy import stats

    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    workflow.calibrate_stage(wd, "hyperfine", 5.0)
    rc, _, err = hypuc(capsys, "evaluate", "--workdir", wd)  # calibration removed them
    assert "hypuc correct" in one_line_error(rc, err)
    workflow.calibrate_stage(wd, "hyperfine", "gaussian")
    workflow.correct_stage(wd)
    (wd / workflow.CORRECTIONS).rename(wd / "stale")
    workflow.correct_stage(wd)
    workflow.calibrate_stage(wd, "hyperfine", 5.0)
    (wd / "stale").rename(wd / workflow.CORRECTIONS)  # fitted for the Gaussian
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", TINY, "--output",
                        tmp_path / "p.csv")
    assert "dof" in one_line_error(rc, err) and not (tmp_path / "p.csv").exists()
    rows = _correct_and_predict_40(wd, tmp_path, capsys)
    s = np.array([r["sigma_cal"] for r in rows]) * np.sqrt(3.0 / 5.0)
    mu = np.array([r["mu"] for r in rows])
    cal = json.loads((wd / "calibration.json").read_text())
    assert cal["dof"] == 5.0
    np.testing.assert_allclose(s / np.sqrt(3.0 / 5.0), _hyperfine_by_hand(
        cal, mu, [r["sigma"] for r in rows]), rtol=1e-6)
    lo, hi = stats.t.interval(0.95, 5.0, mu, s)
    np.testing.assert_allclose([r["lower_95"] for r in rows], lo, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["upper_95"] for r in rows], hi, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["entropy"] for r in rows], stats.t.entropy(5.0, scale=s),
                               rtol=1e-4, atol=1e-4)


def test_predict_with_isotonic_calibration(trained, tmp_path, capsys):
    """predict's interval after `calibrate --method isotonic` is the recalibrated
    CDF's own central 95% interval (asymmetric), recomputed here by inverting R
    linearly in Phi between the stored knots; the entropy is that of one
    location-scale family (log sigma plus a constant)."""
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    rc, _, err = hypuc(capsys, "calibrate", "--workdir", wd, "--method", "isotonic")
    assert rc == 0, err
    rows = _correct_and_predict_40(wd, tmp_path, capsys)
    mu, sigma = (np.array([r[k] for r in rows]) for k in ("mu", "sigma"))
    cal = json.loads((wd / "calibration.json").read_text())
    p_knots = np.r_[0.0, stats.norm.cdf(cal["knots"]), 1.0]
    freqs = np.r_[0.0, cal["freqs"], 1.0]
    z_lo, z_hi = stats.norm.ppf(np.interp([0.025, 0.975], freqs, p_knots))
    assert z_lo != -z_hi
    np.testing.assert_allclose([r["lower_95"] for r in rows], mu + z_lo * sigma, rtol=1e-5)
    np.testing.assert_allclose([r["upper_95"] for r in rows], mu + z_hi * sigma, rtol=1e-5)
    np.testing.assert_allclose([r["sigma_cal"] for r in rows],
                               sigma * (z_hi - z_lo) / (2 * stats.norm.ppf(0.975)), rtol=1e-5)
    offset = np.array([r["entropy"] for r in rows]) - np.log(sigma)
    np.testing.assert_allclose(offset, offset[0], atol=1e-5)


def test_predict_refuses_other_shape(trained, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    spec = TINY.replace("duration=2", "duration=3").replace("n=256", "n=20")
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", spec, "--output", out)
    line = one_line_error(rc, err)
    assert "shape" in line and "omit duration= to read 2 s records" in line, line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_predict_refuses_records_of_another_task_and_unit(trained, tmp_path, capsys):
    """simulated:lvef records (labels in %) were predicted by a potassium run, their
    ejection fractions written as y beside mu in mmol/L, with exit 0."""
    out = tmp_path / "preds.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data",
                       "simulated:lvef?n=5", "--output", out)
    line = one_line_error(rc, err)
    assert "lvef records labelled in %" in line and "potassium in mmol/L" in line, line
    assert not out.exists()
    # the unit is compared as a unit, not as a spelling
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    task = json.loads((wd / "task.json").read_text())
    (wd / "task.json").write_text(json.dumps({**task, "unit": "MMOL / l"}))
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                       "simulated:potassium?n=5", "--output", out)
    assert rc == 0, err
    # potassium's other name of its unit (mEq/L = mmol/L); another task's is refused
    for unit, ok in (("mEq/L", True), ("mg/dL", False)):
        (wd / "task.json").write_text(json.dumps({**task, "unit": unit}))
        rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                           "simulated:potassium?n=5", "--output", out)
        assert (rc == 0) == ok, err


def test_run_prepares_each_arm_once(tmp_path, capsys, monkeypatch):
    """`hypuc run` checks (and since the scaler and weighting fits can refuse data,
    prepares) both arms before deleting anything; training reuses what the check
    prepared instead of a second pass over the records per arm."""
    from hypuc_jax import train_data
    calls = []
    real = train_data.prepare
    monkeypatch.setattr(train_data, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", tmp_path / "main",
                       "--set", "train.parallel=none", *FAST)
    assert rc == 0, err
    assert len(calls) == 2


def test_predict_reads_signals_at_the_training_rate(trained, tmp_path, capsys):
    """Records of the training shape at another rate were accepted and misread; a spec
    without rate= now reads at the training rate, and another rate is refused. Without
    duration= the records have the training length (the simulator's default 10 s
    did not fit the 2 s model)."""
    assert "rate=50" in TINY and json.loads((trained / "task.json").read_text())["rate"] == 50
    out = tmp_path / "preds.csv"
    other = "simulated:potassium?n=8&duration=1&rate=100&seed=3"      # 100 x 12, like training
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", other, "--output", out)
    assert "trained at 50 Hz" in one_line_error(rc, err) and not out.exists()
    same = "simulated:potassium?n=8&seed=3"             # no rate= or duration=: the run's
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", same, "--output", out)
    assert rc == 0, err
    ds = data_lib.load(same + "&rate=50&duration=2")
    want, _ = train.predict(str(trained), ds.x)
    with open(out) as f:
        got = [float(r["mu"]) for r in csv.DictReader(f)]
    np.testing.assert_array_equal(got, np.asarray(want, np.float64))   # round-trip floats
    # npz arrays are not resampled: the advice is to save them at the training rate
    np.savez(tmp_path / "r.npz", x=ds.x, y=ds.y)
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data",
                       f"npz:{tmp_path / 'r.npz'}?rate=100", "--output", tmp_path / "n.csv")
    line = one_line_error(rc, err)
    assert "save records sampled at 50 Hz" in line and "omit rate=" not in line


def test_predict_cuts_wfdb_records_to_the_training_length(trained, tmp_path, capsys):
    """WFDB records longer than the training ones (3 s at 100 Hz vs 2 s at 50 Hz) are
    resampled to the training rate and cut to the training length without options;
    mu equals the model on the first 2 s read at 50 Hz."""
    import wfdb
    from hypuc_jax.data import LEAD_NAMES
    rng = np.random.default_rng(0)
    for k in range(3):
        wfdb.wrsamp(f"r{k}", fs=100, units=["mV"] * 12, sig_name=list(LEAD_NAMES),
                    p_signal=rng.normal(size=(300, 12)) * 0.3, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    (tmp_path / "labels.csv").write_text("record\nr0\nr1\nr2\n")
    out = tmp_path / "p.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", f"wfdb:{tmp_path}",
                       "--output", out)
    assert rc == 0, err
    ds = data_lib.load(f"wfdb:{tmp_path}?rate=50&duration=2", labels_optional=True)
    assert ds.x.shape == (3, 100, 12)
    want, _ = train.predict(str(trained), ds.x)
    with open(out) as f:
        np.testing.assert_array_equal([float(r["mu"]) for r in csv.DictReader(f)],
                                      np.asarray(want, np.float64))


@pytest.mark.parametrize("parallel", ["sharding", "pmap"])
def test_parallel_modes_match_none(trained, tmp_path, parallel):
    wd = tmp_path / parallel
    for argv in (["train", "--workdir", wd, "--data", TINY, "--preset", "tiny", "--parallel",
                  parallel, "--weighting", "hypuc", "--set", "regions=[['hyper', 5.5, 7.5]]",
                  *FAST],
                 ["calibrate", "--workdir", wd], ["correct", "--workdir", wd],
                 ["evaluate", "--workdir", wd]):
        assert cli.main([str(a) for a in argv]) == 0, argv
    ref = _numbers(json.loads((trained / "eval.json").read_text()))
    got = _numbers(json.loads((wd / "eval.json").read_text()))
    assert got.keys() == ref.keys() and any(k.startswith("corrected/") for k in ref)
    for key, value in ref.items():   # every final number: calibrated, corrected, decisions, ...
        assert got[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key


def _numbers(tree, prefix=""):
    """{path: number} of a JSON tree (None as NaN)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}{key}/").items()}
    if tree is None or isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix[:-1]: float("nan") if tree is None else float(tree)}
    return {}


# ---------------------------------------------------------------------------- hypuc run


def test_refused_run_keeps_the_previous_report(quick_run, tmp_path, capsys):
    """Bad input to `hypuc run` is refused before anything in --workdir changes."""
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    base = ["run", "--quick", "--workdir", wd, "--set", "train.parallel=none",
            "--set", "regions=[['hyper', 5.5, 7.5]]", *FAST]
    for extra, needle in ((["--set", "bogus.key=1"], "bogus"),
                          (["--preset", "nope"], "--preset"),
                          (["--set", "train.lr=0.5"], "--overwrite"),
                          # names the key that differs, with both values
                          (["--set", "train.lr=0.5"], "(train.lr: stored 0.003, now 0.5)"),
                          # outside the fingerprint, but they select the checkpoints' model
                          (["--set", "train.eval_every=5"], "(train.eval_every: stored"),
                          (["--set", "train.early_stopping_patience=9"],
                           "(train.early_stopping_patience: stored"),
                          (["--data", f"csv:{tmp_path / 'gone.csv'}", "--overwrite"],
                           "gone.csv"),
                          # found only by the later stages before: refused up front now
                          (["--set", "calibration.min_count=1000"], "calibration.min_count=1000"),
                          # and names the option `run` takes (it said "--method global")
                          (["--set", "calibration.min_count=1000"],
                           "--set calibration.method=global"),
                          (["--set", "corrections.seed=-1"], "corrections.seed"),
                          (["--set", "train.batch_size=1000", "--overwrite"],
                           "train.batch_size"),
                          (["--seed", "-1", "--overwrite"], "train.seed"),
                          (["--seed", "99999999999999999999", "--overwrite"], "train.seed")):
        argv = [a for a in base if a != "--quick"] if "--preset" in extra else base
        rc, _, err = hypuc(capsys, *argv, *extra)
        assert needle in one_line_error(rc, err)
        assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == before
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", tmp_path / "new", "--data",
                        f"csv:{tmp_path / 'gone.csv'}")
    assert "gone.csv" in one_line_error(rc, err) and not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_stop_while_old_checkpoints_are_deleted_leaves_a_trainable_directory(
        command, quick_run, tmp_path, capsys, monkeypatch):
    """--overwrite stopped half-way through deleting the old checkpoints used to leave
    some step folders and the old fingerprint under checkpoints/ (config.json already
    gone): the new config passed the up-front checks, then was refused by the
    checkpoint store after the later stages had been deleted. The folder is now
    renamed away before it is deleted, and the leftover is cleared by the next run."""
    from hypuc_jax import _files
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    if command == "run":
        argv = ["run", "--quick", "--workdir", wd, "--set", "train.parallel=none",
                "--seed", "3", *FAST]
    else:
        wd = wd / "hypuc"
        argv = ["train", "--workdir", wd, "--data", TINY, "--preset", "tiny", "--seed", "5",
                *FAST]
    real = shutil.rmtree

    def stop_half_way(path, *args, **kwargs):
        if "checkpoints" in str(path):
            real(sorted(p for p in Path(path).iterdir() if p.name.isdigit())[0])
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)
    monkeypatch.setattr(_files.shutil, "rmtree", stop_half_way)
    rc, _, err = hypuc(capsys, *argv, "--overwrite")
    assert rc == 130
    monkeypatch.setattr(_files.shutil, "rmtree", real)
    assert list(wd.rglob(f"checkpoints{_files.TRASH_MARK}*"))      # the half-deleted folder
    rc, _, err = hypuc(capsys, *argv)                               # no --overwrite needed
    assert rc == 0, err
    assert not list(wd.rglob(f"*{_files.TRASH_MARK}*"))


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_stop_after_overwrite_cleared_the_old_files_leaves_a_resumable_directory(
        command, quick_run, tmp_path, capsys, monkeypatch):
    """A stop after --overwrite removed the old config and checkpoints, with some old
    files left (train: its scaler, weighting, log; run: the second arm half
    emptied): no config.json, checkpoints or trash marks the directory, yet it is
    the tool's (its RUN_MARK), so a plain re-run resumes instead of refusing it as a
    user's folder."""
    from hypuc_jax import _files, comparison
    from hypuc_jax import train as train_lib
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    if command == "run":
        argv = ["run", "--quick", "--workdir", wd, "--set", "train.parallel=none",
                "--seed", "3", *FAST]
        real, calls = _files.clear_dir, []

        def stop_in_second_arm(path, **kwargs):
            calls.append(path)
            if len(calls) == 2:             # the second arm: config, checkpoints gone first
                victims = sorted(p for p in Path(path).iterdir() if p.suffix == ".npz")
                for p in victims[:2]:
                    p.unlink()
                raise KeyboardInterrupt
            return real(path, **kwargs)
        monkeypatch.setattr(comparison, "clear_dir", stop_in_second_arm)
        left = wd / "hypuc"
    else:
        wd = wd / "hypuc"
        argv = ["train", "--workdir", wd, "--data", TINY, "--preset", "tiny", "--seed", "5",
                *FAST]

        def stop(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(train_lib, "train_and_evaluate", stop)
        left = wd
    rc, _, err = hypuc(capsys, *argv, "--overwrite")
    assert rc == 130, err
    monkeypatch.undo()
    names = {p.name for p in left.iterdir()}
    assert not names & {workflow.CONFIG, "checkpoints"} and not _files.holds_trash(left)
    assert names & {"scaler.json", "metrics.jsonl", "outputs_test.npz"}, names  # old files
    rc, _, err = hypuc(capsys, *argv)                               # no --overwrite needed
    assert rc == 0, err


def test_interrupted_run_overwrite_leaves_no_old_arm_or_figures(quick_run, tmp_path, capsys,
                                                                monkeypatch):
    """`run --overwrite` stopped while training its first arm used to leave the
    second arm's old, evaluated run (predict used it silently) and the old
    figures; now both arms and the figures go before training starts, and a
    plain re-run of the new config finishes the job."""
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    argv = ["run", "--quick", "--workdir", wd, "--set", "train.parallel=none", "--seed", "3",
            *FAST]
    real = comparison.pipeline

    def stopped_in_the_first_arm(cfg, workdir, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(comparison, "pipeline", stopped_in_the_first_arm)
    rc, _, err = hypuc(capsys, *argv, "--overwrite")
    assert rc == 130
    assert sorted(p.name for p in wd.iterdir()) == [workflow.RUN_MARK, "baseline", "hypuc"]
    # no file left in either arm but the mark that the directories are the tool's
    assert sorted(str(p.relative_to(wd)) for p in wd.rglob("*") if p.is_file()) == [
        workflow.RUN_MARK, f"baseline/{workflow.RUN_MARK}", f"hypuc/{workflow.RUN_MARK}"]
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd / "hypuc", "--data", TINY,
                       "--output", tmp_path / "p.csv")
    assert "hypuc" in one_line_error(rc, err) and not (tmp_path / "p.csv").exists()
    monkeypatch.setattr(comparison, "pipeline", real)
    assert hypuc(capsys, *argv)[0] == 0                # no --overwrite needed now
    assert (wd / "report.md").exists() and any((wd / "figures").glob("*.png"))
    assert json.loads((wd / "hypuc" / "config.json").read_text())["train"]["seed"] == 3


def test_run_keeps_symlinked_figures_and_checkpoints_and_empties_them(quick_run, tmp_path,
                                                                      capsys):
    """Figures and checkpoints kept on another disk behind links: `run` (and
    --overwrite) empties the link targets and keeps the links; rmtree on the
    link failed after emptying part of the run."""
    wd, far = tmp_path / "main", tmp_path / "far"
    shutil.copytree(quick_run, wd)
    far.mkdir()
    for name, src in (("figures", wd / "figures"), ("ckpt", wd / "hypuc" / "checkpoints"),
                      ("tb", wd / "hypuc" / "tb")):
        shutil.move(src, far / name)
        src.symlink_to(far / name)
    (far / "figures" / "stale.png").write_bytes(b"old")
    old_steps = sorted(p.name for p in (far / "ckpt").iterdir() if p.name.isdigit())
    argv = ["run", "--quick", "--workdir", wd, "--set", "train.parallel=none",
            "--set", "regions=[['hyper', 5.5, 7.5]]", "--seed", "4", "--overwrite", *FAST]
    rc, out, err = hypuc(capsys, *argv)
    assert rc == 0, err
    assert all(p.is_symlink() for p in (wd / "figures", wd / "hypuc" / "checkpoints",
                                        wd / "hypuc" / "tb"))
    assert not (far / "figures" / "stale.png").exists()
    assert any((far / "figures").glob("*.png")) and (wd / "report.md").exists()
    steps = sorted(p.name for p in (far / "ckpt").iterdir() if p.name.isdigit())
    assert steps and json.loads((wd / "hypuc" / "config.json").read_text())["train"]["seed"] == 4
    assert old_steps                                  # there was something to replace


@pytest.mark.parametrize("override", ["weighting.scheme=inverse", "loss.name=mse"])
def test_run_refuses_overrides_that_merge_the_two_arms(override, capsys, tmp_path):
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", tmp_path / "r", "--set",
                       override)
    line = one_line_error(rc, err)
    assert f"--set {override.split('=')[0]}" in line and "per arm" in line
    assert not (tmp_path / "r").exists()


def test_run_defaults_and_data_flag(monkeypatch, capsys):
    calls = []

    def fake_run(workdir, **kw):
        calls.append(kw)
        return {"report": f"{workdir}/report.md", "eval": {}, "checks": []}

    monkeypatch.setattr(comparison, "run_comparison", fake_run)
    assert cli.main(["run"]) == 0
    assert "report: runs/main/report.md" in capsys.readouterr().out
    assert calls[-1]["preset"] == "potassium" and calls[-1]["data"] is None
    assert list(comparison.DEFAULT_RUN[1]) == calls[-1]["overrides"]
    assert cli.main(["run", "--workdir", "w", "--data", "diabetes", "--set", "train.lr=0.1"]) == 0
    assert calls[-1]["data"] == "diabetes"
    assert not any(o.startswith("data.spec=") for o in calls[-1]["overrides"])
    assert calls[-1]["overrides"][-1] == "train.lr=0.1"
    assert cli.main(["run", "--quick", "--workdir", "w"]) == 0
    assert calls[-1]["preset"] == "tiny" and calls[-1]["overrides"] == []
    assert "report: w/report.md" in capsys.readouterr().out


def _copy_with_a_current_report(quick_run, tmp_path):
    """A copy of the shared ``hypuc run`` directory and its report text, without
    an out-of-date mark (other tests re-calibrate the shared run)."""
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    before = (wd / "report.md").read_text()
    if before.startswith(workflow.STALE_REPORT):
        before = before.split("\n\n", 1)[1]
        (wd / "report.md").write_text(before)
    assert before.startswith("# HypUC report")
    return wd, before


def test_recalibrating_an_arm_marks_the_run_report_out_of_date(quick_run, tmp_path, capsys):
    # the report kept showing the old calibration's numbers with no word about it
    wd, before = _copy_with_a_current_report(quick_run, tmp_path)
    rc, _, err = hypuc(capsys, "calibrate", "--workdir", wd / "hypuc", "--method", "global")
    assert rc == 0, err
    text = (wd / "report.md").read_text()
    first = text.split("\n\n", 1)[0]
    assert first.startswith(workflow.STALE_REPORT) and first.endswith(
        "written: `hypuc`; their numbers below no longer match their eval.json.")
    assert text.endswith(before)                              # the report itself is kept
    rc, _, err = hypuc(capsys, "correct", "--workdir", wd / "hypuc")
    assert rc == 0, err
    assert (wd / "report.md").read_text() == text             # marked once per arm
    rc, _, err = hypuc(capsys, "correct", "--workdir", wd / "baseline")
    assert rc == 0, err
    text = (wd / "report.md").read_text()
    assert "written: `hypuc`, `baseline`; their" in text and text.endswith(before)
    rc, _, err = hypuc(capsys, "evaluate", "--workdir", wd / "hypuc")
    assert rc == 0, err
    cal = json.loads((wd / "hypuc" / "calibration.json").read_text())
    assert cal["method"] == "global"


def test_retraining_an_arm_marks_the_run_report_out_of_date(quick_run, tmp_path, capsys):
    # `hypuc train` on an arm removed its evaluation but left the report unmarked
    from cli_helpers import TINY
    wd, before = _copy_with_a_current_report(quick_run, tmp_path)
    rc, _, err = hypuc(capsys, "train", "--workdir", wd / "baseline", "--data", TINY,
                       "--preset", "tiny", "--set", "train.steps=4", "--overwrite")
    assert rc == 0, err
    text = (wd / "report.md").read_text()
    first = text.split("\n\n", 1)[0]
    assert first.startswith(workflow.STALE_REPORT + " re-trained") and first.endswith(
        "written: `baseline`; their numbers below no longer match their eval.json.")
    assert text.endswith(before) and not (wd / "baseline" / "eval.json").exists()


def test_only_a_run_report_showing_the_arm_is_marked(quick_run, tmp_path, capsys, caplog):
    # a user's notes, a report without this run, and an unreadable report.md are left
    # alone; the last used to fail `calibrate` after it had removed the evaluation
    notes = tmp_path / "notes"
    notes.mkdir()
    shutil.copytree(quick_run / "hypuc", notes / "myrun")
    (notes / "report.md").write_text("# My lab notes\n\nrun myrun looked fine\n")
    shutil.copytree(quick_run / "hypuc", tmp_path / "extra_parent" / "extra")
    other = (quick_run / "report.md").read_text()
    (tmp_path / "extra_parent" / "report.md").write_text(other)
    latin = tmp_path / "latin"
    shutil.copytree(quick_run / "hypuc", latin / "hypuc")
    (latin / "report.md").write_bytes(b"# HypUC report\n\nK\xb5 caf\xe9\n")
    for run in (notes / "myrun", tmp_path / "extra_parent" / "extra", latin / "hypuc"):
        with caplog.at_level("WARNING"):
            rc, _, err = hypuc(capsys, "calibrate", "--workdir", run, "--method", "global")
        assert rc == 0, err
        assert json.loads((run / "calibration.json").read_text())["method"] == "global"
    assert (notes / "report.md").read_text() == "# My lab notes\n\nrun myrun looked fine\n"
    assert (tmp_path / "extra_parent" / "report.md").read_text() == other
    assert (latin / "report.md").read_bytes() == b"# HypUC report\n\nK\xb5 caf\xe9\n"
    assert "not marked out of date" in caplog.text


def test_predict_flags_signal_records_beyond_the_training_leads_range(trained, tmp_path, capsys):
    # a 1e19 sample made the network's GroupNorm return one fixed, confident prediction,
    # unflagged; task.json now holds each lead's range over the training samples
    cfg = workflow.load_config(trained)
    run = train.train_data.prepare(cfg)
    xtr = run.x[run.idx["train"]]
    task = json.loads((trained / "task.json").read_text())
    np.testing.assert_allclose(task["feature_range"], [xtr.min(axis=(0, 1)), xtr.max(axis=(0, 1))],
                               rtol=1e-6)
    ds = data_lib.load("simulated:potassium?n=6&seed=3&rate=50&duration=2")
    x = np.array(ds.x)
    lo, hi = xtr.min(axis=(0, 1)), xtr.max(axis=(0, 1))
    x[1, 10, 0] = 1e19
    x[3, 5, 4] = hi[4] + 1.01 * (hi[4] - lo[4])                # just beyond one width
    x[4, 5, 4] = hi[4] + 0.99 * (hi[4] - lo[4])                # just inside
    np.savez(tmp_path / "spiky.npz", x=x)
    out = tmp_path / "p.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data",
                       f"npz:{tmp_path / 'spiky.npz'}", "--output", out)
    assert rc == 0, err
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["out_of_range"]) for r in rows] == [0, 1, 0, 1, 0, 0]
    assert int(rows[1]["flag"]) == 1 and int(rows[3]["flag"]) == 1


def test_the_summary_table_shows_four_significant_digits_at_any_scale():
    # 0.0000 was printed for an MAE of 1.2e-6 (labels in the 1e-6 range).
    m = {"mae": 1.2345e-6, "rmse": 0.18358, "nll": -13.2, "coverage_95": 0.95, "uce": None}
    table = cli._summary_table({"hypuc": {s: {"overall": m} for s in
                                          ("uncalibrated", "calibrated", "corrected")}})
    row = table.splitlines()[1].split()
    assert row == ["hypuc", "uncalibrated", "1.234e-06", "0.1836", "-13.2", "0.95", "-"]
