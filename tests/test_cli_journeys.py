"""Command-line journeys on a user's own data that went wrong (found by review): one
clear line, nothing written or moved."""
import shutil

from cli_helpers import FAST, TINY, hypuc, one_line_error


def test_predict_refuses_task_options_it_would_ignore(trained, tmp_path, capsys):
    for opt in ("above=5", "below=3", "task=potassium", "cuts=4,5", "unit=mmol/L"):
        spec = TINY.replace("n=256", "n=8") + f"&{opt}"
        rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", spec,
                           "--output", tmp_path / "p.csv")
        line = one_line_error(rc, err)
        assert f"{opt.split('=')[0]}= describes a task" in line, line
        assert "trained run's thresholds" in line, line
    spec = TINY.replace("n=256", "n=8") + "&above=5&unit=mmol/L"
    rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data", spec,
                       "--output", tmp_path / "p.csv")
    assert "above=, unit= describe a task" in one_line_error(rc, err)
    assert not (tmp_path / "p.csv").exists()


def test_run_refuses_a_trained_run_directory(trained, tmp_path, capsys):
    wd = tmp_path / "copy"
    shutil.copytree(trained, wd)
    before = sorted(p.name for p in wd.iterdir())
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", wd, *FAST)
    assert "holds a trained run itself" in one_line_error(rc, err)
    assert sorted(p.name for p in wd.iterdir()) == before


def test_an_unfinished_training_is_named_as_such(trained, tmp_path, capsys):
    wd = tmp_path / "copy"
    shutil.copytree(trained, wd)
    (wd / "task.json").unlink()                  # written when training finishes
    rc, _, err = hypuc(capsys, "calibrate", "--workdir", wd)
    line = one_line_error(rc, err)
    assert "training has not finished (no task.json)" in line and "resume" in line
