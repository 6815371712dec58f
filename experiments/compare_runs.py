"""Side-by-side validation and test MAE of finished variants, against a reference.

Reads the run directories an ablation left (``VARIANT_DIR/seed<N>/``: the
best checkpoint's ``predictions_val.npz`` / ``predictions_test.npz``) and
prints mean ± sd over seeds of the MAE of mu overall and beyond each of the
task's thresholds, for both splits, with the change of each mean against the
reference variant. A cell averaged over fewer seeds than its row lists (a
seed without records beyond that threshold) says ``(n=k)``.
``--value corrected`` reports the boosted corrected value
instead (test split only: the corrections are fitted on validation). It trains nothing; variants made by separate ablation
commands (other ``--set`` overrides, other workdirs) can be compared as long
as they share the data split protocol: seed k of every variant must have the
labels of the reference's seed k (or, for a seed the reference lacks, of its
one shared split), else the variant is refused. Usage::

    python experiments/compare_runs.py --ref none=runs/ablation_potassium_full/none \\
        --runs hypuc-0.5=runs/ablation_potassium_full/hypuc-0.5 \\
               "hypuc-0.5 resample=runs/resample/hypuc-0.5" --out RESULT.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import check_out, publish, run_main, seed_dirs
from ablation import tail_maes

SPLITS = ("val", "test")


def variant_maes(directory: Path, seeds=None, arg: str = "--runs",
                 value: str = "mu") -> tuple[list[int], dict[str, list[float]]]:
    """Seeds and ``{"test mae": [...], "val mae[y>5.5]": [...], ...}`` of one variant.

    ``seeds``: only these seeds (each must exist); default every ``seed<N>/``.
    ``arg``: the command-line argument that named ``directory`` (for errors).
    ``value``: "mu", or "corrected" (test split only).
    """
    dirs, cols = seed_dirs(directory, seeds, arg), {}
    for d in dirs:
        for split in SPLITS if value == "mu" else ("test",):
            for k, v in tail_maes(d, split, value).items():
                cols.setdefault(f"{split} {k}", []).append(np.nan if v is None else v)
    return [int(d.name[4:]) for d in dirs], cols


def _labels(d: Path, split: str, value: str) -> np.ndarray:
    name = f"predictions_{split}.npz" if value == "mu" else f"outputs_{split}.npz"
    with np.load(d / name) as z:
        return z["y"]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b))


def check_splits(ref: tuple[str, Path], runs: list[tuple[str, Path]], seeds=None,
                 value: str = "mu") -> None:
    """Refuses a variant whose seed-k labels (each split scored) differ from the reference's
    seed k; a seed the reference lacks is checked against the reference's split when all
    its seeds share one. When the reference draws a split per seed, the variant must
    have exactly its seeds (a mean over other seeds is a mean over other splits)."""
    splits = SPLITS if value == "mu" else ("test",)
    ref_dirs = {int(d.name[4:]): d for d in seed_dirs(ref[1], seeds, "--ref")}
    for split in splits:
        ref_y = {k: _labels(d, split, value) for k, d in ref_dirs.items()}
        first = next(iter(ref_y.values()))
        shared = all(_same(first, y) for y in ref_y.values())
        for name, directory in runs:
            run_seeds = [int(d.name[4:]) for d in seed_dirs(directory, seeds)]
            if not shared and sorted(run_seeds) != sorted(ref_y):
                raise ValueError(f"--runs {name}: seeds {sorted(run_seeds)} differ from the "
                                 f"reference's {sorted(ref_y)}, which has a split per seed: the "
                                 "% change would compare means over other splits; compare "
                                 "common --seeds")
            for d in seed_dirs(directory, seeds):
                k = int(d.name[4:])
                if k not in ref_y and not shared:
                    raise ValueError(f"--runs {name}: seed {k} has no reference seed to check its "
                                     f"{split} split against (--ref {ref[0]} has a split per "
                                     "seed); compare common --seeds")
                if not _same(_labels(d, split, value), ref_y.get(k, first)):
                    raise ValueError(f"--runs {name}: seed {k}'s {split} labels differ from the "
                                     f"reference's (--ref {ref[0]}): another data split "
                                     "(compare variants of one split protocol)")


def table(ref: tuple[str, Path], runs: list[tuple[str, Path]], seeds=None,
          value: str = "mu") -> str:
    """Markdown: one row per variant (the reference first), mean ± sd (% vs reference),
    ``(n=k)`` where only k of the row's seeds have records; refuses (ValueError) a
    variant of another data split (:func:`check_splits`)."""
    names = [ref[0]] + [name for name, _ in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--runs: labels must differ from each other and from --ref, "
                         f"got {dup} more than once")
    data = {ref[0]: variant_maes(ref[1], seeds, "--ref", value)}
    data.update({name: variant_maes(d, seeds, value=value) for name, d in runs})
    check_splits(ref, runs, seeds, value)
    keys = list(dict.fromkeys(k for _, cols in data.values() for k in cols))
    base = {k: _mean(data[ref[0]][1].get(k, [])) for k in keys}
    lines = ["| variant | seeds | " + " | ".join(keys) + " |",
             "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for name, (seeds, cols) in data.items():
        cells = []
        for k in keys:
            v = np.asarray(cols.get(k, []), float)
            v = v[np.isfinite(v)]                  # a seed without records there: skipped
            if v.size == 0:
                cells.append("—")
                continue
            m = float(np.mean(v))
            sd = f"{np.std(v, ddof=1):.3f}" if v.size > 1 else "—"
            fewer = f" (n={v.size})" if v.size < len(seeds) else ""   # seeds with records
            rel = ("" if name == ref[0] or not np.isfinite(base[k])
                   else f" ({100 * (m / base[k] - 1):+.0f}%)")
            cells.append(f"{m:.3f} ± {sd}{fewer}{rel}")
        lines.append(f"| {name} | {' '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    tails = [k for k in keys if k.startswith("test mae[")]
    per_seed = [f"- {name}, {k} per seed: "
                + ", ".join(f"{v:.3f}" if np.isfinite(v) else "—" for v in cols[k])
                for k in tails[:1] for name, (seeds, cols) in data.items() if k in cols]
    return "\n".join(lines) + "\n\n" + "\n".join(per_seed) + "\n"


def _mean(values) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(np.mean(v)) if v.size else float("nan")


def _pair(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LABEL=VARIANT_DIR, got {text!r}")
    name, d = text.rsplit("=", 1)                 # a label may hold "=" (key=value)
    return name.strip(), Path(d)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", type=_pair, required=True, help="LABEL=VARIANT_DIR of the reference")
    p.add_argument("--runs", type=_pair, nargs="+", required=True, action="extend",
                   help="LABEL=VARIANT_DIR of each compared variant (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", action="extend",
                   help="only these seeds of every variant (default: all of each; repeatable)")
    p.add_argument("--value", choices=("mu", "corrected"), default="mu",
                   help="the prediction scored: mu (val and test) or the boosted corrected "
                   "value (test only)")
    p.add_argument("--out", type=Path, help="markdown file to write (with the command)")
    a = p.parse_args(argv)
    if a.seeds:
        a.seeds = list(dict.fromkeys(a.seeds))       # a repeated seed is one run
    check_out(p, a.out)
    try:
        text = table(a.ref, a.runs, a.seeds, a.value)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    publish(text, a.out, "compare_runs.py", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    run_main("compare_runs.py", main)
