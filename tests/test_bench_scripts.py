"""experiments/bench_pipeline.py, bench_simulator.py: --out records the command as run and is
checked before the benchmark (the timings themselves are stubbed)."""
import numpy as np
import pytest

from experiment_scripts import load

bench_pipeline = load("bench_pipeline")
bench_simulator = load("bench_simulator")


def _stub_simulator(monkeypatch):
    monkeypatch.setattr(bench_simulator, "bench_ours", lambda n, rate, repeats: (100.0, 50.0))
    monkeypatch.setattr(bench_simulator, "bench_neurokit", lambda n, rate: None)


def _stub_pipeline(monkeypatch):
    def simulate(seed, n, rate, duration):
        rng = np.random.default_rng(seed)
        return rng.normal(size=(n, 20, 12)).astype(np.float32), rng.uniform(3, 7, n)
    monkeypatch.setattr(bench_pipeline.data, "simulate", simulate)
    monkeypatch.setattr(bench_pipeline, "rate_of", lambda make_iter, n, repeats: 10.0)


@pytest.mark.parametrize("name", ["bench_pipeline", "bench_simulator"])
def test_out_records_the_command_as_run_in_a_new_folder(name, tmp_path, monkeypatch):
    module = {"bench_pipeline": bench_pipeline, "bench_simulator": bench_simulator}[name]
    (_stub_pipeline if name == "bench_pipeline" else _stub_simulator)(monkeypatch)
    out = tmp_path / "new" / "bench.md"
    argv = ["--repeats", "1", "--out", str(out)]
    module.main(argv)
    lines = out.read_text().splitlines()
    assert lines[:3] == [f"# {name}", "", f"`python experiments/{name}.py --repeats 1 --out {out}`"]


@pytest.mark.parametrize("name", ["bench_pipeline", "bench_simulator"])
def test_an_unusable_out_fails_before_the_benchmark(name, tmp_path, monkeypatch, capsys):
    module = {"bench_pipeline": bench_pipeline, "bench_simulator": bench_simulator}[name]

    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark ran before --out was checked")
    if name == "bench_simulator":
        monkeypatch.setattr(module, "bench_ours", refuse)
    else:
        monkeypatch.setattr(module.data, "simulate", refuse)
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "x.md", tmp_path):       # parent is a file; a folder
        with pytest.raises(SystemExit) as e:
            module.main(["--out", str(out)])
        assert e.value.code == 2 and f"--out {out}:" in capsys.readouterr().err
