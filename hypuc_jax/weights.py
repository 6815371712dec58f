"""Per-example training weights from the label distribution (SPEC section 2).

HypUC weights (``kde_weights``): w(y) = 1 / rho_h(y)^lam with the Gaussian KDE
rho_h of the training labels (``hypuc_jax.kde``); the density is floored at
``floor * max(rho)``, the weights are normalised to mean 1 over the given
labels, and optionally capped at ``max_weight``. DenseWeight (``dense_weights``,
Steininger et al. 2021) is the KDE-based baseline with the same call shape.
The histogram-bin baselines (inverse and square-root inverse frequency, label
distribution smoothing) live in ``hypuc_jax.bin_weights`` and are re-exported
here (``inverse_weights``, ``sqrt_inverse_weights``, ``lds_weights``).

``fit_weighting`` fits any of these on the training labels once and returns a
``LabelWeighting``: a small frozen pytree (a grid or bin table plus a few
constants) that maps a batch of labels y [b] to weights [b] inside ``jit``,
so the training loop never recomputes the KDE.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hypuc_jax import kde
from hypuc_jax._kde_weights import (_check_floor, _check_lam, _check_max_weight, _checked,
                                    _dense_from_density, _dense_raw, _hypuc_from_density,
                                    check_cap_reached)
from hypuc_jax._validation import check_positive
from hypuc_jax.bin_weights import (BIN_SCHEMES, _bin_index, _bin_scheme_table, _bin_weights,
                                   _labels_1d, inverse_weights, lds_weights,
                                   sqrt_inverse_weights)

SCHEMES = ("none", "hypuc", *BIN_SCHEMES, "denseweight")


# --------------------------------------------------------------------------- #
# The direct functions (cores and option checks: ``_kde_weights``)
# --------------------------------------------------------------------------- #
def kde_weights(labels, lam: float = 0.5, bandwidth: str | float = "scott",
                method: str = "binned", max_weight: float | None = None,
                floor: float = 1e-12, grid_size=None,
                chunk_size: int = kde.DEFAULT_CHUNK_SIZE) -> jax.Array:
    """HypUC weights w_i = c / max(rho(y_i), floor * max rho)^lam, mean 1.

    Args:
      labels: training labels [n] or [n, d] (d <= 3), finite.
      lam: exponent lambda in [0, 100] (``MAX_LAM``); 0 gives all ones.
      bandwidth: KDE bandwidth, rule name or positive float (``kde.bandwidth``).
      method: "binned" or "exact" density (``kde.gaussian_kde``).
      max_weight: optional cap M >= 1. The cap is applied as the fixed point of
        "cap, then renormalise" (iterated to convergence, not once): the result
        has max <= M exactly and mean 1 up to float round-off.
      floor: density floor relative to the maximum density, in (0, 1].
      grid_size: binned grid size (see ``kde.gaussian_kde``).
      chunk_size: exact-method tile size.

    Returns:
      Weights [n], finite, >= 0, mean 1; non-increasing in the density. They
      are > 0 unless rho^-lam spans more than the float range: weights below
      ~1e-38 of the largest (float32) underflow to 0. How many depends on n
      and lam, far above useful values (0 to 1): none of 300 normal labels'
      at lam 20, half of 8000's at lam 15, 95% at lam 20.

    Raises:
      ValueError: bad labels (empty, NaN/inf, d > 3), lam outside [0, 100], max_weight <= 0
        or < 1, floor outside (0, 1], a bad bandwidth/method, or a cap that cannot
        keep the mean 1 because weights underflowed to 0 (under jit: NaN weights).
    """
    _check_lam(lam)
    _check_max_weight(max_weight)
    _check_floor(floor)
    x = kde._as_samples(labels, "labels")
    rho = _checked(kde._density(x, x, bandwidth, method, grid_size, chunk_size), floor)
    cap = jnp.inf if max_weight is None else max_weight
    w, _ = _hypuc_from_density(rho, lam, floor, cap, max_weight is not None)
    check_cap_reached(w, lam, max_weight)
    return w


def dense_weights(labels, alpha: float = 1.0, bandwidth: str | float = "scott",
                  method: str = "binned", eps: float = 1e-6, grid_size=None,
                  chunk_size: int = kde.DEFAULT_CHUNK_SIZE) -> jax.Array:
    """DenseWeight (Steininger et al. 2021): max(1 - alpha * p', eps), mean 1.

    p' is the KDE density at each label min-max scaled over the labels to
    [0, 1] (all 0 when the density is flat: it varies by less than 0.1% of its
    maximum). The denseweight package uses
    1.06 * std(ddof=0) * n^(-1/5); pass that as a float ``bandwidth`` to match
    it exactly ("scott" here uses ddof=1).

    Args:
      labels: training labels [n], finite.
      alpha: strength >= 0; 0 gives all ones.
      bandwidth: KDE bandwidth (rule name or positive float).
      method: "binned" or "exact" density.
      eps: positive lower bound of the raw weight.
      grid_size: binned grid size.
      chunk_size: exact-method tile size.

    Returns:
      Weights [n], mean 1.
    """
    y = _labels_1d(labels)
    check_positive(alpha, "alpha", strict=False, scalar=True)
    check_positive(eps, "eps", scalar=True)
    rho = _checked(kde._density(y[:, None], y[:, None], bandwidth, method, grid_size, chunk_size))
    return _dense_from_density(rho, alpha, eps)[0]


# --------------------------------------------------------------------------- #
# Fitted weighting: apply the training-label weights to new labels
# --------------------------------------------------------------------------- #
@struct.dataclass(eq=False)      # identity hash: ``jax.jit(weighting)`` works (arrays are unhashable)
class LabelWeighting:
    """A weighting fitted on training labels; ``weighting(y [b]) -> w [b]``.

    A frozen pytree (usable as a ``jit`` argument, closed over, or jitted
    itself: ``jax.jit(weighting)(y)``; compared by identity): a table on
    a regular grid (KDE density at grid nodes for "hypuc" / "denseweight",
    processed bin counts for "inverse" / "sqrt_inv" / "lds") plus the scheme's
    constants, all fixed at fit time (the normalisation is the training mean,
    so applying it to the training labels gives their weights, mean 1).
    New labels outside [y_min, y_max] of the training labels are clamped to
    that range: they get the weight of the nearest training extreme.

    Attributes:
      scheme: one of ``SCHEMES`` (static).
      lo: [] grid origin (first node / left edge of the first bin).
      step: [] grid spacing / bin width.
      table: [G] grid or bin table ([1] zeros for "none").
      y_min, y_max: [] training label range used for clamping.
      params: scheme constants, {name: []}.
    """
    scheme: str = struct.field(pytree_node=False)
    lo: jax.Array
    step: jax.Array
    table: jax.Array
    y_min: jax.Array
    y_max: jax.Array
    params: dict[str, jax.Array]

    def __call__(self, y) -> jax.Array:
        """Weights [b] for labels y [b] (finite; under jit, where values are not
        checked, a NaN label gets a NaN weight)."""
        y = _labels_1d(y, "y")
        if self.scheme == "none":
            return jnp.where(jnp.isnan(y), jnp.nan, jnp.ones_like(y))
        w = self._weights(jnp.clip(y, self.y_min, self.y_max))
        return jnp.where(jnp.isnan(y), jnp.nan, w)   # clip keeps NaN, the table does not

    def _weights(self, y) -> jax.Array:
        p = self.params
        if self.scheme in BIN_SCHEMES:
            return p["scale"] / self.table[_bin_index(y, self.lo, self.step, self.table.shape[0])]
        rho = kde.interpolate_grid(y[:, None], self.lo[None], self.step[None], self.table)
        if self.scheme == "hypuc":                       # as _hypuc_from_density
            a = -p["lam"] * jnp.log(jnp.maximum(rho, p["rho_min"]))
            if "fine" not in p:                          # written before session 8
                return jnp.minimum(p["scale"] * jnp.exp(a), p["cap"])
            fine = p["fine"] > 0
            w = jnp.where(fine, p["scale"] * jnp.exp(jnp.where(fine, a, 0.0)),
                          jnp.exp(a + p["log_scale"]))
            return jnp.minimum(w, p["cap"])
        return p["scale"] * _dense_raw(rho, p["alpha"], p["eps"], p["rho_lo"], p["rho_hi"])

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and floats; an absent cap is None) for JSON."""
        def plain(v):
            v = float(v)
            return None if math.isinf(v) else v
        return {"scheme": self.scheme, "lo": float(self.lo), "step": float(self.step),
                "table": np.asarray(self.table, dtype=np.float64).tolist(),
                "y_min": float(self.y_min), "y_max": float(self.y_max),
                "params": {k: plain(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelWeighting":
        """Inverse of ``to_dict``."""
        if d.get("scheme") not in SCHEMES:
            raise ValueError(f"d['scheme']: expected one of {SCHEMES}, got {d.get('scheme')!r}")
        f = lambda v: jnp.asarray(jnp.inf if v is None else v, dtype=jnp.result_type(float))
        return cls(scheme=d["scheme"], lo=f(d["lo"]), step=f(d["step"]),
                   table=jnp.asarray(d["table"], dtype=jnp.result_type(float)),
                   y_min=f(d["y_min"]), y_max=f(d["y_max"]),
                   params={k: f(v) for k, v in d["params"].items()})


def _reject_options(scheme: str, options: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise ValueError(f"options: unknown for scheme {scheme!r}: {extra}; expected some of {allowed}")


def fit_weighting(scheme: str, train_labels, **options) -> LabelWeighting:
    """Fits a label weighting on the training labels.

    Args:
      scheme: "none"; "hypuc" (options lam, bandwidth, method, max_weight, floor,
        grid_size, chunk_size, as ``kde_weights``); "inverse" / "sqrt_inv"
        (bins, value_range, clip); "lds" (bins, value_range, kernel, ks, sigma,
        reweight, clip); "denseweight" (alpha, bandwidth, method, eps,
        grid_size, chunk_size).
      train_labels: training labels [n], finite.
      **options: scheme options, defaults as in the direct functions.

    Returns:
      A ``LabelWeighting``. On the training labels it gives the direct
      function's weights: identical density for method="binned"; for
      method="exact" the density is evaluated exactly at the grid nodes and
      interpolated (relative error ~1e-4).

    Raises:
      ValueError: unknown scheme or option, or any invalid option value.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    y = _labels_1d(train_labels, "train_labels")
    f = lambda v: jnp.asarray(v, dtype=y.dtype)
    common = dict(y_min=jnp.min(y), y_max=jnp.max(y))
    if scheme == "none":
        _reject_options(scheme, options, ())
        return LabelWeighting(scheme, f(0.0), f(1.0), jnp.zeros((1,), y.dtype), params={}, **common)
    if scheme in BIN_SCHEMES:
        keys = ("bins", "value_range", "clip") + (("kernel", "ks", "sigma", "reweight")
                                                  if scheme == "lds" else ())
        _reject_options(scheme, options, keys)
        lo, width, table = _bin_scheme_table(y, scheme, **options)
        _, scale = _bin_weights(y, lo, width, table)
        return LabelWeighting(scheme, lo, width, table, params={"scale": scale}, **common)
    kde_keys = ("bandwidth", "method", "grid_size", "chunk_size")
    kde_opts = {k: options.pop(k) for k in kde_keys if k in options}
    lo, step, dens = kde.density_grid(y, **kde_opts)
    lo, step = lo[0], step[0]
    rho = kde.interpolate_grid(y[:, None], lo[None], step[None], _checked(dens))
    if scheme == "hypuc":
        _reject_options(scheme, options, ("lam", "max_weight", "floor"))
        lam, max_weight = options.get("lam", 0.5), options.get("max_weight")
        floor = options.get("floor", 1e-12)
        _check_lam(lam), _check_max_weight(max_weight), _check_floor(floor)
        _checked(rho, floor)
        cap = jnp.inf if max_weight is None else max_weight
        w, consts = _hypuc_from_density(rho, lam, floor, cap, max_weight is not None)
        check_cap_reached(w, lam, max_weight)
        params = {"lam": f(lam), "cap": f(cap), **consts}
    else:
        _reject_options(scheme, options, ("alpha", "eps"))
        alpha, eps = options.get("alpha", 1.0), options.get("eps", 1e-6)
        check_positive(alpha, "alpha", strict=False, scalar=True)
        check_positive(eps, "eps", scalar=True)
        _, scale, rho_lo, rho_hi = _dense_from_density(_checked(rho), alpha, eps)
        params = {"alpha": f(alpha), "eps": f(eps), "scale": scale, "rho_lo": rho_lo,
                  "rho_hi": rho_hi}
    return LabelWeighting(scheme, lo, step, dens, params=params, **common)


__all__ = ["kde_weights", "inverse_weights", "sqrt_inverse_weights", "lds_weights",
           "dense_weights", "fit_weighting", "LabelWeighting", "SCHEMES"]
