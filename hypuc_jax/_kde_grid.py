"""Size of the binned KDE grid (``kde`` method "binned"): the default node
counts, and the grid grown to resolve the bandwidth (``fitted_grid_shape``)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax._validation import is_concrete, is_int

# Default binned grid size per dimension, by label dimension d.
DEFAULT_GRID_SIZE = {1: 4096, 2: 512, 3: 128}
# With the default grid size, the grid grows (concrete inputs only) until its
# step is at most h / STEPS_PER_BANDWIDTH (relative L1 error ~1e-5 to 5e-4 against
# the exact sum, ~1e-3 where the labels crowd into a few cells), up to
# MAX_GRID_POINTS nodes in all (d = 3 reaches ~2e-3 at that cap); a grid whose step would
# still exceed h / MIN_STEPS_PER_BANDWIDTH (error ~1e-2 and more) is refused.
STEPS_PER_BANDWIDTH = 16
MIN_STEPS_PER_BANDWIDTH = 2
MAX_GRID_POINTS = 2 ** 22
# The binned grid extends this many bandwidths beyond the extreme samples.
PAD_BANDWIDTHS = 4.0


def grid_shape(d: int, grid_size) -> tuple[int, ...]:
    """Checked ``grid_size`` (None, an int, or d ints, each >= 2) as d node counts."""
    if grid_size is None:
        return (DEFAULT_GRID_SIZE[d],) * d
    sizes = ((grid_size,) * d if is_int(grid_size)
             else tuple(grid_size) if isinstance(grid_size, (tuple, list)) else ())
    if (isinstance(grid_size, (bool, np.bool_)) or len(sizes) != d
            or not all(is_int(g) and g >= 2 for g in sizes)):
        raise ValueError(f"grid_size: expected None, an int >= 2 or {d} ints >= 2, got {grid_size!r}")
    return tuple(int(g) for g in sizes)


def fitted_grid_shape(x: jax.Array, h: jax.Array, grid_size) -> tuple[int, ...]:
    """``grid_shape``; for the default size and concrete inputs, a grid fine
    enough for the bandwidth (step <= h / STEPS_PER_BANDWIDTH, within
    MAX_GRID_POINTS). Traced inputs keep the default (shapes must be static).

    Raises:
        ValueError: the labels span so many bandwidths that no allowed grid
            resolves the kernel (step > h / MIN_STEPS_PER_BANDWIDTH).
    """
    d = x.shape[1]
    shape = grid_shape(d, grid_size)
    if grid_size is not None or not (is_concrete(x) and is_concrete(h)):
        return shape
    span = (np.asarray(jnp.max(x, axis=0) - jnp.min(x, axis=0), np.float64)
            / np.asarray(h, np.float64) + 2 * PAD_BANDWIDTHS)          # in bandwidths, [d]
    need = [max(g, int(np.ceil(sp * STEPS_PER_BANDWIDTH)) + 1) for g, sp in zip(shape, span)]
    if math.prod(need) > MAX_GRID_POINTS:
        scale = (MAX_GRID_POINTS / math.prod(need)) ** (1 / d)
        need = [max(g, int(n * scale)) for g, n in zip(shape, need)]
        worst = float(np.max(span / (np.asarray(need) - 1)))
        if worst > 1 / MIN_STEPS_PER_BANDWIDTH:
            raise ValueError(
                f"bandwidth: the labels span {float(np.max(span)):.3g} bandwidths, so the "
                f"binned grid (at most {MAX_GRID_POINTS} nodes) would have a step of "
                f"{worst:.2g} bandwidths (at most {1 / MIN_STEPS_PER_BANDWIDTH:g} keeps the "
                "density accurate); use method='exact' (gaussian_kde), a larger bandwidth, "
                "or transform the labels (e.g. log) first")
    # Powers of two keep the FFT fast and the compiled shapes few.
    pow2 = tuple(g if g == g0 else 2 ** math.ceil(math.log2(g)) for g, g0 in zip(need, shape))
    return pow2 if math.prod(pow2) <= MAX_GRID_POINTS else tuple(need)
