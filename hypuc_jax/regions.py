"""Label regions for per-region evaluation (SPEC section 7), shared by metrics and flagging.

- Shot regions (Yang et al. 2021, "Delving into Deep Imbalanced Regression"):
  the training labels are counted on equal-width bins; a sample whose label
  falls in a bin with > ``many`` (default 100) training labels is many-shot,
  < ``few`` (default 20) few-shot, medium otherwise. Labels outside the
  training range have zero training labels and count as few-shot. Bin width:
  DIR bins ages at 1 year over a ~100-year range, i.e. about 100 bins over the
  label range; ``shot_bins`` defaults to that (100 equal-width bins between
  the smallest and largest training label) and also accepts explicit edges.
- Named regions: {name: (low, high)}, half-open [low, high) in label units
  (low may be -inf, high +inf), e.g. potassium hypokalemia (-inf, 3.5).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hypuc_jax._predictions import as_float32_labels, as_vector
from hypuc_jax._validation import is_int
from hypuc_jax.config import SHOT_REGION_NAMES

SHOT_REGIONS = SHOT_REGION_NAMES


def validate_regions(regions: Any) -> dict[str, tuple[float, float]]:
    """Checks named regions and returns them as {name: (low, high)} floats.

    Raises:
      ValueError: not a mapping, a bad entry, a NaN bound, an empty range
        (low >= high), or two names equal as strings (1 and "1").
    """
    if regions is None:
        return {}
    if not hasattr(regions, "items"):
        raise ValueError(f"regions: expected a mapping {{name: (low, high)}}, got {regions!r}")
    out = {}
    for name, bounds in regions.items():
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError) as e:
            raise ValueError(f"regions: region {name!r} expected (low, high), got {bounds!r}") from e
        if np.isnan(low) or np.isnan(high) or not low < high:
            raise ValueError(f"regions: region {name!r} is empty or invalid: expected low < high, "
                             f"got [{low}, {high})")
        if str(name) in out:
            raise ValueError(f"regions: two regions are named {str(name)!r}; expected unique names")
        out[str(name)] = (low, high)
    return out


def region_masks(y, regions) -> dict[str, np.ndarray]:
    """Boolean membership of each label in each named region, {name: [n] bool}.

    ``low <= y < high`` compared in float32, the labels' precision (as
    ``_predictions.event``): a label written as a bound (4.1) is in the
    region that starts there, whatever its rounding.
    """
    y = as_float32_labels(as_vector(y, "y"))[0]
    out = {}
    for name, (lo, hi) in validate_regions(regions).items():
        _, lo, hi = as_float32_labels(y, lo, hi)          # y is float32 already: no copy
        out[name] = (y >= lo) & (y < hi)
    return out


def label_bin_edges(labels, bins: Any = 100, name: str = "bins") -> np.ndarray:
    """Edges of equal-width bins over the range of ``labels``, or explicit edges.

    Args:
      labels: reference labels [n] (training labels for shot regions).
      bins: number of equal-width bins (int >= 1), or increasing edges [B + 1].
      name: the argument's name in error messages.

    Returns:
      np.ndarray [B + 1] of increasing edges.
    """
    labels = as_vector(labels, "labels")
    if is_int(bins):
        if bins < 1:
            raise ValueError(f"{name}: expected a positive number of bins, got {bins}")
        lo, hi = float(labels.min()), float(labels.max())
        if hi == lo:
            hi = lo + 1.0
        return np.linspace(lo, hi, int(bins) + 1)
    if np.ndim(bins) != 1:
        raise ValueError(f"{name}: expected an int number of bins or increasing edges [B + 1], "
                         f"got {bins!r}")
    return check_edges(bins, name, "an int or at least 2 increasing edges")


def check_edges(edges, name: str = "edges",
                expected: str = "at least 2 increasing edges") -> np.ndarray:
    """``edges`` as a float64 vector of at least 2 finite, strictly increasing values
    [B + 1]; a ValueError naming ``name`` (and what was ``expected``) otherwise."""
    edges = as_vector(edges, name)
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"{name}: expected {expected}, got {edges}")
    return edges


def bin_index(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each label: bin k is [edges[k], edges[k + 1]), the last bin closed.

    Args:
      y: labels [n] (not validated here).
      edges: increasing bin edges [B + 1] (``label_bin_edges``).

    Returns:
      [n] int bin indices in [0, B), -1 for labels outside [edges[0], edges[-1]].
    """
    idx = np.searchsorted(edges, y, side="right") - 1
    idx = np.where(y == edges[-1], edges.size - 2, idx)
    return np.where((y < edges[0]) | (y > edges[-1]), -1, idx)


def shot_masks(y, train_labels, shot_bins: Any = 100, many: int = 100,
               few: int = 20) -> dict[str, np.ndarray]:
    """Many / medium / few-shot membership of each label, {region: [n] bool}.

    Args:
      y: labels to assign [n].
      train_labels: training labels [m] whose per-bin counts define the regions.
      shot_bins: number of equal-width bins over the training range, or edges.
      many: a bin with more than this many training labels is many-shot.
      few: a bin with fewer than this many training labels is few-shot.

    Returns:
      {"many": [n] bool, "medium": [n] bool, "few": [n] bool}, a partition of y.
    """
    y = as_vector(y, "y")
    train_labels = as_vector(train_labels, "train_labels")
    for key, value in (("many", many), ("few", few)):
        if not is_int(value):
            raise ValueError(f"{key}: expected an int count, got {value!r}")
    if not 0 <= few <= many:
        raise ValueError(f"few: expected 0 <= few <= many, got few={few}, many={many}")
    edges = label_bin_edges(train_labels, shot_bins, "shot_bins")
    train_idx = bin_index(train_labels, edges)
    counts = np.bincount(train_idx[train_idx >= 0], minlength=edges.size - 1)
    idx = bin_index(y, edges)
    c = np.where(idx >= 0, counts[idx.clip(min=0)], 0)
    return {"many": c > many, "medium": (c >= few) & (c <= many), "few": c < few}
