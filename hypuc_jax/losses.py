"""Per-example regression losses and the weighted batch reduction.

Every loss is a pure function returning one value per example (shape
``[batch]``); the reduction is left to the caller, as in
``optax.losses``. The train step reduces with :func:`weighted_sums`, which
returns the numerator/denominator pair ``(sum w*l, sum w)`` so that a
data-parallel step can add both across devices before dividing (the weighted
mean over the GLOBAL batch; averaging per-device weighted means is wrong when
weights differ between devices).

The Balanced MSE losses (``bmc``, ``bni``, ``HistogramPrior``,
``histogram_prior``) live in :mod:`hypuc_jax.balanced_mse` and are
re-exported here; :func:`per_example_loss` dispatches to every loss by name.

Shapes are checked on every call (shapes are static, so the checks also run
while tracing under ``jit``) and raise ``ValueError``; value checks
(finiteness, positivity) run only on concrete inputs, see
:mod:`hypuc_jax._validation`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax._validation import (as_float, as_positive_scalar, as_vectors, check_finite,
                                   check_positive, is_concrete, is_real, plain_scalar)
from hypuc_jax.balanced_mse import HistogramPrior, bmc, bni, histogram_prior

LOSS_NAMES = ("nll", "laplace", "mse", "l1", "huber", "bmc", "bni")
_HEADS = {"nll": "gaussian", "laplace": "laplace"}


def gaussian_nll(mu, sigma, y) -> jax.Array:
    """Negative log-likelihood of ``y`` under N(mu, sigma^2), per example.

    ``0.5 * log(2 pi sigma^2) + (y - mu)^2 / (2 sigma^2)``, computed as
    ``0.5 log(2 pi) + log(sigma) + 0.5 ((y - mu) / sigma)^2`` so that a tiny
    sigma does not underflow ``sigma^2`` to zero.

    Args:
      mu: predicted means, shape ``[batch]``.
      sigma: predicted standard deviations, ``> 0``, shape ``[batch]``.
      y: targets, shape ``[batch]``.

    Returns:
      The NLL of each example, shape ``[batch]``.

    Raises:
      ValueError: shapes differ or are not ``[batch]``; concrete ``sigma``
        not finite and positive.

    References:
      Nix & Weigend, `Estimating the mean and variance of the target
      probability distribution <https://doi.org/10.1109/ICNN.1994.374138>`_,
      ICNN 1994.
    """
    mu, sigma, y = as_float(*as_vectors(mu=mu, sigma=sigma, y=y))
    check_positive(sigma, "sigma")
    z = (y - mu) / sigma
    return 0.5 * math.log(2.0 * math.pi) + jnp.log(sigma) + 0.5 * z * z


def laplace_nll(mu, scale, y) -> jax.Array:
    """Negative log-likelihood of ``y`` under Laplace(mu, b), per example.

    ``log(2 b) + |y - mu| / b``.

    Args:
      mu: predicted locations, shape ``[batch]``.
      scale: predicted scales ``b > 0``, shape ``[batch]``.
      y: targets, shape ``[batch]``.

    Returns:
      The NLL of each example, shape ``[batch]``.

    Raises:
      ValueError: shapes differ or are not ``[batch]``; concrete ``scale``
        not finite and positive.

    References:
      `Laplace distribution
      <https://en.wikipedia.org/wiki/Laplace_distribution>`_, Wikipedia.
    """
    mu, scale, y = as_float(*as_vectors(mu=mu, scale=scale, y=y))
    check_positive(scale, "scale")
    return math.log(2.0) + jnp.log(scale) + jnp.abs(y - mu) / scale


def mse(pred, y) -> jax.Array:
    """Squared error ``(pred - y)^2`` per example.

    Args:
      pred: predictions, shape ``[batch]``.
      y: targets, shape ``[batch]``.

    Returns:
      Squared errors, shape ``[batch]``.
    """
    pred, y = as_float(*as_vectors(pred=pred, y=y))
    return jnp.square(pred - y)


def l1(pred, y) -> jax.Array:
    """Absolute error ``|pred - y|`` per example.

    Args:
      pred: predictions, shape ``[batch]``.
      y: targets, shape ``[batch]``.

    Returns:
      Absolute errors, shape ``[batch]``.
    """
    pred, y = as_float(*as_vectors(pred=pred, y=y))
    return jnp.abs(pred - y)


def huber(pred, y, delta: float = 1.0) -> jax.Array:
    """Huber loss per example: quadratic within ``delta``, linear beyond.

    ``0.5 e^2`` if ``|e| <= delta`` else ``delta (|e| - 0.5 delta)``, with
    ``e = pred - y`` (the convention of ``optax.huber_loss``).

    Args:
      pred: predictions, shape ``[batch]``.
      y: targets, shape ``[batch]``.
      delta: the threshold between the two regimes, a scalar ``> 0`` (a
        Python or jax number; it may be traced: jit, vmap over thresholds).

    Returns:
      Huber losses, shape ``[batch]``.

    References:
      `Huber loss <https://en.wikipedia.org/wiki/Huber_loss>`_, Wikipedia.
    """
    pred, y = as_float(*as_vectors(pred=pred, y=y))
    abs_err = jnp.abs(pred - y)
    # in the errors' dtype, as a Python float delta was (bf16 stays bf16, x64 float32 too);
    # one beyond that dtype's range is its largest value (inf would give inf * 0 = NaN)
    big = float(jnp.finfo(abs_err.dtype).max)
    delta = jnp.minimum(as_positive_scalar(delta, "delta"), big).astype(abs_err.dtype)
    quadratic = jnp.minimum(abs_err, delta)
    return 0.5 * quadratic * quadratic + delta * (abs_err - quadratic)


def head_for_loss(name: str) -> str:
    """The model head a loss needs: "gaussian", "laplace" or "point".

    Raises:
      ValueError: ``name`` is not one of :data:`LOSS_NAMES`.
    """
    _check_name(name)
    return _HEADS.get(name, "point")


def _check_name(name: str) -> None:
    if name not in LOSS_NAMES:
        raise ValueError(f"loss name: expected one of {', '.join(LOSS_NAMES)}, got {name!r}")


def variance_weighted(nll, variance, beta: float) -> jax.Array:
    """beta-NLL: ``stop_gradient(variance^beta) * nll``, per example.

    With a heteroscedastic likelihood the gradient of the NLL in the mean is
    ``(mu - y) / variance``: examples the model believes noisy teach the mean
    less, and a rare, noisy range (a clinical tail) is fitted slowly. The
    factor ``variance^beta``, held constant under differentiation, rescales
    the mean gradient to ``(mu - y) / variance^(1 - beta)`` (beta = 1: the
    MSE gradient) and leaves the optimum of each example's likelihood where
    it was. ``beta = 0`` returns ``nll`` unchanged.

    Args:
      nll: per-example negative log-likelihoods, shape ``[batch]``.
      variance: predicted variances ``> 0``, shape ``[batch]``.
      beta: exponent in ``[0, 1]`` (a Python float).

    Returns:
      The weighted losses, shape ``[batch]``.

    Raises:
      ValueError: ``beta`` outside ``[0, 1]``, shapes that differ, or (for
        concrete values and beta > 0) a variance that is not finite and > 0.

    References:
      Seitzer et al., `On the Pitfalls of Heteroscedastic Uncertainty
      Estimation with Probabilistic Neural Networks
      <https://arxiv.org/abs/2203.09168>`_, ICLR 2022.
    """
    beta = plain_scalar(beta)
    if not is_real(beta) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: expected a float in [0, 1], got {beta!r}")
    nll, variance = as_vectors(nll=nll, variance=variance, finite=False)
    if beta == 0.0:
        return nll
    check_positive(variance, "variance")           # concrete values only
    return jax.lax.stop_gradient(variance ** beta) * nll


def per_example_loss(name: str, prediction, y, *, huber_delta: float = 1.0,
                     noise_sigma=None, bni_prior: HistogramPrior | None = None,
                     mask=None, axis_name: str | None = None,
                     beta: float = 0.0) -> jax.Array:
    """Dispatches to the per-example loss called ``name``.

    Args:
      name: one of :data:`LOSS_NAMES` ("nll", "laplace", "mse", "l1",
        "huber", "bmc", "bni").
      prediction: a ``Prediction`` (anything with ``.loc [batch]`` and
        ``.scale [batch] or None``); "nll" and "laplace" need ``scale``.
      y: targets, shape ``[batch]``.
      huber_delta: ``delta`` of :func:`huber`.
      noise_sigma: noise scale for "bmc" / "bni" (scalar, fixed or the
        model's learnable ``noise_sigma()``); required for those losses.
      bni_prior: :class:`HistogramPrior` (or a ``(centers, probs)`` pair),
        required for "bni".
      mask: optional ``[batch]`` validity mask, used by "bmc" to drop
        padding from the in-batch candidates. Other losses are per example;
        mask them in :func:`weighted_sums`.
      axis_name: mapped axis for "bmc" inside ``pmap`` / ``shard_map`` (the
        in-batch candidates then span all devices); ignored by the others.
      beta: beta-NLL exponent in ``[0, 1]`` for "nll" and "laplace"
        (:func:`variance_weighted`; the Laplace variance is ``2 b^2``); must
        be 0 for the other losses.

    Returns:
      Per-example losses, shape ``[batch]``.

    Raises:
      ValueError: unknown ``name`` (the message lists the valid names), a
        missing scale / noise_sigma / bni_prior, or bad shapes.
    """
    _check_name(name)
    loc, scale = prediction.loc, prediction.scale
    if name in _HEADS and scale is None:
        raise ValueError(f"prediction.scale: loss {name!r} needs a {_HEADS[name]} head "
                         "(a scale), got a point prediction (scale None)")
    if name in ("bmc", "bni") and noise_sigma is None:
        raise ValueError(f"noise_sigma: loss {name!r} needs a noise scale, got None")
    if beta != 0.0 and name not in _HEADS:
        raise ValueError(f"beta: loss {name!r} has no likelihood to weight; beta must be 0 "
                         f"unless the loss is one of {', '.join(_HEADS)}, got {beta!r}")
    if name == "nll":
        return variance_weighted(gaussian_nll(loc, scale, y), scale * scale, beta)
    if name == "laplace":
        return variance_weighted(laplace_nll(loc, scale, y), 2.0 * scale * scale, beta)
    if name == "mse":
        return mse(loc, y)
    if name == "l1":
        return l1(loc, y)
    if name == "huber":
        return huber(loc, y, delta=huber_delta)
    if name == "bmc":
        return bmc(loc, y, noise_sigma, mask=mask, axis_name=axis_name)
    if bni_prior is None:
        raise ValueError("bni_prior: loss 'bni' needs a histogram prior "
                         "(HistogramPrior(centers, probs)), got None")
    centers, probs = bni_prior
    return bni(loc, y, noise_sigma, centers, probs)


def weighted_sums(losses, weights, mask=None) -> tuple[jax.Array, jax.Array]:
    """The numerator and denominator of the weighted mean loss.

    Returns ``(sum_i w_i m_i l_i, sum_i w_i m_i)`` with ``m_i = [mask_i > 0]``
    (a mask entry counts as 1 when positive, 0 otherwise). Under data parallelism
    each device computes this pair on its shard, the pairs are summed
    across devices (``psum``, or automatically in a one-jit sharded step),
    and the global weighted mean is ``num / den``. Masked-out entries
    (padding) contribute exactly zero, to the value and to the gradients
    with respect to ``losses`` and ``weights``, even if their loss is NaN
    or inf.

    Args:
      losses: per-example losses, shape ``[batch]``.
      weights: per-example weights ``>= 0``, shape ``[batch]``.
      mask: optional validity mask (bool or 0/1; entries > 0 are kept),
        shape ``[batch]``.

    Returns:
      ``(num, den)``, two scalars.

    Raises:
      ValueError: shapes differ or are not ``[batch]``; concrete weights
        negative or non-finite, a concrete mask non-finite, or concrete
        unmasked losses non-finite.
    """
    if mask is None:
        losses, weights = as_vectors(losses=losses, weights=weights, finite=False)
        valid = jnp.ones(losses.shape, dtype=bool)
    else:
        losses, weights, mask = as_vectors(losses=losses, weights=weights, mask=mask,
                                         finite=False)
        valid = mask > 0
    check_positive(weights, "weights", strict=False)
    if mask is not None:
        check_finite(mask, "mask")              # a NaN entry would read as masked
    if is_concrete(losses) and is_concrete(valid):
        check_finite(np.asarray(losses)[np.asarray(valid)], "losses (unmasked entries)")
    w = jnp.where(valid, weights, 0.0)
    # Zero the masked losses BEFORE the product: where(valid, w * l, 0) has a
    # NaN gradient in w wherever a masked l is NaN or inf (0 * NaN).
    num = jnp.sum(w * jnp.where(valid, losses, 0.0))
    return num, jnp.sum(w)


def weighted_mean(losses, weights, mask=None) -> jax.Array:
    """``sum(w * m * l) / sum(w * m)`` over one (global) batch, ``m = [mask > 0]``.

    Args:
      losses: per-example losses, shape ``[batch]``.
      weights: per-example weights ``>= 0``, shape ``[batch]``.
      mask: optional validity mask, shape ``[batch]``.

    Returns:
      A scalar; 0 for a traced batch whose weights are all zero or masked
      (an empty batch contributes nothing).

    Raises:
      ValueError: as :func:`weighted_sums`, and for a concrete batch whose
        total weight is zero.
    """
    num, den = weighted_sums(losses, weights, mask)
    if is_concrete(den) and not float(den) > 0:
        raise ValueError("weights: expected a positive total weight over the unmasked "
                         f"examples, got {float(den)!r}")
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


__all__ = ["LOSS_NAMES", "gaussian_nll", "laplace_nll", "variance_weighted", "mse", "l1", "huber", "bmc", "bni",
           "HistogramPrior", "histogram_prior", "head_for_loss", "per_example_loss",
           "weighted_sums", "weighted_mean"]
