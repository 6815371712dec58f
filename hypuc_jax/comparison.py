"""``hypuc run``: the unweighted baseline and HypUC compared end to end.

Trains both with the same seed and budget through :func:`workflow.pipeline`
into DIR/baseline and DIR/hypuc, then writes DIR/report.md with the figures
(:mod:`hypuc_jax.report`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from hypuc_jax import _interrupt
from hypuc_jax import config as config_lib
from hypuc_jax._files import clear_dir, remove_path, remove_trash
from hypuc_jax.rundir import (CONFIG, EVAL, RUN_MARK, TRAIN_LABELS, WorkflowError, load_config,
                              load_npy, load_npz, load_task, mark_ours, read_json,
                              refuse_foreign_files)
from hypuc_jax.run_config import make_config
from hypuc_jax.stages import _named_regions
from hypuc_jax.workflow import check_trainable, discard_runs, pipeline


def label_curves(cfg: config_lib.Config, train_labels: np.ndarray, n_grid: int = 400):
    """Label density and training weight on a grid, for the report's first figure.

    Args:
      cfg: run config; ``cfg.weighting`` gives the KDE bandwidth and the scheme.
      train_labels: training labels [n] in label units.
      n_grid: number of grid points g.

    Returns:
      ``(grid [g], density [g], weight [g])``: g equally spaced labels from
      min to max of ``train_labels``, their Gaussian KDE density, and the
      fitted weighting at each (all ones for scheme "none").
    """
    from hypuc_jax import kde, train_data, weights

    lo, hi = float(np.min(train_labels)), float(np.max(train_labels))
    grid = np.linspace(lo, hi, n_grid)
    w = cfg.weighting
    dens = np.asarray(kde.gaussian_kde(train_labels, grid, bandwidth=w.bandwidth))
    if w.scheme == "none":
        return grid, dens, np.ones_like(grid)
    fn = weights.fit_weighting(w.scheme, train_labels, **train_data.weighting_options(cfg))
    return grid, dens, np.asarray(fn(grid))


def load_run_outputs(workdir: str | os.PathLike, name: str, split: str = "test"):
    """Reads an evaluated run directory into a ``report.RunOutputs``."""
    from hypuc_jax import report

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    ev = read_json(workdir / EVAL, "evaluation (run `hypuc evaluate`)")
    out = load_npz(workdir / f"outputs_{split}.npz", f"{split} outputs")
    train_labels = load_npy(workdir / TRAIN_LABELS, "training labels")
    return report.RunOutputs(
        name=name, eval=ev, y=out["y"], mu=out["mu"], sigma=out["sigma"],
        sigma_cal=out["sigma_cal"], corrected=out["corrected"],
        decision_probs={k[len("prob__"):]: v for k, v in out.items() if k.startswith("prob__")},
        thresholds=[t for t in task.thresholds if f"prob__{t[0]}" in out],
        train_labels=train_labels, regions=_named_regions(cfg, task),
        label_density=label_curves(cfg, train_labels), unit=task.unit,
        mu_bins=out.get("mu_bin"), dof=outputs_family(out),
        tails=tuple(task.thresholds),
        calibration=str(ev.get("calibration", {}).get("method", "")))   # what eval.json scored


def outputs_family(outputs):
    """The calibrated predictive's family (a dof, or an isotonic ``RecalibratedNormal``)
    stored in an outputs_{split}.npz (``np.load`` result or dict)."""
    from hypuc_jax._recalibrated import RecalibratedNormal

    if "family_knots" in outputs:
        return RecalibratedNormal(tuple(outputs["family_knots"].tolist()),
                                  tuple(outputs["family_freqs"].tolist()),
                                  float(outputs["family_xi"]))
    return float(outputs.get("dof", math.inf))


#: ``hypuc run`` without --preset: the potassium preset with a budget that fits
#: 10 minutes on 2 CPU cores (~4 min uncontended) and enough validation/test
#: records (1600 each) for per-bin calibration checks; regularised boosting
#: (bagged shallow trees) because the rare-class decisions have few positives.
DEFAULT_RUN = ("potassium", ("data.spec=simulated:potassium?n=8000", "train.epochs=10",
                             "calibration.bins=5", "corrections.n_models=5",
                             "corrections.n_estimators=100", "corrections.max_depth=2"))


PER_ARM_KEYS = ("weighting.scheme", "loss.name")
#: The run directories of the two arms, under ``hypuc run``'s workdir.
ARMS = ("baseline", "hypuc")


def comparison_configs(preset: str = "potassium", *, data: str | None = None, seed: int | None
                       = None, overrides: Sequence[str] = ()) -> dict[str, config_lib.Config]:
    """The two configs of ``hypuc run``: unweighted NLL baseline and HypUC, same budget.

    Raises:
      ValueError: an override of a key that tells the two arms apart
        (``PER_ARM_KEYS``): it would turn the baseline into a second HypUC.
    """
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        if key in PER_ARM_KEYS:
            raise ValueError(f"--set {key}: `hypuc run` fixes it per arm (baseline: unweighted "
                             "NLL; HypUC: KDE weights, NLL); train other losses or weightings "
                             "with `hypuc train --loss/--weighting`")
    common = dict(data=data, seed=seed, loss="nll", overrides=overrides)
    return dict(zip(ARMS, (make_config(preset, weighting="none", **common),
                           make_config(preset, weighting="hypuc", **common))))


def run_comparison(workdir: str | os.PathLike, *, preset: str = "potassium",
                   data: str | None = None, seed: int | None = None,
                   overrides: Sequence[str] = (), overwrite: bool = False,
                   log=print) -> dict:
    """``hypuc run``: baseline and HypUC into DIR/baseline and DIR/hypuc, then the report.

    Returns:
      {"report": path, "eval": {run: eval.json}, "checks": [...]}.
    """
    from hypuc_jax import report

    workdir = Path(workdir)
    if (workdir / CONFIG).exists():  # a `train` run: its arms would nest inside it
        raise WorkflowError(f"--workdir: {workdir} holds a trained run itself; run into "
                            "another directory (`hypuc run` writes DIR/baseline and DIR/hypuc)")
    cfgs = comparison_configs(preset, data=data, seed=seed, overrides=overrides)
    if not overwrite and not any((workdir / name / CONFIG).exists() for name in cfgs):
        refuse_foreign_files(workdir, ("report.md", "figures"), "a `hypuc run` directory")
    checked = {name: check_trainable(cfg, workdir / name, overwrite=overwrite)
               for name, cfg in cfgs.items()}   # bad input changes nothing, the old report too
    _interrupt.check()                  # a Ctrl-C lost in a callback: stop before removing
    for d in (workdir, *(workdir / name for name in cfgs)):
        mark_ours(d)                        # a stop below leaves directories known as ours
    remove_trash(workdir)                   # what a stopped deletion left
    remove_path(workdir / "report.md")
    remove_path(workdir / "figures")
    if overwrite:   # both arms now: a stop in the first must not leave the second's old run
        discard_runs(*(workdir / name for name in cfgs))    # configs, checkpoints first
        for name in cfgs:
            clear_dir(workdir / name, keep=RUN_MARK)
    evals = {}
    for name, cfg in cfgs.items():
        from hypuc_jax.train import refits_head
        scope = ", scope=head" if refits_head(cfg) else ""
        log(f"[{name}] training {cfg.loss.name} with weighting={cfg.weighting.scheme}{scope} "
            f"on {cfg.data.spec} -> {workdir / name}")
        evals[name] = pipeline(cfg, workdir / name, overwrite=overwrite,
                               checked=checked.pop(name))
    runs = [load_run_outputs(workdir / name, name) for name in cfgs]
    w = cfgs["hypuc"].weighting
    extra = [f"Data: `{cfgs['hypuc'].data.spec}`; both runs: loss `nll`, same seed and budget "
             f"(preset `{preset}`, overrides `{' '.join(overrides) or 'none'}`); HypUC: KDE "
             f"weights with lam={w.lam}, bandwidth={w.bandwidth}. "
             f"Calibration: `{cfgs['hypuc'].calibration.method}` on the validation split."]
    path = report.write_report(workdir, runs, extra=extra)
    return {"report": str(path), "eval": evals, "checks": report.checks(runs[0], runs[-1])}
