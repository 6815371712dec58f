"""WFDB records behind ``wfdb:`` data specs: a directory of records and a label table.

Records are read with the ``wfdb`` package, put in the standard lead order,
converted to mV and resampled to the requested rate. Errors name the record
or the label table; nothing is written.
"""
from __future__ import annotations

import fractions
import math
import os

import numpy as np

from hypuc_jax._validation import is_real
from hypuc_jax.data.csv_table import _target_and_split, read_csv_columns
from hypuc_jax.data.simulator import LEAD_NAMES

#: Largest up / down factor of the polyphase resampling (exact ratios of rates).
MAX_RESAMPLE_FACTOR = 100_000


def _finite_positive(value) -> bool:
    return is_real(value) and math.isfinite(value) and value > 0


_LEAD_KEYS = {name.upper(): name for name in LEAD_NAMES}
# Signal unit (lower case) -> factor to mV; "\u00b5" is the micro sign, "\u03bc" Greek mu.
_TO_MV = {"mv": 1.0, "v": 1e3, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "nv": 1e-6}


def _header_lines(path: str) -> list[list[str]]:
    """Token lines of ``path.hea`` without comments; UTF-8, else Latin-1 text."""
    with open(path + ".hea", "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _signal_units(lines: list[list[str]], n_signals: int) -> list:
    """Units of the signal lines (``gain(baseline)/units`` field; None where absent)."""
    units = [ln[2].split("/", 1)[1] if len(ln) > 2 and "/" in ln[2] else None
             for ln in lines[1:1 + n_signals]]
    return units + [None] * (n_signals - len(units))


def _header_units(path: str, names: list[str]) -> list:
    """Units of the signals ``names`` (upper case, the record's order) as written
    in the header text, None where absent (WFDB's default, mV).

    The wfdb package drops a leading micro sign ("\u00b5V" reads as "V"), so
    the text is the reference. A multi-segment record takes them from its
    data segments' headers, by signal name (wfdb scales each segment by its
    own header; a variable layout's layout header need not state them); a
    lead recorded in different units by different segments is refused.
    """
    lines = _header_lines(path)
    if not (lines and "/" in lines[0][0]):              # single segment: "name n_sig ..."
        return _signal_units(lines, len(names))
    import wfdb
    found: dict[str, set] = {}
    for ln in lines[1:]:                                # "segment n_samples"; "~": a gap
        if len(ln) < 2 or ln[0] == "~" or ln[1] == "0":   # 0 samples: the layout header
            continue
        segment = os.path.join(os.path.dirname(path), ln[0])
        seg_names = [str(v).strip().upper() for v in wfdb.rdheader(segment).sig_name]
        for name, unit in zip(seg_names, _signal_units(_header_lines(segment), len(seg_names))):
            found.setdefault(name, set()).add((unit or "mV").strip().lower())
    for name, units in found.items():
        if len(units) > 1:
            raise ValueError(f"{path}: lead {name}: its segments are in different units "
                             f"{sorted(units)}; expected one unit per lead")
    return [next(iter(found[n])) if n in found else None for n in names]


def _read_record(path: str, rate: float):
    """One WFDB record as [time, 12] float32 mV at ``rate`` Hz, standard lead order."""
    import scipy.signal
    import wfdb
    if not os.path.exists(path + ".hea"):
        raise ValueError(f"{path}: WFDB header {path}.hea not found")
    try:
        rec = wfdb.rdrecord(path)
    except Exception as e:  # wfdb raises many types for corrupt files
        raise ValueError(f"{path}: unreadable WFDB record ({type(e).__name__}: {e})") from e
    names = [str(s).strip().upper() for s in rec.sig_name]
    if len(names) != 12 or sorted(names) != sorted(_LEAD_KEYS):
        raise ValueError(f"{path}: expected the 12 standard leads {list(LEAD_NAMES)}, got "
                         f"{len(names)} signals {list(rec.sig_name)}")
    order = [names.index(k) for k in _LEAD_KEYS]
    sig = np.asarray(rec.p_signal, np.float64)[:, order]
    written = _header_units(path, names)
    units = [str(written[i] or rec.units[i]).strip().lower() for i in order]
    for name, unit in zip(_LEAD_KEYS, units):
        if unit not in _TO_MV:
            raise ValueError(f"{path}: lead {name}: unit {unit!r}: expected mV, uV, V or nV "
                             "(a voltage; the signals are converted to mV)")
    sig = sig * np.array([_TO_MV[u] for u in units])
    if rec.fs != rate:
        ratio = fractions.Fraction(float(rate)) / fractions.Fraction(float(rec.fs))
        if ratio < fractions.Fraction(1, 1000):
            raise ValueError(f"{path}: rate: expected at least 1/1000 of the record's "
                             f"{float(rec.fs):g} Hz to resample to, got {rate:g} Hz")
        # exact for rates in whole Hz up to the cap: 1001 Hz -> 100 Hz is 100/1001 (a
        # denominator capped at 1000 made it 1/10, 0.1% off the rate); other ratios
        # within about 1e-10 / denominator
        frac = ratio.limit_denominator(MAX_RESAMPLE_FACTOR)
        sig = scipy.signal.resample_poly(sig, frac.numerator, frac.denominator, axis=0)
    if sig.shape[0] < 1:
        raise ValueError(f"{path}: expected at least one sample at {rate:g} Hz, got none")
    return sig.astype(np.float32)


def read_wfdb_dir(directory, labels_path, *, record_col, target, split_col, rate, duration,
                  labels_optional=False, named_target=False):
    """WFDB records listed in a label table.

    Args:
      rate: sampling rate in Hz (finite, > 0) every record is resampled to.
      duration: seconds (finite, > 0, at least one sample at ``rate``) every
        record is cut to; None: the first record's length.

    Returns:
      ``(x [n, time, 12] float32, y [n] float32, split or None, target name)``;
      a record listed twice is refused (for prediction, ``labels_optional``,
      it is read twice); with ``labels_optional`` a table without the target column (or, with
      no ``target`` given, with no column besides record and split) has NaN y;
      a ``target`` the spec names (``named_target``) must be a column.
    """
    if not _finite_positive(rate):
        raise ValueError(f"rate: expected a finite sampling rate > 0 Hz, got {rate!r}")
    if duration is not None:
        if not _finite_positive(duration):
            raise ValueError(f"duration: expected a finite number of seconds > 0, got {duration!r}")
        if not np.isfinite(duration * rate) or round(duration * rate) < 1:
            raise ValueError(f"duration: expected round(duration * rate) to be a finite number "
                             f">= 1 of samples, got {duration:g} s at {rate:g} Hz")
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: WFDB directory not found")
    cols = read_csv_columns(labels_path)
    if record_col not in cols:
        raise ValueError(f"{labels_path}: record column {record_col!r} not found; columns: {list(cols)}")
    if target is None:
        others = [c for c in cols if c not in (record_col, split_col)]
        if labels_optional and not others:
            target = ""                          # a label table of records only: no labels
        elif len(others) != 1:
            raise ValueError(f"{labels_path}: cannot tell the target column among {others}; "
                             "add the option target=COLUMN")
        else:
            target = others[0]
    y, split = _target_and_split(labels_path, cols, target, split_col, labels_optional,
                                 named_target)
    if not labels_optional:        # training data: one record in two rows leaks across splits
        seen: dict[str, int] = {}
        for i, name in enumerate(cols[record_col]):
            key = os.path.normpath(os.path.join(directory, name))
            if key in seen:
                raise ValueError(f"{labels_path}: record {name!r} is listed twice (rows "
                                 f"{seen[key]} and {i}); expected one row per record")
            seen[key] = i
    n_time = None if duration is None else int(round(duration * rate))
    signals = []
    for name in cols[record_col]:
        sig = _read_record(os.path.join(directory, name), rate)
        if n_time is None:
            n_time = sig.shape[0]
        if sig.shape[0] < n_time:
            raise ValueError(f"{os.path.join(directory, name)}: expected at least {n_time} samples "
                             f"at {rate:g} Hz, got {sig.shape[0]}")
        signals.append(sig[:n_time])
    return np.stack(signals), y.astype(np.float32), split, target
