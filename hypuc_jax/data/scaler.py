"""Per-lead (signals) or per-feature (tables) standardisation of ``x`` and of ``y``,
fitted on the training rows only and stored as JSON with the run (:class:`Scaler`)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hypuc_jax import _validation as V
from hypuc_jax.data._float32 import _CONSTANT_REL, _F32_MAX, _TINY
from hypuc_jax.data.readers import row_block

_BLOCK = 2048


def _check_indices(indices, n: int) -> np.ndarray:
    """``indices`` as a non-empty 1-D int64 array of row numbers in ``[0, n)``."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices: expected a non-empty 1-D index array, got shape {idx.shape}")
    if idx.dtype == np.bool_:
        raise ValueError("indices: expected integer row numbers, got a boolean mask; use "
                         "np.flatnonzero(mask)")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices: expected integer row numbers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices: expected values in [0, {n}), got [{idx.min()}, {idx.max()}]")
    return idx.astype(np.int64)


def _check_centred_range(dev, name: str, headroom: float) -> None:
    """Raises when a channel's largest |value - mean| (``dev`` [c], float64) times
    ``headroom`` exceeds float32: the scaled float32 values would overflow to inf."""
    bad = np.flatnonzero(np.asarray(dev) * headroom > _F32_MAX)
    if bad.size:
        raise ValueError(f"{name}: values up to {float(dev[bad[0]]):.3g} from their mean"
                         + (f" (channel {int(bad[0])})" if name == "x" else "")
                         + f" overflow float32 once centred (limit {_F32_MAX / headroom:.3g});"
                         " rescale them (e.g. change the unit)")


class Scaler:
    """Standardises ``x`` per lead / feature (last axis) and ``y``.

    Attributes:
      x_mean, x_std: [channels] float32, channels = leads or features.
      y_mean, y_std: floats.
    """

    def __init__(self, x_mean, x_std, y_mean: float, y_std: float):
        self.x_mean = np.asarray(x_mean, np.float32).reshape(-1)
        self.x_std = np.asarray(x_std, np.float32).reshape(-1)
        self.y_mean, self.y_std = float(y_mean), float(y_std)
        if self.x_mean.shape != self.x_std.shape:
            raise ValueError(f"x_std: expected shape {self.x_mean.shape}, got {self.x_std.shape}")
        V.check_finite(self.x_mean, "x_mean")
        V.check_positive(self.x_std, "x_std")
        V.check_finite(self.y_mean, "y_mean")
        V.check_positive(self.y_std, "y_std")

    @classmethod
    def fit(cls, x, y, indices=None) -> "Scaler":
        """Fits on rows ``indices`` (default all) of ``x`` [n, ..., c] and ``y`` [n].

        ``indices`` [m] are integer row numbers in ``[0, n)`` (a boolean mask
        is refused: use ``np.flatnonzero(mask)``). Reads ``x`` in row blocks
        (float64 sums), so a memory map is fine. A constant channel (or
        label) gets std 1.

        Raises:
          ValueError: empty / mismatched / non-finite inputs, indices that are
            not integer row numbers in range, values so far apart that
            centring them overflows float32 (x; for y with room for
            predictions beyond the labels).
        """
        V.as_array(y, "y", ndim=1)
        shape = tuple(getattr(x, "shape", None) or np.shape(x))   # row views: not arrays
        if len(shape) < 2:
            raise ValueError(f"x: expected [n, ..., channels] (a table is [n, 1] for one "
                             f"feature), got shape {shape}")
        V.check_same_length("x", x, "y", y)
        if indices is not None and np.size(indices) == 0:
            raise ValueError("indices: expected at least one row to fit the scaler on")
        idx = (np.arange(len(y)) if indices is None
               else np.sort(_check_indices(indices, len(y))))
        count, mean, m2, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
        # float64 scratch of at most 256 MB (and the gathered rows in their own dtype
        # while they are converted: at most 512 MB at a time): long records get fewer
        # rows (2048 rows of 1000 x 12 still fit, so the sums of existing runs are unchanged)
        step = row_block(x, _BLOCK, itemsize=8, max_bytes=2 ** 28)
        for s in range(0, idx.size, step):
            block = np.array(x[idx[s:s + step]], np.float64)      # a copy: squared in place
            block = block.reshape(-1, block.shape[-1])
            V.check_finite(block, "x")
            lo, hi = np.minimum(lo, block.min(axis=0)), np.maximum(hi, block.max(axis=0))
            b_n, b_mean = block.shape[0], block.mean(axis=0)
            block -= b_mean
            b_m2 = np.square(block, out=block).sum(axis=0)
            delta, total = b_mean - mean, count + b_n
            mean = mean + delta * b_n / total               # Chan et al. pairwise update
            m2 = m2 + b_m2 + delta ** 2 * count * b_n / total
            count = total
        x_std = np.sqrt(m2 / count)
        yy = np.asarray(y, np.float64)[idx]
        V.check_finite(yy, "y")
        y_std, y_mean = float(yy.std()), float(yy.mean())
        _check_centred_range(np.maximum(hi - mean, mean - lo), "x", 2.0)
        _check_centred_range(np.abs(yy - y_mean).max(keepdims=True), "y", 16.0)
        # constant: sd at round-off of the values' size (units of 1e-13 still vary), or 0
        varies = lambda sd, m: (sd > _CONSTANT_REL * np.maximum(np.abs(m), _TINY)) & (
            np.float32(sd) > 0)
        return cls(mean, np.where(varies(x_std, mean), x_std, 1.0), y_mean,
                   y_std if varies(y_std, y_mean) else 1.0)

    def transform_x(self, x):
        """x [..., channels] -> ``(x - x_mean) / x_std`` [..., channels], float32 (numpy or
        jax in, same out). Raises ValueError when the last axis is not ``channels`` long."""
        if not isinstance(x, jax.Array):
            x = np.asarray(x, np.float32)
        if x.shape[-1] != self.x_mean.shape[0]:
            raise ValueError(f"x: expected {self.x_mean.shape[0]} channels on the last axis, "
                             f"got shape {tuple(x.shape)}")
        return (x - self.x_mean) / self.x_std

    def transform_y(self, y):
        """Labels y [n] (any shape) -> scaled ``(y - y_mean) / y_std``, same shape."""
        return (y - self.y_mean) / self.y_std

    def inverse_y(self, y):
        """Scaled labels y [n] (any shape) -> label units ``y * y_std + y_mean``, same shape."""
        return y * self.y_std + self.y_mean

    def inverse_scale(self, s):
        """Scaled standard deviations s [n] (any shape) -> label units ``s * y_std``, same shape."""
        return s * self.y_std

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"x_mean": self.x_mean.tolist(), "x_std": self.x_std.tolist(),
                "y_mean": self.y_mean, "y_std": self.y_std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scaler":
        """Inverse of :meth:`to_dict` (extra keys are ignored)."""
        missing = [k for k in ("x_mean", "x_std", "y_mean", "y_std") if k not in d]
        if missing:
            raise ValueError(f"d: scaler dict lacks keys {missing}")
        return cls(d["x_mean"], d["x_std"], d["y_mean"], d["y_std"])
