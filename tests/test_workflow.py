"""Tests for hypuc_jax.workflow stages on a hand-made run directory.

The post-training stages only read files, so a run directory with synthetic
predictions (a known sigma misspecification, a known bias) tests calibrate,
correct and evaluate without training a network.
"""
import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats

from hypuc_jax import config as config_lib
from hypuc_jax import workflow

THRESHOLDS = (("K>5.5", 5.5, "above"), ("K<3.5", 3.5, "below"))
METRIC_KEYS = ("n", "mae", "mse", "rmse", "gm", "pearson", "spearman", "nll", "crps",
               "coverage_68", "coverage_90", "coverage_95", "width_95", "uce", "ence")


def _split(rng, n):
    y = np.clip(rng.gamma(9.0, 0.47, n), 2.5, 8.0)
    true_sd = 0.15 + 0.1 * (y > 5.0)
    mu = y + rng.normal(0.0, true_sd)
    return y, mu, np.full(n, 0.1)  # sigma reported too small everywhere


@pytest.fixture()
def rundir(tmp_path):
    rng = np.random.default_rng(0)
    cfg = config_lib.apply_overrides(config_lib.get_config("tiny"),
                                     ["corrections.n_estimators=30", "calibration.bins=5",
                                      "calibration.min_count=30"])
    cfg = workflow.make_config(cfg, regions=["hyper=5.5:"])
    workflow.write_json(tmp_path / workflow.CONFIG, cfg.to_dict())
    for split, n in (("val", 1200), ("test", 1200)):
        y, mu, sigma = _split(rng, n)
        workflow.save_npz(tmp_path / f"predictions_{split}.npz", y=y, mu=mu, sigma=sigma)
    workflow.save_npy(tmp_path / workflow.TRAIN_LABELS, np.clip(rng.gamma(9.0, 0.47, 3000),
                                                                2.5, 8.0))
    task = workflow.Task("potassium", "potassium", "mmol/L",
                         {"hypokalemia": (-np.inf, 3.5), "normal": (3.5, 5.5)}, THRESHOLDS,
                         "signal", (100, 12))
    workflow.write_json(tmp_path / workflow.TASK, dict(task.to_dict(), constant_sigma=None))
    return tmp_path


def test_calibrate_correct_evaluate_schema(rundir):
    workflow.calibrate_stage(rundir, "hyperfine")
    workflow.correct_stage(rundir)
    ev = workflow.evaluate_stage(rundir, "test")
    on_disk = json.loads((rundir / workflow.EVAL).read_text())
    assert on_disk == ev
    assert ev["split"] == "test" and ev["n"] == 1200
    for stage in ("uncalibrated", "calibrated", "corrected"):
        assert set(METRIC_KEYS) <= set(ev[stage]["overall"])
        assert {"many", "medium", "few", "hypokalemia", "normal", "hyper"} == set(
            ev[stage]["regions"])
        for block in ev[stage]["regions"].values():
            assert set(METRIC_KEYS) <= set(block)
    assert set(ev["decisions"]) == {"K>5.5", "K<3.5"}
    for d in ev["decisions"].values():       # one key set for every entry, fitted or not
        assert set(d) == {"n", "n_positive", "auroc", "auprc", "sensitivity_at_90_specificity",
                          "skipped", "baseline_auroc", "baseline_auprc", "gaussian_auroc",
                          "gaussian_auprc"}
        assert d["skipped"] is None
    assert set(ev["flagging"]["mae_kept_at"]) >= {"0.0", "0.1"}
    # calibration fixes the 1.5-2.5x too small sigma; UCE drops
    unc, cal = ev["uncalibrated"]["overall"], ev["calibrated"]["overall"]
    assert abs(cal["coverage_95"] - 0.95) < 0.03 < abs(unc["coverage_95"] - 0.95)
    assert cal["uce"] < 0.5 * unc["uce"]
    # eval numbers match an independent computation from the saved predictions
    p = np.load(rundir / "predictions_test.npz")
    assert unc["mae"] == pytest.approx(np.mean(np.abs(p["y"] - p["mu"])))
    event = p["y"] > 5.5
    from sklearn.metrics import average_precision_score, roc_auc_score
    assert ev["decisions"]["K>5.5"]["baseline_auroc"] == pytest.approx(
        roc_auc_score(event, p["mu"]))
    out = np.load(rundir / "outputs_test.npz")
    assert ev["decisions"]["K>5.5"]["auroc"] == pytest.approx(
        roc_auc_score(event, out["prob__K>5.5"]))
    # Flag the 120 largest sigmas; a tie at the cut is shared (expected kept error).
    err, s = np.abs(p["y"] - p["mu"]), out["sigma_cal"]
    cut = np.sort(s)[::-1][120]
    tie_kept = (len(s) - 120) - np.sum(s < cut)
    kept_sum = err[s < cut].sum() + tie_kept / np.sum(s == cut) * err[s == cut].sum()
    assert ev["flagging"]["mae_kept_at"]["0.1"] == pytest.approx(kept_sum / (len(s) - 120))
    # What predict flags: above the validation split's 90% quantile of calibrated sigma
    # (one value per hyperfine bin here: a tied cut is included when that flags a
    # share of validation nearer 10%, the documented rule, by hand).
    workflow.evaluate_stage(rundir, "val")
    s_val = np.load(rundir / "outputs_val.npz")["sigma_cal"]
    cut = np.quantile(s_val, 0.9)
    inclusive = abs(np.sum(s_val >= cut) - 120) <= abs(np.sum(s_val > cut) - 120)
    flags = s >= cut if inclusive else s > cut
    assert 0.03 < flags.mean() < 0.3
    assert ev["flagging"]["validation_cut"] == pytest.approx(
        {"fraction": 0.1, "flagged": flags.mean(), "mae_kept": err[~flags].mean(),
         "mae_flagged": err[flags].mean()})
    # the corrected block scores the corrected value (not mu) with the calibrated sigma
    corr_block = ev["corrected"]["overall"]
    assert np.any(out["corrected"] != p["mu"])
    assert corr_block["mae"] == pytest.approx(np.mean(np.abs(p["y"] - out["corrected"])))
    assert corr_block["coverage_95"] == pytest.approx(np.mean(
        np.abs(p["y"] - out["corrected"]) <= stats.norm.ppf(0.975) * out["sigma_cal"]))
    assert corr_block["mae"] != pytest.approx(unc["mae"], rel=1e-6)
    # the gaussian baseline: the calibrated predictive's exceedance probability (scipy)
    for name, value, fn in (("K>5.5", 5.5, stats.norm.sf), ("K<3.5", 3.5, stats.norm.cdf)):
        ev_d, pos = ev["decisions"][name], (p["y"] > value if name[1] == ">" else p["y"] < value)
        score = fn(value, loc=p["mu"], scale=out["sigma_cal"])
        assert ev_d["gaussian_auroc"] == pytest.approx(roc_auc_score(pos, score))
        assert ev_d["gaussian_auprc"] == pytest.approx(average_precision_score(pos, score))


def test_the_gaussian_decision_baseline_uses_sigma(rundir):
    """With test sigmas that vary independently of mu, the calibrated predictive's
    exceedance probability ranks differently from mu: eval.json's gaussian_auroc
    must be sklearn's AUROC of scipy's probability, not of mu."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(5)
    p = dict(np.load(rundir / "predictions_test.npz"))
    p["sigma"] = rng.uniform(0.02, 1.0, p["mu"].size)
    workflow.save_npz(rundir / "predictions_test.npz", **p)
    workflow.calibrate_stage(rundir, "global")
    workflow.correct_stage(rundir)
    ev = workflow.evaluate_stage(rundir, "test")
    out = np.load(rundir / "outputs_test.npz")
    pos = p["y"] > 5.5
    d = ev["decisions"]["K>5.5"]
    score = stats.norm.sf(5.5, loc=p["mu"], scale=out["sigma_cal"])
    assert d["gaussian_auroc"] == pytest.approx(roc_auc_score(pos, score))
    assert abs(d["gaussian_auroc"] - d["baseline_auroc"]) > 1e-3


def test_stages_refuse_missing_prerequisites(rundir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    for fn in (workflow.calibrate_stage, workflow.correct_stage, workflow.evaluate_stage):
        with pytest.raises(workflow.WorkflowError, match="no trained model"):
            fn(empty)
    with pytest.raises(workflow.WorkflowError, match="hypuc calibrate"):
        workflow.correct_stage(rundir)
    workflow.calibrate_stage(rundir, "global")
    with pytest.raises(workflow.WorkflowError, match="hypuc correct"):
        workflow.evaluate_stage(rundir)
    assert not (rundir / workflow.EVAL).exists()


def test_recalibration_drops_stale_downstream_results(rundir):
    workflow.calibrate_stage(rundir, "global")
    workflow.correct_stage(rundir)
    workflow.evaluate_stage(rundir)
    assert (rundir / "outputs_test.npz").exists()
    d = workflow.calibrate_stage(rundir, "isotonic")
    assert d["method"] == "isotonic"
    for stale in (workflow.CORRECTIONS, workflow.EVAL, "outputs_test.npz"):
        assert not (rundir / stale).exists(), stale
    workflow.correct_stage(rundir)
    workflow.evaluate_stage(rundir)
    workflow.correct_stage(rundir)                 # new corrections: the scores are stale
    assert not (rundir / workflow.EVAL).exists() and not (rundir / "outputs_test.npz").exists()


def test_isotonic_run_is_scored_under_its_recalibrated_cdf(rundir):
    """eval.json's calibrated block after isotonic calibration: coverage from the
    calibrator's own (asymmetric) intervals, in-sample UCE at the empirical CDF's
    resolution, the family stored for the report, and corrections refused once
    the calibration changed under them."""
    from hypuc_jax import calibration, comparison, uncertainty

    workflow.calibrate_stage(rundir, "isotonic")
    workflow.correct_stage(rundir)
    ev = workflow.evaluate_stage(rundir)
    assert ev["calibration"] == {"method": "isotonic", "dof": None}
    iso = calibration.load_calibrator(rundir / workflow.CALIBRATION)
    test = np.load(rundir / "predictions_test.npz")
    y, mu, sigma = test["y"], test["mu"], test["sigma"]
    # R^-1 recomputed here: linear in Phi between the stored knots (0 and 1 at +-inf)
    p_knots = np.r_[0.0, stats.norm.cdf(iso.knots), 1.0]
    freqs = np.r_[0.0, iso.freqs, 1.0]
    for level, key in ((0.68, "coverage_68"), (0.9, "coverage_90"), (0.95, "coverage_95")):
        z_lo, z_hi = stats.norm.ppf(np.interp([0.5 - level / 2, 0.5 + level / 2], freqs,
                                              p_knots))
        lo, hi = mu + z_lo * sigma, mu + z_hi * sigma
        assert ev["calibrated"]["overall"][key] == pytest.approx(np.mean((y >= lo) & (y <= hi)),
                                                                 abs=1.5 / y.size)
        if level == 0.95:
            assert ev["calibrated"]["overall"]["width_95"] == pytest.approx(
                np.mean(hi - lo), rel=1e-6)
    val = workflow.evaluate_stage(rundir, "val")["calibrated"]["overall"]
    assert val["uce"] < 2.0 / 1200 and val["coverage_95"] == pytest.approx(0.95, abs=2 / 1200)
    vp = np.load(rundir / "predictions_val.npz")
    gauss = uncertainty.uce(vp["y"], vp["mu"], iso.apply(vp["mu"], vp["sigma"]))
    assert gauss > 5 * val["uce"]              # the Gaussian of equal width it replaced
    assert comparison.load_run_outputs(rundir, "iso").dof == iso.predictive_dof
    # a new isotonic fit (other xi) under the old corrections: refused, named
    cfg = json.loads((rundir / workflow.CONFIG).read_text())
    cfg["calibration"]["xi"] = 0.9
    workflow.write_json(rundir / workflow.CONFIG, cfg)
    corrections = (rundir / workflow.CORRECTIONS).rename(rundir / "kept")
    workflow.calibrate_stage(rundir, "isotonic")
    corrections.rename(rundir / workflow.CORRECTIONS)
    with pytest.raises(workflow.WorkflowError, match="isotonic recalibration, the calibration's "
                                                     "is isotonic recalibration \\(xi 0.9\\)"):
        workflow.evaluate_stage(rundir)
    # a calibration.json of the i / n fit (format 3, before session 20): refused, named
    old = json.loads((rundir / workflow.CALIBRATION).read_text())
    workflow.write_json(rundir / workflow.CALIBRATION, dict(old, format_version=3))
    with pytest.raises(workflow.WorkflowError, match="earlier version.*hypuc calibrate"):
        workflow.evaluate_stage(rundir)
    for bad in ("4", None):                        # a damaged version: one clear error
        workflow.write_json(rundir / workflow.CALIBRATION, dict(old, format_version=bad))
        with pytest.raises(workflow.WorkflowError, match="not a valid calibration"):
            workflow.evaluate_stage(rundir)


def test_isotonic_corrected_block_is_scored_without_the_bias_twice(rundir):
    """mu 0.5 (about five predicted sigmas) below y: the isotonic family carries
    that bias, the boosted corrected value removes it, so the corrected value is
    scored under the family moved to mean 0; scored under the family itself its
    interval sat a whole bias away (coverage ~0)."""
    for split in ("val", "test"):
        p = dict(np.load(rundir / f"predictions_{split}.npz"))
        workflow.save_npz(rundir / f"predictions_{split}.npz", y=p["y"], mu=p["mu"] - 0.5,
                          sigma=p["sigma"])
    workflow.calibrate_stage(rundir, "isotonic")
    workflow.correct_stage(rundir)
    ev = workflow.evaluate_stage(rundir)
    cal, cor = ev["calibrated"]["overall"], ev["corrected"]["overall"]
    assert cal["coverage_95"] == pytest.approx(0.95, abs=0.03)
    assert cor["mae"] < 0.5 * cal["mae"]                          # the bias is gone
    assert cor["coverage_95"] == pytest.approx(0.95, abs=0.03)
    assert cor["nll"] < cal["nll"] + 0.5


def test_thresholds_with_one_outcome_are_skipped(rundir):
    task = json.loads((rundir / workflow.TASK).read_text())
    task["thresholds"].append(["K>50", 50.0, "above"])
    workflow.write_json(rundir / workflow.TASK, task)
    workflow.calibrate_stage(rundir)
    out = workflow.correct_stage(rundir)
    assert out["skipped"] == ["K>50"] and "K>5.5" in out["thresholds"]
    ev = workflow.evaluate_stage(rundir)
    skipped = ev["decisions"]["K>50"]                       # kept: stable keys, null scores
    assert set(skipped) == set(ev["decisions"]["K>5.5"]) | {"skipped"}
    assert skipped["n"] == 1200 and skipped["n_positive"] == 0
    assert all(skipped[k] is None for k in skipped if k not in ("n", "n_positive", "skipped"))
    y_test = np.load(rundir / "predictions_test.npz")["y"]
    assert ev["decisions"]["K>5.5"]["n_positive"] == int(np.sum(y_test > 5.5))


def test_validation_evaluation_does_not_replace_the_test_one(rundir):
    workflow.calibrate_stage(rundir)
    workflow.correct_stage(rundir)
    test = workflow.evaluate_stage(rundir)
    val = workflow.evaluate_stage(rundir, "val")
    assert val["split"] == "val" and json.loads((rundir / "eval_val.json").read_text()) == val
    # validation fitted the calibration and corrections: marked in-sample, test is not
    assert val["in_sample"] is True and test["in_sample"] is False
    assert json.loads((rundir / workflow.EVAL).read_text()) == test
    workflow.calibrate_stage(rundir, "global")                 # both are stale now
    assert not (rundir / workflow.EVAL).exists() and not (rundir / "eval_val.json").exists()


@pytest.mark.parametrize("text,expected", [("hyper=5.5:6.5", ("hyper", 5.5, 6.5)),
                                           ("low=:3.5", ("low", -np.inf, 3.5)),
                                           ("top=6.5:", ("top", 6.5, np.inf))])
def test_parse_region(text, expected):
    assert workflow.parse_region(text) == expected


@pytest.mark.parametrize("text", ["hyper", "=1:2", "a=1", "a=2:1", "a=x:2"])
def test_parse_region_rejects(text):
    with pytest.raises(workflow.WorkflowError, match="--region"):
        workflow.parse_region(text)


def test_make_config_applies_flags_then_overrides():
    cfg = workflow.make_config("tiny", data="diabetes", loss="laplace", weighting="hypuc", lam=0.25,
                               epochs=3, batch_size=16, seed=7, parallel="none",
                               regions=["r=1:2"], overrides=["train.lr=0.01", "weighting.lam=0.75"])
    assert (cfg.data.spec, cfg.loss.name, cfg.weighting.scheme) == ("diabetes", "laplace", "hypuc")
    assert (cfg.train.epochs, cfg.train.steps, cfg.train.batch_size, cfg.train.seed) == (3, 0, 16, 7)
    assert cfg.weighting.lam == 0.75 and cfg.train.lr == 0.01 and cfg.train.parallel == "none"
    assert cfg.regions[-1] == ("r", 1.0, 2.0)
    with pytest.raises(ValueError, match="train.nope"):
        workflow.make_config("tiny", overrides=["train.nope=1"])
    # --lam only means something to the KDE weights (it was stored and fingerprinted, unused)
    for scheme in ("none", "lds"):
        with pytest.raises(ValueError, match="--lam: applies to --weighting hypuc only"):
            workflow.make_config("tiny", weighting=scheme, lam=2.0)
    assert workflow.make_config("tiny", weighting="none", lam=0.5,
                                overrides=["weighting.scheme=hypuc"]).weighting.lam == 0.5


@pytest.mark.parametrize("scheme, key, users", [
    ("lds", "weighting.max_weight=2", "hypuc"), ("inverse", "weighting.lam=0.9", "hypuc"),
    ("sqrt_inv", "weighting.lds_ks=7", "lds"), ("hypuc", "weighting.dense_alpha=2", "denseweight"),
    ("denseweight", "weighting.lds_sigma=1", "lds"),
    ("hypuc", "weighting.lds_kernel=triang", "lds")])
def test_a_weighting_key_the_scheme_ignores_is_refused(scheme, key, users):
    """--set weighting.max_weight=2 with --weighting lds validated, was stored and
    fingerprinted, and capped nothing (the lds weights reached 30)."""
    with pytest.raises(ValueError, match=f"--set {key.split('=')[0]}: used by --weighting "
                                         f"{users} only; {scheme!r} would ignore it"):
        workflow.make_config("tiny", weighting=scheme, overrides=[key])


def test_an_unknown_scheme_is_named_by_validation_not_a_key_error():
    with pytest.raises(ValueError, match=r"weighting.scheme: expected one of \("):
        config_lib.validate(workflow.make_config("tiny", overrides=["weighting.scheme=hypc"]))


@pytest.mark.parametrize("scheme, key", [
    ("none", "weighting.max_weight=3.0"),        # `hypuc run` gives its baseline the same keys
    ("hypuc", "weighting.bins=50"), ("lds", "weighting.bins=50"),   # bins: the shot regions
    ("denseweight", "weighting.bandwidth=0.2"), ("hypuc", "weighting.max_weight=3.0"),
    ("lds", "weighting.apply=resample")])
def test_a_weighting_key_the_run_reads_is_accepted(scheme, key):
    field, value = key.split("=")
    cfg = workflow.make_config("tiny", weighting=scheme, overrides=[key])
    assert str(getattr(cfg.weighting, field.split(".")[1])) == value


def test_weighting_options_pass_each_scheme_its_own_fields():
    from hypuc_jax import train_data
    cfg = config_lib.apply_overrides(config_lib.get_config("tiny"), [
        "weighting.lam=0.7", "weighting.max_weight=4", "weighting.bins=30",
        "weighting.lds_kernel=triang", "weighting.lds_ks=7", "weighting.lds_sigma=1.5",
        "weighting.dense_alpha=0.8", "weighting.bandwidth=0.2", "weighting.method=exact"])
    expected = {"none": {}, "hypuc": dict(lam=0.7, bandwidth=0.2, method="exact", max_weight=4.0),
                "inverse": dict(bins=30), "sqrt_inv": dict(bins=30),
                "lds": dict(bins=30, kernel="triang", ks=7, sigma=1.5),
                "denseweight": dict(alpha=0.8, bandwidth=0.2, method="exact")}
    for scheme, options in expected.items():
        c = dataclasses.replace(cfg, weighting=dataclasses.replace(cfg.weighting, scheme=scheme))
        assert train_data.weighting_options(c) == options


def test_atomic_writers_leave_no_temp_files(tmp_path):
    workflow.write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(2)})
    workflow.save_npz(tmp_path / "b.npz", a=np.ones(3))
    with pytest.raises(TypeError):
        workflow.write_json(tmp_path / "c.json", {"x": object()})
    for bad in (float("nan"), np.float64(np.inf)):          # JSON has neither: never written
        with pytest.raises(workflow.WorkflowError, match="d.json: not written, it would hold"):
            workflow.write_json(tmp_path / "d.json", {"x": [1.0, bad]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [0, 1]}


def test_a_folder_is_renamed_away_before_it_is_deleted(tmp_path, monkeypatch):
    """A stop inside the deletion leaves nothing under the folder's name, only a trash
    folder beside it, which remove_trash finishes; other folders are left alone."""
    import shutil
    from hypuc_jax import _files
    tree = tmp_path / "checkpoints"
    (tree / "4").mkdir(parents=True)
    (tree / "4" / "state").write_text("x")
    (tmp_path / "keep.deleting-me").mkdir()                # not a trash name: kept
    real = shutil.rmtree

    def stop(path, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(_files.shutil, "rmtree", stop)
    with pytest.raises(KeyboardInterrupt):
        _files.remove_path(tree)
    monkeypatch.setattr(_files.shutil, "rmtree", real)
    assert not tree.exists()
    trash = [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoints.deleting-")]
    assert len(trash) == 1 and (tmp_path / trash[0] / "4" / "state").exists()
    _files.remove_trash(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.deleting-me"]
    assert _files.move_to_trash(tmp_path / "gone") is None      # removed meanwhile


def test_removals_tolerate_another_process_deleting_the_same_folder(tmp_path, monkeypatch):
    """Two processes finishing the same trash (or one deleting what remove_trash of
    another also found) raced: rmtree raised FileNotFoundError. Entries removed
    meanwhile are skipped now; a checkpoint store clears only its own trash."""
    import os
    from hypuc_jax import _files, checkpoints
    trash = tmp_path / f"ck{_files.TRASH_MARK}123-0123abcd"
    (trash / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        (trash / name).write_text("x")
    real = os.unlink

    def another_process_was_first(path, *args, **kwargs):
        real(path, *args, **kwargs)                   # removed by "the other process"
        return real(path, *args, **kwargs)            # -> FileNotFoundError here
    monkeypatch.setattr(os, "unlink", another_process_was_first)
    _files.remove_trash(tmp_path)
    monkeypatch.setattr(os, "unlink", real)
    assert not trash.exists()
    other = tmp_path / f"elsewhere{_files.TRASH_MARK}456-89abcdef"   # a sibling's trash
    own = tmp_path / f"store{_files.TRASH_MARK}789-01234567"
    store = tmp_path / "store"
    for d in (other, own, store):
        d.mkdir()
    (store / "1").mkdir()
    checkpoints.CheckpointStore(str(store), keep=1, fingerprint={"a": 1}, overwrite=True)
    assert other.exists() and not own.exists()


def test_a_folder_that_cannot_be_renamed_is_emptied_in_place(tmp_path, monkeypatch):
    """A mount point (EBUSY) or a folder on another device (EXDEV) cannot be renamed
    away; it is emptied where it is, as the old rmtree did."""
    import errno
    import os
    from hypuc_jax import _files
    folder = tmp_path / "checkpoints"
    (folder / "4").mkdir(parents=True)
    (folder / "4" / "state").write_text("x")

    def busy(src, dst):
        raise OSError(errno.EBUSY, "Device or resource busy", str(src))
    monkeypatch.setattr(os, "rename", busy)
    _files.remove_path(folder)
    assert folder.is_dir() and not any(folder.iterdir())
    monkeypatch.setattr(os, "rename", lambda s, d: (_ for _ in ()).throw(
        OSError(errno.EACCES, "Permission denied", str(s))))
    (folder / "x").mkdir()
    with pytest.raises(PermissionError):                 # other errors still surface
        _files.remove_path(folder)


def test_checkpoints_without_their_config_are_refused_before_anything_is_removed(tmp_path):
    """A --overwrite stopped between removing config.json and moving the checkpoints
    away left checkpoints of the old config only: check_trainable passed, train_stage
    removed the later stages, then the checkpoint store refused. Refused up front now."""
    from hypuc_jax import train
    cfg = config_lib.apply_overrides(config_lib.get_config("tiny"), ["train.parallel=none"])
    workdir = tmp_path / "run"
    train.train_and_evaluate(cfg, str(workdir), stop_after=6)
    (workdir / "config.json").unlink()
    before = sorted(p.name for p in workdir.iterdir())
    other = config_lib.apply_overrides(cfg, ["train.seed=7"])
    with pytest.raises(workflow.WorkflowError,
                       match=r"holds checkpoints of a different config \(train.seed: stored"):
        workflow.train_stage(other, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == before
    workflow.check_trainable(cfg, workdir)                   # its own config: resumable


def test_fitted_tail_flows_through_every_stage(rundir):
    """Student-t(4) residuals: the calibration picks a finite dof, and the
    calibrated and corrected blocks of eval.json score that predictive
    (checked against scipy.stats.t); the uncalibrated block stays Gaussian."""
    from scipy import stats

    rng = np.random.default_rng(3)
    for split in ("val", "test"):
        y = np.clip(rng.gamma(9.0, 0.47, 1200), 2.5, 8.0)
        mu = y + 0.2 * stats.t.rvs(4.0, size=y.size, random_state=rng)
        workflow.save_npz(rundir / f"predictions_{split}.npz", y=y, mu=mu, sigma=np.full(y.size, 0.1))
    cal = workflow.calibrate_stage(rundir, "hyperfine", "auto")
    assert cal["dof"] is not None and cal["dof"] <= 8 and len(cal["dof_search"]) == 11
    workflow.correct_stage(rundir)
    ev = workflow.evaluate_stage(rundir, "test")
    out = np.load(rundir / "outputs_test.npz")
    dof = float(out["dof"])
    assert dof == cal["dof"]
    assert ev["calibration"] == {"method": "hyperfine", "dof": dof}
    y, mu, s = out["y"], out["mu"], out["sigma_cal"] * np.sqrt((dof - 2) / dof)
    lo, hi = stats.t.interval(0.95, dof, mu, s)
    c = ev["calibrated"]["overall"]
    assert c["nll"] == pytest.approx(-np.mean(stats.t.logpdf(y, dof, mu, s)))
    assert c["coverage_95"] == pytest.approx(np.mean((y >= lo) & (y <= hi)))
    u = ev["uncalibrated"]["overall"]
    assert u["nll"] == pytest.approx(-np.mean(stats.norm.logpdf(y, mu, out["sigma"])))
    # The SPEC's Gaussian on the same predictions: same 95% intervals, worse UCE.
    gauss = workflow.calibrate_stage(rundir, "hyperfine", "gaussian")
    assert gauss["dof"] is None
    workflow.correct_stage(rundir)
    ev_g = workflow.evaluate_stage(rundir, "test")
    assert ev_g["calibrated"]["overall"]["coverage_95"] == pytest.approx(c["coverage_95"])
    assert c["uce"] < ev_g["calibrated"]["overall"]["uce"]


def test_dataset_cache_follows_the_file(tmp_path):
    """The train stage's dataset cache reloads a csv edited in place (new mtime/size)."""
    import os

    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,2\n3,4\n")
    cfg = workflow.make_config("tiny", data=f"csv:{path}", target="y")
    first = workflow._dataset(cfg)
    assert workflow._dataset(cfg) is first                      # unchanged file: kept
    np.testing.assert_array_equal(first.y, [2, 4])
    path.write_text("a,y\n1,20\n3,40\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(workflow._dataset(cfg).y, [20, 40])


def test_train_stage_reads_the_data_once(tmp_path, monkeypatch):
    """check_trainable's dataset is the one trained on: train_and_evaluate used to load
    (and finite-scan) the whole data set a second time."""
    from hypuc_jax import train_data

    calls = []
    real = train_data.load_dataset
    monkeypatch.setattr(train_data, "load_dataset", lambda cfg: calls.append(1) or real(cfg))
    cfg = workflow.make_config("tiny", overrides=[
        "data.spec=simulated:potassium?n=200&duration=2&rate=50&seed=31337",
        "train.steps=2", "train.parallel=none"])
    workflow.train_stage(cfg, tmp_path / "run")
    assert len(calls) == 1


def test_a_region_named_like_a_task_region_is_refused_before_training(tmp_path):
    """--region normal=0:100 used to replace the potassium task's clinical
    'normal' range [3.5, 5.5) in eval.json and the report, silently."""
    cfg = workflow.make_config("tiny", regions=["normal=0:100"], overrides=[
        "data.spec=simulated:potassium?n=200&duration=2&rate=50&seed=31337",
        "train.steps=2", "train.parallel=none"])
    with pytest.raises(ValueError, match=r"regions: 'normal' is already a region of the "
                                         r"'potassium' task \(\[3.5, 5.5\)\)"):
        workflow.train_stage(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_stored_config_whose_region_shadows_the_task_is_refused(rundir):
    cfg = config_lib.Config.from_dict(json.loads((rundir / workflow.CONFIG).read_text()))
    cfg = workflow.make_config(cfg, regions=["hypokalemia=0:9"])
    workflow.write_json(rundir / workflow.CONFIG, cfg.to_dict())
    workflow.calibrate_stage(rundir, "hyperfine")
    workflow.correct_stage(rundir)
    with pytest.raises(ValueError, match="regions: 'hypokalemia' is already a region of the "
                       r"'potassium' task \(\[-inf, 3.5\)\); name the extra region \(--region "
                       r"or the config's regions\) differently"):
        workflow.evaluate_stage(rundir, "test")
    assert not (rundir / workflow.EVAL).exists()


def test_small_validation_split_gets_a_hyperfine_error_naming_the_settings(rundir):
    """Three validation predictions cannot fill calibration.min_count=30: the error says
    so in the config's terms (global scaling still fits), and nothing is written."""
    rng = np.random.default_rng(1)
    y, mu, sigma = _split(rng, 3)
    workflow.save_npz(rundir / "predictions_val.npz", y=y, mu=mu, sigma=sigma)
    with pytest.raises(workflow.WorkflowError, match=r"3 validation predictions are too few "
                       r"for hyperfine calibration \(calibration.bins=5 and "
                       r"calibration.min_count=30 need 30\)"):
        workflow.calibrate_stage(rundir, "hyperfine")
    assert not (rundir / workflow.CALIBRATION).exists()
    d = workflow.calibrate_stage(rundir, "global")
    assert d["scale"] == pytest.approx(np.sqrt(np.mean(((y - mu) / sigma) ** 2)))


def test_calibration_quantile_flows_from_the_config(rundir):
    """calibration.quantile=conformal in the run config reaches the fitted factors:
    each bin's eta is the ceil((n + 1) xi)-th smallest score (numpy reference)."""
    from hypuc_jax import calibration

    cfg = workflow.load_config(rundir)
    cfg = config_lib.apply_overrides(cfg, ["calibration.quantile=conformal",
                                           "calibration.tail=gaussian"])
    workflow.write_json(rundir / workflow.CONFIG, cfg.to_dict())
    d = workflow.calibrate_stage(rundir, "hyperfine")
    assert d["quantile"] == "conformal"
    val = np.load(rundir / "predictions_val.npz")
    y, mu, sigma = val["y"], val["mu"], val["sigma"]
    s = np.sqrt(np.mean(((y - mu) / sigma) ** 2))
    ratio = np.abs(y - mu) / (stats.norm.ppf(0.975) * s * sigma)
    idx = np.searchsorted(d["edges"], mu, side="right")
    for b, eta in enumerate(d["etas"]):
        r = np.sort(ratio[idx == b])
        assert eta == pytest.approx(r[min(math.ceil((r.size + 1) * 0.95), r.size) - 1])
    assert calibration.calibrator_from_dict(d).quantile == "conformal"


def test_experiment_files_refuse_typos_and_name_themselves(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"description": "x", "preset": "tiny",
                                "overrides": ["train.steps=3"]}))
    assert workflow.make_config(str(good)).train.steps == 3
    for content, needle in (({"preset": "tiny", "overides": ["train.steps=3"]},
                             r"unknown keys \['overides'\]"),
                            ({"preset": "tinyy"}, "name: expected one of"),
                            ({"preset": "tiny", "overrides": ["train.stepz=3"]}, "train.stepz"),
                            ([1], "expected a JSON object")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(workflow.WorkflowError, match=needle) as e:
            workflow.make_config(str(bad))
        assert str(e.value).startswith(str(bad))
