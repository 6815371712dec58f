"""The post-training stages on a run directory: calibrate, correct, evaluate.

Each reads the run's validation / test predictions (``predictions_{split}.npz``
written by training) and writes one result::

    calibrate_stage  -> calibration.json        (validation split only)
    correct_stage    -> corrections/            (validation split only)
    evaluate_stage   -> eval.json (eval_val.json for --split val), outputs_{split}.npz

Re-exported by :mod:`hypuc_jax.workflow`, which adds training and the pipeline.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np

from hypuc_jax import config as config_lib
from hypuc_jax._files import remove_path, temp_dir, write_text_atomic
from hypuc_jax._calibrator import ISOTONIC_SINCE
from hypuc_jax._predictions import ThresholdSpec, event as threshold_event, family_label
from hypuc_jax.rundir import (CALIBRATION, CORRECTIONS, EVAL, FLAG_FRACTIONS, TASK, TRAIN_LABELS,
                              WorkflowError, _clean, load_config, load_npy,
                              load_npz, load_task, read_json, save_npz, usable_thresholds,
                              write_json)


#: What ``evaluate_stage`` writes: stale once the calibration or corrections change.
_EVALUATED = (EVAL, "eval_val.json", "outputs_test.npz", "outputs_val.npz")


#: First words of a ``hypuc run`` report whose arm was re-trained, re-calibrated or re-corrected.
STALE_REPORT = "> **Out of date:**"


def _drop_evaluation(workdir: Path) -> None:
    """Removes the run's evaluation: stale after a new calibration or correction."""
    for name in _EVALUATED:
        remove_path(workdir / name)


def _mark_report_stale(workdir: Path) -> None:
    """Marks a ``hypuc run`` report in the parent folder that shows this run (an arm)
    as out of date, naming every arm changed since it was written. Any other
    report.md (a user's notes, a report without this arm) is left alone; one that
    cannot be read or written is skipped with a warning, never an error."""
    arm = Path(os.path.abspath(workdir))           # a linked arm: the folder it sits in
    report = arm.parent / "report.md"
    try:
        if not report.is_file():
            return
        text = report.read_text(encoding="utf-8")
        head, _, body = text.partition("\n\n") if text.startswith(STALE_REPORT) else ("", "", text)
        if not (body.startswith("# ") and f"\n| {arm.name} | uncalibrated |" in body):
            return                                     # not a report that shows this arm
        names = re.findall(r"`([^`]+)`", head.split(":", 1)[-1].split(";", 1)[0]) if head else []
        if arm.name in names:
            return
        names.append(arm.name)
        write_text_atomic(report, f"{STALE_REPORT} re-trained, re-calibrated or re-corrected "
                          f"after this report was written: {', '.join(f'`{n}`' for n in names)}; their "
                          "numbers below no longer match their eval.json.\n\n" + body)
    except (OSError, UnicodeError) as e:
        logging.getLogger(__name__).warning("%s: not marked out of date (%s)", report, e)


def _predictions(workdir: Path, split: str) -> dict[str, np.ndarray]:
    load_config(workdir)
    path = workdir / f"predictions_{split}.npz"
    if not path.exists():
        raise WorkflowError(f"{path}: no {split} predictions; the training run did not finish "
                            f"(re-run `hypuc train --workdir {workdir}`)")
    p = load_npz(path, f"{split} predictions", keys=("y", "mu", "sigma"))
    const = read_json(workdir / TASK, "task description").get("constant_sigma")
    p["sigma"] = _sigma_or_constant(p["mu"], p["sigma"], const, str(path))
    return p


def calibrate_stage(workdir: str | os.PathLike, method: str | None = None,
                    tail: str | None = None) -> dict:
    """Fits the calibration on the validation predictions; writes calibration.json.

    Args:
      workdir: a trained run directory.
      method: "hyperfine", "global", "isotonic" or "none" (None: the config's).
      tail: hyperfine's predictive tail, "auto" or "gaussian" (None: the config's).

    Returns:
      The saved calibrator dict.
    """
    from hypuc_jax import calibration

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    method = method or cfg.calibration.method
    val = _predictions(workdir, "val")
    if tail is not None and method != "hyperfine":
        raise WorkflowError(f"--tail: applies to --method hyperfine only, got method {method!r}")
    if method == "none":
        d = {"method": "none"}
    else:
        kwargs = {"task": task.name}
        if method == "hyperfine":
            _check_hyperfine_fits(cfg, val["mu"].size, workdir)
            kwargs.update(n_bins=cfg.calibration.bins, min_count=cfg.calibration.min_count,
                          xi=cfg.calibration.xi, tail=tail or cfg.calibration.tail,
                          quantile=cfg.calibration.quantile)
        elif method == "isotonic":
            kwargs.update(xi=cfg.calibration.xi)
        d = calibration.fit_calibrator(method, val["mu"], val["sigma"], val["y"],
                                       **kwargs).to_dict()
    # Corrections and evaluation depend on the calibration: drop stale ones first.
    _drop_evaluation(workdir)
    remove_path(workdir / CORRECTIONS)
    write_json(workdir / CALIBRATION, d)
    _mark_report_stale(workdir)
    return d


def _check_hyperfine_fits(cfg: config_lib.Config, n_val: int, where) -> None:
    """Raises unless ``n_val`` validation records fill calibration.bins / min_count."""
    need = max(cfg.calibration.bins, cfg.calibration.min_count)
    if n_val < need:
        raise WorkflowError(
            f"{where}: {n_val} validation predictions are too few for hyperfine calibration "
            f"(calibration.bins={cfg.calibration.bins} and calibration.min_count="
            f"{cfg.calibration.min_count} need {need}); calibrate with the global scale "
            "(`hypuc calibrate --method global`; `--set calibration.method=global` for train "
            "and run), fewer calibration.bins, or a larger validation split")


def _calibrator(workdir: Path):
    """The run's saved calibration as (mu, sigma) -> calibrated sigma, with
    ``.bins(mu)`` (None unless hyperfine), ``.dof`` (the calibrated
    predictive's family, inf for the Gaussian) and ``.method``."""
    from hypuc_jax import calibration

    path = workdir / CALIBRATION
    if not path.exists():
        raise WorkflowError(f"{workdir}: not calibrated; run `hypuc calibrate --workdir "
                            f"{workdir}` first")
    d = read_json(path, "calibration")
    task = load_task(workdir).name
    version = d.get("format_version")
    if (d.get("method") == "isotonic" and isinstance(version, int)
            and not isinstance(version, bool) and version < ISOTONIC_SINCE):
        raise WorkflowError(f"{path}: an isotonic calibration from an earlier version (no "
                            "probability above the largest validation residual); re-run "
                            f"`hypuc calibrate --workdir {workdir} --method isotonic`")
    try:
        cal = None if d.get("method") == "none" else calibration.calibrator_from_dict(d, task=task)
    except ValueError as e:
        raise WorkflowError(f"{path}: not a valid calibration ({e}); re-run `hypuc calibrate "
                            f"--workdir {workdir}`") from None

    def apply(mu, sigma):
        return np.asarray(sigma if cal is None else cal.apply(mu, sigma), dtype=np.float64)

    apply.bins = lambda mu: cal.bin_index(mu) if hasattr(cal, "bin_index") else None
    apply.dof = math.inf if cal is None else cal.predictive_dof
    apply.method = d.get("method")
    return apply


def correct_stage(workdir: str | os.PathLike) -> dict:
    """Fits the boosted corrections and decisions on the calibrated validation predictions.

    Writes DIR/corrections/ (the corrector's files) atomically: it is saved
    into a temporary folder first and renamed into place.

    Returns:
      {"thresholds": [...], "skipped": [...]} as written to its manifest.
    """
    from hypuc_jax import corrections

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    val = _predictions(workdir, "val")
    cal = _calibrator(workdir)
    sigma_cal = cal(val["mu"], val["sigma"])
    ths = usable_thresholds(task, val["y"])
    c = cfg.corrections
    corrector = corrections.fit_corrections(
        val["mu"], sigma_cal, val["y"], ths, dof=cal.dof, n_models=c.n_models,
        max_iter=c.n_estimators,
        max_leaf_nodes=2 ** c.max_depth, learning_rate=c.learning_rate, seed=c.seed,
        min_samples_leaf=max(5, min(40, len(val["y"]) // 40)), task=task.name,
        target=c.target)
    _drop_evaluation(workdir)  # scored with the old corrections
    tmp = Path(temp_dir(workdir, prefix=".corrections."))
    try:
        corrector.save(tmp)
        remove_path(workdir / CORRECTIONS)
        os.replace(tmp, workdir / CORRECTIONS)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _mark_report_stale(workdir)
    return {"thresholds": [t[0] for t in ths],
            "skipped": [t[0] for t in task.thresholds if t not in ths]}


#: Fraction of the validation predictions ``predict`` flags as unreliable (highest entropy).
FLAG_FRACTION = 0.1


def _entropy_flags(workdir: Path, cal, sigma_cal: np.ndarray) -> np.ndarray:
    """[n] bool: the flags ``predict`` gives by entropy (calibrated sigma above the
    validation split's top-``FLAG_FRACTION`` cut, ``flagging.flag_unreliable``)."""
    from hypuc_jax import flagging

    val = _predictions(workdir, "val")
    return flagging.flag_unreliable(sigma_cal, cal(val["mu"], val["sigma"]), FLAG_FRACTION)


def _load_corrector(workdir: Path, dof: float):
    """The run's corrector; refused unless it was fitted for the calibration's family ``dof``."""
    from hypuc_jax import corrections

    if not (workdir / CORRECTIONS).exists():
        raise WorkflowError(f"{workdir}: no corrections; run `hypuc correct --workdir "
                            f"{workdir}` first")
    corrector = corrections.load_corrector(workdir / CORRECTIONS, task=load_task(workdir).name)
    if corrector.dof != dof:
        was, now = family_label(corrector.dof), family_label(dof)
        now = f"another {now} fit" if now == was else now
        raise WorkflowError(f"{workdir}: corrections were fitted for a predictive of family "
                            f"{was}, the calibration's is {now}; run `hypuc correct --workdir "
                            f"{workdir}` again")
    return corrector


def _named_regions(cfg: config_lib.Config, task) -> dict[str, tuple[float, float]]:
    """The task's named regions plus the config's ``regions`` (``--region``).

    ``task``: a rundir ``Task`` or a data ``TaskInfo`` (anything with ``name``
    and ``regions``). A config region may not reuse a task region's name: it
    would silently replace the clinical range in eval.json and the report.
    """
    regions = dict(task.regions)
    for name, lo, hi in cfg.regions:
        if name in regions:
            low, high = regions[name]
            raise ValueError(f"regions: {name!r} is already a region of the {task.name!r} task "
                             f"([{low:g}, {high:g})); name the extra region (--region or the "
                             f"config's regions) differently")
        regions[name] = (lo, hi)
    return regions


def eval_path(workdir: str | os.PathLike, split: str = "test") -> Path:
    """Where ``evaluate_stage`` writes: DIR/eval.json for the test split (the
    results every reader takes), DIR/eval_<split>.json for another split."""
    return Path(workdir) / (EVAL if split == "test" else f"eval_{split}.json")


def evaluate_stage(workdir: str | os.PathLike, split: str = "test") -> dict:
    """Scores the run on ``split``; writes :func:`eval_path` (DIR/eval.json for
    the test split, DIR/eval_val.json for validation) and DIR/outputs_{split}.npz.

    eval.json: {"split", "n", "in_sample", "calibration": {"method", "dof"}, "uncalibrated",
    "calibrated", "corrected", "decisions": {name: {"auroc", "auprc",
    "baseline_auroc", ...}}, "flagging": {"mae_kept_at": {fraction: mae},
    "validation_cut": {"fraction", "flagged", "mae_kept", "mae_flagged"}}};
    ``in_sample`` is true for the validation split: the checkpoint, the
    calibration, the corrections and the decisions were chosen or fitted on
    it, so its numbers are optimistic (the test split's are not).
    ``mae_kept_at`` flags the split's own most uncertain fraction,
    ``validation_cut`` what ``predict`` flags (the validation split's top 10%
    cut of calibrated sigma; ``flagged`` is the share of this split above it).
    each of the three metric blocks is ``metrics.evaluate(...)`` for (mu,
    sigma) as a Gaussian, and for (mu, calibrated sigma) and (corrected
    value, calibrated sigma) under the calibrated predictive's family (for
    the corrected value moved to mean 0: the boosted value has removed the
    bias an isotonic family carries)
    ("dof": its Student-t degrees of freedom, null for the Gaussian and for
    isotonic calibration, whose family is the recalibrated CDF; outputs_{split}.npz
    then holds it as ``family_knots`` / ``family_freqs`` / ``family_xi``).
    """
    from hypuc_jax import corrections, flagging, metrics
    from hypuc_jax._predictions import centred, dof_to_json, is_family

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    pred = _predictions(workdir, split)
    y, mu, sigma = pred["y"], pred["mu"], pred["sigma"]
    cal = _calibrator(workdir)
    sigma_cal = cal(mu, sigma)
    bins = cal.bins(mu)
    corrector = _load_corrector(workdir, cal.dof)
    corrected, probs = corrector.predict(mu, sigma_cal)
    train_labels = load_npy(workdir / TRAIN_LABELS, "training labels")
    regions = _named_regions(cfg, task)
    ev = {"split": split, "n": int(len(y)), "in_sample": split == "val",
          "calibration": {"method": cal.method,
                          "dof": None if is_family(cal.dof) else dof_to_json(cal.dof)}}
    for stage, (m, s, dof) in {"uncalibrated": (mu, sigma, math.inf),
                               "calibrated": (mu, sigma_cal, cal.dof),
                               "corrected": (corrected, sigma_cal, centred(cal.dof))}.items():
        ev[stage] = metrics.evaluate(y, m, s, train_labels=train_labels, regions=regions,
                                     shot_bins=cfg.weighting.bins, dof=dof)
    ev["decisions"] = {}          # every task threshold: stable keys, null where undefined
    ths = list(task.thresholds)
    base = corrections.baseline_scores(mu, sigma_cal, ths, dof=cal.dof) if ths else {}
    spec = cfg.corrections.specificity
    for name, value, direction in ths:
        event = threshold_event(y, ThresholdSpec(name, value, direction))
        by_mu = metrics.decision_metrics(event, base[name]["threshold_mu"], specificity=spec)
        if name in probs:
            d = metrics.decision_metrics(event, np.asarray(probs[name]), specificity=spec)
            d["skipped"] = None
        else:                     # no classifier: one outcome only in the validation split
            d = {k: (v if k in ("n", "n_positive") else None) for k, v in by_mu.items()}
            d["skipped"] = "only one outcome in the validation split: no classifier fitted"
        gauss = metrics.decision_metrics(event, base[name]["gaussian"], specificity=spec)
        d.update(baseline_auroc=by_mu["auroc"], baseline_auprc=by_mu["auprc"],
                 gaussian_auroc=gauss["auroc"], gaussian_auprc=gauss["auprc"])
        ev["decisions"][name] = d
    kept = flagging.selective_risk(y, mu, sigma_cal, FLAG_FRACTIONS)
    flags = _entropy_flags(workdir, cal, sigma_cal)       # as predict flags new records
    err = np.abs(y - mu)
    ev["flagging"] = {"mae_kept_at": {str(float(f)): v for f, v in kept.items()},
                      "validation_cut": {
                          "fraction": FLAG_FRACTION, "flagged": float(flags.mean()),
                          "mae_kept": float(err[~flags].mean()) if (~flags).any() else None,
                          "mae_flagged": float(err[flags].mean()) if flags.any() else None}}
    ev = _clean(ev)
    family = ({"family_knots": np.asarray(cal.dof.knots), "family_freqs": np.asarray(cal.dof.freqs),
               "family_xi": np.float64(cal.dof.xi)}
              if is_family(cal.dof) else {"dof": np.float64(cal.dof)})
    save_npz(workdir / f"outputs_{split}.npz", y=y, mu=mu, sigma=sigma, sigma_cal=sigma_cal,
             corrected=corrected, **family, **({} if bins is None else {"mu_bin": bins}),
             **{f"prob__{k}": v for k, v in probs.items()})
    write_json(eval_path(workdir, split), ev)
    return ev


def _sigma_or_constant(mu, sigma, const: float | None, source: str) -> np.ndarray:
    """The predicted sigma [n], checked finite; a point model's is its constant sigma.

    Args:
      mu, sigma: predictions [n] (sigma None or NaN for a point model).
      const: the run's constant sigma (task.json), None for a probabilistic model.
      source: where the predictions come from, for the error message.

    Raises:
      WorkflowError: a NaN/inf mu, or a NaN/inf sigma of a probabilistic model.
    """
    _check_finite_predictions(mu, "mu", source)
    if const is not None:
        return np.full(np.shape(mu), float(const))
    if sigma is None:
        raise WorkflowError(f"{source}: no predicted sigma, expected one per record")
    _check_finite_predictions(sigma, "sigma", source)
    return np.asarray(sigma, dtype=np.float64)


def _check_finite_predictions(values, name: str, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
    if bad.size:
        raise WorkflowError(
            f"{source}: {bad.size} of {np.size(values)} predicted {name} values are NaN/inf "
            f"(records {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}); their inputs are "
            "probably far outside the training data")
