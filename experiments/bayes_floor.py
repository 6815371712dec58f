"""How low can the tail MAE of a simulated task go? An oracle floor per weighting.

The simulator (``hypuc_jax.data.simulator``) draws each record's ECG from an
*effective* label ``e = y + (noise_base + noise_slope * |y - mean|) * N(0, 1)``
(``LabelDistribution`` of the preset), so even a model that reads ``e``
perfectly from the signal cannot recover ``y`` exactly. This script computes,
with numpy only, what such an oracle reader achieves:

    f_lam(e) = E_q[y | e],   q(y | e) ~ N(e; y, s(y)^2) * rho(y)^(1 - lam)

which is the population minimiser of the rho^-lam weighted squared error
(lam = 0: the unweighted Bayes posterior mean, what an unweighted model
approaches; lam > 0: what KDE weighting aims for); with ``--statistics
median`` also the median of q, the minimiser of the weighted absolute error
(what a Laplace NLL's location fits). Its MAE per region is a
floor for a network of that weighting up to the extra noise of reading ``e``
from the ECG (T-wave amplitude factors, baseline wander, muscle noise), which
only raises the floor.

Floors printed: over the label distribution (``--samples`` draws); on the
test labels of given run directories (``--runs``; the expectation over ``e``
given each test label, ``--draws`` per label); and, with ``--sim-seed`` /
``--sim-n`` (the ``simulate`` call the runs' data came from), on the
REALIZED effective labels of those test records
(``hypuc_jax.data.effective_labels``), i.e. what a perfect reader
scores on exactly this test set. The same is done for the validation records,
where lam and checkpoints are chosen. ``--gap-lam LAM`` then splits each run's
distance to that oracle by label range (cut at the task's thresholds): how
much of a region's MAE gap comes from which records, and the runs' mean
signed offset from the oracle there (negative above the mode: shrunk). Runs are shown by the MAE of mu, mean
over their ``seed<N>/`` runs (``--seeds``: only these); every seed of every
run must have the same test and validation labels (one data split, which the
oracle rows are computed on; a split per seed is refused). A region a seed
has fewer than 10 records in (``metrics.MIN_COUNT``, as in eval.json) is
averaged over the seeds that have more (the cell says ``(n=k)``), "—" where
none has. The label density rho is exact on a fine
grid (the clipped mixture's mass per grid cell).

Usage::

    python experiments/bayes_floor.py --preset potassium --sim-seed 0 --sim-n 8000 \\
        --runs runs/ablation_potassium_full/none runs/ablation_potassium_full/hypuc-0.5 \\
        --out experiments/results/bayes_floor_potassium.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import at_least, check_out, publish, run_main, seed_dirs, seeds_per_run
from hypuc_jax.data import effective_labels, split_indices
from hypuc_jax.data.tasks import get_preset
from hypuc_jax._predictions import event
from hypuc_jax.metrics import MIN_COUNT
from hypuc_jax.rundir import load_config


def sample_labels(dist, n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels [n] from the preset's clipped normal + exponential-tail mixture."""
    main = rng.normal(dist.mean, dist.sd, n)
    tail = dist.tail_start + dist.tail_sign * rng.exponential(dist.tail_scale, n)
    return np.clip(np.where(rng.random(n) < dist.tail_weight, tail, main), *dist.clip)


def noise_sd(dist, y: np.ndarray) -> np.ndarray:
    """Scale of the effective-label noise at label y, same shape as y."""
    return dist.noise_base + dist.noise_slope * np.abs(y - dist.mean)


def mixture_cdf(dist, v: np.ndarray) -> np.ndarray:
    """P(label <= v) of the preset's normal + exponential-tail mixture before clipping."""
    from scipy import stats
    main = stats.norm.cdf(v, dist.mean, dist.sd)
    tail = (stats.expon.cdf(v - dist.tail_start, scale=dist.tail_scale) if dist.tail_sign > 0
            else stats.expon.sf(dist.tail_start - v, scale=dist.tail_scale))
    return (1 - dist.tail_weight) * main + dist.tail_weight * tail


class OracleReader:
    """f_lam(e): mean of y under N(e; y, s(y)^2) * rho(y)^(1 - lam) on a label grid.

    rho on the grid is exact: the clipped mixture's probability of each grid
    cell (its CDF differences; the end cells hold the clipped mass). Before
    session 13 it was a histogram of 2e6 draws with 0.5 added to every count,
    which made the far low tail (below ~2.8 mmol/L) too heavy.
    """

    def __init__(self, dist, rng: np.random.Generator | None = None, grid_size: int = 1401):
        lo, hi = dist.clip
        self.grid = np.linspace(lo, hi, grid_size)
        step = (hi - lo) / (grid_size - 1)
        edges = np.r_[-np.inf, self.grid[1:] - step / 2, np.inf]
        mass = np.diff(mixture_cdf(dist, edges))
        self.log_rho = np.log(np.maximum(mass, np.finfo(float).tiny))
        self.sd = noise_sd(dist, self.grid)

    def weights(self, e: np.ndarray, lam: float) -> np.ndarray:
        """q(y | e) on ``self.grid``, [n, grid] rows summing to 1 (lam 0: the posterior)."""
        logp = (-0.5 * ((e[:, None] - self.grid) / self.sd) ** 2 - np.log(self.sd)
                + (1.0 - lam) * self.log_rho)
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def __call__(self, e: np.ndarray, lam: float, statistic: str = "mean",
                 chunk: int = 4096) -> np.ndarray:
        """Estimates [n] for effective labels e [n]: the mean or the median of q(y | e)."""
        out = np.empty(e.shape)
        for i in range(0, e.size, chunk):
            q = self.weights(e[i:i + chunk], lam)
            if statistic == "mean":
                out[i:i + chunk] = q @ self.grid
            else:        # q_k spread evenly over grid cell k: the cdf is piecewise linear
                cdf = np.cumsum(q, axis=1)
                k = np.argmax(cdf >= 0.5, axis=1)
                rows = np.arange(k.size)
                step = self.grid[1] - self.grid[0]
                out[i:i + chunk] = (self.grid[k] + step / 2
                                    - (cdf[rows, k] - 0.5) / q[rows, k] * step)
        return out


def regions(task) -> dict:
    """Region name -> mask function: overall and each decision threshold's side."""
    out = {"overall": lambda y: np.ones(y.shape, bool)}
    for t in task.thresholds:        # in float32, as eval.json counts the runs' labels
        out[f"y {'>' if t.direction == 'above' else '<'} {t.value:g}"] = (
            lambda y, t=t: event(y, t))
    return out


def per_region(err, y, regs) -> dict:
    """Mean of per-example errors err [n] within each region of the labels y [n]; NaN
    for a region of fewer than ``metrics.MIN_COUNT`` records (as eval.json's regions)."""
    masks = {k: m(y) for k, m in regs.items()}
    return {k: float(err[s].mean()) if s.sum() >= MIN_COUNT else float("nan")
            for k, s in masks.items()}


def region_mae(y, pred, regs) -> dict:
    """MAE of pred [n] per region of the labels y [n]."""
    return per_region(np.abs(y - pred), y, regs)


def expected_mae_given_labels(reader, dist, y, lam, draws, rng, regs, statistic="mean") -> dict:
    """E over e | y of |y - f_lam(e)|, averaged per region over the given labels y [n]."""
    yy = np.repeat(y, draws)
    e = yy + noise_sd(dist, yy) * rng.standard_normal(yy.size)
    err = np.abs(yy - reader(e, lam, statistic))
    return per_region(err.reshape(y.size, draws).mean(axis=1), y, regs)


def run_mae(run_dir: Path, regs, name: str = "outputs_test.npz",
            seeds=None) -> tuple[dict, dict, list[tuple[Path, np.ndarray]]]:
    """MAE of mu per region over the seed runs' NAME: (mean over seeds, seeds with records
    there, [(seed directory, its labels)]).

    A region where a seed has fewer than ``MIN_COUNT`` records is left out of that region's mean
    (the count says over how many seeds it is; NaN where none has records).
    ``seeds``: only these seeds (default: every ``seed<N>/``; a folder
    without any is itself the run directory).
    """
    dirs = seed_dirs(run_dir, seeds, plain=True)
    for d in dirs:
        if not (d / name).exists():
            raise FileNotFoundError(f"--runs {run_dir}: no {d / name} (a finished `hypuc` run "
                                    "directory or an ablation variant folder was expected)")
    ys = [(d, np.load(d / name)["y"]) for d in dirs]
    per = [region_mae(y, np.load(d / name)["mu"], regs) for d, y in ys]
    counts = {k: sum(bool(np.isfinite(p[k])) for p in per) for k in regs}
    means = {k: float(np.mean([p[k] for p in per if np.isfinite(p[k])])) if counts[k]
             else float("nan") for k in regs}
    return means, counts, ys


def label_bins(task) -> list[tuple[str, float, float, bool]]:
    """Label ranges cut at the task's decision thresholds, in order:
    ``(name, low, high, low_closed)``. A label on a cut goes to the side that is not
    the threshold's tail (K > 5.5: 5.5 is below it; K < 3.5: 3.5 is above it), so
    the ranges next to a threshold are exactly its tail and the rest."""
    below = {float(t.value) for t in task.thresholds if t.direction == "below"}
    cuts = sorted({float(t.value) for t in task.thresholds})
    edges = [-np.inf, *cuts, np.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lo_closed, hi_closed = lo in below, np.isfinite(hi) and hi not in below
        out.append((f"{'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}",
                    lo, hi, lo_closed))
    return out


def _in_bin(y: np.ndarray, lo: float, hi: float, lo_closed: bool, below: bool) -> np.ndarray:
    """Mask of ``y`` in a :func:`label_bins` range; ``below``: ``hi`` is a "below" cut."""
    return (y >= lo if lo_closed else y > lo) & (y < hi if below else y <= hi)


def gap_rows(runs: list, name: str, y: np.ndarray, oracle: np.ndarray, bins) -> list[str]:
    """Per run and label range (lo, hi]: records, the run's MAE minus the oracle's on them
    and the mean signed mu - oracle (both averaged over the run's seeds), markdown rows."""
    rows = []
    for run, seeds in runs:                       # (run directory, its --seeds or None)
        mus = np.stack([np.load(d / name)["mu"] for d in seed_dirs(run, seeds, plain=True)])
        gap = (np.abs(y - mus) - np.abs(y - oracle)).mean(axis=0)          # [n]
        bias = (mus - oracle).mean(axis=0)
        cells = []
        for k, (_, lo, hi, lo_closed) in enumerate(bins):
            nxt = bins[k + 1][3] if k + 1 < len(bins) else False   # hi closes the next range
            s = _in_bin(y, lo, hi, lo_closed, nxt)
            cells.append(f"{s.sum()}: {gap[s].mean():+.3f} / {bias[s].mean():+.3f}" if s.any()
                         else "0: —")
        rows.append(f"| {run} | " + " | ".join(cells) + " |")
    return rows


def check_one_split(runs: list, split: str) -> tuple[Path, np.ndarray]:
    """The reference (first seed of the first run) directory and labels of ``split``;
    refuses any seed of any run (``run_mae`` results) whose labels differ: the oracle
    rows hold for one split only."""
    ref_dir, ref = runs[0][2][0]
    for _, _, ys in runs:                  # every seed of every run, not each run's first
        for d, y in ys:
            if y.shape != ref.shape or not np.allclose(y, ref):
                raise ValueError(f"--runs {d}: {split} labels differ from {ref_dir}'s (one data "
                                 "split expected; a split per seed cannot share the oracle rows)")
    return ref_dir, ref


def realized_effective(run_dir: Path, split: str, labels: np.ndarray, preset: str,
                       sim_seed: int, sim_n: int) -> np.ndarray:
    """Effective labels [n] of the records of ``split`` of the run directory ``run_dir``
    (one seed's), checked against its labels."""
    data = load_config(str(run_dir)).data
    idx = split_indices(sim_n, data.seed, data.split)[split]
    y, eff = effective_labels(sim_seed, idx, preset)
    if y.shape != labels.shape or not np.allclose(y, labels, atol=1e-5):
        raise ValueError(f"--sim-seed {sim_seed} --sim-n {sim_n}: the simulated {split} labels "
                         f"differ from {run_dir}'s (another simulate call made that data)")
    return eff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="potassium")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--samples", type=int, default=400_000)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--runs", type=Path, nargs="*", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", action="append",
                    help="only these seeds of the --runs folders (default: all of each); once "
                    "for every run or once per --runs folder, in order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-seed", type=int, help="simulate() seed of the runs' data")
    ap.add_argument("--sim-n", type=int, help="simulate() record count of the runs' data")
    ap.add_argument("--statistics", nargs="+", choices=("mean", "median"), default=["mean"],
                    help="oracle estimates: the lam-weighted posterior mean (squared-error "
                    "minimiser) and/or median (absolute-error minimiser, what a Laplace NLL fits)")
    ap.add_argument("--gap-lam", type=float, action="append", default=[],
                    help="with --sim-seed: per label range, each run's MAE gap to the oracle "
                    "mean at this lam and its mean signed mu - oracle (repeatable)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    at_least(ap, samples=(a.samples, 1), draws=(a.draws, 1))
    if (a.sim_seed is None) != (a.sim_n is None):
        ap.error("--sim-seed and --sim-n: give both (the simulate call of the runs' data) or "
                 "neither")
    if a.gap_lam and a.sim_seed is None:
        ap.error("--gap-lam: needs --sim-seed/--sim-n (the oracle on the realized labels)")
    if a.sim_seed is not None and not a.runs:
        ap.error("--sim-seed/--sim-n: need --runs (the realized labels are the runs' records)")
    seeds = seeds_per_run(ap, a.seeds, a.runs)
    check_out(ap, a.out)
    preset = get_preset(a.preset)
    regs = regions(preset.task)
    splits = (("test", "outputs_test.npz"), ("val", "predictions_val.npz"))
    try:                          # the runs first: a bad --runs fails before the slow oracle
        runs = {split: [run_mae(run, regs, name, s) for run, s in zip(a.runs, seeds)]
                for split, name in splits}
        ref = {split: check_one_split(runs[split], split) for split, _ in splits} if a.runs else {}
        eff = {}
        if a.sim_seed is not None:        # cheap too: labels only, no ECG
            eff = {split: realized_effective(ref[split][0], split, ref[split][1], a.preset,
                                             a.sim_seed, a.sim_n) for split, _ in splits}
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    dist, rng = preset.labels, np.random.default_rng(a.seed)
    reader = OracleReader(dist, rng)
    y = sample_labels(dist, a.samples, rng)
    e = y + noise_sd(dist, y) * rng.standard_normal(y.size)
    cols = list(regs)
    head = ["| predictor | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]

    def row(label, m, counts=None, n=0):
        """(n=k): mean over the k of the n seeds with records in that region; —: none."""
        return f"| {label} | " + " | ".join(
            ("—" if not np.isfinite(m[c]) else f"{m[c]:.3f}"
             + (f" (n={counts[c]})" if counts and counts[c] < n else "")) for c in cols) + " |"

    def run_rows(split):
        return [row(run, m, counts, len(ys)) for run, (m, counts, ys) in zip(a.runs, runs[split])]

    oracles = [(("" if stat == "mean" else "median, ") + f"lam {lam:g}", stat, lam)
               for stat in a.statistics for lam in a.lams]

    lines = [f"Oracle floor, preset `{a.preset}` ({a.samples} label draws): MAE of f_lam(e)",
             "", "| lam | " + head[0][len("| predictor | "):], head[1]]
    lines += [row(name.replace("lam ", ""), region_mae(y, reader(e, lam, stat), regs))
              for name, stat, lam in oracles]
    if a.runs:
        test_y = ref["test"][1]
        counts = {c: int(regs[c](test_y).sum()) for c in cols}
        lines += ["", f"On the runs' test labels (n = {test_y.size}; "
                  + ", ".join(f"{c}: {counts[c]}" for c in cols[1:])
                  + f"); oracle = expectation over e given each label, {a.draws} draws;"
                  " runs = MAE of mu, mean over seeds", "", *head]
        lines += [row(f"oracle {name}", expected_mae_given_labels(
            reader, dist, test_y, lam, a.draws, rng, regs, stat)) for name, stat, lam in oracles]
        lines += run_rows("test")
    if a.runs and a.sim_seed is not None:
        for split, name in splits:
            ys = ref[split][1]
            lines += ["", f"{split} split, oracle on the REALIZED effective labels of its "
                      f"{ys.size} records (`simulate({a.sim_seed}, {a.sim_n})`); runs = MAE of mu, "
                      "mean over seeds", "", *head]
            lines += [row(f"oracle {name}", region_mae(
                ys, reader(eff[split].astype(np.float64), lam, stat), regs))
                for name, stat, lam in oracles]
            lines += run_rows(split)
            bins = label_bins(preset.task)
            for lam in a.gap_lam:
                lines += ["", f"{split} split, gap to the oracle mean at lam {lam:g} per label "
                          "range: records: run MAE - oracle MAE on them / mean signed mu - "
                          "oracle (seed means)", "",
                          "| run | " + " | ".join(b[0] for b in bins) + " |",
                          "|" + " --- |" * (len(bins) + 1)]
                lines += gap_rows(list(zip(a.runs, seeds)), name, ys, reader(eff[split].astype(np.float64), lam),
                                  bins)
    publish("\n".join(lines) + "\n", a.out, "bayes_floor.py", argv or sys.argv[1:])
    return 0


if __name__ == "__main__":
    run_main("bayes_floor.py", main)
