"""Data sources named by one spec string: ``load(spec) -> Dataset``.

Spec syntax (one shell word; quote it because of ``&``)::

    KIND[:ARG][?KEY=VALUE&KEY=VALUE...]

======================  ======================================================
``simulated[:PRESET]``  the embedded ECG simulator (PRESET ``potassium``
                        (default) or ``lvef``); options ``n`` (2000), ``rate``
                        (100 Hz), ``seed`` (0), ``duration`` (10 s).
``csv:PATH``            a table with a header row; ``target=COL`` (required),
                        ``features=a,b,c`` (default: every numeric column but
                        the target and split columns; text and unnamed index
                        columns are skipped with a log line, a column mixing
                        numbers and text is an error), ``split=COL`` (a fixed
                        split column with values train / val / test). Cells
                        empty or NA / n/a / null / nan (pandas' markers) are
                        missing values.
``npz:PATH``            arrays ``x`` [n, time, leads] (signal) or
                        [n, features] (tabular), ``y`` [n] and optionally
                        ``split`` [n] (train / val / test). ``x`` is memory
                        mapped (``mmap=1``, default), which needs an
                        UNCOMPRESSED file (``np.savez``, not
                        ``np.savez_compressed``); ``mmap=0`` loads into RAM
                        and accepts both. ``rate=HZ`` records the sampling
                        rate, ``leads=K`` checks the lead count.
``wfdb:DIR``            WFDB records (``.hea`` + signal files, e.g. PTB-XL)
                        listed in a label table ``labels=FILE`` (default
                        ``DIR/labels.csv``) with a ``record=COL`` column
                        (default ``record``, a record path relative to DIR)
                        and ``target=COL`` (default: the only other column);
                        optional ``split=COL``. Signals are resampled to
                        ``rate`` (100 Hz), cut to ``duration`` seconds
                        (default: the first record's length), converted to mV
                        and put in the order I, II, III, aVR, aVL, aVF,
                        V1..V6 by signal name.
``diabetes``            scikit-learn's diabetes data (442 x 10, unscaled
                        disease-progression target).
======================  ======================================================

Options for every kind: ``strict=1`` turns dropped rows (NaN/inf in features
or label) into an error; ``task=potassium`` (a simulator preset) borrows its
named regions and thresholds; ``above=5.5,6.5`` / ``below=3.5`` add decision
thresholds (finite, each at most once, none repeating one of ``task``);
``cuts=3.5,5.5,6.5`` defines regions between cut points; ``unit=mmol/L``
names the label unit (simulated labels are always in the preset's unit, and
``task=``'s cut-offs are in its unit, so with either it may only repeat that
unit, case and spaces aside). ``rate`` and ``duration`` are finite
numbers > 0. Paths may not contain ``?`` or ``&``.

Every problem raises ``ValueError`` naming the spec's source (file, record or
option) and what was expected; loading never writes a file.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np

from hypuc_jax.data import csv_table, readers, wfdb_records
from hypuc_jax.data.simulator import LEAD_NAMES, simulate
from hypuc_jax.data.spec import (OPTIONS, feature_option, flag, floats, option, parse_spec,
                                  positive_option, wfdb_labels_file)
from hypuc_jax.data.tasks import TaskInfo, Threshold, get_preset

log = logging.getLogger(__name__)

#: wfdb resampling limits: ECG devices record at 10 kHz at most; 2**31 - 1 samples
#: per lead is the int32 index limit of an XLA dimension
MAX_RATE = 1e6
MAX_SAMPLES = 2 ** 31 - 1


@dataclasses.dataclass
class Dataset:
    """Inputs, labels and metadata of one data source.

    Attributes:
      x: [n, time, leads] (``kind="signal"``) or [n, features]
        (``kind="tabular"``); a float32 numpy array, or for ``npz`` sources
        a read-only memory map (of the file's dtype) or a
        :class:`~hypuc_jax.data.readers.RowView` of one.
      y: [n] float32 labels in label units.
      task: the task (target, unit, named regions, thresholds).
      kind: ``"signal"`` or ``"tabular"``.
      rate: sampling rate in Hz for signals, else None.
      split: optional [n] fixed split (``"train"`` / ``"val"`` / ``"test"``).
      feature_names: lead names (signals) or column names (tables).
      source: the spec string it was loaded from.
    """
    x: Any
    y: np.ndarray
    task: TaskInfo
    kind: str
    rate: float | None = None
    split: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()
    source: str = ""

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _exact(v: float) -> str:
    """``v`` in 6 significant digits when that is exact (5.5), else in full (5.5000001,
    1234567.0): names of distinct thresholds and cut regions never merge."""
    short = f"{v:g}"
    return short if float(short) == v else repr(float(v))


def _task(name: str, target: str, options: dict[str, str], spec: str) -> TaskInfo:
    """Task of a loaded source from the common options."""
    regions: dict[str, tuple[float, float]] = {}
    thresholds: list[Threshold] = []
    unit = options.get("unit", "")
    if "task" in options:
        try:
            preset = get_preset(options["task"])
        except ValueError as e:
            raise ValueError(f"spec {spec!r}: option task: {e}") from e
        base = preset.task
        regions, thresholds = dict(base.regions), list(base.thresholds)
        unit = options.get("unit", base.unit)
        if base.unit and not preset.same_unit(unit):
            raise ValueError(f"spec {spec!r}: option unit: the ranges and thresholds of task "
                             f"{options['task']!r} are in {base.unit}, got {unit!r}; for labels "
                             f"in {base.unit} drop unit= (or name it so), for others drop "
                             "task= and give above=/below= in their unit")
    base_thresholds = tuple(thresholds)
    for direction, sign in (("above", ">"), ("below", "<")):
        values = option(options, direction, floats, [], spec)
        if direction in options and not values:
            raise ValueError(f"spec {spec!r}: option {direction}: expected one or more numbers, "
                             f"got {options[direction]!r}")
        for v in values:
            if not math.isfinite(v):
                raise ValueError(f"spec {spec!r}: option {direction}: expected finite numbers, "
                                 f"got {options[direction]!r}")
            new = Threshold(f"{target}{sign}{_exact(v)}", v, direction)
            for t in thresholds:
                if t.name == new.name or (t.direction, t.value) == (direction, v):
                    source = (f"of the task {options['task']!r}" if t in base_thresholds
                              else "given before")
                    raise ValueError(f"spec {spec!r}: option {direction}: expected distinct "
                                     f"thresholds, but {v:g} ({new.name!r}) repeats the threshold "
                                     f"{t.name!r} ({t.direction} {t.value:g}) {source}")
            thresholds.append(new)
    cuts = option(options, "cuts", floats, None, spec)
    if cuts is not None:
        if not cuts or any(not math.isfinite(c) for c in cuts) or sorted(set(cuts)) != cuts:
            raise ValueError(f"spec {spec!r}: option cuts: expected increasing finite numbers, "
                             f"got {options['cuts']!r}")
        edges = [-math.inf] + cuts + [math.inf]
        regions = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            label = (f"<{_exact(hi)}" if lo == -math.inf else f">={_exact(lo)}" if hi == math.inf
                     else f"{_exact(lo)}-{_exact(hi)}")
            regions[label] = (lo, hi)
    return TaskInfo(name=name, target=target, unit=unit, regions=regions,
                    thresholds=tuple(thresholds))


def check_finite_inputs(x, *, where: str) -> None:
    """Raises unless every row of ``x`` [n, ...] is finite (prediction keeps every row).

    Raises:
      ValueError: naming ``where``, the count and the first bad row.
    """
    ok = readers.finite_rows(x)
    if not ok.all():
        raise ValueError(f"{where}: {int(ok.size - ok.sum())} rows with NaN/inf in the inputs "
                         f"(first: row {int(np.flatnonzero(~ok)[0])}); predictions keep one row "
                         "per record, so drop or impute them first")


def _nonfinite_columns(x, y, names) -> str:
    """'; NaN/inf per column: 'b' 360, label 2' for tabular ``x`` [n, f] (else '')."""
    if not isinstance(x, np.ndarray) or isinstance(x, np.memmap) or x.ndim != 2:
        return ""
    counts = [(f"{n!r}", int(c)) for n, c in zip(names or range(x.shape[1]),
                                                  (~np.isfinite(x)).sum(axis=0)) if c]
    counts += [("label", int((~np.isfinite(y)).sum()))] if not np.isfinite(y).all() else []
    counts.sort(key=lambda t: -t[1])
    return "; NaN/inf per column: " + ", ".join(f"{n} {c}" for n, c in counts[:5]) + (
        ", ..." if len(counts) > 5 else "")


def drop_nonfinite(x, y, split, *, strict: bool, where: str, names=()):
    """Drops rows with NaN/inf in ``x`` [n, ...] or ``y`` [n] (logged count).

    ``x`` may be a memory map: it is scanned in row blocks and rows are
    dropped through a :class:`readers.RowView`, never materialised. For an
    in-memory table the messages count the NaN/inf per column (``names``).

    Raises:
      ValueError: ``strict`` and some row is not finite, or no row is left.
    """
    ok = readers.finite_rows(x) & np.isfinite(y)
    n_bad = int(ok.size - ok.sum())
    if n_bad == 0:
        return x, y, split
    first = int(np.flatnonzero(~ok)[0])
    per_column = _nonfinite_columns(x, y, names)
    if strict:
        raise ValueError(f"{where}: {n_bad} rows with NaN/inf in features or label (first: row "
                         f"{first}{per_column}); strict mode forbids dropping them")
    if n_bad == ok.size:
        raise ValueError(f"{where}: every one of the {n_bad} rows has NaN/inf in features or "
                         f"label{per_column}")
    log.warning("%s: dropped %d of %d rows with NaN/inf in features or label (first: row %d%s)",
                where, n_bad, ok.size, first, per_column)
    keep = np.flatnonzero(ok)
    x = x[keep] if isinstance(x, np.ndarray) and not isinstance(x, np.memmap) else readers.RowView(x, keep)
    return x, y[keep], None if split is None else split[keep]


def _load_simulated(arg, options, spec, labels_optional=False):
    preset = arg or "potassium"
    try:
        chosen = get_preset(preset)
    except ValueError as e:
        raise ValueError(f"spec {spec!r}: {e}") from e
    task = chosen.task
    if not chosen.same_unit(options.get("unit", task.unit)):
        raise ValueError(f"spec {spec!r}: option unit: simulated {preset} labels are in "
                         f"{task.unit} and the simulator does not convert them, got "
                         f"{options['unit']!r}")
    n = option(options, "n", int, 2000, spec)
    rate = positive_option(options, "rate", 100.0, spec)
    seed = option(options, "seed", int, 0, spec)
    duration = positive_option(options, "duration", 10.0, spec)
    if options.get("task", preset) != preset:
        raise ValueError(f"spec {spec!r}: option task: simulated {preset} data has the {preset} "
                         f"task's labels, regions and thresholds; got task={options['task']!r} "
                         f"(simulate that preset instead: 'simulated:{options['task']}')")
    if any(k in options for k in ("task", "above", "below", "cuts")):  # checked before simulating
        task = _task(task.name, task.target, dict(options, task=options.get("task", preset),
                                                  unit=task.unit), spec)
    try:
        x, y = simulate(seed, n, preset=preset, rate=rate, duration=duration)
    except ValueError as e:
        raise ValueError(f"spec {spec!r}: {e}") from e
    except MemoryError:       # numpy's message names a shape, not the options that set it
        raise ValueError(f"spec {spec!r}: {n} records of {duration:g} s at {rate:g} Hz x "
                         f"{len(LEAD_NAMES)} leads do not fit in memory; lower n, duration or "
                         "rate") from None
    return Dataset(x, y, task, "signal", rate, None, LEAD_NAMES, spec)


def _load_diabetes(arg, options, spec, labels_optional=False):
    from sklearn.datasets import load_diabetes
    if arg:
        raise ValueError(f"spec {spec!r}: 'diabetes' takes no argument, got {arg!r}")
    bunch = load_diabetes(scaled=False)
    x, y = np.asarray(bunch.data, np.float32), np.asarray(bunch.target, np.float32)
    task = _task("diabetes", "progression", options, spec)
    return Dataset(x, y, task, "tabular", None, None, tuple(bunch.feature_names), spec)


def _load_csv(arg, options, spec, labels_optional=False, named_target=False):
    target = options.get("target")
    if not target and not labels_optional:      # unlabelled data (predict) may name none
        raise ValueError(f"spec {spec!r}: csv needs the option target=COLUMN")
    features = options.get("features")
    if isinstance(features, str):    # from the spec; else a default tuple of names
        features = feature_option(options, spec)
    features = features or None
    x, y, split, names = csv_table.read_csv_table(arg, target, features, options.get("split"),
                                                labels_optional, named_target)
    stem = os.path.splitext(os.path.basename(arg))[0]
    return Dataset(x, y, _task(stem, target, options, spec), "tabular", None, split,
                   tuple(names), spec)


def _load_npz(arg, options, spec, labels_optional=False):
    mmap = option(options, "mmap", flag, True, spec)
    rate = positive_option(options, "rate", None, spec)
    leads = option(options, "leads", int, None, spec)
    x, y, split = readers.read_npz(arg, mmap=mmap, labels_optional=labels_optional)
    kind = "signal" if x.ndim == 3 else "tabular"
    if leads is not None and (x.ndim != 3 or x.shape[2] != leads):
        raise ValueError(f"{arg}: expected x of shape [n, time, {leads}] (option leads={leads}), "
                         f"got {tuple(x.shape)}")
    if rate is not None and x.ndim != 3:
        raise ValueError(f"{arg}: option rate={options['rate']} is for signals x [n, time, "
                         f"leads], got tabular x of shape {tuple(x.shape)}; drop it")
    names = tuple(f"lead{i}" if kind == "signal" else f"x{i}" for i in range(x.shape[-1]))
    stem = os.path.splitext(os.path.basename(arg))[0]
    return Dataset(x, y, _task(stem, "y", options, spec), kind, rate if kind == "signal" else None,
                   split, names, spec)


def _load_wfdb(arg, options, spec, labels_optional=False, named_target=False):
    rate = positive_option(options, "rate", 100.0, spec)
    duration = positive_option(options, "duration", None, spec)
    if rate > MAX_RATE:
        raise ValueError(f"spec {spec!r}: option rate: expected at most {MAX_RATE:g} Hz, got "
                         f"{options['rate']!r}")
    if duration is not None and not (math.isfinite(duration * rate)
                                     and 1 <= round(duration * rate) <= MAX_SAMPLES):
        raise ValueError(f"spec {spec!r}: option duration: expected 1 to {MAX_SAMPLES} samples "
                         f"per lead, got {duration:g} s at rate {rate:g} Hz")
    labels = wfdb_labels_file(arg, options)
    x, y, split, target = wfdb_records.read_wfdb_dir(
        arg, labels, record_col=options.get("record", "record"), target=options.get("target"),
        split_col=options.get("split"), rate=rate, duration=duration,
        labels_optional=labels_optional, named_target=named_target)
    return Dataset(x, y, _task(target, target, options, spec), "signal", rate, split, LEAD_NAMES,
                   spec)


_LOADERS = {"simulated": _load_simulated, "csv": _load_csv, "npz": _load_npz,
            "wfdb": _load_wfdb, "diabetes": _load_diabetes}


def load(spec: str, *, strict: bool | None = None, labels_optional: bool = False,
         defaults: dict[str, Any] | None = None) -> Dataset:
    """Loads the data source named by ``spec`` (syntax in the module docstring).

    Args:
      spec: data spec string, e.g. ``"simulated:potassium?n=2000&rate=100"``,
        ``"csv:data.csv?target=K"``, ``"npz:ecg.npz"``, ``"wfdb:ptbxl/"``,
        ``"diabetes"``.
      strict: default for the ``strict`` option when the spec does not set
        it (False: drop NaN/inf rows with a log line).
      labels_optional: for prediction: a csv/npz/wfdb source without its
        label column / array loads with NaN labels (unless the spec itself
        names the column with ``target=``; a csv spec need not name one),
        labels may be missing per row,
        and no row is ever dropped (a row with NaN/inf inputs raises
        instead, so outputs line up with the records).
      defaults: options used where the spec does not set them (those its
        kind accepts; others are ignored), e.g. a run's ``target`` and, for
        csv, its training ``features`` as a tuple of column names (names may
        then hold characters a spec string cannot).

    Returns:
      A :class:`Dataset`; ``x`` float32 (a memory map for ``npz`` sources),
      ``y`` float32 [n].

    Raises:
      ValueError: naming the file/option and the problem.
    """
    kind, arg, options = parse_spec(spec)
    named = {"named_target": "target" in options} if kind in ("csv", "wfdb") else {}
    options = {**{k: v for k, v in (defaults or {}).items()
                  if k in OPTIONS[kind] and v not in (None, "", ())}, **options}
    strict = option(options, "strict", flag, bool(strict), spec)
    ds = _LOADERS[kind](arg, options, spec, labels_optional, **named)
    where = arg if arg else spec
    if labels_optional:
        check_finite_inputs(ds.x, where=where)
        ds.y = np.asarray(ds.y, np.float32)
        return ds
    ds.x, ds.y, ds.split = drop_nonfinite(ds.x, np.asarray(ds.y, np.float32), ds.split,
                                          strict=strict, where=where, names=ds.feature_names)
    return ds


def load_for_config(config) -> Dataset:
    """``load(config.data.spec)`` with the config's ``strict`` as default and
    ``config.data.target`` as the ``target`` option of csv/wfdb specs.

    Raises:
      ValueError: as :func:`load`; ``data.target`` set for another kind of
        data, or different from the spec's own ``target`` option.
    """
    spec = config.data.spec
    target = getattr(config.data, "target", None)
    if target:
        kind, _, options = parse_spec(spec)
        if kind not in ("csv", "wfdb"):
            raise ValueError(f"data.target (--target): applies to csv and wfdb data only; "
                             f"{kind} data has its own label, got target={target!r}")
        if options.get("target", target) != target:
            raise ValueError(f"data.target (--target): {target!r} conflicts with the spec's "
                             f"target={options['target']!r}; give the target once")
    return load(spec, strict=bool(getattr(config.data, "strict", False)),
                defaults={"target": target})
