"""Benchmark: simulated 12-lead ECG records per second, hypuc_jax vs neurokit2.

    python experiments/bench_simulator.py [--n100 4096 --n500 1024 --nk 3 --repeats 3]
                                          [--out experiments/results/bench_simulator.md]

Both make 10-second 12-lead records at the same sampling rate:

* hypuc_jax: ``data.simulate(seed, n, rate=...)`` (numpy output, labels
  included), after one warm-up call that compiles; the median of
  ``--repeats`` timed calls. Also reported: process CPU seconds per record,
  i.e. throughput per busy core (robust to other load on the machine).
* neurokit2: ``ecg_simulate(duration=10, sampling_rate=..., method="multileads")``
  for ``--nk`` records (one record per call, as the API offers), wall and CPU
  time.

The speed-up is given twice: wall over wall, and per core (records per
CPU-second over records per CPU-second), since XLA spreads its work over
every core while neurokit2 runs on one thread.

Wall-clock numbers depend on the machine's other load; the load average at
the start is printed with the table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hypuc_jax.data import simulate  # noqa: E402
from _results import check_out, command_line, write_result  # noqa: E402

DURATION = 10.0


def bench_ours(n: int, rate: int, repeats: int) -> tuple[float, float]:
    """(records/s wall, records per CPU-second) of ``simulate``."""
    simulate(0, n, rate=rate, duration=DURATION)  # compile for this chunk shape
    walls, cpus = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        x, _ = simulate(r + 1, n, rate=rate, duration=DURATION)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        assert x.shape == (n, int(DURATION * rate), 12)
    return n / statistics.median(walls), n / statistics.median(cpus)


def bench_neurokit(n: int, rate: int) -> tuple[float, float] | None:
    """(records/s wall, records per CPU-second) of neurokit2's multilead simulator,
    or None if it is not installed."""
    try:
        import neurokit2 as nk
    except ImportError:
        return None
    nk.ecg_simulate(duration=DURATION, sampling_rate=rate, method="multileads", random_state=0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        out = nk.ecg_simulate(duration=DURATION, sampling_rate=rate, method="multileads",
                              random_state=i + 1)
        assert out.shape == (int(DURATION * rate), 12)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n100", type=int, default=4096, help="hypuc_jax records at 100 Hz")
    p.add_argument("--n500", type=int, default=1024, help="hypuc_jax records at 500 Hz")
    p.add_argument("--nk", type=int, default=3, help="neurokit2 records per rate")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the table to this markdown file")
    args = p.parse_args(argv)
    check_out(p, args.out)                    # before the benchmark, not after it
    load = os.getloadavg()[0]
    rows = []
    for rate, n in ((100, args.n100), (500, args.n500)):
        wall, per_cpu = bench_ours(n, rate, args.repeats)
        nk = bench_neurokit(args.nk, rate)
        if nk is None:
            nk_txt, ratios = "not installed | n/a", "n/a | n/a"
        else:
            nk_txt = f"{nk[0]:.2f} | {nk[1]:.2f}"
            ratios = f"{wall / nk[0]:,.0f}x | {per_cpu / nk[1]:,.0f}x"
        rows.append(f"| {rate} Hz | {wall:,.0f} | {per_cpu:,.0f} | {nk_txt} | {ratios} |")
    lines = [
        f"Simulated 10 s 12-lead records per second; {os.cpu_count()} CPU cores, JAX "
        f"{jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
        f"1-min load average at start {load:.1f}.",
        "",
        "| rate | hypuc_jax records/s (wall) | hypuc_jax records per CPU-second | "
        "neurokit2 multileads records/s (wall) | neurokit2 records per CPU-second | "
        "speed-up (wall) | speed-up per core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:                              # the command as run, arguments included
        cmd = command_line("bench_simulator.py", sys.argv[1:] if argv is None else list(argv))
        write_result(args.out, f"# bench_simulator\n\n`{cmd}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
