"""Parsing of data spec strings ``KIND[:ARG][?KEY=VALUE&...]`` (syntax:
:mod:`hypuc_jax.data.sources`) and the files a spec reads."""
from __future__ import annotations

import math
import os
from typing import Callable

COMMON_OPTIONS = ("strict", "task", "above", "below", "cuts", "unit")
OPTIONS = {
    "simulated": ("n", "rate", "seed", "duration"),
    "csv": ("target", "features", "split"),
    "npz": ("mmap", "rate", "leads"),
    "wfdb": ("labels", "record", "target", "split", "rate", "duration"),
    "diabetes": (),
}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Splits ``"KIND[:ARG][?K=V&...]"`` into ``(kind, arg, options)``.

    Raises:
      ValueError: unknown kind, malformed or repeated option.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec: expected a data spec such as 'simulated:potassium', got {spec!r}")
    head, _, query = spec.strip().partition("?")
    kind, _, arg = head.partition(":")
    if kind not in OPTIONS:
        raise ValueError(f"spec {spec!r}: expected a kind in {sorted(OPTIONS)}, got {kind!r}")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"spec {spec!r}: expected option KEY=VALUE, got {item!r}")
        if key in options:
            raise ValueError(f"spec {spec!r}: option {key!r} given twice")
        if key not in OPTIONS[kind] + COMMON_OPTIONS:
            raise ValueError(f"spec {spec!r}: unknown option {key!r} for {kind}; expected one of "
                             f"{sorted(OPTIONS[kind] + COMMON_OPTIONS)}")
        options[key] = value
    if kind in ("csv", "npz", "wfdb") and not arg:
        raise ValueError(f"spec {spec!r}: expected {kind}:PATH")
    return kind, arg, options


def option(options, key, cast: Callable, default, spec):
    """Option ``key`` of ``options`` (from :func:`parse_spec`) converted by ``cast``.

    Returns:
      ``cast(options[key])``, or ``default`` (not cast) when ``key`` is absent.

    Raises:
      ValueError: ``cast`` raised ValueError; names ``spec``, the option and
        ``cast.__name__`` (e.g. "flag (0/1)").
    """
    if key not in options:
        return default
    try:
        return cast(options[key])
    except ValueError as e:
        raise ValueError(f"spec {spec!r}: option {key}={options[key]!r} is not a valid "
                         f"{cast.__name__}") from e


def positive_option(options, key, default, spec):
    """Option ``key`` as a finite float > 0 (``default`` when absent)."""
    value = option(options, key, float, default, spec)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"spec {spec!r}: option {key}: expected a finite number > 0, "
                         f"got {options[key]!r}")
    return value


def flag(value: str) -> bool:
    """Option cast: "1"/"true"/"yes" -> True, "0"/"false"/"no" -> False (any case).

    Raises:
      ValueError: any other value.
    """
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValueError(value)


flag.__name__ = "flag (0/1)"


def floats(value: str) -> list[float]:
    """Option cast: "1,2.5" -> [1.0, 2.5] (empty items skipped; a bad number raises ValueError)."""
    return [float(v) for v in value.split(",") if v]


floats.__name__ = "comma-separated list of numbers"


def wfdb_labels_file(arg: str, options: dict[str, str]) -> str:
    """The label table of a ``wfdb:DIR`` spec: ``labels=FILE``, else ``DIR/labels.csv``."""
    return options.get("labels", os.path.join(arg, "labels.csv"))


def feature_option(options: dict, spec: str) -> list[str] | None:
    """The column names of a csv spec's ``features=`` option, stripped like header
    names; None without the option.

    Raises:
      ValueError: an empty value or an empty name, naming the spec.
    """
    if "features" not in options:
        return None
    names = [f.strip() for f in options["features"].split(",")]
    if not all(names):
        raise ValueError(f"spec {spec!r}: option features: expected comma-separated "
                         f"column names, got {options['features']!r}")
    return names


def input_files(spec: str) -> tuple[str, ...]:
    """The files a spec reads whole: ``csv:PATH`` / ``npz:PATH`` their PATH,
    ``wfdb:DIR`` its label table (records are ``.hea`` + signal files); none
    for ``simulated`` and ``diabetes``. For refusing an output that would
    replace an input.

    Raises:
      ValueError: as :func:`parse_spec`.
    """
    kind, arg, options = parse_spec(spec)
    if kind == "wfdb":
        return (wfdb_labels_file(arg, options),)
    return (arg,) if kind in ("csv", "npz") else ()
