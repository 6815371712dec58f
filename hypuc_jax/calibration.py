"""Uncertainty calibration, fitted on the validation split only (SPEC section 4).

Three calibrators map a model's predicted scale to a calibrated one:

- ``GlobalCalibrator`` (sigma scaling, Laves et al. 2020): sigma' = s* sigma
  with the closed form s*^2 = mean((y - mu)^2 / sigma^2).
- ``HyperfineCalibrator`` (HypUC): quantile bins of predicted mu; in bin b,
  eta_b = quantile_xi(|y - mu| / (z_xi sigma')), and sigma'' = eta_b(mu) sigma'.
  With ``tail="auto"`` it also fits the tail of the calibrated predictive:
  the degrees of freedom of a unit-variance Student-t (Gaussian included,
  dof = inf) chosen by K-fold cross-fitted UCE on the validation split. The
  central xi interval is the same for every dof (eta_b absorbs z_xi), so the
  per-bin xi coverage the SPEC asks for is untouched; the other levels follow
  the residuals' observed tail instead of the Gaussian's.
- ``IsotonicCalibrator`` (Kuleshov et al. 2018), a baseline: an isotonic map
  R of the predicted CDF level F(y) = Phi((y - mu) / sigma) to its empirical
  frequency on the validation split; the calibrated CDF is R(F(y)), scored
  exactly by the later stages through its family (``predictive_dof``).

Every calibrator has ``apply(mu, sigma) -> sigma [n]`` (a standard deviation;
for isotonic, the Gaussian-equivalent scale of its recalibrated family),
``predictive_dof`` (the family of the calibrated predictive; inf: Gaussian;
a ``RecalibratedNormal`` for isotonic), ``to_dict`` /
``from_dict``, ``save(path)`` / ``load(path, task=...)`` (JSON), and carries
the name of the task it was fitted on, so a calibrator saved for another task
is refused on load. All fitting is numpy: it runs once, on the host. The
shared base lives in ``hypuc_jax._calibrator``, the bins in
``hypuc_jax._calibration_bins`` and the isotonic baseline in
``hypuc_jax.isotonic``; all are re-exported here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, ClassVar

import numpy as np

from hypuc_jax._calibration_bins import (bin_quantile, merged_quantile_bins,  # noqa: F401
                                        quantile_edges)
from hypuc_jax._calibrator import (FORMAT_VERSION, _Calibrator, check_task,  # noqa: F401
                                   float_list, positive_factor, unit_level)
from hypuc_jax._predictions import (central_z, check_dof, check_predictions, dof_to_json,
                                    standardized_residuals)
from hypuc_jax._validation import is_int
from hypuc_jax.config import CALIBRATION_QUANTILES as QUANTILES
from hypuc_jax.config import CALIBRATION_TAILS as TAILS
from hypuc_jax.isotonic import IsotonicCalibrator, fit_isotonic
from hypuc_jax.uncertainty import _rms, _squares_unsafe, uce

#: Candidate dofs of ``fit_hyperfine(tail="auto")`` (inf: the Gaussian).
DOF_GRID = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, math.inf)
#: Fewest validation samples for which ``tail="auto"`` searches a dof.
MIN_TAIL_SAMPLES = 250


@dataclasses.dataclass(frozen=True)
class GlobalCalibrator(_Calibrator):
    """sigma' = scale * sigma.

    Attributes:
      scale: the fitted factor s* (> 0).
      task: task the calibrator was fitted on, or None.
    """
    scale: float
    task: str | None = None
    method: ClassVar[str] = "global"

    def __post_init__(self):
        object.__setattr__(self, "scale", positive_factor(self.scale, "scale"))

    def apply(self, mu, sigma) -> np.ndarray:
        """Calibrated sigma [n] for predictions mu [n], sigma [n]."""
        _, sigma = self._inputs(mu, sigma)
        return self.scale * sigma


@dataclasses.dataclass(frozen=True)
class HyperfineCalibrator(_Calibrator):
    """sigma'' = eta_b(mu) * global_scale * sigma.

    Attributes:
      global_scale: the global factor s* fitted first.
      edges: inner bin edges of predicted mu, increasing, length B - 1; bin b
        is [edges[b-1], edges[b]) with the first and last bins extended to
        -inf and +inf, so predictions outside the validation range use the
        edge bin.
      etas: per-bin factors, length B.
      counts: validation samples per bin, length B (for reports).
      xi: nominal coverage the factors were fitted for.
      task: task the calibrator was fitted on, or None.
      dof: degrees of freedom of the calibrated predictive's unit-variance
        Student-t, or None for the Gaussian (the SPEC's).
      dof_search: ``[[dof or None, cross-fitted validation UCE], ...]`` over
        ``DOF_GRID`` when the dof was chosen by ``tail="auto"``, else None
        (also for "auto" below ``MIN_TAIL_SAMPLES`` validation samples).
      tail: the tail asked for: "gaussian", "auto" or "fixed" (a given dof).
      quantile: how the bin factors were taken, "linear" or "conformal"
        (:func:`bin_quantile`); files written before it read as "linear".
    """
    global_scale: float
    edges: list
    etas: list
    counts: list
    xi: float = 0.95
    task: str | None = None
    dof: float | None = None
    dof_search: list | None = None
    tail: str = "gaussian"
    quantile: str = "linear"
    method: ClassVar[str] = "hyperfine"

    def __post_init__(self):
        object.__setattr__(self, "global_scale", positive_factor(self.global_scale, "global_scale"))
        edges = float_list(self.edges, "edges", increasing=True)
        object.__setattr__(self, "edges", edges)
        etas = float_list(self.etas, "etas", len(edges) + 1, low=0.0)
        if not all(e > 0 for e in etas):
            raise ValueError(f"etas: expected {len(edges) + 1} numbers > 0, got {self.etas!r}")
        object.__setattr__(self, "etas", etas)
        counts = self.counts
        if (not isinstance(counts, (list, tuple)) or len(counts) != len(etas)
                or not all(is_int(c) and c >= 0 for c in counts)):
            raise ValueError(f"counts: expected {len(etas)} integers >= 0 (one per bin), "
                             f"got {counts!r}")
        object.__setattr__(self, "counts", [int(c) for c in counts])
        object.__setattr__(self, "xi", unit_level(self.xi, "xi"))
        object.__setattr__(self, "dof", dof_to_json(check_dof(self.dof)))
        if self.quantile not in QUANTILES:
            raise ValueError(f"quantile: expected one of {QUANTILES}, got {self.quantile!r}")
        if self.tail not in TAILS + ("fixed",):
            raise ValueError(f"tail: expected one of {TAILS + ('fixed',)}, got {self.tail!r}")

    @property
    def predictive_dof(self) -> float:
        """Family of the calibrated predictive: the Student-t dof, inf for the Gaussian."""
        return check_dof(self.dof)

    def bin_index(self, mu) -> np.ndarray:
        """Bin of each prediction, [n] int in [0, B)."""
        mu = check_predictions(mu, sigma_required=False)[0]
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), mu, side="right")

    def apply(self, mu, sigma) -> np.ndarray:
        """Calibrated sigma [n] for predictions mu [n], sigma [n]."""
        mu, sigma = self._inputs(mu, sigma)
        eta = np.asarray(self.etas, dtype=np.float64)[self.bin_index(mu)]
        return eta * self.global_scale * sigma


def fit_global(mu, sigma, y, *, task: str | None = None) -> GlobalCalibrator:
    """Fits global sigma scaling, s*^2 = mean((y - mu)^2 / sigma^2).

    Args:
      mu: validation predicted locations [n].
      sigma: validation predicted scales [n], > 0.
      y: validation labels [n].
      task: task name stored with the calibrator.

    Returns:
      GlobalCalibrator.

    Raises:
      ValueError: bad inputs, or all residuals zero (no scale to fit).
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    z = standardized_residuals(mu, sigma, y)
    scale = _rms(z) if _squares_unsafe(z) else float(np.sqrt(np.mean(z ** 2)))
    if not scale > 0:
        raise ValueError("y: all residuals y - mu are zero; the global scale is undefined")
    return GlobalCalibrator(scale=scale, task=task)


def _bin_factors(mu, sigma, y, n_bins: int, min_count: int, xi: float, dof: float,
                 quantile: str = "linear"):
    """(global scale, inner edges, etas, counts) of a hyperfine fit for family ``dof``."""
    z = central_z(xi, "xi", dof)
    scale = fit_global(mu, sigma, y).scale
    edges = merged_quantile_bins(mu, int(n_bins), int(min_count))
    idx = np.searchsorted(edges, mu, side="right")
    ratio = np.abs(y - mu) / (z * scale * sigma)
    etas, counts = [], []
    for b in range(edges.size + 1):
        r = ratio[idx == b]
        eta = bin_quantile(r, xi, quantile)
        if not eta > 0:
            raise ValueError(f"y: residuals in mu bin {b} are zero for at least {xi:.0%} of "
                             "its samples; the bin factor is undefined")
        etas.append(eta)
        counts.append(int(r.size))
    return scale, edges, etas, counts


def _check_folds(folds, n: int) -> None:
    if not is_int(folds) or not 2 <= folds <= n:
        raise ValueError(f"folds: expected an integer in [2, {n}] (the number of samples), "
                         f"got {folds!r}")


def cross_fit(mu, sigma, y, folds: int = 5, seed: int = 0,
              **fit_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold hyperfine calibration of one split.

    The samples are permuted (``seed``) into ``folds`` folds; each fold gets
    the calibrated sigma and predictive dof of ``fit_hyperfine(**fit_kwargs)``
    fitted on the other folds. No sample is calibrated by a fit that saw it.

    Args:
      mu, sigma, y: predictions and labels, each [n].
      folds: number of folds (>= 2).
      seed: seed of the fold assignment.
      **fit_kwargs: passed to ``fit_hyperfine`` (n_bins, min_count, xi, tail).

    Returns:
      (held-out calibrated sigma [n], dof of the fit that calibrated each sample [n]).
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    _check_folds(folds, mu.size)
    parts = np.array_split(np.random.default_rng(seed).permutation(mu.size), folds)
    held, dofs = np.empty(mu.size), np.empty(mu.size)
    for k, test in enumerate(parts):
        fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
        cal = fit_hyperfine(mu[fit], sigma[fit], y[fit], **fit_kwargs)
        held[test] = cal.apply(mu[test], sigma[test])
        dofs[test] = cal.predictive_dof
    return held, dofs


def _select_dof(mu, sigma, y, n_bins: int, min_count: int, xi: float, folds: int,
                seed: int, quantile: str) -> tuple[float, list]:
    """The dof in ``DOF_GRID`` with the lowest K-fold cross-fitted UCE, and every score.

    Each fold's calibrated sigma comes from a hyperfine fit with that dof on
    the other folds (``cross_fit``); the pooled held-out predictions are
    scored once per dof. Ties go to the larger dof (the Gaussian last, so
    first among equals).
    """
    search = []
    for dof in DOF_GRID:
        held, _ = cross_fit(mu, sigma, y, folds, seed, n_bins=n_bins, min_count=min_count,
                            xi=xi, tail=dof, quantile=quantile)
        search.append([dof_to_json(dof), uce(y, mu, held, dof)])
    best = min(range(len(DOF_GRID)), key=lambda i: (search[i][1], -DOF_GRID[i]))
    return DOF_GRID[best], search


def fit_hyperfine(mu, sigma, y, n_bins: int = 10, min_count: int = 30, xi: float = 0.95, *,
                  tail: str | float = "gaussian", folds: int = 5, seed: int = 0,
                  quantile: str = "linear", task: str | None = None) -> HyperfineCalibrator:
    """Fits hyperfine (per-bin) calibration on top of global scaling.

    Args:
      mu: validation predicted locations [n].
      sigma: validation predicted scales [n], > 0.
      y: validation labels [n].
      n_bins: number of quantile bins of mu before merging.
      min_count: minimum validation samples per bin; sparser bins merge with
        their smaller neighbour.
      xi: coverage of the central interval each bin is fitted to, in (0, 1).
      tail: family of the calibrated predictive. "gaussian": the SPEC's
        Gaussian; "auto": the Student-t dof in ``DOF_GRID`` (inf included)
        with the lowest ``folds``-fold cross-fitted UCE on these samples, or
        the Gaussian when there are fewer than ``MIN_TAIL_SAMPLES``, or too
        few for ``n_bins`` / ``min_count`` in each fold's fit; a number
        > 2: that dof. The central ``xi`` intervals are the same for every tail.
      folds: folds of the ``tail="auto"`` search (>= 2).
      seed: seed of the fold assignment.
      quantile: how each bin's ``xi`` quantile is taken (:func:`bin_quantile`):
        "linear" (the SPEC's) or "conformal" (covers >= ``xi`` in
        expectation on bins of any size).
      task: task name stored with the calibrator.

    Returns:
      HyperfineCalibrator.

    Raises:
      ValueError: bad inputs, fewer samples than ``n_bins`` or ``min_count``,
        an unknown tail, or a bin whose residuals are (almost all) zero.
    """
    mu, sigma, y = check_predictions(mu, sigma, y)
    if not is_int(n_bins) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, got {n_bins!r}")
    if not is_int(min_count) or min_count < 1:
        raise ValueError(f"min_count: expected a positive integer, got {min_count!r}")
    if mu.size < max(n_bins, min_count):
        raise ValueError(f"mu: expected at least n_bins={n_bins} and min_count={min_count} "
                         f"validation samples, got {mu.size}")
    if not is_int(folds) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    central_z(xi, "xi")
    if quantile not in QUANTILES:
        raise ValueError(f"quantile: expected one of {QUANTILES}, got {quantile!r}")
    search = None
    if isinstance(tail, str):
        if tail not in TAILS:
            raise ValueError(f"tail: expected one of {TAILS} or a number > 2, got {tail!r}")
        dof = math.inf
        smallest_fit = mu.size - -(-mu.size // folds)   # samples in each fold's fit
        if (tail == "auto" and mu.size >= MIN_TAIL_SAMPLES
                and smallest_fit >= max(n_bins, min_count)):
            dof, search = _select_dof(mu, sigma, y, int(n_bins), int(min_count), float(xi),
                                      int(folds), int(seed), quantile)
    else:
        dof = check_dof(tail, "tail")
    scale, edges, etas, counts = _bin_factors(mu, sigma, y, n_bins, min_count, xi, dof, quantile)
    return HyperfineCalibrator(global_scale=scale, edges=edges.tolist(), etas=etas,
                               counts=counts, xi=float(xi), task=task, dof=dof_to_json(dof),
                               dof_search=search,
                               tail=tail if isinstance(tail, str) else "fixed", quantile=quantile)


CALIBRATORS = {"global": GlobalCalibrator, "hyperfine": HyperfineCalibrator,
               "isotonic": IsotonicCalibrator}
_FITTERS = {"global": fit_global, "hyperfine": fit_hyperfine, "isotonic": fit_isotonic}


def fit_calibrator(method: str, mu, sigma, y, **kwargs: Any) -> _Calibrator:
    """Fits the calibrator named ``method`` ("global", "hyperfine" or "isotonic").

    Args:
      method: calibration method.
      mu, sigma, y: validation predictions and labels, each [n].
      **kwargs: passed to the fitter (e.g. n_bins, min_count, xi, task).

    Returns:
      The fitted calibrator.
    """
    if method not in _FITTERS:
        raise ValueError(f"method: expected one of {sorted(_FITTERS)}, got {method!r}")
    return _FITTERS[method](mu, sigma, y, **kwargs)


def calibrator_from_dict(d: dict, task: str | None = None) -> _Calibrator:
    """Rebuilds any calibrator from its ``to_dict`` output, dispatching on ``method``."""
    method = d.get("method") if isinstance(d, dict) else None
    if method not in CALIBRATORS:
        raise ValueError(f"d: expected a calibrator dict with method in {sorted(CALIBRATORS)}, "
                         f"got {method!r}")
    return CALIBRATORS[method].from_dict(d, task=task)


def load_calibrator(path: str | os.PathLike, task: str | None = None) -> _Calibrator:
    """Loads any calibrator saved with ``save`` (e.g. DIR/calibration.json).

    Raises:
      ValueError: unknown method, or fitted for a task other than ``task``.
    """
    with open(path) as fh:
        return calibrator_from_dict(json.load(fh), task=task)
