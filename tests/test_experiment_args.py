"""The experiment scripts' argument checks that must run before any work, and the
one-line error of their command lines (experiments/_results.run_main)."""
import pytest

from experiment_scripts import load

_results = load("_results")


@pytest.mark.parametrize("name, argv, named", [
    ("decisions_study", ["--folds", "1"], "--folds 1: expected at least 2"),
    ("decisions_study", ["--repeats", "0"], "--repeats 0: expected at least 1"),
    ("calibration_bins", ["--runs", "r", "--bins", "5", "0"], "--bins 0: expected at least 1"),
    ("calibration_floor", ["--samples", "100", "--n-test", "200"], "--n-test 200: expected at most"),
    ("calibration_floor", ["--n-test", "0"], "--n-test 0: expected at least 1"),
    ("bayes_floor", ["--draws", "0"], "--draws 0: expected at least 1"),
    ("bayes_floor", ["--samples", "-1"], "--samples -1: expected at least 1"),
])
def test_bad_counts_are_refused_before_any_work(tmp_path, monkeypatch, capsys, name, argv, named):
    """Each was a traceback from numpy or scikit-learn, some only after the slow part."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        load(name).main([*argv, "--out", str(tmp_path / "o.md")])
    assert e.value.code == 2
    assert named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("mu"),
                                   FileNotFoundError("no file")])
def test_run_main_turns_an_input_error_into_one_line(capsys, error):
    def main():
        raise error
    with pytest.raises(SystemExit) as e:
        _results.run_main("script.py", main)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"script.py: error: {error}"


def test_run_main_exits_with_mains_status_and_lets_other_errors_through():
    with pytest.raises(SystemExit) as e:
        _results.run_main("script.py", lambda: 1)
    assert e.value.code == 1
    with pytest.raises(ZeroDivisionError):               # a bug stays a traceback
        _results.run_main("script.py", lambda: 1 / 0)
