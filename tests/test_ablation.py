"""experiments/ablation.py: the mean ± sd tables against numpy, and which finished runs
it may reuse (a run of another config must never be reported under a new command)."""
import csv

import numpy as np
import pytest

from experiment_scripts import load
from hypuc_jax import workflow

ablation = load("ablation")

FAST = ["--config", "tiny", "--set", "train.steps=4", "--set", "corrections.n_estimators=5",
        "--set", "train.parallel=none"]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_statistics_match_numpy():
    rows = [{"variant": "a", "seed": 0, "mae": 1.0, "mae[r]": 0.5},
            {"variant": "a", "seed": 1, "mae": 2.0, "mae[r]": None},
            {"variant": "a", "seed": 2, "mae": 4.0, "mae[r]": None},
            {"variant": "b", "seed": 0, "mae": 3.0, "mae[r]": 1.0}]
    cols, summary = ablation.summarize(rows)
    a, b = summary
    assert a["mae"] == pytest.approx((np.mean([1, 2, 4]), np.std([1, 2, 4], ddof=1)))
    assert a["mae[r]"][0] == 0.5 and np.isnan(a["mae[r]"][1])   # sd of one value: undefined
    table = ablation.markdown(cols, summary)
    assert "| a | 3 | 2.333 ± 1.528 | 0.500 ± — (n=1) |" in table
    assert "| b | 1 | 3.000 ± — | 1.000 ± — |" in table


def test_runs_tables_and_reuse(tmp_path, capsys):
    root, out = tmp_path / "wd", tmp_path / "out" / "abl"
    argv = [*FAST, "--seeds", "0", "1", "1", "--variants", "none", "hypuc-0.5",
            "--workdir", str(root), "--out", str(out)]
    assert ablation.main(argv) == 0
    assert sorted(p.name for p in (root / "none").iterdir()) == ["seed0", "seed1"]  # 1 once
    runs = _read_csv(str(out) + "_runs.csv")
    summary = {r["variant"]: r for r in _read_csv(out.with_suffix(".csv"))}
    for variant in ("none", "hypuc-0.5"):
        maes = [float(r["mae"]) for r in runs if r["variant"] == variant]
        assert len(maes) == 2
        for r in (r for r in runs if r["variant"] == variant):   # each run's own predictions
            p = np.load(root / variant / f"seed{r['seed']}" / "predictions_test.npz")
            assert float(r["mae"]) == pytest.approx(np.mean(np.abs(p["y"] - p["mu"])), rel=1e-6)
            assert float(r["rmse"]) == pytest.approx(np.sqrt(np.mean((p["y"] - p["mu"]) ** 2)),
                                                     rel=1e-6)
        assert float(summary[variant]["mae_mean"]) == pytest.approx(np.mean(maes))
        assert float(summary[variant]["mae_sd"]) == pytest.approx(np.std(maes, ddof=1))
        assert summary[variant]["mae_n"] == "2"                # seeds with a value
    caches = sorted(p.name for p in root.glob("*.npz"))
    assert len(caches) == 1 and caches[0].startswith("potassium-")

    # A changed training setting is another experiment: refused, nothing rewritten.
    before = (root / "none" / "seed0" / workflow.EVAL).read_bytes()
    with pytest.raises(workflow.WorkflowError, match=r"another config .*'train'"):
        ablation.main([*argv, "--set", "train.lr=0.01"])
    # A changed calibration needs --recalibrate, which then applies it.
    with pytest.raises(workflow.WorkflowError, match=r"--recalibrate"):
        ablation.main([*argv, "--set", "calibration.bins=2"])
    assert (root / "none" / "seed0" / workflow.EVAL).read_bytes() == before
    assert ablation.main([*argv, "--set", "calibration.bins=2", "--recalibrate"]) == 0
    assert workflow.load_config(root / "none" / "seed0").calibration.bins == 2
    # Other simulated data (n) get their own cache file, not the first one.
    other = [*FAST, "--seeds", "0", "--variants", "none",
             "--set", "data.spec=simulated:potassium?n=300&duration=2&rate=50",
             "--workdir", str(tmp_path / "wd2"), "--out", str(tmp_path / "abl2")]
    assert ablation.main(other) == 0
    ev = workflow.read_json(tmp_path / "wd2" / "none" / "seed0" / workflow.EVAL, "eval")
    assert ev["n"] == 60                                       # 20% of 300 records
    # An evaluation of the validation split is never read as the test one.
    workflow.write_json(root / "none" / "seed0" / workflow.EVAL, {**workflow.read_json(
        root / "none" / "seed0" / workflow.EVAL, "eval"), "split": "val"})
    with pytest.raises(workflow.WorkflowError, match="expected the test split"):
        ablation.main([*argv, "--set", "calibration.bins=2"])
    capsys.readouterr()


def test_a_bad_variant_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablation.main([*FAST, "--seeds", "0", "--variants", "none", "hypuc-O.5",
                       "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "hypuc-O.5" in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("change, named", [
    ({"--out": "."}, "--out"),                              # a folder: OUT.md had no name
    ({"--out": "blocker/x"}, "--out"),                      # its folder is a file
    ({"--workdir": "blocker"}, "--workdir"),
    ({"--seeds": "-1"}, "seed -1: train.seed"),
    ({"--split-per-seed": None, "--seeds": "-1"}, "seed -1: data.seed"),
    ({"--set": "data.spec=npz:missing.npz"}, "missing.npz: file not found"),
    ({"--set": "data.spec=simulated:potassium?n=abc"}, "data.spec simulated:potassium?n=abc"),
])
def test_bad_arguments_are_refused_before_any_run(tmp_path, monkeypatch, capsys, change, named):
    """Found only after every run (--out), or as a traceback once runs had trained
    (seeds, data): now one error naming the argument, before anything is trained."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file")
    opts = {"--seeds": "0", "--workdir": "wd", "--out": "o", **change}
    argv = [*FAST, "--variants", "none"]
    for flag, value in opts.items():
        argv += [flag] if value is None else [flag, value]
    monkeypatch.setattr(ablation, "run_variant", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        ablation.main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()


def test_the_command_line_reports_a_refused_run_in_one_line(tmp_path):
    """A ValueError out of main() (here the WorkflowError for a finished-looking run
    directory without its config) is one error line and exit status 2, no traceback."""
    import subprocess
    import sys
    from pathlib import Path
    run = tmp_path / "wd" / "none" / "seed0"
    run.mkdir(parents=True)
    (run / workflow.EVAL).write_text("{}")
    script = Path(ablation.__file__)
    proc = subprocess.run([sys.executable, str(script), *FAST, "--no-cache", "--seeds", "0",
                           "--variants", "none", "--workdir", str(tmp_path / "wd"),
                           "--out", str(tmp_path / "o")],
                          cwd=script.parent.parent, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablation.py: error: ") and str(run) in lines[0]
    assert not (tmp_path / "o.md").exists()


def test_a_failed_recalibration_leaves_no_result_to_reuse(tmp_path, capsys):
    root = tmp_path / "wd"
    argv = [*FAST, "--seeds", "0", "--variants", "none", "--workdir", str(root),
            "--out", str(tmp_path / "abl")]
    assert ablation.main(argv) == 0
    with pytest.raises(workflow.WorkflowError, match="too few"):
        ablation.main([*argv, "--set", "calibration.min_count=100000", "--recalibrate"])
    assert not (root / "none" / "seed0" / workflow.EVAL).exists()   # nothing to mistake
    capsys.readouterr()


def test_a_finished_run_without_a_data_stamp_is_not_reused(tmp_path, capsys):
    """Runs from before data stamps were reused on other data without notice: the
    cache file's name hides n=, so n=300 returned the n=256 table, exit 0."""
    from hypuc_jax.checkpoints import DATA_STAMP_FILE
    root = tmp_path / "wd"
    argv = [*FAST, "--seeds", "0", "--variants", "none", "--workdir", str(root),
            "--out", str(tmp_path / "abl")]
    assert ablation.main(argv) == 0
    (root / "none" / "seed0" / "checkpoints" / DATA_STAMP_FILE).unlink()
    before = (root / "none" / "seed0" / workflow.EVAL).read_bytes()
    with pytest.raises(workflow.WorkflowError, match="without a record of its training data"):
        ablation.main([*argv, "--set", "data.spec=simulated:potassium?n=300&duration=2&rate=50"])
    assert (root / "none" / "seed0" / workflow.EVAL).read_bytes() == before
    capsys.readouterr()


@pytest.mark.parametrize("extra, owner", [
    (["--set", "train.seed=3"], "--seeds"),
    (["--set", "weighting.lam=1.0"], "hypuc-0.5"),
    (["--set", "weighting.bandwidth=0.1"], "--bandwidths"),
    (["--split-per-seed", "--set", "data.seed=1"], "--split-per-seed"),
])
def test_a_set_of_a_key_the_ablation_sets_per_run_is_refused(tmp_path, capsys, extra, owner):
    # these --set values used to be silently replaced by (or to replace) the per-run value
    with pytest.raises(SystemExit) as e:
        ablation.main([*FAST, "--seeds", "0", "--variants", "none", "hypuc-0.5", *extra,
                       "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and owner in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()


def test_variants_train_the_loss_given_with_set(tmp_path, capsys):
    # --set loss.name=laplace used to be overridden by the variants' loss.name=nll
    wd = tmp_path / "wd"
    ablation.main([*FAST, "--seeds", "0", "--variants", "none", "hypuc-0.5",
                   "--set", "loss.name=laplace", "--workdir", str(wd), "--out", str(tmp_path / "o")])
    for variant in ("none", "hypuc-0.5"):
        cfg = workflow.load_config(wd / variant / "seed0")
        assert cfg.loss.name == "laplace"
    assert workflow.load_config(wd / "hypuc-0.5" / "seed0").weighting.scheme == "hypuc"
    with pytest.raises(SystemExit) as e:      # bmc replaces the loss: a --set of it conflicts
        ablation.main([*FAST, "--seeds", "0", "--variants", "bmc", "--set", "loss.name=laplace",
                       "--workdir", str(tmp_path / "wd2"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "loss.name" in err and "variant 'bmc'" in err, err
    assert not (tmp_path / "wd2").exists()


def test_reuse_checks_data_and_code_and_keeps_the_specs_thresholds(tmp_path, monkeypatch):
    """Found by review: finished runs on another npz of the same file name were reused,
    the simulated cache dropped above=/cuts=, repeated variants doubled the seed
    count, and an --out with a dot wrote beside its name."""
    from hypuc_jax import data
    from hypuc_jax.config import get_config
    spec = get_config("tiny").data.spec
    for name, seed in (("a", 0), ("b", 1)):
        ds = data.load(spec + f"&seed={seed}")
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "k.npz", x=np.asarray(ds.x), y=ds.y)
    base = [*FAST, "--seeds", "0", "--workdir", str(tmp_path / "wd")]
    npz = "data.spec=npz:{}?task=potassium&rate=50"
    assert ablation.main([*base, "--variants", "none", "--set", npz.format(tmp_path / "a" / "k.npz"),
                          "--out", str(tmp_path / "oa")]) == 0
    with pytest.raises(workflow.WorkflowError, match="trained on other data"):
        ablation.main([*base, "--variants", "none", "--set",
                       npz.format(tmp_path / "b" / "k.npz"), "--out", str(tmp_path / "ob")])
    # the simulated cache keeps the spec's extra thresholds and cut regions
    sim = [*FAST, "--seeds", "0", "--workdir", str(tmp_path / "wd2"),
           "--set", f"data.spec={spec}&above=5&cuts=4,5"]
    assert ablation.main([*sim, "--variants", "none", "none", "--out",
                          str(tmp_path / "res" / "abl_lam0.5")]) == 0
    task = workflow.load_task(tmp_path / "wd2" / "none" / "seed0")
    assert [t[1] for t in task.thresholds][-1] == 5.0 and "4-5" in task.regions
    md = (tmp_path / "res" / "abl_lam0.5.md").read_text()      # not abl_lam0.md
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [
        "abl_lam0.5.csv", "abl_lam0.5.md", "abl_lam0.5_runs.csv"]
    assert "| none | 1 |" in md                                 # one run, not two
    assert f"Code: hypuc_jax source `{ablation.code_stamp()}`." in md
    # a run trained by other code is reused, and the table says so
    stamp = tmp_path / "wd2" / "none" / "seed0" / ablation.STAMP_FILE
    stamp.write_text("0123456789ab\n")
    assert ablation.main([*sim, "--variants", "none", "--out", str(tmp_path / "o3")]) == 0
    assert ("**1 of 1 runs were trained by other code** (none/seed0: 0123456789ab)"
            in (tmp_path / "o3.md").read_text())
    # the recorded command is quoted: the spec's & survives a shell
    assert "'data.spec=" in md


def test_a_new_simulator_stamp_does_not_block_reuse_and_resumed_training_is_marked(
        tmp_path, monkeypatch):
    """The simulated cache's name hashes the simulator's source, so a comment there
    renamed it and every finished run counted as another config; and a run resumed from
    another code's checkpoints was stamped as the current code's."""
    runs = load("_ablation_runs")
    argv = [*FAST, "--seeds", "0", "--variants", "none", "--workdir", str(tmp_path / "wd")]
    assert ablation.main([*argv, "--out", str(tmp_path / "o1")]) == 0
    original = runs.SIMULATOR_CODE
    monkeypatch.setattr(runs, "SIMULATOR_CODE", ("data/tasks.py",))   # another cache name
    assert ablation.main([*argv, "--recalibrate", "--out", str(tmp_path / "o2")]) == 0
    assert len(list((tmp_path / "wd").glob("*.npz"))) == 2
    monkeypatch.setattr(runs, "SIMULATOR_CODE", original)
    # training resumed (eval.json gone, checkpoints kept) under other code: both stamps
    seed0 = tmp_path / "wd" / "none" / "seed0"
    old = (seed0 / runs.STAMP_FILE).read_text().strip()
    (seed0 / workflow.EVAL).unlink()
    real = runs.code_stamp                  # the package changed, the simulator did not
    other = lambda files=None: real(files) if files is not None else "fedcba987654"
    monkeypatch.setattr(runs, "code_stamp", other)
    monkeypatch.setattr(ablation, "code_stamp", other)
    assert ablation.main([*argv, "--out", str(tmp_path / "o3")]) == 0
    assert (seed0 / runs.STAMP_FILE).read_text().strip() == f"{old}+fedcba987654"
    assert "**1 of 1 runs were trained by other code**" in (tmp_path / "o3.md").read_text()


def test_a_diverged_run_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "wd", tmp_path / "abl"
    argv = [*FAST, "--seeds", "0", "1", "--variants", "none", "--workdir", str(root),
            "--out", str(out)]
    # Every run diverges (a learning rate of 1e9, no clipping): no table, exit 1.
    bad = ["--set", "train.lr=1e9", "--set", "train.grad_clip=0"]
    assert ablation.main([*argv, *bad]) == 1
    assert "every run failed" in capsys.readouterr().err
    assert not out.with_suffix(".md").exists()
    # The unfinished runs of that config are not resumed under another one, and the
    # hint names what the ablation offers (it has no --overwrite).
    with pytest.raises(workflow.WorkflowError, match=r"unfinished run of another config "
                       r"\(train\.(lr|grad_clip).*delete that folder"):
        ablation.main(argv)
    # A setting the resume does not compare (logging) resumes them: they fail again.
    assert ablation.main([*argv, *bad, "--set", "train.log_every=2"]) == 1
    # One failed seed (seed 0 raises as a diverged training does) leaves the other's
    # row, a table of one seed, the failure named in it, and exit status 1.
    real = ablation.run_variant

    def run_variant(config, variant, seed, workdir, *args, **kwargs):
        if seed == 0:
            raise FloatingPointError("validation predictions are not finite\nmore")
        return real(config, variant, seed, workdir, *args, **kwargs)

    monkeypatch.setattr(ablation, "run_variant", run_variant)
    assert ablation.main([*argv[:-4], "--workdir", str(tmp_path / "wd2"), "--out", str(out)]) == 1
    runs = _read_csv(str(out) + "_runs.csv")
    assert [r["seed"] for r in runs] == ["1"]
    assert _read_csv(out.with_suffix(".csv"))[0]["n_seeds"] == "1"
    md = out.with_suffix(".md").read_text()
    assert ("**1 of 2 runs failed**" in md
            and "none/seed0: validation predictions are not finite" in md)
    capsys.readouterr()


def test_bold_and_selection_compare_means_over_the_same_seeds(tmp_path, monkeypatch, capsys):
    """A variant with a failed run was compared on the mean of its other seeds
    (other splits under --split-per-seed): it could be bold, and selected."""
    rows = [{"variant": "a", "seed": 0, "mae": 1.0}, {"variant": "a", "seed": 1, "mae": 3.0},
            {"variant": "b", "seed": 0, "mae": 1.5}]          # b's seed 1 failed
    cols, summary = ablation.summarize(rows)
    assert ablation.best_per_column(cols, summary) == {"mae": "a"}   # 2.0 vs 1.5 over 1 seed
    assert "| b | 1 | 1.500 ± — |" in ablation.markdown(cols, summary)

    real_run, real_score = ablation.run_variant, ablation.val_score

    def run_variant(config, variant, seed, workdir, *args, **kwargs):
        if variant == "hypuc-0.5" and seed == 1:
            raise FloatingPointError("non-finite loss")
        return real_run(config, variant, seed, workdir, *args, **kwargs)

    def val_score(wd):                    # hypuc-0.5 would win on the seed it finished
        score = real_score(wd)
        return {**score, "balanced_mae": 0.01 if "hypuc-0.5" in str(wd) else 1.0}

    monkeypatch.setattr(ablation, "run_variant", run_variant)
    monkeypatch.setattr(ablation, "val_score", val_score)
    out = tmp_path / "abl"
    assert ablation.main([*FAST, "--seeds", "0", "1", "--variants", "hypuc-0.5", "hypuc-1.0",
                          "--workdir", str(tmp_path / "wd"), "--out", str(out)]) == 1
    md = out.with_suffix(".md").read_text()
    assert "| hypuc-0.5 (not compared) | 1 | 0.0100 ± nan | " in md
    assert "| hypuc-1.0 (selected) | 2 | 1.0000 ± 0.0000 | " in md
    assert "Selected: **hypuc-1.0**." in md
    capsys.readouterr()


def test_selection_keeps_to_the_overall_mae_allowance(tmp_path, monkeypatch, capsys):
    """lam is chosen on validation balanced MAE among the hypuc variants whose
    validation MAE is within --mae-allowance of the unweighted variant's; the
    unconstrained choice is named when it differs. Scores stubbed per variant."""
    real_score = ablation.val_score
    scores = {"none": (0.50, 1.00), "hypuc-0.5": (0.40, 1.04), "hypuc-1.0": (0.30, 1.20)}

    def val_score(wd):
        bal, mae = next(v for k, v in scores.items() if f"/{k}/" in str(wd))
        return {**real_score(wd), "balanced_mae": bal, "mae": mae}

    monkeypatch.setattr(ablation, "val_score", val_score)
    argv = [*FAST, "--seeds", "0", "--variants", "none", "hypuc-0.5", "hypuc-1.0",
            "--workdir", str(tmp_path / "wd")]
    assert ablation.main([*argv, "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a.md").read_text()
    assert "| hypuc-0.5 (selected) | 1 | 0.4000 ± nan | 1.0400 ± nan | +4.0% |" in md
    assert "| hypuc-1.0 (over the allowance) | 1 | 0.3000 ± nan | 1.2000 ± nan | +20.0% |" in md
    assert ("Selected: **hypuc-0.5**. Without the overall-MAE allowance the lowest balanced "
            "MAE is hypuc-1.0's (0.3000 vs 0.4000).") in md
    assert ablation.main([*argv, "--out", str(tmp_path / "b"), "--mae-allowance", "-1"]) == 0
    md = (tmp_path / "b.md").read_text()
    assert "Selected: **hypuc-1.0**." in md and "| hypuc-1.0 (selected) | 1 |" in md
    assert ablation.main([*argv, "--out", str(tmp_path / "c"), "--mae-allowance", "0.01"]) == 0
    assert "No variant selected" in (tmp_path / "c.md").read_text()
    with pytest.raises(SystemExit):
        ablation.main([*argv, "--out", str(tmp_path / "d"), "--mae-allowance", "nan"])
    # The unweighted variant failing every seed: the bound is said not to apply.
    real_run = ablation.run_variant

    def run_variant(config, variant, seed, workdir, *args, **kwargs):
        if variant == "none":
            raise FloatingPointError("non-finite loss")
        return real_run(config, variant, seed, workdir, *args, **kwargs)

    monkeypatch.setattr(ablation, "run_variant", run_variant)
    assert ablation.main([*FAST, "--seeds", "0", "--variants", "none", "hypuc-0.5", "hypuc-1.0",
                          "--workdir", str(tmp_path / "wd2"), "--out", str(tmp_path / "e")]) == 1
    md = (tmp_path / "e.md").read_text()
    assert ("the overall-MAE allowance could not be applied: the unweighted variant has no "
            "validation score") in md and "Selected: **hypuc-1.0**." in md
    capsys.readouterr()
