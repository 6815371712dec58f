"""experiments/decisions_study.py: point-model predictions, the CV sd, a missing --workdir."""
import json

import numpy as np
import pytest

from experiment_scripts import load
from hypuc_jax._predictions import as_thresholds

study = load("decisions_study")


class _Scale:
    """A calibrator stand-in: sigma times a known factor."""

    def apply(self, mu, sigma):
        return 1.5 * np.asarray(sigma)


def test_a_point_model_uses_its_constant_sigma(tmp_path):
    rng = np.random.default_rng(0)
    y, mu = rng.uniform(3, 7, 50), rng.uniform(3, 7, 50)
    np.savez(tmp_path / "predictions_val.npz", y=y, mu=mu, sigma=np.full(50, np.nan))
    (tmp_path / "task.json").write_text(json.dumps({"name": "potassium", "constant_sigma": 0.4}))
    got_mu, got_sigma, got_y = study.load(tmp_path, "val", _Scale())
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_y, y)
    np.testing.assert_allclose(got_sigma, np.full(50, 1.5 * 0.4))


def test_cv_reports_the_sample_sd_over_repeats(monkeypatch):
    # Stub fits and scores; AUROC per repeat 0.7, 0.8, 0.9: sample sd 0.1 (ddof=1).
    monkeypatch.setattr(study, "fit_all", lambda *a, **k: None)
    monkeypatch.setattr(study, "scores", lambda fit, mu, sigma, specs, dof: {
        ("stub", None): {t.name: np.zeros(mu.size) for t in specs}})
    per_repeat = iter([0.7, 0.8, 0.9])
    monkeypatch.setattr(study, "roc_auc_score", lambda ev, s: next(per_repeat))
    specs = as_thresholds([("K>5.5", 5.5, "above")])
    y = np.linspace(3.0, 7.0, 40)
    cv = study.cross_validate(y, np.ones(40), y, specs, folds=2, repeats=3, seed=0)
    mean, sd = cv[(("stub", None), "K>5.5")]
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.1)


def test_a_missing_workdir_is_a_one_line_error(tmp_path, capsys):
    for workdir, message in ((tmp_path / "missing", "no such folder"),
                             (tmp_path, "no task.json")):
        with pytest.raises(SystemExit) as e:
            study.main(["--workdir", str(workdir)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and f"--workdir {workdir}: {message}" in err


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")  # tiny run
def test_main_records_its_command_and_sorts_undefined_cv_last(trained, tmp_path):
    out = tmp_path / "study.md"
    argv = ["--workdir", str(trained), "--folds", "2", "--repeats", "1", "--out", str(out)]
    study.main(argv)
    text = out.read_text()
    assert text.startswith(f"Command: `python experiments/decisions_study.py {' '.join(argv)}`")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    gaps = [float(line.split(" | ")[-1 - len(json.loads((trained / "task.json").read_text())
                                             ["thresholds"])].replace("+", ""))
            for line in rows]
    finite = [g for g in gaps if np.isfinite(g)]
    assert finite and finite == sorted(finite, reverse=True)
    assert all(np.isfinite(g) for g in gaps[:len(finite)])        # NaN rows, if any, last
