"""experiments/bench_*.py: --out records the command as run and is checked before the
benchmark (the pipeline, simulator and train-step timings are stubbed; bench_kde runs for
real at its smallest size), the simulator's table gives both speed-ups, and the train-step
benchmark's PyTorch side does the JAX step's work."""
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


def test_bench_kde_smallest_run_measures_both_sides_and_checks_accuracy(tmp_path):
    # The real measurement at n = 1e3 (a few seconds): every row's ratio is its time over
    # KDEpy's, and each side's accuracy is scored against the float64 exact sum.
    pytest.importorskip("KDEpy")
    bench_kde = load("bench_kde")
    out = tmp_path / "new" / "kde.md"
    argv = ["--sizes", "1e3", "--peers", "hypuc_binned,hypuc_weights,kdepy_fft", "--repeats", "1",
            "--ref-points", "200", "--out", str(out)]
    bench_kde.main(argv)
    lines = out.read_text().splitlines()
    assert lines[0] == f"Command: `python experiments/bench_kde.py {' '.join(argv)}`"
    rows = {r[1]: r for r in ([c.strip() for c in line.strip("|").split("|")]
                              for line in lines[4:])}
    assert set(rows) == {bench_kde.LABELS[p] for p in ("hypuc_binned", "hypuc_weights",
                                                        "kdepy_fft")}

    def ms(cell):
        value, unit = cell.split()
        return float(value) * (1e3 if unit == "s" else 1.0)

    def consistent(ratio, t, ref):
        """ratio = t / ref for times shown to 0.1 ms: within what that rounding allows."""
        if ref < 0.3:                                # too few digits to tell
            return True
        return (t - 0.05) / (ref + 0.05) * 0.99 <= ratio <= (t + 0.05) / (ref - 0.05) * 1.01

    kdepy = rows[bench_kde.LABELS["kdepy_fft"]]
    for r in rows.values():
        assert consistent(float(r[3]), ms(r[2]), ms(kdepy[2]))        # wall time
        assert consistent(float(r[5]), ms(r[4]), ms(kdepy[4]))        # CPU time
        assert float(r[9]) < 1e-3                    # binned and FFT densities, and weights
    assert float(kdepy[3]) == float(kdepy[5]) == 1.0


def test_bench_kde_refuses_unknown_peers_and_bad_out_before_measuring(tmp_path, capsys):
    bench_kde = load("bench_kde")
    for argv, msg in ((["--peers", "hypuc_binned,foo"], "--peers: unknown ['foo']"),
                      (["--peers", "hypuc_binned", "--out", str(tmp_path)], "is a folder"),
                      # a folder that exists but takes no files (found after the whole run)
                      (["--peers", "hypuc_binned", "--out", "/proc/kde.md"], "cannot write in")):
        with pytest.raises(SystemExit):
            bench_kde.main(argv)
        assert msg in capsys.readouterr().err


def test_bench_train_step_out_records_the_command_and_is_checked_first(tmp_path, monkeypatch,
                                                                        capsys):
    bench_train_step = load("bench_train_step")
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise AssertionError("benchmark ran before --out was checked")

    monkeypatch.setattr(bench_train_step, "bench_jax", refuse)
    with pytest.raises(SystemExit):
        bench_train_step.main(["--out", str(tmp_path)])               # a folder
    assert "is a folder" in capsys.readouterr().err and not calls
    # stubbed timings: the table, its ratio, and the command as run
    monkeypatch.setattr(bench_train_step, "bench_jax", lambda c, b, s, r: (800.0, 0.08, 16e9, None))
    monkeypatch.setattr(bench_train_step, "bench_torch",
                        lambda c, b, g, s, r: (1000.0, 0.064, 1e-7, "2.13.0", 2))
    monkeypatch.setattr(bench_train_step, "bench_input", lambda rng, r: 850.0)
    monkeypatch.setattr(bench_train_step.jax, "default_backend", lambda: "cpu")
    out = tmp_path / "new" / "step.md"
    bench_train_step.main(["--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert text.startswith(f"Command: `python experiments/bench_train_step.py --repeats 1 "
                           f"--out {out}`")
    assert "JAX / PyTorch throughput: 0.80x" in text and "-> 68.0x" in text
    capsys.readouterr()


def test_simulator_table_gives_wall_and_per_core_speed_ups(monkeypatch, capsys):
    # ours: 100 records/s wall, 50 per CPU-second; neurokit2: 0.5 / 0.4, so 200x wall
    # and 125x per core; without neurokit2 every cell of its columns says so.
    monkeypatch.setattr(bench_simulator, "bench_ours", lambda n, rate, repeats: (100.0, 50.0))
    monkeypatch.setattr(bench_simulator, "bench_neurokit", lambda n, rate: (0.5, 0.4))
    bench_simulator.main(["--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 100 Hz")]
    assert rows == ["| 100 Hz | 100 | 50 | 0.50 | 0.40 | 200x | 125x |"]
    _stub_simulator(monkeypatch)
    bench_simulator.main(["--repeats", "1"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1          # every row as wide
    assert table[2] == "| 100 Hz | 100 | 50 | not installed | n/a | n/a | n/a |"


def test_bench_train_step_pytorch_side_does_the_same_work_as_the_jax_step():
    # The benchmark's ratio compares equal work only if the PyTorch port runs the same
    # step: same network and weights, loss sum(w * nll) / sum(w), global-norm clipping,
    # AdamW. Three steps from the same start (small batch and length) must give the
    # same losses and parameters as train.train_step, and the parameters must move.
    torch = pytest.importorskip("torch")
    import jax
    from flax import nnx
    from hypuc_jax import config as config_lib, train
    bench = load("bench_train_step")
    # a weight decay large enough that its form (decoupled, on every parameter) shows
    config = config_lib.apply_overrides(bench._config(), ["train.weight_decay=1.0"])
    rng = np.random.default_rng(0)
    b, t, leads = 8, 128, 12
    batch = {"x": rng.normal(size=(b, t, leads)).astype(np.float32),
             "y": rng.normal(size=b).astype(np.float32),
             "w": rng.uniform(0.2, 5.0, b).astype(np.float32), "mask": np.ones(b, np.float32)}
    graphdef, state, schedule = train.create_train_state(config, (t, leads), 10_000)
    start, _ = nnx.merge(graphdef, jax.device_get(state))
    net = bench._torch_model(torch, start, config)
    opt = bench._torch_optimizer(torch, net, config)
    step = jax.jit(train.bind_train_step(graphdef, train.LossSpec.from_config(config), schedule))
    x = torch.from_numpy(np.ascontiguousarray(batch["x"].transpose(0, 2, 1)))
    y, w = torch.from_numpy(batch["y"]), torch.from_numpy(batch["w"])
    for _ in range(3):
        state, metrics = step(state, batch)
        torch_loss = bench._torch_step(torch, net, opt, x, y, w, config.train.grad_clip)
        assert float(metrics["finite"]) == 1.0
        np.testing.assert_allclose(float(metrics["loss"]), torch_loss, rtol=1e-5)
    end, _ = nnx.merge(graphdef, jax.device_get(state))
    pairs = [(end.stem.kernel[...], net.stem.weight, (2, 1, 0), start.stem.kernel[...]),
             (end.out.dense.kernel[...], net.head.weight, (1, 0), start.out.dense.kernel[...])]
    for ours, theirs, axes, before in pairs:
        ours = np.asarray(ours).transpose(axes)
        moved = np.abs(ours - np.asarray(before).transpose(axes)).max()
        assert moved > 1e-3                                    # three lr-1e-3 Adam steps
        np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=moved * 1e-2)
