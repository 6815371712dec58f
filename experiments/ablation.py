"""Ablation: label weightings x seeds on one task, mean ± sd tables (markdown + CSV).

Every variant is trained, calibrated, corrected and evaluated with the same
pipeline as ``hypuc run`` (hypuc_jax.workflow.pipeline), on the same data
split; only the weighting (or the loss, for Balanced MSE) and the seed
change. A seed sets initialisation, batch order and boosting; with
``--split-per-seed`` it also draws the train/val/test split (``data.seed``),
so that the mean over seeds also averages over which rare records land in
the test split. Variants:

    none          unweighted, the config's loss (Gaussian NLL: the baseline)
    inverse       inverse label frequency (binned)
    sqrt_inv      square-root inverse frequency
    lds           label distribution smoothing (Yang et al. 2021)
    denseweight   DenseWeight (Steininger et al. 2021)
    bmc           Balanced MSE, batch Monte-Carlo form (Ren et al. 2022), point model
    hypuc-0.25 .. hypuc-1.0   KDE weights 1/rho^lam (HypUC)

Every variant but bmc trains the config's loss (``--set loss.name=laplace``
ablates the weightings under the Laplace NLL). A ``--set`` of a key the
ablation sets per run (the seed, the split seed with ``--split-per-seed``,
the variants' weighting keys, the bandwidth) is refused.

lam and bandwidth are selected on the VALIDATION split (from
predictions_val.npz; the test split is never looked at for the choice): the
lowest mean balanced MAE over seeds among the hypuc variants whose mean
validation MAE is at most ``--mae-allowance`` (default 5%, the allowance
the HypUC claim states) above the unweighted variant's, when ``none`` is in
the ablation; the unconstrained choice is reported beside it when it differs.

Usage (the exact commands used for experiments/results/ are in the result
files)::

    python experiments/ablation.py --config experiments/configs/potassium.json \\
        --seeds 0 1 2 --out experiments/results/ablation_potassium \\
        --workdir runs/ablation_potassium [--set train.epochs=4 ...]

Finished variants of the same config are reused (their test eval.json is
read back), so an interrupted ablation resumes where it stopped; a finished
run of another config or trained on other data in the same place is
refused (use another ``--workdir``). Each run records a stamp of the
hypuc_jax source that trained it, and the table says how many of its runs
were trained by other code. ``--recalibrate`` keeps the trained models of
finished variants and re-runs their calibrate, correct and evaluate stages
with the current code and the given ``calibration`` / ``corrections`` /
``regions`` settings (training is deterministic given the seed and the
code, so this equals a fresh run when the training code is unchanged).
Simulated data are cached once per data spec and simulator source as
WORKDIR/<task>-<hash>.npz.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from hypuc_jax import config as config_lib
from hypuc_jax import data as data_lib
from hypuc_jax import metrics, workflow
from hypuc_jax._predictions import ThresholdSpec, event

from _ablation_runs import run_variant, variant_overrides  # noqa: F401  (re-exported)
from _ablation_runs import STAMP_FILE, cache_simulated, code_stamp, variant_config
from _results import check_out, command_line, run_main

LAMS = (0.25, 0.5, 0.75, 1.0)
BASE_VARIANTS = ("none", "inverse", "sqrt_inv", "lds", "denseweight", "bmc")
OVERALL = (("mae", "mae", "uncalibrated"), ("rmse", "rmse", "uncalibrated"),
           ("balanced_mae", "balanced_mae", "uncalibrated"), ("nll", "nll", "uncalibrated"),
           ("nll_cal", "nll", "calibrated"), ("cov95_cal", "coverage_95", "calibrated"),
           ("uce", "uce", "uncalibrated"), ("uce_cal", "uce", "calibrated"))


def owned_keys(variants, split_per_seed: bool) -> dict[str, str]:
    """Config keys the ablation sets per run -> the option that sets them.

    A ``--set`` of one of them would silently replace (or be replaced by)
    the per-run value, so ``main`` refuses it.
    """
    owned = {"train.seed": "--seeds"}
    if split_per_seed:
        owned["data.seed"] = "--split-per-seed"
    for v in variants:
        for item in variant_overrides(v):
            owned.setdefault(item.split("=", 1)[0], f"variant {v!r}")
    if any(v.startswith("hypuc-") for v in variants):
        owned["weighting.bandwidth"] = "--bandwidths"
    return owned


def val_score(workdir: Path) -> dict:
    """Validation-split accuracy of a trained variant (for lam/bandwidth selection)."""
    p = workflow.load_npz(workdir / "predictions_val.npz", "val predictions")
    labels = np.load(workdir / workflow.TRAIN_LABELS)
    cfg = workflow.load_config(workdir)
    ev = metrics.evaluate(p["y"], p["mu"], None, train_labels=labels,
                          shot_bins=cfg.weighting.bins)
    return {"balanced_mae": ev["overall"]["balanced_mae"], "mae": ev["overall"]["mae"]}


def tail_maes(workdir: Path, split: str = "test", value: str = "mu") -> dict:
    """MAE on ``split`` overall and beyond each decision threshold, {"mae": ...,
    "mae[y>5.5]": ...}, of mu (``predictions_<split>.npz``) or of the corrected
    value (``value="corrected"``: ``outputs_<split>.npz``, written by evaluate).

    A threshold's tail with fewer than ``metrics.MIN_COUNT`` records gets None,
    as a region of eval.json does (one or two records are not a MAE to compare).
    """
    if value == "mu":
        out = workflow.load_npz(workdir / f"predictions_{split}.npz", f"{split} predictions",
                                keys=("y", value))
    else:
        out = workflow.load_npz(workdir / f"outputs_{split}.npz", f"evaluated {split} outputs",
                                keys=("y", value))
    err = np.abs(out["y"] - out[value])
    res = {"mae": float(np.mean(err))}
    for name, value_, direction in workflow.load_task(workdir).thresholds:
        sel = event(out["y"], ThresholdSpec(name, value_, direction))   # as eval.json counts
        key = f"mae[y{'>' if direction == 'above' else '<'}{value_:g}]"
        res[key] = float(np.mean(err[sel])) if sel.sum() >= metrics.MIN_COUNT else None
    return res


def rows_of(variant: str, seed: int, ev: dict, tails: dict | None = None) -> dict:
    row = {"variant": variant, "seed": seed, **(tails or {})}
    for col, key, stage in OVERALL:
        row[col] = ev[stage]["overall"].get(key)
    for region, m in ev["uncalibrated"]["regions"].items():
        row[f"mae[{region}]"] = m.get("mae")
    for name, d in ev.get("decisions", {}).items():
        row[f"auroc[{name}]"] = d.get("auroc")
    return row


def _mean_sd(values) -> tuple[float, float]:
    """(mean, sample sd) of the non-null values; NaN where undefined (sd of one value)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def summarize(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """(metric columns, one {variant, n_seeds, metric: (mean, sd)} per variant)."""
    cols = [k for k in rows[0] if k not in ("variant", "seed")]
    for r in rows:
        cols += [k for k in r if k not in cols and k not in ("variant", "seed")]
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        seeds = {c: frozenset(r["seed"] for r in rs if r.get(c) is not None) for c in cols}
        out.append({"variant": variant, "n_seeds": len(rs),
                    **{c: _mean_sd(r.get(c) for r in rs) for c in cols},
                    "counts": {c: len(seeds[c]) for c in cols}, "seeds": seeds})
    return cols, out


def comparable(seed_sets: dict[str, frozenset]) -> list[str]:
    """The names whose means cover every seed any of them covers: only means over the
    same seeds (the same splits under --split-per-seed) are compared; a variant with a
    failed run is shown but neither bold nor selected."""
    every = frozenset().union(*seed_sets.values()) if seed_sets else frozenset()
    return [k for k, v in seed_sets.items() if v == every]


def markdown(cols: list[str], summary: list[dict], best: dict[str, str] | None = None) -> str:
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    lower_better = {c: not (c.startswith("auroc") or c.startswith("cov")) for c in cols}
    for s in summary:
        cells = []
        for c in cols:
            m, sd = s[c]
            k = s.get("counts", {}).get(c, s["n_seeds"])
            text = ("—" if not np.isfinite(m) else f"{m:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd)
                                                                   else " ± —"))
            if np.isfinite(m) and k < s["n_seeds"]:
                text += f" (n={k})"                  # seeds where the value is defined
            if best and best.get(c) == s["variant"] and lower_better[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {s['variant']} | {s['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_per_column(cols, summary) -> dict[str, str]:
    best = {}
    for c in cols:
        same = comparable({s["variant"]: s["seeds"][c] for s in summary if "seeds" in s})
        vals = [(s[c][0], s["variant"]) for s in summary
                if np.isfinite(s[c][0]) and ("seeds" not in s or s["variant"] in same)]
        if vals:
            best[c] = min(vals)[1]
    return best


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    from hypuc_jax.report import write_text_atomic
    write_text_atomic(path, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/configs/potassium.json",
                   help="preset name or experiment JSON file")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+",
                   default=list(BASE_VARIANTS) + [f"hypuc-{lam}" for lam in LAMS])
    p.add_argument("--bandwidths", nargs="+", default=["scott"],
                   help="KDE bandwidths tried for the hypuc variants (selection on val)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override for every variant (reduced budgets)")
    p.add_argument("--out", required=True, help="result prefix: OUT.md, OUT.csv, OUT_runs.csv")
    p.add_argument("--workdir", required=True, help="folder for the run directories")
    p.add_argument("--split-per-seed", action="store_true",
                   help="each seed also draws its own train/val/test split (data.seed = seed)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not materialise simulated data once as WORKDIR/<task>.npz")
    p.add_argument("--mae-allowance", type=float, default=0.05,
                   help="lam/bandwidth selection: only hypuc variants whose mean validation "
                   "MAE is at most this fraction above the unweighted variant's (when 'none' "
                   "is run; default 0.05); a negative value turns the bound off")
    p.add_argument("--recalibrate", action="store_true",
                   help="re-run calibrate/correct/evaluate of finished runs with the current "
                   "code (their trained models are kept)")
    a = p.parse_args(argv)
    if not np.isfinite(a.mae_allowance):
        p.error(f"--mae-allowance: expected a finite fraction (negative: no bound), "
                f"got {a.mae_allowance}")
    if a.mae_allowance < 0:
        a.mae_allowance = None
    a.seeds = list(dict.fromkeys(a.seeds))                 # a repeated seed is one run
    a.variants = list(dict.fromkeys(a.variants))           # ... and so is a variant
    a.bandwidths = list(dict.fromkeys(a.bandwidths))
    check_out(p, a.out)
    out, root = Path(a.out), Path(a.workdir)
    if root.exists() and not root.is_dir():
        p.error(f"--workdir {root}: is a file, expected a folder for the run directories")
    t0 = time.time()
    rows, val = [], {}
    jobs = []
    for v in a.variants:
        bws = a.bandwidths if v.startswith("hypuc-") else ["scott"]
        for bw in bws:
            name = v if bw == "scott" or not v.startswith("hypuc-") else f"{v}-bw{bw}"
            jobs += [(name, v, bw, s) for s in a.seeds]
    owned = owned_keys(a.variants, a.split_per_seed)
    for item in a.overrides:
        key = item.split("=", 1)[0].strip()
        if key in owned:
            p.error(f"--set {item}: {key} is set per run by {owned[key]}; "
                    "use that option (or another --variants) instead")
    for name, v, bw, seed in jobs:             # every config checked before anything runs
        try:
            cfg = variant_config(a.config, v, seed, a.overrides, bw, a.split_per_seed)
            config_lib.validate(cfg)
        except ValueError as e:
            p.error(f"variant {name!r}, seed {seed}: {e}")
    try:                                       # the data: readable before anything runs
        for f in data_lib.input_files(cfg.data.spec):
            if not os.path.isfile(f):
                p.error(f"data.spec {cfg.data.spec}: {f}: file not found")
        if not a.no_cache:
            a.overrides = a.overrides + cache_simulated(a.config, a.overrides, root)
    except ValueError as e:
        p.error(f"data.spec {cfg.data.spec}: {e}")
    print(f"{len(jobs)} runs: {a.config} {' '.join(a.overrides)}", flush=True)
    failed = {}                                 # name/seedN: why its training failed
    for name, v, bw, seed in jobs:
        wd = root / name / f"seed{seed}"
        try:
            ev = run_variant(a.config, v, seed, wd, a.overrides, bw,
                             log=lambda s: print(s, flush=True),
                             split_per_seed=a.split_per_seed, recalibrate=a.recalibrate)
        except FloatingPointError as e:          # a diverged run is a result; the rest go on
            failed[f"{name}/seed{seed}"] = why = str(e).split("\n")[0]
            print(f"  {name:<14} seed {seed}: FAILED: {why}", flush=True)
            continue
        tails = tail_maes(wd)
        tails.pop("mae")                                   # rows_of has it from eval.json
        rows.append(rows_of(name, seed, ev, tails))
        if v.startswith("hypuc-") or v == "none":
            val.setdefault(name, {})[seed] = val_score(wd)
    current = code_stamp()
    stamps = {}
    for name, _, _, seed in jobs:
        f = root / name / f"seed{seed}" / STAMP_FILE
        stamps[f"{name}/seed{seed}"] = f.read_text().strip() if f.exists() else "unrecorded"
    stale = {k: v for k, v in stamps.items() if v != current}
    if not rows:
        print(f"every run failed ({len(jobs)}); no table written", file=sys.stderr)
        return 1
    cols, summary = summarize(rows)
    best = best_per_column(cols, summary)
    overall = [c[0] for c in OVERALL]
    region = [c for c in cols if c.startswith("mae[")]  # thresholds' tails, then regions
    dec = [c for c in cols if c.startswith("auroc[")]
    ref = val.pop("none", None)
    sel = {k: _mean_sd(x["balanced_mae"] for x in vs.values()) for k, vs in val.items()}
    complete = comparable({k: frozenset(vs) for k, vs in val.items()})
    free = min(complete, key=lambda k: sel[k][0]) if complete else None
    cost = {}                                # mean val MAE vs none's, on the seeds they share
    for k in complete if ref is not None else ():
        same = sorted(set(val[k]) & set(ref))
        if same:
            cost[k] = (np.mean([val[k][s_]["mae"] for s_ in same])
                       / np.mean([ref[s_]["mae"] for s_ in same]) - 1.0)
    bounded = a.mae_allowance is not None and "none" in a.variants
    unbounded = None                         # why a requested bound could not be applied
    if bounded and ref is None:
        bounded, unbounded = False, "the unweighted variant has no validation score"
    eligible = [k for k in complete
                if not bounded or cost.get(k, np.inf) <= a.mae_allowance]
    chosen = min(eligible, key=lambda k: sel[k][0]) if eligible else None
    write_csv(out.with_name(out.name + "_runs.csv"), rows)
    write_csv(out.with_name(out.name + ".csv"), [
        {"variant": s["variant"], "n_seeds": s["n_seeds"],
         **{f"{c}_{w}": x for c in cols          # n: the seeds where c is defined
            for w, x in (("mean", s[c][0]), ("sd", s[c][1]), ("n", s["counts"][c]))}}
        for s in summary])
    cmd = command_line("ablation.py", sys.argv[1:] if argv is None else argv)
    md = [f"# Ablation: {a.config}", "", f"Command: `{cmd}`", "",
          f"Seeds: {a.seeds}{' (each with its own data split)' if a.split_per_seed else ''}; "
          f"{len(jobs)} runs in {(time.time() - t0) / 60:.1f} min (runs "
          "already finished were reused). Test split; mean ± sd over seeds (sample sd). "
          "`mae[...]`: test MAE of mu per region (shot regions from training-label counts, "
          "named clinical regions); `_cal`: after hyperfine calibration. Bold: best mean among "
          "the variants with a value on every seed that any variant has one on.", "",
          f"Code: hypuc_jax source `{current}`"
          + (f"; **{len(stale)} of {len(jobs)} runs were trained by other code** ("
             + ", ".join(f"{k}: {v}" for k, v in list(stale.items())[:6])
             + (", ..." if len(stale) > 6 else "") + "): reused from an earlier version; "
             "a new --workdir gives results of this code" if stale else "") + ".", "",
          *([f"**{len(failed)} of {len(jobs)} runs failed** and are left out of the "
             "means (their seed counts show it): "
             + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
            if failed else []),
          "## Overall", "", markdown(overall, summary, best), "",
          "## MAE per region", "", markdown(region, summary, best), ""]
    if dec:
        md += ["## Decisions (boosted AUROC)", "", markdown(dec, summary, best), ""]
    if sel:
        bound = (f" among those whose mean validation MAE is at most "
                 f"{100 * a.mae_allowance:g}% above the unweighted variant's (on the seeds "
                 "both have)" if bounded else
                 f" (the overall-MAE allowance could not be applied: {unbounded})"
                 if unbounded else "")
        md += ["## lam / bandwidth selection on the validation split", "",
               "Criterion: lowest mean validation balanced MAE over seeds (test never used)"
               f"{bound}; only variants with a score on every seed that any of them finished "
               "are compared.", "",
               "| hypuc variant | seeds | val balanced MAE | val MAE | val MAE vs none |",
               "| --- | --- | --- | --- | --- |"]
        for k in sel:
            vm = _mean_sd(x["mae"] for x in val[k].values())
            note = (" (selected)" if k == chosen else " (not compared)" if k not in complete
                    else "" if not bounded else " (no seed shared with none)" if k not in cost
                    else " (over the allowance)" if k not in eligible else "")
            vs_none = f"{100 * cost[k]:+.1f}%" if k in cost else "—"
            md.append(f"| {k}{note} | {len(val[k])} | {sel[k][0]:.4f} ± "
                      f"{sel[k][1]:.4f} | {vm[0]:.4f} ± {vm[1]:.4f} | {vs_none} |")
        md += ["", f"Selected: **{chosen}**." if chosen else
               "No variant selected (none has a score on every seed within the allowance)."]
        if free is not None and free != chosen:
            md[-1] += (f" Without the overall-MAE allowance the lowest balanced MAE is "
                       f"{free}'s ({sel[free][0]:.4f} vs {sel[chosen][0]:.4f})."
                       if chosen else f" Without the allowance: {free}.")
        md += [""]
    from hypuc_jax.report import write_text_atomic
    write_text_atomic(out.with_name(out.name + ".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main("ablation.py", main)
