"""Bad input on the command line: usage errors, missing run directories,
unreadable data and config values, each one line and a non-zero exit
(``--debug``: the traceback)."""
import pathlib

import numpy as np
import pytest

from cli_helpers import TINY, hypuc, one_line_error
from hypuc_jax import cli, workflow


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--workdir", "x", "--data", TINY, "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err      # the subcommand's usage (hypuc --help lists no flags)
    assert err == ("hypuc train: error: unrecognized arguments: --bogus "
                   "(see `hypuc train --help`)\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--quick", "--region", "hi=5:6"])   # a train flag run lacks
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(
        "hypuc run: error: unrecognized arguments: --region hi=5:6")
    with pytest.raises(SystemExit) as e:
        cli.main(["--bogus", "train", "--workdir", "x", "--data", TINY])   # before it: top level
    assert e.value.code == 2
    assert capsys.readouterr().err == ("hypuc: error: unrecognized arguments: --bogus "
                                       "(see `hypuc --help`)\n")
    for argv, needle in ((["train", "--workdir", "x", "--data", TINY, "--loss", "foo"], "--loss"),
                         (["train", "--workdir", "x", "--data", TINY, "--epochs", "abc"],
                          "--epochs"),
                         (["evaluate", "--workdir", "x", "--split", "train"], "--split"),
                         (["train", "--workdir", "", "--data", TINY], "--workdir"),
                         (["predict", "--workdir", "x", "--data", TINY, "--output", ""],
                          "--output"),
                         (["run", "--quick", "--preset", "potassium"], "not allowed with")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        line = one_line_error(2, capsys.readouterr().err)    # no usage block
        assert needle in line and "--help" in line, line
    for flag, value in (("--method", "magic"), ("--tail", "cauchy")):
        with pytest.raises(SystemExit) as e:
            cli.main(["calibrate", "--workdir", "x", flag, value])
        line = one_line_error(e.value.code, capsys.readouterr().err)
        assert e.value.code == 2 and f"argument {flag}" in line and repr(value) in line, line


def test_version_is_the_installed_distributions(capsys):
    """`hypuc --version` and `python -m hypuc_jax --version` print the version the
    package metadata holds (pyproject reads it from hypuc_jax.__version__)."""
    import importlib.metadata
    import subprocess
    import sys
    want = f"hypuc {importlib.metadata.version('hypuc_jax')}"
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == want
    proc = subprocess.run([sys.executable, "-m", "hypuc_jax", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == want, proc.stderr[-300:]


@pytest.mark.parametrize("command", ["run", "train", "calibrate", "correct", "evaluate",
                                     "predict"])
def test_help_documents_every_flag(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = cli._parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, action.option_strings


@pytest.mark.parametrize("command", ["calibrate", "correct", "evaluate"])
def test_commands_need_a_trained_workdir(command, tmp_path, capsys):
    rc, _, err = hypuc(capsys, command, "--workdir", tmp_path)
    assert "no trained model" in one_line_error(rc, err)
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_points_to_its_arms(quick_run, tmp_path, capsys):
    """`hypuc run`'s DIR holds the runs DIR/baseline and DIR/hypuc; the later commands
    given DIR itself name them instead of asking to train."""
    for argv in (["evaluate"], ["predict", "--data", TINY, "--output", tmp_path / "p.csv"]):
        rc, _, err = hypuc(capsys, argv[0], "--workdir", quick_run, *argv[1:])
        line = one_line_error(rc, err)
        assert "holds the runs baseline, hypuc" in line and str(quick_run / "hypuc") in line
        assert "hypuc train" not in line, line
    assert not (tmp_path / "p.csv").exists() and not (quick_run / "eval.json").exists()
    # train into it would put a run next to (and in front of) its arms
    before = sorted(p.name for p in quick_run.iterdir())
    rc, _, err = hypuc(capsys, "train", "--workdir", quick_run, "--data", TINY)
    assert "holds the runs baseline, hypuc; train into another" in one_line_error(rc, err)
    assert sorted(p.name for p in quick_run.iterdir()) == before


def test_unreadable_entries_do_not_hide_the_no_model_message(tmp_path, monkeypatch):
    """A root-owned lost+found in --workdir made the sub-run scan raise PermissionError."""
    from hypuc_jax import rundir
    (tmp_path / "lost+found").mkdir()
    real = pathlib.Path.is_file

    def is_file(self):
        if "lost+found" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(pathlib.Path, "is_file", is_file)
    assert rundir.sub_runs(tmp_path) == [] and rundir.sub_runs(tmp_path / "missing") == []
    with pytest.raises(rundir.WorkflowError, match="no trained model found"):
        rundir.load_config(tmp_path)


def test_predict_needs_a_trained_workdir(tmp_path, capsys):
    rc, _, err = hypuc(capsys, "predict", "--workdir", tmp_path / "w", "--data", TINY,
                        "--output", tmp_path / "p.csv")
    assert "no trained model" in one_line_error(rc, err)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_data_spec(tmp_path, capsys):
    wd = tmp_path / "w"
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data",
                        f"csv:{tmp_path / 'missing.csv'}", "--preset", "tiny")
    assert "missing.csv" in one_line_error(rc, err)
    assert not (wd / workflow.TASK).exists() and not (wd / "eval.json").exists()


def test_missing_target_column(tmp_path, capsys):
    data = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,y"] + [f"{x:.3f},{z:.3f},{x + z:.3f}" for x, z in rng.normal(size=(60, 2))]
    data.write_text("\n".join(rows) + "\n")
    wd = tmp_path / "w"
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", f"csv:{data}",
                        "--target", "nope", "--preset", "tiny")
    assert "nope" in one_line_error(rc, err)
    assert not (wd / workflow.TASK).exists()


@pytest.mark.parametrize("argv,needle", [
    (["--set", "train.nope=1"], "train.nope"),
    (["--set", "train.lr=-1"], "train.lr"),
    (["--region", "hyper"], "--region"),
    (["--batch-size", "30", "--parallel", "sharding"], "train.batch_size"),
])
def test_bad_config_values(tmp_path, capsys, argv, needle):
    wd = tmp_path / "w"
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", TINY, "--preset", "tiny",
                        *argv)
    assert needle in one_line_error(rc, err)
    assert not wd.exists() or not (wd / workflow.TASK).exists()


@pytest.mark.parametrize("bad, key", [("calibration.xi=1e-300", "calibration.xi"),
                                      ("train.eval_batch_size=100000000000000000000",
                                       "train.eval_batch_size"),
                                      ("corrections.learning_rate=10",
                                       "corrections.learning_rate")])
def test_a_value_that_would_fail_after_training_leaves_a_finished_run_intact(
        quick_run, tmp_path, capsys, bad, key):
    """These validated, so a re-run resumed the finished arms, removed the report,
    figures, calibrations and evaluations, and only then failed (xi: in calibrate,
    with a false message; the eval batch: allocating it; the learning rate: no
    error at all, corrected values of 1e39). They are refused by name up front."""
    import shutil
    from cli_helpers import FAST
    wd = tmp_path / "main"
    shutil.copytree(quick_run, wd)
    before = {p.relative_to(wd): p.read_bytes() for p in sorted(wd.rglob("*")) if p.is_file()}
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", wd, "--set", "train.parallel=none",
                       "--set", "regions=[['hyper', 5.5, 7.5]]", *FAST, "--set", bad)
    assert key in one_line_error(rc, err)
    after = {p.relative_to(wd): p.read_bytes() for p in sorted(wd.rglob("*")) if p.is_file()}
    assert after == before


def test_a_folder_that_is_not_a_run_keeps_its_files(tmp_path, capsys):
    """train / run into a user's folder refuse to replace files named like their
    outputs (they deleted report.md, figures/, eval.json and tb/ silently)."""
    wd = tmp_path / "mine"
    (wd / "tb").mkdir(parents=True)
    (wd / "tb" / "my.log").write_text("log")
    (wd / "eval.json").write_text("{}")
    (wd / "notes.txt").write_text("notes")
    (wd / "checkpoints").mkdir()           # named like a run's, but no checkpoint store
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", TINY, "--preset", "tiny")
    line = one_line_error(rc, err)
    assert "eval.json, tb" in line and "--overwrite" in line, line
    assert sorted(p.name for p in wd.iterdir()) == ["checkpoints", "eval.json", "notes.txt", "tb"]
    assert (wd / "tb" / "my.log").read_text() == "log"
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", TINY, "--preset", "tiny",
                       "--overwrite")
    assert rc == 0, err
    assert (wd / "notes.txt").read_text() == "notes" and not (wd / "eval.json").exists()
    assert not (wd / "tb" / "my.log").exists() and (wd / workflow.CONFIG).exists()

    rd = tmp_path / "report_dir"
    (rd / "figures").mkdir(parents=True)
    (rd / "figures" / "fig1.png").write_bytes(b"png")
    (rd / "report.md").write_text("my report")
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", rd)
    line = one_line_error(rc, err)
    assert "report.md, figures" in line and "--overwrite" in line, line
    assert sorted(p.name for p in rd.iterdir()) == ["figures", "report.md"]
    assert (rd / "figures" / "fig1.png").read_bytes() == b"png"
    assert (rd / "report.md").read_text() == "my report"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(workflow.WorkflowError):
        cli.main(["calibrate", "--workdir", str(tmp_path), "--debug"])
    with pytest.raises(workflow.WorkflowError):              # before the command too
        cli.main(["--debug", "calibrate", "--workdir", str(tmp_path)])
