"""Benchmark: KDE density at every training label, hypuc_jax vs peers.

    python experiments/bench_kde.py [--sizes 1e4,1e5,1e6,1e7] [--repeats 5]
                                    [--budget 60] [--out FILE.md]

For each n, the same skewed potassium-like labels (mostly ~4.2, long right
tail) and the same bandwidth h (Scott, 1.06 * std(ddof=1) * n^-1/5) go to:

* hypuc_jax binned: ``kde.gaussian_kde(y, y, bandwidth=h)`` on a device array;
* hypuc_jax weights: ``weights.kde_weights(y)`` from the numpy float64 labels
  (input checks, transfer, Scott rule, binned density, weights; the full call);
* hypuc_jax exact: ``kde.gaussian_kde(y, y, bandwidth=h, method="exact")``;
* scipy.stats.gaussian_kde;
* scikit-learn KernelDensity (rtol=0, atol=0: exact; and rtol=1e-4), fit + score;
* KDEpy FFTKDE (4096-point grid, the denseweight engine) + np.interp.

Each measurement runs in its own subprocess: one warm-up call (compilation for
JAX; reported as "first call"), then the median of the timed repeats (1 repeat
when a call takes > 2 s; a call over 10 s is timed once, by that first call).
Peak memory is the process's ru_maxrss (Linux, peak resident set size): "peak
RSS" is the whole process, "+peak" the increase over the baseline taken after
imports, label generation and (JAX) the copy of the labels to the device,
before the first call; it covers XLA compilation, intermediate buffers and
the peers' work arrays.

Time is wall clock; "CPU time" is the process's CPU seconds over the same
calls (all threads). XLA spreads its work over every core, the peers here
run on one thread, so the CPU-time ratio is the per-core comparison (on a
2-core machine the wall-clock ratio can favour hypuc_jax by up to 2x).

Accuracy: relative L1 error, sum |rho - rho_ref| / sum rho_ref, at a fixed
random subset of ``--ref-points`` labels, against the exact sum in float64
(hypuc_jax exact under ``jax.enable_x64``) over all n samples; for the
``kde_weights`` row, of its weights against rho_ref^-1/2, both normalised to
mean 1 over that subset.

Direct-sum and tree peers cost ~n * m; their time at n is estimated from the
previous size. Estimated above ``--budget`` seconds: timed on a subset of the
query labels and scaled linearly in the number of queries ("≈", the subset
fraction shown; "first call" is scaled the same way); above 20x the budget:
skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _results import check_out, command_line, write_result  # noqa: E402

PEERS = ["hypuc_binned", "hypuc_weights", "hypuc_exact", "scipy", "sklearn_exact",
         "sklearn_rtol1e-4", "kdepy_fft"]
QUADRATIC = {"hypuc_exact", "scipy", "sklearn_exact", "sklearn_rtol1e-4"}
#: The module each non-JAX peer needs.
MODULES = {"scipy": "scipy", "sklearn_exact": "sklearn", "sklearn_rtol1e-4": "sklearn",
           "kdepy_fft": "KDEpy"}
LABELS = {
    "hypuc_binned": "hypuc_jax binned (density)",
    "hypuc_weights": "hypuc_jax binned kde_weights (full call)",
    "hypuc_exact": "hypuc_jax exact (float32)",
    "scipy": "scipy.stats.gaussian_kde",
    "sklearn_exact": "sklearn KernelDensity (exact)",
    "sklearn_rtol1e-4": "sklearn KernelDensity rtol=1e-4",
    "kdepy_fft": "KDEpy FFTKDE + np.interp",
}


def skewed_labels(n: int, seed: int = 0) -> np.ndarray:
    """Potassium-like labels [n] (mmol/L): 90% N(4.2, 0.45), 10% 4.6 + Gamma(2, 0.7)."""
    rng = np.random.default_rng(seed)
    k = n // 10
    return np.concatenate([rng.normal(4.2, 0.45, n - k), 4.6 + rng.gamma(2.0, 0.7, k)])


def scott(y: np.ndarray) -> float:
    return float(1.06 * np.std(y, ddof=1) * y.size ** -0.2)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def _peer_fn(peer: str, y: np.ndarray, q: np.ndarray, h: float):
    """A no-argument callable returning densities (or weights) at q, as numpy."""
    if peer.startswith("hypuc") or peer == "reference":
        import jax
        import jax.numpy as jnp
        from hypuc_jax import kde, weights
        if peer == "hypuc_weights":
            jnp.zeros(()).block_until_ready()   # backend started before the baseline, as below
            return lambda: np.asarray(weights.kde_weights(y, lam=0.5))   # scored vs rho^-1/2
        if peer == "reference":
            jax.config.update("jax_enable_x64", True)
            yd, qd = jnp.asarray(y, jnp.float64), jnp.asarray(q, jnp.float64)
            return lambda: np.asarray(kde.gaussian_kde(yd, qd, bandwidth=h, method="exact"))
        yd, qd = jnp.asarray(y, jnp.float32), jnp.asarray(q, jnp.float32)
        method = "exact" if peer == "hypuc_exact" else "binned"
        return lambda: np.asarray(kde.gaussian_kde(yd, qd, bandwidth=h, method=method))
    if peer == "scipy":
        from scipy.stats import gaussian_kde
        return lambda: gaussian_kde(y, bw_method=h / np.std(y, ddof=1))(q)
    if peer.startswith("sklearn"):
        from sklearn.neighbors import KernelDensity
        rtol = 0.0 if peer == "sklearn_exact" else 1e-4

        def run():
            model = KernelDensity(bandwidth=h, rtol=rtol, atol=0.0).fit(y[:, None])
            return np.exp(model.score_samples(q[:, None]))
        return run
    if peer == "kdepy_fft":
        from KDEpy import FFTKDE

        def run():
            grid, dens = FFTKDE(bw=h).fit(y).evaluate(4096)
            return np.interp(q, grid, dens)
        return run
    raise ValueError(f"peer: unknown {peer!r}")


def worker(args) -> None:
    """Runs one measurement; prints a JSON line and saves densities at the ref subset."""
    y = skewed_labels(args.n, args.seed)
    perm = np.random.default_rng(args.seed + 1).permutation(args.n)
    q_idx = None if args.queries >= args.n else perm[:args.queries]
    q = y if q_idx is None else y[q_idx]
    ref_idx = perm[:args.ref_points]
    h = scott(y)
    fn = _peer_fn(args.worker, y, q, h)
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    # slow calls: timed once (incl. any compile)
    times, cpu = ([first], [first_cpu]) if first > 10.0 else ([], [])
    for _ in range(0 if times else (args.repeats if first < 2.0 else 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # Densities at the reference subset (the first ref_points of the permutation).
    at_ref = out[ref_idx] if q_idx is None else out[:args.ref_points]
    np.save(os.path.join(args.tmp, f"{args.worker}_{args.n}.npy"), at_ref)
    print(json.dumps({"first": first, "times": times, "cpu": cpu, "rss": _rss_mb(),
                      "base": base}))


def measure(peer, n, queries, args, tmp):
    cmd = [sys.executable, __file__, "--worker", peer, "--n", str(n), "--queries", str(queries),
           "--repeats", str(args.repeats), "--seed", str(args.seed), "--tmp", tmp,
           "--ref-points", str(min(args.ref_points, n))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{peer} n={n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_n(n):
    e = int(round(np.log10(n)))
    return f"1e{e}" if 10 ** e == n else str(n)


def fmt_time(t):
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds; slower peers are timed on a query subset or skipped")
    p.add_argument("--ref-points", type=int, default=2000)
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    # Internal: one measurement in a subprocess.
    p.add_argument("--worker", default=None)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--queries", type=int, default=0)
    p.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    peers = args.peers.split(",")
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        p.error(f"--peers: unknown {unknown}; expected some of {PEERS}")
    missing = [x for x in peers if importlib.util.find_spec(MODULES.get(x, "jax")) is None]
    if missing:                               # before minutes of measurements, not after
        p.error(f"--peers: {missing} need {sorted({MODULES.get(x, 'jax') for x in missing})}, not "
                "installed (pip install -e '.[bench]'), or leave them out")
    check_out(p, args.out)
    rows, kdepy, per_query = [], {}, {}  # per_query[peer] = (n, s per query) of its last run
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = min(args.ref_points, n)
            measure("reference", n, r, args, tmp)
            ref = np.load(os.path.join(tmp, f"reference_{n}.npy"))
            for peer in peers:
                queries, note = n, ""
                if peer in QUADRATIC and peer in per_query:
                    n0, spq = per_query[peer]
                    est = spq * (n / n0) * n
                    if est > 20 * args.budget:
                        rows.append((n, peer, None, f"skipped (est. > {est:.0f} s)"))
                        continue
                    if est > args.budget:
                        queries = max(r, int(n * args.budget / est))
                        note = f"≈ from {100 * queries / n:.0f}% of queries"
                res = measure(peer, n, queries, args, tmp)
                t = statistics.median(res["times"]) * n / queries
                cpu = statistics.median(res["cpu"]) * n / queries
                per_query[peer] = (n, statistics.median(res["times"]) / queries)
                out = np.load(os.path.join(tmp, f"{peer}_{n}.npy"))
                want = ref if peer != "hypuc_weights" else ref ** -0.5   # lam 0.5
                if peer == "hypuc_weights":
                    out, want = out / out.mean(), want / want.mean()
                err = float(np.abs(out - want).sum() / np.abs(want).sum())
                res.update(time=t, cpu=cpu, first=res["first"] * n / queries, err=err, note=note)
                if peer == "kdepy_fft":
                    kdepy[n] = (t, cpu)
                rows.append((n, peer, res, note))
    lines = ["| n | method | median time | ratio to KDEpy | CPU time | CPU ratio to KDEpy | "
             "first call | peak RSS | +peak | rel. L1 vs exact | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, peer, res, note in rows:
        if res is None:
            lines.append(f"| {fmt_n(n)} | {LABELS[peer]} |" + " — |" * 8 + f" {note} |")
            continue
        ratio, cpu_ratio = ((f"{res['time'] / kdepy[n][0]:.2f}",
                             f"{res['cpu'] / kdepy[n][1]:.2f}") if n in kdepy else ("—", "—"))
        lines.append(f"| {fmt_n(n)} | {LABELS[peer]} | {fmt_time(res['time'])} | {ratio} | "
                     f"{fmt_time(res['cpu'])} | {cpu_ratio} | "
                     f"{fmt_time(res['first'])} | {res['rss']:.0f} MB | "
                     f"{res['rss'] - res['base']:.0f} MB | {res['err']:.1e} | {note} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = command_line("bench_kde.py", sys.argv[1:] if argv is None else list(argv))
        write_result(args.out, f"Command: `{cmd}`\n\n{table}\n")


if __name__ == "__main__":
    main()
