"""Balanced MSE (Ren et al., CVPR 2022): per-example losses for imbalanced labels.

Two estimators of the balancing term of the Balanced MSE: ``bmc`` uses the
labels of the (global) batch as samples of the training label distribution;
``bni`` uses a histogram of the training labels (``histogram_prior`` builds
a ``HistogramPrior`` from them). Both return one value per example
(``[batch]``) like every loss in ``hypuc_jax.losses``, which re-exports these
names and dispatches to them from ``per_example_loss`` ("bmc", "bni").

Shapes are checked on every call (also while tracing under ``jit``); value
checks run only on concrete inputs, see :mod:`hypuc_jax._validation`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax._validation import (as_array, as_float, as_positive_scalar, as_vectors,
                                  check_concrete, check_finite, check_positive, is_concrete,
                                  is_int)


class HistogramPrior(NamedTuple):
    """Histogram prior of the training labels for :func:`bni` (a pytree).

    Attributes:
      centers: bin centres, shape ``[k]``.
      probs: bin probabilities, shape ``[k]`` (non-negative, normalised by
        :func:`bni`).
    """
    centers: Any
    probs: Any


def bmc(pred, y, noise_sigma, mask=None, *, axis_name: str | None = None) -> jax.Array:
    """Balanced MSE, batch-based Monte-Carlo form (BMC), per example.

    The batch labels stand in for samples of the training label
    distribution. With ``logits[i, j] = -(pred_i - y_j)^2 / (2 s^2)``, the
    loss of example ``i`` is the cross-entropy of the softmax over ``j`` at
    ``j = i``, multiplied by ``2 s^2`` (held constant with stop-gradient) to
    restore the MSE scale, as in the authors' implementation::

        l_i = 2 sg(s^2) * (logsumexp_j logits[i, j] - logits[i, i])

    With a learnable ``s`` the gradient reaches it through the logits only.
    The loss depends on the whole batch: under data parallelism the
    candidates must be the GLOBAL batch. A one-jit sharded step sees the
    global arrays and needs nothing more; inside ``pmap`` / ``shard_map``
    pass ``axis_name`` so that the labels (and mask) of all devices are
    gathered and each device scores its own examples against all of them.

    Args:
      pred: predictions, shape ``[batch]``.
      y: targets, shape ``[batch]``.
      noise_sigma: noise scale ``s > 0``, a scalar (fixed or learnable).
      mask: optional ``[batch]`` validity mask; examples with mask 0
        (padding) are left out of the softmax candidates. Their own loss
        value is still returned and must be masked by the caller.
      axis_name: the mapped axis when called per device inside ``pmap`` /
        ``shard_map`` (None outside them).

    Returns:
      Balanced MSE of each example, shape ``[batch]``.

    Raises:
      ValueError: shapes differ or are not ``[batch]``; ``noise_sigma`` not
        a scalar or (when concrete) not positive.

    References:
      Ren et al., `Balanced MSE for Imbalanced Visual Regression
      <https://arxiv.org/abs/2203.16427>`_, CVPR 2022; reference code
      github.com/jiawei-ren/BalancedMSE.
    """
    if mask is None:
        pred, y = as_float(*as_vectors(pred=pred, y=y))
        valid = jnp.ones(pred.shape, dtype=bool)
    else:
        pred, y, mask = as_vectors(pred=pred, y=y, mask=mask)
        pred, y = as_float(pred, y)
        valid = mask > 0
    noise_var = jnp.square(as_positive_scalar(noise_sigma, "noise_sigma"))
    n = pred.shape[0]
    own = jnp.arange(n)                       # column of example i's own label
    if axis_name is not None:
        own = own + jax.lax.axis_index(axis_name) * n
        y = jax.lax.all_gather(y, axis_name, tiled=True)
        valid = jax.lax.all_gather(valid, axis_name, tiled=True)
    y_own = jnp.take(y, own)
    rel = _relative_logits(pred, y_own, y, noise_var)             # [n, m], 0 at j = own
    chex.assert_shape(rel, (n, y.shape[0]))
    # Padding never competes; the own label stays so a padded row is finite.
    is_own = own[:, None] == jnp.arange(y.shape[0])[None, :]
    keep = valid[None, :] | is_own
    log_ratio = jax.nn.logsumexp(jnp.where(keep, rel, -jnp.inf), axis=1)
    return 2.0 * jax.lax.stop_gradient(noise_var) * log_ratio


def _relative_logits(pred, y_own, candidates, noise_var):
    """``logits[i, j] - logits[i, own_i]`` for ``logits[i, j] = -(pred_i - c_j)^2 / (2 s^2)``,
    as the factored difference of squares ``(c_j - y_i)(2 pred_i - y_i - c_j) / (2 s^2)``:
    pred [n], y_own [n], candidates [m] -> [n, m]. Subtracting the squares themselves
    loses the small difference of two large numbers (float32: ~1e-3 relative at
    pred 5e4 from labels 0 and 1); the factored form keeps it."""
    diff = candidates[None, :] - y_own[:, None]
    return diff * (2.0 * pred[:, None] - y_own[:, None] - candidates[None, :]) / (2.0 * noise_var)


def bni(pred, y, noise_sigma, bin_centers, bin_probs) -> jax.Array:
    """Balanced MSE with a histogram prior, batch-based numerical integration.

    The training label distribution is a histogram (``bin_probs`` at
    ``bin_centers``, normalised here to sum 1); convolved with the Gaussian
    noise it gives the balancing term::

        l_i = 2 sg(s^2) * ((pred_i - y_i)^2 / (2 s^2)
                           + log sum_k p_k exp(-(pred_i - c_k)^2 / (2 s^2)))

    With a uniform prior this is the MSE plus a constant.

    Args:
      pred: predictions, shape ``[batch]``.
      y: targets, shape ``[batch]``.
      noise_sigma: noise scale ``s > 0``, a scalar (fixed or learnable).
      bin_centers: histogram bin centres, shape ``[k]``.
      bin_probs: histogram probabilities (or counts), ``>= 0`` with a
        positive sum, shape ``[k]``.

    Returns:
      Balanced MSE of each example, shape ``[batch]``.

    Raises:
      ValueError: shapes differ; ``noise_sigma`` not a positive scalar;
        concrete ``bin_probs`` negative, non-finite or all zero.

    References:
      Ren et al., `Balanced MSE for Imbalanced Visual Regression
      <https://arxiv.org/abs/2203.16427>`_, CVPR 2022 (BNI); reference code
      github.com/jiawei-ren/BalancedMSE.
    """
    pred, y = as_float(*as_vectors(pred=pred, y=y))
    centers, probs = as_vectors(bin_centers=bin_centers, bin_probs=bin_probs)
    check_finite(centers, "bin_centers")
    check_positive(probs, "bin_probs", strict=False)
    if is_concrete(probs) and not np.sum(np.asarray(probs)) > 0:
        raise ValueError("bin_probs: expected a positive sum, got all zeros")
    noise_var = jnp.square(as_positive_scalar(noise_sigma, "noise_sigma"))
    probs = probs / jnp.sum(probs)
    # mse_term + logsumexp_k(log p_k + logits[i, k]) as one logsumexp of logits
    # relative to the example's own label (see _relative_logits)
    rel = _relative_logits(pred, y, centers, noise_var)
    chex.assert_shape(rel, (pred.shape[0], centers.shape[0]))
    return 2.0 * jax.lax.stop_gradient(noise_var) * jax.nn.logsumexp(rel, axis=1,
                                                                     b=probs[None, :])


def histogram_prior(labels, n_bins: int = 100) -> HistogramPrior:
    """Histogram prior of training labels for :func:`bni` (host-side, numpy).

    Args:
      labels: training labels, shape ``[n]``, finite.
      n_bins: number of equal-width bins over the label range.

    Returns:
      ``HistogramPrior(centers [n_bins], probs [n_bins])`` in float32.
    """
    check_concrete(labels, "labels")
    labels = np.asarray(as_array(labels, "labels", ndim=1), dtype=np.float64)
    check_finite(labels, "labels")
    if not is_int(n_bins) or n_bins < 1:
        raise ValueError(f"n_bins: expected an int >= 1, got {n_bins!r}")
    counts, edges = np.histogram(labels, bins=n_bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    return HistogramPrior(centers.astype(np.float32),
                          (counts / counts.sum()).astype(np.float32))


__all__ = ["HistogramPrior", "bmc", "bni", "histogram_prior"]
