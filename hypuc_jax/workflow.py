"""Stage orchestration shared by the ``hypuc`` CLI and the experiments.

Each stage reads and writes one run directory (layout in
:mod:`hypuc_jax.rundir`), so the CLI commands can run one at a time::

    train_stage      -> train.train_and_evaluate + task.json, labels_train.npy
    calibrate_stage  -> calibration.json        (validation split only)
    correct_stage    -> corrections/            (validation split only)
    evaluate_stage   -> eval.json, outputs_{split}.npz

Training (``check_trainable``, ``train_stage``) and ``pipeline`` live here;
the post-training stages are :mod:`hypuc_jax.stages`, re-exported here.
``hypuc predict`` (new data through a finished run) is :mod:`hypuc_jax.inference`;
``hypuc run`` (baseline vs HypUC + the report) is :mod:`hypuc_jax.comparison`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from hypuc_jax import config as config_lib
from hypuc_jax import _interrupt, checkpoints, losses
from hypuc_jax._files import holds_trash, move_to_trash, remove_path, remove_trash
from hypuc_jax.data import readers
from hypuc_jax.rundir import (  # noqa: F401  (re-exported for the CLI and experiments)
    CALIBRATION, CONFIG, CORRECTIONS, EVAL, FLAG_FRACTIONS, RUN_MARK, TASK, TRAIN_LABELS, Task,
    WorkflowError, _clean, load_config, load_npy, load_npz, load_task, mark_ours, read_json,
    refuse_foreign_files, sub_runs, save_npy, save_npz, usable_thresholds, write_json)
from hypuc_jax.run_config import base_config, make_config, parse_region  # noqa: F401
from hypuc_jax.stages import (  # noqa: F401  (re-exported: workflow.calibrate_stage, ...)
    _EVALUATED, _calibrator, _check_finite_predictions, _check_hyperfine_fits, _named_regions,
    STALE_REPORT, _load_corrector, _mark_report_stale, _predictions, _sigma_or_constant,
    calibrate_stage,
    correct_stage, eval_path, evaluate_stage)

# ----------------------------------------------------------------------------- training

_DATASETS: dict = {}


def _dataset(cfg: config_lib.Config):
    """The config's dataset, kept for the next call with the same data section.

    ``hypuc run`` and the ablation train several models on one data set;
    this keeps the train stage from reloading (re-simulating) it for the
    task description and training labels. One entry is kept at a time. Only
    sources that a spec pins down are kept: simulated and diabetes data, and
    csv / npz files keyed by their modification time and size. wfdb
    directories (labels and records in many files) are always read again.
    """
    from hypuc_jax import data as data_lib
    from hypuc_jax import train_data

    kind, arg, _ = data_lib.parse_spec(cfg.data.spec)
    if kind == "wfdb":
        return train_data.load_dataset(cfg)
    stamp = None                       # a changed, moved or deleted file is loaded again
    if arg and os.path.exists(arg):
        st = os.stat(arg)
        stamp = [st.st_mtime_ns, st.st_size]
    key = json.dumps([dataclasses.asdict(cfg.data), stamp], sort_keys=True)
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = train_data.load_dataset(cfg)
    return _DATASETS[key]


_DOWNSTREAM = (TASK, TRAIN_LABELS, "predictions_val.npz", "predictions_test.npz", CALIBRATION,
               CORRECTIONS, *_EVALUATED)
#: Files train writes after config.json (the checkpoints have their own fingerprint check).
_RUN_FILES = ("scaler", "weighting", "metrics", "tb")


def _named_columns(spec: str) -> bool:
    """Whether the features of ``spec`` have real names (csv, diabetes), not x0, x1, ..."""
    from hypuc_jax import data as data_lib

    return data_lib.parse_spec(spec)[0] in ("csv", "diabetes")


def check_trainable(cfg: config_lib.Config, workdir: str | os.PathLike, *,
                    overwrite: bool = False):
    """Everything ``train_stage`` checks before it changes ``workdir``.

    Validates ``cfg``, refuses a run of a different config in ``workdir``
    or checkpoints trained on other data (unless ``overwrite``), loads the data, splits it and checks that the
    model takes its records, that a training batch fits in the training
    split and that hyperfine calibration's bins fit in the validation split;
    fits the scaler and the label weighting (which refuse some labels).

    Returns:
      ``(dataset, run_data)``: the ``data.Dataset`` and the
      ``train_data.RunData`` prepared from it, which training takes as is.

    Raises:
      ValueError / WorkflowError: naming the bad key, file or directory.
    """
    import jax

    from hypuc_jax import train as train_lib
    from hypuc_jax import train_data

    workdir = Path(workdir)
    if not str(workdir) or str(workdir) == ".":
        raise WorkflowError(f"--workdir: expected a run directory, got {str(workdir)!r}")
    for parent in (workdir, *workdir.parents):           # the nearest existing ancestor
        if parent.exists():
            if not parent.is_dir():
                raise WorkflowError(f"--workdir: {parent} is a file; expected a directory")
            break
    config_lib.validate(cfg, n_devices=jax.device_count())
    paths = train_data.run_paths(str(workdir))
    runs = [] if (workdir / CONFIG).exists() else sub_runs(workdir)
    if runs:                 # `hypuc run`'s DIR: a run next to its arms would shadow them
        raise WorkflowError(f"--workdir: {workdir} holds the runs {', '.join(runs)}; train "
                            "into another directory (e.g. a new one next to them)")
    if (workdir / CONFIG).exists() and not overwrite:
        stored = read_json(workdir / CONFIG, "config")       # names the file itself
        try:
            old = config_lib.Config.from_dict(stored)
        except (KeyError, TypeError, ValueError) as e:
            raise WorkflowError(f"{workdir / CONFIG}: not a valid run config ({e}); pass "
                                "--overwrite to replace the run") from None
        then, now = train_lib.fingerprint(old), train_lib.fingerprint(cfg)
        if then != now:
            diff = checkpoints.first_difference(then, now)
            same = ("; the same data named another way? give --data as stored to resume"
                    if diff.startswith("data.spec:") else "")
            raise WorkflowError(f"{workdir}: holds a run of a different config ({diff}{same}); "
                                "choose another --workdir or pass --overwrite")
        change = train_lib.selection_change(stored, cfg)
        if change and checkpoints.has_checkpoints(paths["checkpoints"]):
            raise WorkflowError(f"{workdir}: its checkpoints were evaluated and selected with "
                                f"another value ({change}); keep the stored value or pass "
                                "--overwrite")
    ours = ((workdir / CONFIG).exists() or checkpoints.is_store(paths["checkpoints"])
            or holds_trash(workdir))          # runs from before RUN_MARK, whole or half-deleted
    if not overwrite and not ours:            # a user's folder: keep its files
        refuse_foreign_files(workdir, [*_DOWNSTREAM, *(Path(paths[k]).name for k in _RUN_FILES)],
                             "a hypuc run")
    if not overwrite:        # checkpoints without their config.json (a stopped --overwrite)
        diff = checkpoints.fingerprint_difference(
            paths["checkpoints"], train_lib.fingerprint(cfg),
            train_lib.FINGERPRINT_DEFAULTS)
        if diff:
            raise WorkflowError(f"{workdir}: holds checkpoints of a different config ({diff}); "
                                "choose another --workdir or pass --overwrite")
    ds = _dataset(cfg)
    _named_regions(cfg, ds.task)                          # no --region shadows a task region
    parts = train_data.split_for(cfg, ds)
    if not overwrite and train_data.trained_on_other_data(workdir, ds.x, ds.y, parts):
        raise WorkflowError(f"{workdir}: its checkpoints were trained on other data (the labels, "
                            f"split or records of --data {cfg.data.spec!r} differ); choose "
                            "another --workdir or pass --overwrite to train from scratch")
    n_train = len(parts["train"])
    if n_train < cfg.train.batch_size:      # train_and_evaluate's check, before any change
        raise ValueError(f"train.batch_size: expected <= the {n_train} training examples, "
                         f"got {cfg.train.batch_size}")
    if cfg.calibration.method == "hyperfine":
        _check_hyperfine_fits(cfg, len(parts["val"]), f"--data {cfg.data.spec!r}")
    train_lib.check_model_fits(cfg, tuple(int(v) for v in np.shape(ds.x)[1:]))
    try:
        run = train_data.prepare(cfg, ds)
    except ValueError as e:
        raise ValueError(f"--data {cfg.data.spec!r}: {e}") from None
    return ds, run


def discard_runs(*workdirs: str | os.PathLike) -> None:
    """Removes the config and checkpoints of the runs in ``workdirs``: first every
    config.json, then every checkpoint folder renamed away (one step each), and only
    then the slow deletion. A stop after the quick first passes leaves nothing that
    refuses training a new config there; a stop inside them (microseconds) leaves
    checkpoints that ``check_trainable`` refuses up front, before deleting anything.
    A checkpoint folder that is a link keeps the link and is emptied in place."""
    from hypuc_jax import train_data

    dirs = [Path(w) for w in workdirs]
    for d in dirs:
        remove_path(d / CONFIG)
    moved = []
    for d in dirs:
        ckpt = Path(train_data.run_paths(str(d))["checkpoints"])
        if ckpt.is_symlink():
            remove_path(ckpt)
        elif ckpt.is_dir():
            try:
                if move_to_trash(ckpt) is not None:
                    moved.append(d)
            except OSError:                 # a mount point: emptied where it is
                remove_path(ckpt)
    for d in moved:
        remove_trash(d)


def train_stage(cfg: config_lib.Config, workdir: str | os.PathLike, *,
                overwrite: bool = False, checked=None) -> Task:
    """Trains ``cfg`` into ``workdir`` (train.train_and_evaluate) and records the task.

    ``task.json`` is written last: it marks a finished training run, so a
    crash mid-way leaves a directory that later commands refuse. Point
    models (mse, l1, huber, bmc, bni) get a constant sigma: the RMS of
    their validation residuals (a homoscedastic Gaussian), recorded in
    task.json so every later stage uses the same value.

    Args:
      cfg: the resolved config.
      workdir: run directory.
      overwrite: train from scratch, replacing whatever ``workdir`` holds
        (otherwise a run of another config or data is refused, and one of
        the same config and data resumes).
      checked: what ``check_trainable(cfg, workdir, overwrite=overwrite)``
        returned, when the caller ran it already (``hypuc run`` checks both
        arms before it deletes anything); the checks and the data
        preparation are then not repeated.

    Everything :func:`check_trainable` checks (config, data, split, model
    fit) is checked before anything in ``workdir`` is removed, so bad input
    leaves a finished run intact. A re-run that passes the checks re-predicts
    and drops the later stages (calibration, corrections, eval), which were
    fitted to the previous predictions.
    """
    from hypuc_jax import train as train_lib
    from hypuc_jax import train_data

    workdir = Path(workdir)
    ds, run = checked if checked is not None else check_trainable(cfg, workdir,
                                                                   overwrite=overwrite)
    _interrupt.check()                  # a Ctrl-C lost in a callback: stop before removing
    mark_ours(workdir)
    if overwrite:
        discard_runs(workdir)
    remove_trash(workdir)                   # what a stopped deletion left
    if any((workdir / name).exists() for name in _DOWNSTREAM):
        _mark_report_stale(workdir)         # an arm of `hypuc run` trained again
    for name in _DOWNSTREAM:
        remove_path(workdir / name)
    train_lib.train_and_evaluate(cfg, str(workdir), overwrite=overwrite, dataset=run)
    y = np.asarray(ds.y, dtype=np.float64)
    parts = train_data.split_for(cfg, ds)   # the fixed split column too, as in training
    val = load_npz(workdir / "predictions_val.npz", "val predictions", keys=("y", "mu"))
    const = None                                    # point models: the validation RMSE
    if losses.head_for_loss(cfg.loss.name) == "point":
        _check_finite_predictions(val["mu"], "mu", str(workdir / "predictions_val.npz"))
        const = float(np.sqrt(np.mean((val["y"] - val["mu"]) ** 2)))
    train_rows = np.sort(np.asarray(parts["train"]))
    save_npy(workdir / TRAIN_LABELS, y[train_rows])
    # predict flags records far outside these: per feature, or per signal lead
    step, axes = readers.row_block(ds.x), tuple(range(np.ndim(ds.x) - 1))
    lo = hi = None                              # a block at a time: a memory map stays one
    for s in range(0, train_rows.size, step):
        block = np.asarray(ds.x[train_rows[s:s + step]])
        b_lo, b_hi = block.min(axis=axes), block.max(axis=axes)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    feature_range = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
    info = ds.task
    task = Task(name=info.name, target=info.target, unit=info.unit, regions=dict(info.regions),
                thresholds=tuple((t.name, float(t.value), t.direction) for t in info.thresholds),
                kind=ds.kind, input_shape=tuple(int(v) for v in np.shape(ds.x)[1:]),
                feature_names=tuple(ds.feature_names) if _named_columns(cfg.data.spec) else (),
                rate=None if ds.rate is None else float(ds.rate), feature_range=feature_range)
    write_json(workdir / TASK, dict(task.to_dict(), constant_sigma=const))
    return task


# ----------------------------------------------------------------------------- end to end


def pipeline(cfg: config_lib.Config, workdir: str | os.PathLike, *,
             overwrite: bool = False, checked=None) -> dict:
    """train -> calibrate -> correct -> evaluate(test) for one config; returns eval.json.

    ``checked``: as for :func:`train_stage`."""
    train_stage(cfg, workdir, overwrite=overwrite, checked=checked)
    calibrate_stage(workdir)
    correct_stage(workdir)
    return evaluate_stage(workdir, "test")
