"""``hypuc predict``: new records through a finished run directory.

:func:`predict_stage` loads the data (labels optional, csv features by the
training column names), applies the trained model, its calibration and its
corrections, and writes one CSV row per record, in order. It reads the run
directory through :mod:`hypuc_jax.workflow` and never writes into it.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from hypuc_jax.data import readers
from hypuc_jax.data.tasks import PRESETS, unit_key
from hypuc_jax.rundir import TASK, WorkflowError, _tmp_in, load_config, load_task, read_json
from hypuc_jax.stages import _calibrator, _entropy_flags, _load_corrector, _sigma_or_constant
from hypuc_jax.workflow import _named_columns


def predict_stage(workdir: str | os.PathLike, spec: str, output: str | os.PathLike) -> int:
    """Predicts every record of data ``spec`` with a trained, calibrated, corrected run.

    Writes a CSV with one row per record, in the data's order: mu, sigma,
    sigma_cal, lower_95, upper_95 (calibrated central 95% interval),
    corrected, p_<threshold> (boosted decision probabilities), entropy,
    flag (entropy in the top 10% of the validation predictions,
    ``flagging.flag_unreliable``, or out of range) and out_of_range (a
    feature, or a sample of a signal lead, beyond the training range by more
    than its width, :func:`out_of_range`; the network extrapolates there and
    its sigma does not say so: seen with inputs x1e30, mu -1e30 at the
    smallest sigma of the file), plus y first when the data hold labels (empty where a label
    is missing).

    Labels are optional; a csv/wfdb spec without ``target=`` uses the run's
    target column (a ``target=`` it names must exist), and csv features are
    taken by the training column names (in the training order). Simulated
    and wfdb signals are read at the training data's sampling rate and
    record length unless the spec sets ``rate=`` (which must then equal it)
    or ``duration=``; npz arrays are taken as they are (their ``rate=``, if
    given, must equal it). Records with
    NaN/inf inputs are refused, not dropped, so every output row belongs to
    the record in the same position.

    Floats are written in Python's shortest round-trip form (they read back
    as the computed float64, at any label magnitude; the labels, read as
    float32, as the shortest decimal of their float32 value: 4.1 stays 4.1).

    Returns:
      The number of rows written.

    Raises:
      WorkflowError / ValueError: unreadable data, records of another shape
        or other feature columns than in training, non-finite inputs, or an
        ``output`` that is not a ``.csv`` file path.
    """
    from hypuc_jax import data as data_lib
    from hypuc_jax import flagging
    from hypuc_jax import train as train_lib
    from hypuc_jax._predictions import central_bounds

    workdir, output = Path(workdir), Path(output)
    task_options = sorted({"task", "above", "below", "cuts", "unit"}
                          & set(data_lib.parse_spec(spec)[2]))
    if task_options:          # predict scores the trained run's thresholds, in its unit
        verb = "describes" if len(task_options) == 1 else "describe"
        raise WorkflowError(f"--data: {', '.join(o + '=' for o in task_options)} "
                            f"{verb} a task, and predict uses the trained run's thresholds "
                            "and regions; drop them from the spec")
    _check_output(output, data_lib.input_files(spec))
    cfg = load_config(workdir)
    task = load_task(workdir)
    meta = read_json(workdir / TASK, "task description")
    cal = _calibrator(workdir)
    corrector = _load_corrector(workdir, cal.dof)
    kind, _, spec_options = data_lib.parse_spec(spec)
    if (kind == "csv" and len(task.input_shape) == 1 and not task.feature_names
            and "features" not in spec_options):
        raise WorkflowError(f"--data: the model was trained on unnamed features (npz columns "
                            f"x0..x{task.input_shape[0] - 1}), so the csv columns cannot be "
                            "matched by name; list the ones that hold them, in training order, "
                            "with features=COL,COL,...")
    by_name = task.feature_names if _named_columns(spec) else ()   # npz columns: by position
    # signals: the training rate and record length unless the spec sets them
    duration = (task.input_shape[0] / task.rate
                if task.rate is not None and len(task.input_shape) == 2 else None)
    target = cfg.data.target or task.target
    listed = set(data_lib.feature_option(spec_options, spec) or ())
    if kind == "csv" and (not task.feature_names or target in listed):   # an npz array's
        if "target" not in spec_options and not task.feature_names and target not in listed:
            _note_unread_label_column(data_lib.input_files(spec), target)
        target = None                          # name, or a feature: no default label column
    ds = data_lib.load(spec, labels_optional=True, defaults={
        "target": target, "features": by_name, "rate": task.rate, "duration": duration})
    new, old = unit_key(ds.task.unit), unit_key(task.unit)
    preset = PRESETS.get(task.name)
    if new and old and new != old and not (preset and preset.same_unit(ds.task.unit)
                                           and preset.same_unit(task.unit)):
        raise WorkflowError(f"--data: {spec!r} holds {ds.task.name} records labelled in "
                            f"{ds.task.unit}, but the run predicts {task.name} in {task.unit}")
    if task.rate is not None and ds.rate is not None and float(ds.rate) != task.rate:
        kind = data_lib.parse_spec(spec)[0]
        fix = (f"save records sampled at {task.rate:g} Hz (npz arrays are not resampled)"
               if kind == "npz" else f"omit rate= from {spec!r} to read them at {task.rate:g} Hz")
        raise WorkflowError(f"--data: records at {float(ds.rate):g} Hz, but the model was "
                            f"trained at {task.rate:g} Hz (records of the same shape at another "
                            f"rate would be misread); {fix}")
    shape = tuple(int(v) for v in np.shape(ds.x)[1:])
    if shape != task.input_shape:
        hint = ""
        if duration is not None and "duration" in data_lib.parse_spec(spec)[2]:
            hint = f"; omit duration= to read {duration:g} s records, as in training"
        raise WorkflowError(f"--data: expected records of shape {task.input_shape} (as in "
                            f"training), got {shape} from {spec!r}{hint}")
    names = tuple(ds.feature_names)
    if task.feature_names and _named_columns(spec) and names != task.feature_names:
        raise WorkflowError(f"--data: expected the feature columns {list(task.feature_names)} "
                            f"(as in training, in that order), got {list(ds.feature_names)}")
    mu, sigma = train_lib.predict(str(workdir), ds.x,     # a memory map stays one
                                  finite_checked=True)    # load() checked every row
    mu = np.asarray(mu, np.float64)
    sigma = _sigma_or_constant(mu, sigma, meta.get("constant_sigma"), f"--data {spec!r}")
    sigma_cal = cal(mu, sigma)
    corrected, probs = corrector.predict(mu, sigma_cal)
    flag = _entropy_flags(workdir, cal, sigma_cal)
    outside = out_of_range(ds.x, task.feature_range)
    if outside.any():
        logging.getLogger(__name__).warning(
            "%s: %d of %d records have features beyond the training range (signals: a "
            "lead's range over the training samples) by more than its "
            "width; the model extrapolates there (its sigma does not know): flagged, "
            "out_of_range = 1", spec, int(outside.sum()), outside.size)
    lo, hi = central_bounds(0.95, dof=cal.dof)
    cols = {"mu": mu, "sigma": sigma, "sigma_cal": sigma_cal, "lower_95": mu + lo * sigma_cal,
            "upper_95": mu + hi * sigma_cal, "corrected": corrected,
            **{f"p_{k}": v for k, v in probs.items()},
            "entropy": flagging.predictive_entropy(sigma_cal, cal.dof),
            "flag": (flag | outside).astype(int), "out_of_range": outside.astype(int)}
    if (~np.isnan(ds.y)).any():                                 # inf is a label, NaN none
        cols = {"y": np.asarray(ds.y, np.float32), **cols}      # as read: float32
    tmp = None
    try:
        tmp = _tmp_in(output, ".csv")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)            # quotes a threshold name holding a comma
            writer.writerow(cols)
            for row in zip(*cols.values()):
                writer.writerow(_cell(v) for v in row)
        os.replace(tmp, output)
    except OSError as e:                      # its temporary file's name would say nothing
        raise WorkflowError(f"--output: cannot write {output} ({e.strerror or e})") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return len(mu)


def _note_unread_label_column(files, name: str) -> None:
    """Logs when a csv given to a run trained on npz has a column named like the
    npz label array: it is not read as labels unless the spec says target=."""
    for path in files:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = [c.strip() for c in next(csv.reader(f), [])]
        except (OSError, UnicodeDecodeError, csv.Error):
            return                                   # the loader names what is wrong
        if name in header:
            logging.getLogger(__name__).warning(
                "%s: column %r is not read as labels (the run was trained on npz, whose "
                "label array has no column name); add target=%s to the spec to read it",
                path, name, name)


def _cell(v) -> str:
    """One CSV cell: ints as ints; floats in their shortest round-trip form, a
    float32 label as its own (4.1, not 4.099999904632568); "" for NaN (a missing
    label), inf / -inf as such."""
    if isinstance(v, (np.integer, int)):
        return repr(int(v))
    if np.isnan(v):
        return ""
    return repr(float(str(v))) if isinstance(v, np.float32) else repr(float(v))


def out_of_range(x, feature_range) -> np.ndarray:
    """[n] bool: records beyond the training range ``(min [f], max [f])`` by more
    than that range's width (a constant training feature: by more than
    max(|value|, 1)) in any feature of a table ``x`` [n, f], or in any sample of
    a signal lead of ``x`` [n, time, f] (ranges over every training sample of
    the lead; a spike of 1e19 made the network's GroupNorm give one fixed,
    confident prediction). All False without a range (runs trained before it
    was recorded: tabular before session 5, signals before session 14)."""
    if not feature_range:
        return np.zeros(len(x), bool)
    lo, hi = (np.asarray(v, np.float64) for v in feature_range)
    margin = np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
    out = np.zeros(len(x), bool)
    step = readers.row_block(x, itemsize=8)     # a memory map is read a block at a time
    for s in range(0, len(x), step):
        block = np.asarray(x[s:s + step], np.float64)
        out[s:s + step] = np.any((block < lo - margin) | (block > hi + margin),
                                 axis=tuple(range(1, block.ndim)))
    return out


def _check_output(output: Path, inputs: tuple[str, ...]) -> None:
    """``--output`` must name a .csv file (so it can never replace a run file)
    other than the ``inputs`` it is predicted from (a link at one is replaced,
    not followed)."""
    if not str(output) or output.suffix.lower() != ".csv":
        raise WorkflowError(f"--output: expected a path ending in .csv, got {str(output)!r}")
    if output.is_dir():
        raise WorkflowError(f"--output: {output} is a directory; expected a .csv file path")
    for parent in output.parents:                        # the nearest existing ancestor
        if parent.exists():
            if not parent.is_dir():
                raise WorkflowError(f"--output: {parent} is a file, not a directory; expected "
                                    "a .csv path in a directory")
            break
    if output.exists() and not output.is_symlink():
        for path in inputs:
            if os.path.exists(path) and os.path.samefile(output, path):
                raise WorkflowError(f"--output: {output} is the --data input {path}; writing "
                                    "the predictions there would destroy it, name another file")
