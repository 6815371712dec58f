"""The calibrators' shared base: JSON serialisation, format versions and the task check.

``hypuc_jax.calibration`` (global and hyperfine scaling) and
``hypuc_jax.isotonic`` (the isotonic baseline) subclass ``_Calibrator``;
users reach every calibrator through ``hypuc_jax.calibration``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import ClassVar

import numpy as np

from hypuc_jax._predictions import check_predictions
from hypuc_jax._validation import is_real, plain_scalar

FORMAT_VERSION = 4  # 2: hyperfine's predictive tail (dof), version 1 reads as Gaussian;
# 3: isotonic knots in z (version-2 levels p convert on reading); 4: isotonic fitted at
# plotting positions i / (n + 1) (earlier ones put no probability above the largest
# validation residual: the run directory stages refuse them, ISOTONIC_SINCE)
_READABLE_VERSIONS = (1, 2, 3, 4)
ISOTONIC_SINCE = 4


def check_task(saved: str | None, task: str | None, name: str = "task") -> None:
    """Raises ValueError when a saved object belongs to another task.

    Args:
      saved: task name stored with the object (None if it was fitted without one).
      task: task the caller expects, or None to accept any.
      name: argument name used in the error message.
    """
    if task is not None and saved != task:
        raise ValueError(f"{name}: expected an object fitted for task {task!r}, "
                         f"got one fitted for task {saved!r}")


def positive_factor(value, name: str) -> float:
    """``value`` as a float, checked finite and > 0 (a fitted or loaded scale factor)."""
    value = plain_scalar(value)
    if not is_real(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def unit_level(value, name: str) -> float:
    """``value`` as a float in (0, 1) (a nominal coverage)."""
    value = plain_scalar(value)
    if not is_real(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a coverage in (0, 1), got {value!r}")
    return float(value)


def float_list(value, name: str, length: int | None = None, *, increasing: bool = False,
               low: float = -math.inf, high: float = math.inf) -> list:
    """``value`` as a list of finite floats in [low, high], checked for length and order.

    Args:
      value: a sequence of numbers.
      name: argument name used in the error message.
      length: required length, or None for any.
      increasing: require strictly increasing values.
      low, high: bounds every value must lie within.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    expected = (f"a list of{'' if length is None else f' {length}'} finite numbers"
                f"{' in [%g, %g]' % (low, high) if math.isfinite(low) or math.isfinite(high) else ''}"
                f"{', strictly increasing' if increasing else ''}")
    if (arr is None or arr.ndim != 1 or (length is not None and arr.size != length)
            or not np.all(np.isfinite(arr)) or np.any(arr < low) or np.any(arr > high)
            or (increasing and np.any(np.diff(arr) <= 0))):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return arr.tolist()


class _Calibrator:
    """Shared serialisation for the calibrators (dataclass subclasses)."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict:
        """JSON-ready dict: method, task, format version and parameters."""
        out = {"method": self.method, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @classmethod
    def from_dict(cls, d: dict, task: str | None = None):
        """Rebuilds a calibrator from ``to_dict`` output.

        Args:
          d: dict from ``to_dict``.
          task: expected task name; None accepts any.

        Raises:
          ValueError: wrong method, unknown format, or a different task.
        """
        if not isinstance(d, dict) or d.get("method") != cls.method:
            got = d.get("method") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"d: expected a {cls.method!r} calibrator dict, got method {got!r}")
        if d.get("format_version") not in _READABLE_VERSIONS:
            raise ValueError(f"d: expected format_version in {_READABLE_VERSIONS}, "
                             f"got {d.get('format_version')!r}")
        check_task(d.get("task"), task)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"d: {cls.method!r} calibrator dict lacks {missing}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def save(self, path: str | os.PathLike) -> None:
        """Writes the calibrator as JSON to ``path`` (e.g. DIR/calibration.json)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike, task: str | None = None):
        """Reads a calibrator saved with ``save``; ``task`` as in ``from_dict``."""
        with open(path) as fh:
            return cls.from_dict(json.load(fh), task=task)

    def _inputs(self, mu, sigma):
        mu, sigma, _ = check_predictions(mu, sigma)
        return mu, sigma

    @property
    def predictive_dof(self) -> float:
        """Family of the calibrated predictive mu + sigma Z: inf (Gaussian) here."""
        return math.inf
