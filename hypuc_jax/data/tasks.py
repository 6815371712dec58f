"""Task definitions: target, unit, named clinical regions, decision thresholds.

A :class:`TaskInfo` travels with every :class:`~hypuc_jax.data.Dataset` so that
evaluation can report per clinical region and corrections can fit one
decision per threshold. The simulator presets (:data:`PRESETS`) add the label
distribution of the simulated target to a task.

Label distributions of the presets (mixture of a normal bulk and an
exponential tail; fractions below are exact for the unclipped mixture and
are checked against ``scipy.stats`` in ``tests/test_simulator.py``):

* ``potassium`` (serum K, mmol/L, rare HIGH tail): 90% N(4.2, 0.35) plus 10%
  4.8 + Exp(scale 0.7), clipped to [2.0, 9.0]. Mean 4.33; 2.0% below 3.5
  (hypokalemia), 3.7% above 5.5, 0.88% above 6.5 (severe hyperkalemia),
  0.025% at the clip 9.0. Real cohorts are similar: most ED/inpatient K
  values lie in 3.5-5.0, hyperkalemia (> 5.5) in a few percent.
  Boundaries: regions are half-open ``[low, high)`` (hyperkalemia is
  ``[5.5, 6.5)``), decision thresholds strict (``K>5.5`` is ``y > 5.5``);
  they differ only for labels exactly at 5.5 or 6.5 (lab values recorded to
  0.1 mmol/L).
* ``lvef`` (left-ventricular ejection fraction, %, rare LOW tail): 85%
  N(60, 6) plus 15% 55 - Exp(scale 10), clipped to [10, 80]. 13% below 50,
  3.4% below 40 (reduced), 1.2% below 30 (severe), 0.17% at the clip 10.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

_INF = math.inf


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A clinical decision threshold on the target.

    Attributes:
      name: display name, e.g. ``"K>5.5"``.
      value: threshold in label units.
      direction: ``"above"`` (positive class y > value) or ``"below"``
        (positive class y < value).
    """
    name: str
    value: float
    direction: str

    def __post_init__(self):
        if self.direction not in ("above", "below"):
            raise ValueError(f"direction: expected 'above' or 'below', got {self.direction!r}")
        if not math.isfinite(float(self.value)):
            raise ValueError(f"value: expected a finite threshold, got {self.value!r}")

    def positive(self, y) -> np.ndarray:
        """Boolean positive-class indicator for values ``y`` [n], compared exactly (for a
        continuous grid of true values; the pipeline's float32 labels are compared in
        float32 by ``_predictions.event``)."""
        y = np.asarray(y)
        return y > self.value if self.direction == "above" else y < self.value


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What is predicted and which ranges of it matter clinically.

    Attributes:
      name: task name (``"potassium"``, ``"lvef"``, ``"diabetes"``, ...).
      target: name of the target variable (column name for tables).
      unit: unit of the target (``"mmol/L"``); may be empty.
      regions: ``{name: (low, high)}`` half-open intervals ``low <= y < high``
        in label units, unbounded ends as ``-inf`` / ``inf``; may be empty.
      thresholds: decision thresholds; may be empty.
    """
    name: str
    target: str
    unit: str = ""
    regions: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    thresholds: tuple[Threshold, ...] = ()

    def __post_init__(self):
        for rname, bounds in self.regions.items():
            if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
                raise ValueError(f"regions[{rname!r}]: expected (low, high) with low < high, got {bounds!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (unbounded region ends become ``None``)."""
        def enc(v):
            return None if math.isinf(v) else float(v)
        return {
            "name": self.name, "target": self.target, "unit": self.unit,
            "regions": {k: [enc(lo), enc(hi)] for k, (lo, hi) in self.regions.items()},
            "thresholds": [{**dataclasses.asdict(t), "value": float(t.value)}
                           for t in self.thresholds],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskInfo":
        """Inverse of :meth:`to_dict`."""
        regions = {k: (-_INF if lo is None else float(lo), _INF if hi is None else float(hi))
                   for k, (lo, hi) in d.get("regions", {}).items()}
        thresholds = tuple(Threshold(t["name"], float(t["value"]), t["direction"])
                           for t in d.get("thresholds", ()))
        return cls(d["name"], d["target"], d.get("unit", ""), regions, thresholds)


@dataclasses.dataclass(frozen=True)
class LabelDistribution:
    """Mixture ``(1 - tail_weight) * N(mean, sd) + tail_weight * tail`` with
    ``tail = tail_start + tail_sign * Exp(tail_scale)``, clipped to ``clip``.

    ``noise_*`` set the aleatoric noise of the ECG given the label: the
    simulator draws the record's "effective" label
    ``y + (noise_base + noise_slope * |y - mean|) * N(0, 1)``, so the signal
    says less about the label at the extremes.
    """
    mean: float
    sd: float
    tail_weight: float
    tail_start: float
    tail_scale: float
    tail_sign: float
    clip: tuple[float, float]
    noise_base: float
    noise_slope: float


def unit_key(unit) -> str:
    """A label unit as compared: case and spaces ignored (mmol/L = mmol / l)."""
    return "".join(str(unit or "").split()).lower()


@dataclasses.dataclass(frozen=True)
class Preset:
    """A simulator preset: the task and its label distribution.

    ``units``: other names of ``task.unit`` for this target (the same numbers:
    mEq/L is mmol/L for a monovalent ion such as potassium).
    """
    task: TaskInfo
    labels: LabelDistribution
    units: tuple[str, ...] = ()

    def same_unit(self, unit) -> bool:
        """Whether ``unit`` names this task's unit (case and spaces aside)."""
        return unit_key(unit) in {unit_key(u) for u in (self.task.unit, *self.units)}


POTASSIUM = TaskInfo(
    name="potassium", target="potassium", unit="mmol/L",
    regions={"hypokalemia": (-_INF, 3.5), "normal": (3.5, 5.5),
             "hyperkalemia": (5.5, 6.5), "severe_hyperkalemia": (6.5, _INF)},
    thresholds=(Threshold("K>5.5", 5.5, "above"), Threshold("K>6.5", 6.5, "above"),
                Threshold("K<3.5", 3.5, "below")),
)

LVEF = TaskInfo(
    name="lvef", target="lvef", unit="%",
    regions={"severe": (-_INF, 30.0), "reduced": (30.0, 40.0),
             "mildly_reduced": (40.0, 50.0), "normal": (50.0, _INF)},
    thresholds=(Threshold("EF<40", 40.0, "below"), Threshold("EF<30", 30.0, "below")),
)

PRESETS: dict[str, Preset] = {
    "potassium": Preset(POTASSIUM, LabelDistribution(
        mean=4.2, sd=0.35, tail_weight=0.10, tail_start=4.8, tail_scale=0.7, tail_sign=1.0,
        clip=(2.0, 9.0), noise_base=0.15, noise_slope=0.15), units=("mEq/L",)),
    "lvef": Preset(LVEF, LabelDistribution(
        mean=60.0, sd=6.0, tail_weight=0.15, tail_start=55.0, tail_scale=10.0, tail_sign=-1.0,
        clip=(10.0, 80.0), noise_base=3.0, noise_slope=0.15)),
}


def get_preset(name: str) -> Preset:
    """Returns the simulator preset ``name`` (ValueError naming the choices)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def get_task(name: str) -> TaskInfo:
    """Returns the task of preset ``name`` (ValueError naming the choices)."""
    return get_preset(name).task
