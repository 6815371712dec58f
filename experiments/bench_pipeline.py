"""Benchmark: input-pipeline batches per second (simulated ECG, 100 Hz, 12 leads, batch 64).

    python experiments/bench_pipeline.py [--n 4096 --batches 200 --repeats 3]
                                         [--out experiments/results/bench_pipeline.md]

``--n`` simulated 10 s records (``data.simulate``), a training split, a
fitted ``data.Scaler`` and a weight function (an inverse-frequency weight
from a label histogram, numpy), then the median over ``--repeats`` of
``--batches`` training batches of:

* ``batch_iterator`` alone (gather + weights + scaling, host numpy);
* ``prefetch_to_device(batch_iterator(...), size=2)`` (a background thread
  also ``device_put``\\ s each batch; the timing waits for the arrays);
* both again with ``x`` memory-mapped from an uncompressed ``.npz`` loaded
  through ``data.load("npz:...")`` (rows read from disk / page cache).

The train-step comparison (pipeline >= 5x the step's rate) is made by
``experiments/bench_train_step.py``, which times the train step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hypuc_jax import data  # noqa: E402
from _results import check_out, command_line, write_result  # noqa: E402

BATCH = 64


def histogram_weights(train_labels: np.ndarray):
    """Inverse-frequency weights (mean 1 on train) from 50 label bins."""
    counts, edges = np.histogram(train_labels, bins=50)
    inv = 1.0 / np.maximum(counts, 1)
    inv = inv / np.mean(inv[np.clip(np.digitize(train_labels, edges[1:-1]), 0, 49)])

    def weight_fn(y):
        return inv[np.clip(np.digitize(y, edges[1:-1]), 0, 49)]
    return weight_fn


def rate_of(make_iter, n_batches: int, repeats: int) -> float:
    """Median batches/s over ``repeats`` runs of ``n_batches`` batches."""
    rates = []
    for r in range(repeats + 1):
        it = make_iter(r)
        t0 = time.perf_counter()
        last = None
        for _ in range(n_batches):
            last = next(it)
        jax.block_until_ready(last)
        if r:  # the first run warms up (page cache, device_put path)
            rates.append(n_batches / (time.perf_counter() - t0))
        if hasattr(it, "close"):
            it.close()
    return statistics.median(rates)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    check_out(p, args.out)                    # before the benchmark, not after it
    load = os.getloadavg()[0]
    x, y = data.simulate(0, args.n, rate=100, duration=10.0)
    parts = data.split_indices(args.n, 0)
    train = parts["train"]
    scaler = data.Scaler.fit(x, y, train)
    weight_fn = histogram_weights(y[train])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ecg.npz")
        np.savez(path, x=x, y=y)
        ds = data.load(f"npz:{path}?rate=100")
        for source, xs in (("in-memory x", x), ("memory-mapped npz x", ds.x)):
            def host(r, xs=xs):
                return data.batch_iterator(xs, y, train, BATCH, seed=0, epoch=r, num_epochs=None,
                                           weight_fn=weight_fn, scaler=scaler)

            def prefetched(r, host=host):
                return data.prefetch_to_device(host(r), size=2)
            results[(source, "batch_iterator")] = rate_of(host, args.batches, args.repeats)
            results[(source, "+ prefetch_to_device")] = rate_of(prefetched, args.batches, args.repeats)
        del ds
    lines = [
        f"Training batches per second: batch {BATCH}, 10 s records at 100 Hz, 12 leads "
        f"({args.n} records, {len(train)} in the training split), scaling + weights; "
        f"{os.cpu_count()} CPU cores, JAX {jax.__version__} on {jax.default_backend()}; "
        f"1-min load average at start {load:.1f}.",
        "",
        "| x source | pipeline | batches/s | records/s |",
        "| --- | --- | --- | --- |",
    ]
    for (source, kind), rate in results.items():
        lines.append(f"| {source} | {kind} | {rate:,.0f} | {rate * BATCH:,.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:                              # the command as run, arguments included
        cmd = command_line("bench_pipeline.py", sys.argv[1:] if argv is None else list(argv))
        write_result(args.out, f"# bench_pipeline\n\n`{cmd}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
