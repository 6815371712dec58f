"""Hyperfine calibration's bins: quantile edges of predicted mu, merged to a
minimum count, and the per-bin quantile of the scaled residuals (SPEC
section 4). Re-exported by :mod:`hypuc_jax.calibration`."""
from __future__ import annotations

import fractions
import math

import numpy as np

from hypuc_jax.config import CALIBRATION_QUANTILES as QUANTILES


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges of ``n_bins`` quantile bins of ``values`` [n]; a value equal
    to an edge belongs to the bin above it (``np.searchsorted(edges, v,
    side="right")`` is the bin). Returns [<= n_bins - 1], increasing.

    The edges are numpy's interpolated quantiles, except where a quantile
    falls on a value that several records share (a saturated head, a point
    model): that edge moves to the nearer end of the tie group, so the group
    stays in one bin and the records beyond it still get bins of their own
    (the plain quantile would put every edge on the tie and leave one bin).
    """
    s = np.sort(np.asarray(values))
    n = s.size
    probs = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    edges = []
    for p, e in zip(probs, np.quantile(s, probs)):
        lo, hi = np.searchsorted(s, e, side="left"), np.searchsorted(s, e, side="right")
        if hi - lo > 1:                           # the edge sits on a tie group [lo, hi)
            ends = [c for c in (lo, hi) if 0 < c < n]
            if not ends:                          # every value is tied: no edge
                continue
            e = s[min(ends, key=lambda c: abs(c - p * n))]
        edges.append(e)
    return np.unique(np.asarray(edges, dtype=s.dtype))


def merged_quantile_bins(mu: np.ndarray, n_bins: int, min_count: int) -> np.ndarray:
    """Inner edges of quantile bins of mu, merging bins below min_count. [B - 1]"""
    edges = quantile_edges(mu, n_bins)
    while edges.size:
        counts = np.bincount(np.searchsorted(edges, mu, side="right"), minlength=edges.size + 1)
        b = int(np.argmin(counts))
        if counts[b] >= min_count:
            break
        # Merge bin b with its smaller neighbour by dropping the edge between them.
        if b == 0:
            drop = 0
        elif b == edges.size:
            drop = b - 1
        else:
            drop = b - 1 if counts[b - 1] <= counts[b + 1] else b
        edges = np.delete(edges, drop)
    return edges


def bin_quantile(scores: np.ndarray, xi: float, kind: str = "linear") -> float:
    """The ``xi`` quantile of one bin's scores [n] that hyperfine calibration uses.

    "linear": numpy's interpolated quantile (the SPEC's). "conformal": the
    ceil((n + 1) xi)-th smallest score (the split-conformal quantile: a new
    exchangeable score falls at or below it with probability >= xi); when
    ceil((n + 1) xi) > n, the largest score (no finite-sample guarantee).
    """
    if kind == "linear":
        return float(np.quantile(scores, xi))
    if kind != "conformal":
        raise ValueError(f"quantile: expected one of {QUANTILES}, got {kind!r}")
    # xi as the decimal it prints as (0.68, not 0.68000000000000005; str of a
    # numpy float32 prints its own shortest form): 75 * 0.68 is 51.00000000000001
    # in floats, whose ceil is one rank too high.
    k = min(math.ceil((scores.size + 1) * fractions.Fraction(str(xi))), scores.size)
    return float(np.partition(scores, k - 1)[k - 1])
