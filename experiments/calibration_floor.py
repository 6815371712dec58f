"""What calibration and decisions can a perfect reader of the simulated ECG reach?

The simulated potassium task (``hypuc_jax.data.simulator``) draws each ECG
from an effective label ``e = y + (noise_base + noise_slope |y - mean|) N(0, 1)``.
A perfect reader knows ``e`` and nothing more, so the label's conditional law
is the posterior ``p(y | e)`` (``bayes_floor.OracleReader.weights`` at lam 0),
whose noise scale depends on the unknown ``y``: it is not Gaussian. This
script measures, exactly on a label grid (no test-set sampling noise), how
well a *Gaussian* predictive ``N(m(e), sigma(e)^2)`` centred on the perfect
reader's estimate ``m = f_lam(e)`` can be calibrated:

- ``variance``: sigma^2 = E[(y - m)^2 | e], the exact conditional second
  moment (what a perfectly fitted NLL model predicts);
- ``95% per reading``: sigma = q_0.95(|y - m| | e) / z_0.95, so the central
  95% interval covers exactly 95% for every reading: hyperfine calibration
  with infinitely many, infinitely fine bins;
- ``UCE-best factor``: c * (variance sigma) with the factor c that minimises
  UCE, and what that does to the 95% coverage.

UCE here is the population value of ``hypuc_jax.uncertainty.uce`` (mean over
the same 100 levels of |coverage - level|), so it is directly comparable to
the runs' numbers minus their finite-sample floor
(``uncertainty.uce_noise_floor``). Coverage of ``|y - m| <= r`` uses the grid
posterior's piecewise-linear CDF.

Decisions: population AUROC of ``y > t`` (``y < t``) when ranking by the
reading ``e``, by the exact posterior probability ``P(y > t | e)`` (the
Bayes-optimal score) and by ``f_lam(e)``.

Measured runs (``--runs``: ablation variant folders, their
``seed<N>/outputs_test.npz``; ``--seeds``: only these N) are shown beside
the floor, checked before the population is computed.

Usage::

    python experiments/calibration_floor.py --preset potassium \\
        --out experiments/results/calibration_floor_potassium.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from _results import at_least, check_out, publish, run_main, seed_dirs, seeds_per_run
from bayes_floor import OracleReader, noise_sd, sample_labels
from hypuc_jax import uncertainty
from hypuc_jax.comparison import outputs_family
from hypuc_jax.data.tasks import get_preset

T_GRID = np.linspace(0.0, 8.0, 1601)  # interval half-width in units of sigma
Z68, Z95 = (float(stats.norm.ppf(0.5 + p / 2)) for p in (0.68, 0.95))


def _cdf_at(grid: np.ndarray, cdf: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise piecewise-linear CDFs [c, G] on a uniform grid, at points x [c, L]."""
    h = grid[1] - grid[0]
    pos = np.clip((x - grid[0]) / h, 0.0, grid.size - 1.0)
    k = np.minimum(pos.astype(np.int64), grid.size - 2)
    lo = np.take_along_axis(cdf, k, axis=1)
    hi = np.take_along_axis(cdf, k + 1, axis=1)
    return lo + (pos - k) * (hi - lo)


def _cdf(w: np.ndarray) -> np.ndarray:
    """Piecewise-linear CDF [c, G] of grid weights w [c, G] (mass j spread over cell j)."""
    c = np.cumsum(w, axis=1)
    return np.concatenate([np.zeros((w.shape[0], 1)), 0.5 * (c[:, 1:] + c[:, :-1])], axis=1)


def interval_mass(grid, cdf, m, r) -> np.ndarray:
    """P(|y - m| <= r) per row for CDFs [c, G], centres m [c], radii r [c, L] -> [c, L]."""
    return _cdf_at(grid, cdf, m[:, None] + r) - _cdf_at(grid, cdf, m[:, None] - r)


def conditional_scales(grid, w, m, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(RMS of y - m, 95% quantile of |y - m| / z_0.95) given e, each [c], from weights w [c, G]."""
    rms = np.sqrt(np.sum(w * (grid - m[:, None]) ** 2, axis=1))
    cdf = _cdf(w)
    lo, hi = np.zeros(m.size), np.full(m.size, grid[-1] - grid[0])
    for _ in range(iters):  # bisection on the monotone coverage of the radius
        mid = 0.5 * (lo + hi)
        below = interval_mass(grid, cdf, m, mid[:, None])[:, 0] < 0.95
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return rms, 0.5 * (lo + hi) / Z95


def mean_coverage(grid, w, m, sigma) -> np.ndarray:
    """M(t) = mean over rows of P(|y - m| <= t sigma), [len(T_GRID)]."""
    return interval_mass(grid, _cdf(w), m, T_GRID[None, :] * sigma[:, None]).mean(axis=0)


def curve_scores(m_t: np.ndarray, factor: float = 1.0) -> dict:
    """UCE and coverages of the Gaussian c * sigma from the mean coverage M(t)."""
    z = stats.norm.ppf(0.5 + uncertainty.CAL_LEVELS / 2.0) * factor
    cov = np.where(np.isfinite(z), np.interp(np.nan_to_num(z, posinf=T_GRID[-1]), T_GRID, m_t), 1.0)
    return {"uce": float(np.mean(np.abs(cov - uncertainty.CAL_LEVELS))),
            "cov68": float(np.interp(Z68 * factor, T_GRID, m_t)),
            "cov95": float(np.interp(Z95 * factor, T_GRID, m_t))}


def best_factor(m_t: np.ndarray) -> float:
    """The factor c in [0.7, 1.3] that minimises the UCE of c * sigma."""
    factors = np.linspace(0.7, 1.3, 601)
    return float(factors[np.argmin([curve_scores(m_t, f)["uce"] for f in factors])])


def subset_uce(y, m, sigma, n: int, draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """UCE (mean, sd) of N(m, sigma^2) over ``draws`` random subsets of n of the [N] samples."""
    u = [uncertainty.uce(y[i], m[i], sigma[i])
         for i in (rng.choice(y.size, n, replace=False) for _ in range(draws))]
    return float(np.mean(u)), float(np.std(u, ddof=1))


def calibration_rows(reader: OracleReader, e: np.ndarray, y: np.ndarray, m: np.ndarray,
                     n_test: int, rng: np.random.Generator,
                     chunk: int = 2048) -> list[tuple[str, dict]]:
    """Scores of the Gaussian predictives centred on m = f_lam(e) [n], for e [n] with labels y [n]."""
    acc = {"variance": np.zeros(T_GRID.size), "95% per reading": np.zeros(T_GRID.size)}
    rms, s95 = np.empty(e.size), np.empty(e.size)
    for i in range(0, e.size, chunk):
        sl = slice(i, i + chunk)
        w = reader.weights(e[sl], 0.0)
        rms[sl], s95[sl] = conditional_scales(reader.grid, w, m[sl])
        for name, sig in (("variance", rms[sl]), ("95% per reading", s95[sl])):
            acc[name] += mean_coverage(reader.grid, w, m[sl], sig) * (w.shape[0] / e.size)
    kurt = float(stats.kurtosis((y - m) / rms))
    c = best_factor(acc["variance"])
    rows = []
    for name, m_t, f, sig in (("variance", acc["variance"], 1.0, rms),
                              ("95% per reading", acc["95% per reading"], 1.0, s95),
                              ("UCE-best factor x variance", acc["variance"], c, c * rms)):
        rows.append((name, {**curve_scores(m_t, f), "factor": f, "kurtosis": kurt,
                            "uce_n": subset_uce(y, m, sig, n_test, 200, rng)}))
    return rows


def tail_probabilities(reader: OracleReader, e: np.ndarray, thresholds,
                       chunk: int = 4096) -> np.ndarray:
    """P(y beyond each threshold | e) under the exact posterior, [n, k] for e [n], k thresholds."""
    sides = np.stack([t.positive(reader.grid) for t in thresholds], axis=1).astype(np.float64)
    return np.concatenate([reader.weights(e[i:i + chunk], 0.0) @ sides
                           for i in range(0, e.size, chunk)])


def decision_rows(reader: OracleReader, e: np.ndarray, y: np.ndarray, task, centres) -> list:
    """(threshold, AUROC by e, by P(y beyond t | e), [by each centre f_lam(e) [n]]) per threshold."""
    probs, out = tail_probabilities(reader, e, task.thresholds), []
    for j, t in enumerate(task.thresholds):
        sign, pos = (1.0 if t.direction == "above" else -1.0), t.positive(y)
        out.append((t.name, roc_auc_score(pos, sign * e), roc_auc_score(pos, probs[:, j]),
                    [roc_auc_score(pos, sign * c) for c in centres]))
    return out


def per_bin_pass_probability(n: int, bins: int, level: float = 0.95, tol: float = 0.02) -> float:
    """P(every one of ``bins`` equal bins of n records covers within ±tol of ``level``).

    For a perfectly calibrated predictor each bin's covered count is
    Binomial(n / bins, level), independently across bins.
    """
    nb = n // bins
    lo, hi = int(np.ceil(round((level - tol) * nb, 9))), int(np.floor(round((level + tol) * nb, 9)))
    one = stats.binom.cdf(hi, nb, level) - stats.binom.cdf(lo - 1, nb, level)
    return float(one ** bins)


def run_uce_row(run: Path, seeds=None) -> str:
    """Markdown row: test UCE before / after calibration over RUN/seed<N>/outputs_test.npz
    (``seeds``: only these N; default all)."""
    files = [d / "outputs_test.npz" for d in seed_dirs(run, seeds)]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"--runs {run}: no {f} (an ablation variant folder of "
                                    "evaluated runs was expected)")
    u = np.array([[uncertainty.uce(d["y"], d["mu"], d["sigma"]),
                   uncertainty.uce(d["y"], d["mu"], d["sigma_cal"], outputs_family(d))]
                  for d in map(np.load, files)])
    (u0, u1) = u.mean(axis=0)
    s0, s1 = (f"{v:.4f}" for v in u.std(axis=0, ddof=1)) if len(files) > 1 else ("—", "—")
    return (f"| {run} | {len(files)} | {u0:.4f} ± {s0} | {u1:.4f} ± {s1} | "
            f"{100 * (u1 / u0 - 1):+.0f}% |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="potassium")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=1600, help="test size for the finite-sample floor")
    ap.add_argument("--runs", type=Path, nargs="*", default=[],
                    help="ablation variant folders (seed<N>/outputs_test.npz) to show beside the "
                    "floor")
    ap.add_argument("--seeds", type=int, nargs="+", action="append",
                    help="only these seeds of the --runs folders (default: all of each); once "
                    "for every run or once per --runs folder, in order")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    at_least(ap, samples=(a.samples, 1), n_test=(a.n_test, 1))
    if a.n_test > a.samples:
        ap.error(f"--n-test {a.n_test}: expected at most --samples ({a.samples}), the "
                 "population its test sets are drawn from")
    check_out(ap, a.out)
    try:                        # the runs first (cheap): a bad --runs fails before the population
        run_rows = [run_uce_row(run, s)
                    for run, s in zip(a.runs, seeds_per_run(ap, a.seeds, a.runs))]
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    preset = get_preset(a.preset)
    dist, rng = preset.labels, np.random.default_rng(a.seed)
    reader = OracleReader(dist, rng)
    y = sample_labels(dist, a.samples, rng)
    e = y + noise_sd(dist, y) * rng.standard_normal(y.size)
    floor, floor_sd = uncertainty.uce_noise_floor(a.n_test)
    centres = {lam: reader(e, lam) for lam in a.lams}
    lines = [f"Perfect reader of preset `{a.preset}`: Gaussian N(f_lam(e), sigma^2), "
             f"{a.samples} label draws; population values (no test-set noise). A perfectly "
             f"calibrated Gaussian scored on {a.n_test} test records still shows UCE "
             f"{floor:.4f} ± {floor_sd:.4f} (finite-sample floor).", "",
             "| lam | sigma | factor | UCE | coverage 68% | coverage 95% | excess kurtosis of "
             f"(y - m) / rms | UCE on {a.n_test} records (200 subsets) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for lam in a.lams:
        for name, r in calibration_rows(reader, e, y, centres[lam], a.n_test, rng):
            lines.append(f"| {lam:g} | {name} | {r['factor']:.3f} | {r['uce']:.4f} | "
                         f"{r['cov68']:.3f} | {r['cov95']:.3f} | {r['kurtosis']:.2f} | "
                         f"{r['uce_n'][0]:.4f} ± {r['uce_n'][1]:.4f} |")
    lines += ["", f"Per-bin 95% check on {a.n_test} test records: probability that a perfectly "
              "calibrated predictor has every one of B equal mu-bins within ±2 pp: "
              + ", ".join(f"B = {b}: {per_bin_pass_probability(a.n_test, b):.2f}"
                          for b in (1, 5, 10, 20))]
    lines += ["", "Decisions: population AUROC of each threshold by score", "",
              "| threshold | reading e | P(beyond t given e) (Bayes) | "
              + " | ".join(f"f_{lam:g}(e)" for lam in a.lams) + " |",
              "|" + " --- |" * (3 + len(a.lams))]
    lines += [f"| {n} | {ae:.5f} | {ab:.5f} | " + " | ".join(f"{x:.5f}" for x in am) + " |"
              for n, ae, ab, am in decision_rows(reader, e, y, preset.task, list(centres.values()))]
    if a.runs:
        lines += ["", "Measured runs (test split, mean ± sd over seeds): UCE of the raw sigma and "
                  "after the run's calibration (`sigma_cal`, scored under its fitted tail)", "",
                  "| run | seeds | UCE uncalibrated | UCE calibrated | change |",
                  "| --- | --- | --- | --- | --- |"]
        lines += run_rows
    publish("\n".join(lines) + "\n", a.out, "calibration_floor.py", argv or sys.argv[1:])
    return 0


if __name__ == "__main__":
    run_main("calibration_floor.py", main)
