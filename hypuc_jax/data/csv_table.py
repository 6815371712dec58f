"""CSV tables behind :func:`hypuc_jax.data.load`: ``csv:`` sources and WFDB label tables.

Cells are strings parsed to float64 (``MISSING`` markers -> NaN), checked
against float32 (the model's precision) and named in every error.
"""
from __future__ import annotations

import csv
import logging
import math

import numpy as np

from hypuc_jax.data._float32 import _check_float32_precision, _check_float32_range
from hypuc_jax.data.readers import _check_file, normalise_split


def read_csv_columns(path: str, used=None) -> dict[str, list[str]]:
    """Header + rows of a CSV file as ``{column: [str]}``.

    Blank and whitespace-only lines are skipped, as pandas does; a line
    holding one empty field (pandas writes a missing value of a one-column
    table as ``""``) is a record with a missing cell, not a blank line (in a
    wider table: a record with every cell missing, as pandas reads it).
    ``used``: the column names the caller reads (None: every column); a
    duplicated name among them is an error, other duplicated columns are
    left out.
    """
    _check_file(path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:   # drops a UTF-8 BOM
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: unreadable CSV file ({e})") from e
    rows = [r for r in rows if r and (r == [""] or len(r) > 1 or r[0].strip())]  # as pandas
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one data row, "
                         f"got {len(rows)} non-empty lines")
    header = [h.strip() for h in rows[0]]
    rows = rows[:1] + [[""] * len(header) if r == [""] else r for r in rows[1:]]  # all missing
    repeated = sorted({h for h in header if header.count(h) > 1})
    clash = [h for h in repeated if used is None or h in set(used)]
    if clash:
        raise ValueError(f"{path}: duplicate column names {clash} in header {header}")
    for i, r in enumerate(rows[1:]):
        if len(r) != len(header):
            raise ValueError(f"{path}: data row {i} has {len(r)} fields, the header has {len(header)}")
    return {h: [r[j].strip() for r in rows[1:]] for j, h in enumerate(header)
            if h not in repeated}


#: Cells read as a missing value (NaN): pandas' default ``na_values``.
MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                     "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                     "nan", "null"})


def parse_numeric(values: list[str]) -> tuple[np.ndarray | None, int | None]:
    """float64 column [n] (the ``MISSING`` markers -> NaN), or ``(None, first bad row)``
    when a cell is not a number."""
    arr = np.asarray(values)
    try:
        return np.where(np.isin(arr, list(MISSING)), "nan", arr).astype(np.float64), None
    except ValueError:
        for i, v in enumerate(values):
            try:
                float("nan" if v in MISSING else v)
            except ValueError:
                return None, i
    return None, 0  # unreachable: astype failed so some value failed above


def _is_number(cell: str) -> bool:
    """A finite number (not a missing marker, nor a name such as 'Nan' or 'infinity')."""
    try:
        return math.isfinite(float(cell)) and cell not in MISSING
    except ValueError:
        return False


def _mostly_numbers(cells: list[str]) -> bool:
    """More than half of the non-missing cells are finite numbers: a numeric column with
    a few bad cells (refused), not a text column with a few number-like ids (skipped)."""
    given = [c for c in cells if c not in MISSING]
    return 2 * sum(map(_is_number, given)) > len(given)


def _target_and_split(path, cols, target, split_col, labels_optional=False, named_target=False):
    """Numeric target column and optional split column of a CSV table.

    Returns:
      ``(y [n] float64, split [n] or None)``; a missing or non-numeric column
      raises ValueError naming ``path`` and the column, and so does a target
      column without any value (unless ``labels_optional``) or with values
      beyond the float32 range. With ``labels_optional`` a missing target
      column gives NaN labels, unless ``named_target`` (the spec named it).
    """
    absent_ok = labels_optional and not named_target
    for what, name in (("target", target), ("split", split_col)):
        if name is not None and name not in cols and not (absent_ok and what == "target"):
            raise ValueError(f"{path}: {what} column {name!r} not found; columns: {list(cols)}")
    if target not in cols:
        n = len(next(iter(cols.values()))) if cols else 0
        return np.full(n, np.nan), (None if split_col is None else normalise_split(
            cols[split_col], f"{path}: column {split_col!r}"))
    y, bad = parse_numeric(cols[target])
    if y is None:
        raise ValueError(f"{path}: target column {target!r} is not numeric (row {bad}: "
                         f"{cols[target][bad]!r})")
    if not labels_optional and np.isnan(y).all():
        raise ValueError(f"{path}: target column {target!r} is empty: expected numeric labels, "
                         f"got no value in any of its {len(y)} rows")
    _check_float32_range(path, target, y)
    if not labels_optional:
        _check_float32_precision(path, target, y)
    split = None if split_col is None else normalise_split(cols[split_col], f"{path}: column {split_col!r}")
    return y, split


def read_csv_table(path, target, features, split_col, labels_optional=False, named_target=False):
    """Features, target and split of a table.

    Returns:
      ``(x [n, f] float32, y [n] float32, split [n] or None, feature names)``;
      with ``labels_optional`` a table without the target column has NaN y
      (unless ``named_target``: a column the spec names must exist).
      Without ``features``, non-numeric and empty (no value in any row)
      columns are skipped with a log line; listed in ``features`` they raise.

    Raises:
      ValueError: naming ``path`` and the column, also for a value beyond
        the float32 range (|value| > 3.4e38).
    """
    cols = read_csv_columns(path, None if features is None else [*features, target, split_col])
    y, split = _target_and_split(path, cols, target, split_col, labels_optional, named_target)
    if features is not None:
        missing = [c for c in features if c not in cols]
        if missing:
            raise ValueError(f"{path}: feature columns {missing} not found; columns: {list(cols)}")
        if target in features:
            raise ValueError(f"{path}: the target column {target!r} is also listed as a feature")
        repeated = sorted({c for c in features if features.count(c) > 1})
        if repeated:
            raise ValueError(f"{path}: feature columns {repeated} are listed more than once")
    names, xs, skipped, unnamed = [], [], [], []
    for name in (features if features is not None else cols):
        if features is None and name in (target, split_col):
            continue
        if features is None and name == "" and name == next(iter(cols)):   # pandas' index
            unnamed.append(name)
            continue
        col, bad = parse_numeric(cols[name])
        if col is None:
            if features is not None or _mostly_numbers(cols[name]):
                raise ValueError(f"{path}: feature column {name!r} is not numeric (row {bad}: "
                                 f"{cols[name][bad]!r})" + ("" if features is not None else
                                 "; a column of numbers with text cells: fix those cells (missing "
                                 "values: empty, NA or nan) or leave the column out with "
                                 "features="))
            skipped.append(name)
            continue
        if np.isnan(col).all():                  # no value at all: nothing numeric to learn from
            if features is not None:
                raise ValueError(f"{path}: feature column {name!r} is empty: expected numbers, "
                                 f"got no value in any of its {len(col)} rows")
            skipped.append(name)
            continue
        _check_float32_range(path, name, col)
        if not labels_optional:
            _check_float32_precision(path, name, col)
        names.append(name)
        xs.append(col)
    if skipped:
        logging.getLogger(__name__).warning("%s: skipped non-numeric columns %s", path, skipped)
    if unnamed:
        logging.getLogger(__name__).warning("%s: skipped the column without a name (a saved "
                                            "index, e.g. pandas' to_csv()); name it and list it "
                                            "in features= to use it", path)
    if not xs:
        raise ValueError(f"{path}: no numeric feature columns besides the target {target!r}")
    x = np.stack(xs, axis=1).astype(np.float32)
    return x, y.astype(np.float32), split, names
