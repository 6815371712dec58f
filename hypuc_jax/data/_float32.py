"""Float32 checks of data as it is read: the model works in float32, so a value
beyond its range, or a column that float32 would round together, is refused
with the column named (``readers``)."""
from __future__ import annotations

import numpy as np

_F32_MAX = float(np.finfo(np.float32).max)
_F32_LOSS = 1e-2       # largest float32 rounding accepted, as a fraction of a column's sd
# A column whose sd is at most this fraction of |mean| (or _TINY) is constant, its sd
# float64 round-off (a constant 4.2 has np.std ~1e-15 at some lengths): the Scaler
# gives it sd 1, and the precision check passes it if float32 keeps it one value
# (one that float32 splits in two, e.g. 1e9 + 32 +- 2e-4, is refused).
_CONSTANT_REL, _TINY = 1e-12, float(np.finfo(np.float64).tiny)


def _check_float32_range(path, name, col) -> None:
    """Raises unless the finite values of float64 ``col`` [n] fit in float32."""
    over = np.flatnonzero(np.isfinite(col) & (np.abs(col) > _F32_MAX))
    if over.size:
        raise ValueError(f"{path}: column {name!r}: values exceed the float32 range "
                         f"(|value| <= {_F32_MAX:.4g}), first: row {int(over[0])} = "
                         f"{col[over[0]]:g}; rescale the column (e.g. change its unit)")


def _exact_in_float32(dtype) -> bool:
    """Every value of ``dtype`` is a float32 number (float16/32, small integers)."""
    return dtype in (np.float32, np.float16) or (np.issubdtype(dtype, np.integer)
                                                 and np.dtype(dtype).itemsize <= 2)


def _check_float32_precision(path, name, col, what: str = "column", stats=None) -> None:
    """Raises when float32 rounds the finite values of ``col`` [n] by more than
    ``_F32_LOSS`` of their sd: a large offset (e.g. 1e9 +- 100 rounds to steps
    of 64) would silently train and score on other values. Constant data (sd
    at float64 round-off, as the Scaler decides) that float32 keeps one value
    pass. Training data only: a predict batch has its own, maybe tiny,
    spread, and the model was trained on the same float32 rounding.
    ``stats``: ``(mean, sd, largest rounding, min, max)`` of the finite values,
    computed by the caller instead of ``col``."""
    if stats is None:
        v = np.asarray(col, np.float64)
        v = v[np.isfinite(v)]
        if not v.size:
            return
        stats = (float(np.mean(v)), float(np.std(v)),
                 float(np.max(np.abs(v.astype(np.float32) - v))), float(v.min()), float(v.max()))
    centre, spread, loss, lo, hi = stats
    if spread <= _CONSTANT_REL * max(abs(centre), _TINY) and np.float32(lo) == np.float32(hi):
        return                      # constant data, one float32 value: nothing rounded together
    if loss > _F32_LOSS * spread:
        raise ValueError(f"{path}: {what} {name!r}: float32, the precision the model works in, "
                         f"rounds its values by up to {loss:.3g}, {loss / max(spread, _TINY):.3g} "
                         f"of their spread (sd {spread:.3g}); subtract an offset first (e.g. the "
                         f"{what} minus {centre:.10g})")
