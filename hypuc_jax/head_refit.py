"""Decoupled re-weighting: re-fit a trained model's head to its frozen features.

``weighting.scope="head"`` trains the network without weights and then
re-fits its head, the last linear layer, to the features of the training
examples under the weighted loss ``sum_i w_i l_i / sum_i w_i`` (regressor
re-training, RRT in Yang et al., ICML 2021; classifier re-training in Kang
et al., ICLR 2020). The representation is learnt from the natural label
distribution, where every record teaches it equally; the weights then move
only the map from features to ``(mu, sigma)``, which is where an unweighted
model's shrinkage towards the common labels sits.

With the features fixed the problem is small (``features + 1`` parameters
per head output) and, for the likelihood and squared-error losses, smooth,
so it is solved to convergence (gradient norm ``tol``), full batch, in
float32, with L-BFGS (``optax.lbfgs``, zoom line search) inside one ``jit``:
no learning rate or epochs to choose. The non-smooth l1 / laplace losses
stop at ``MAX_ITER`` iterations, near their optimum. The features are
standardised for the solve (a reparametrisation of the same linear layer,
undone at the end), which conditions it; the trained head is the starting
point. Solved to
convergence, a head with many features and few (or few heavily weighted)
training records fits them too closely (its sigma collapses onto them), so
:func:`select_refit` fits a path of ridge penalties towards the trained head,
``0.5 * l2 * ||K - K0||^2`` on the standardised kernel for each ``l2`` of
:data:`L2_GRID` (``l2 = inf``: the trained head, unchanged), and keeps the
one with the lowest weighted loss on the validation split.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hypuc_jax import losses
from hypuc_jax._validation import check_finite, is_concrete

__all__ = ["L2_GRID", "MAX_ITER", "head_loss", "refit_head", "select_refit"]

#: Default L-BFGS iteration limit of :func:`refit_head`.
MAX_ITER = 500

#: Ridge strengths :func:`select_refit` tries (standardised features, weighted
#: mean loss); ``inf`` keeps the trained head.
L2_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, math.inf)


def refit_head(head: nnx.Module, features, y, w, spec, *, l2: float = 0.0,
               max_iter: int = MAX_ITER, tol: float = 1e-6) -> tuple[nnx.State, dict[str, Any]]:
  """Parameters of ``head`` minimising the weighted loss on fixed features.

  Minimises ``sum_i w_i l_i / sum_i w_i + 0.5 * l2 * ||diag(std) (K - K0)||^2``,
  ``l_i`` the run's per-example loss of the head's prediction from
  ``features[i]``, ``K`` the head's kernel, ``K0`` the given head's and
  ``std`` the features' standard deviations (the penalty acts on the kernel
  of standardised features and pulls it towards the trained one).

  Only the ``dense`` layer is re-fitted, in float32 whatever the model's
  compute dtype; a learnt Balanced-MSE noise scale stays as trained (BNI's
  value scales with ``stop_gradient(noise^2)``, so its value is no objective
  for the noise).

  Args:
    head: the model's head (``model.out``): an ``nnx.Linear`` ``dense``
      [features -> 2 (1 for a point head)] and the output transform. Not
      modified.
    features: [n, features] the frozen features of the training examples
      (``model.features(x)`` with the model in eval mode).
    y: [n] scaled training labels.
    w: [n] weights >= 0 with a positive sum (the scheme's weights).
    spec: ``steps.LossSpec`` of the run (loss name, Huber delta, BNI prior
      and fixed noise scale); not "bmc", whose loss compares every pair of
      examples in a batch, and ``beta`` 0 (beta-NLL's value holds a
      stop-gradient factor, so it is no objective to minimise).
    l2: ridge strength >= 0; ``inf`` returns the head's own parameters.
    max_iter: L-BFGS iteration limit (>= 1). Non-smooth losses ("l1",
      "laplace") stop there, near the optimum rather than at ``tol``.
    tol: stop when the gradient norm (standardised parameters) is below it.

  Returns:
    ``(params, info)``: the head's ``nnx.Param`` state, for
    ``nnx.update(model.out, params)``, and ``{"iterations", "grad_norm",
    "initial_loss", "loss"}`` (the weighted mean loss before and after,
    without the penalty; ``grad_norm`` None for ``l2 = inf``).

  Raises:
    ValueError: shapes that disagree, non-finite features / labels /
      weights, negative weights or a zero weight sum, "bmc", or a bad
      ``l2`` / ``max_iter`` / ``tol``.
    FloatingPointError: the solve ended with a non-finite loss.
  """
  _check_solver(max_iter, tol, (l2,))
  return _refit(head, *_checked(head, features, y, w, spec), spec, l2, max_iter, tol)


def _refit(head, features, y, w, spec, l2, max_iter, tol):
  """:func:`refit_head` on checked float32 arrays."""
  graphdef, params, rest = nnx.split(_float32(head), nnx.Param, ...)
  if l2 == math.inf:
    loss = _head_loss(head, params, features, y, w, spec)
    return jax.tree.map(lambda v: v, params), {"iterations": 0, "grad_norm": None,
                                                "initial_loss": loss, "loss": loss}
  start = nnx.to_pure_dict(params)
  fixed = {k: v for k, v in start.items() if k != "dense"}
  mean = jnp.mean(features, axis=0)
  std = jnp.std(features, axis=0)
  std = jnp.where(std > 0, std, 1.0)                      # a constant (dead) feature
  kernel, bias = start["dense"]["kernel"], start["dense"]["bias"]
  # out = f @ K + b = z @ (std K) + (b + mean @ K) for z = (f - mean) / std
  dense = {"kernel": kernel * std[:, None].astype(kernel.dtype),
           "bias": bias + (mean @ kernel).astype(bias.dtype)}
  fitted, info = _solve(graphdef, *_static(spec), max_iter, float(tol), params, rest, fixed,
                        dense, (features - mean) / std, y, w, spec.bni_prior, jnp.float32(l2))
  k_std, b_std = fitted["kernel"], fitted["bias"]
  k = k_std / std[:, None].astype(k_std.dtype)
  fitted = {**fixed, "dense": {"kernel": k, "bias": b_std - (mean @ k).astype(b_std.dtype)}}
  info = {key: float(v) if key != "iterations" else int(v) for key, v in info.items()}
  if not (math.isfinite(info["loss"]) and math.isfinite(info["grad_norm"])):
    raise FloatingPointError(f"head re-fit: the weighted loss became non-finite ({info})")
  out = jax.tree.map(lambda v: v, params)                  # a copy: head stays as it was
  nnx.replace_by_pure_dict(out, fitted)
  return out, info


def head_loss(head: nnx.Module, params: nnx.State, features, y, w, spec) -> float:
  """Weighted mean loss ``sum w l / sum w`` of ``head`` with ``params`` on
  ``features [n, F]``, scaled labels ``y [n]`` and weights ``w [n]``."""
  return _head_loss(head, params, *_checked(head, features, y, w, spec), spec)


def _head_loss(head, params, features, y, w, spec) -> float:
  graphdef, _, rest = nnx.split(_float32(head), nnx.Param, ...)
  return float(_loss(graphdef, *_static(spec), params, rest, nnx.to_pure_dict(params),
                     features, y, w, spec.bni_prior))


def select_refit(head: nnx.Module, train: tuple, val: tuple, spec, *,
                 l2_grid=L2_GRID, max_iter: int = MAX_ITER,
                 tol: float = 1e-6) -> tuple[nnx.State, dict[str, Any]]:
  """:func:`refit_head` for each ridge strength of ``l2_grid``; the fit with
  the lowest weighted validation loss (:func:`head_loss`) wins (the smaller
  ``l2`` on a tie).

  Args:
    head, spec, max_iter, tol: as in :func:`refit_head`.
    train: ``(features [n, F], y [n], w [n])`` of the training split.
    val: ``(features [m, F], y [m], w [m])`` of the validation split (``w``
      the same scheme's weights of its labels).
    l2_grid: non-empty sequence of ridge strengths >= 0.

  Returns:
    ``(params, info)``: the chosen fit and its :func:`refit_head` info, plus
    ``l2`` (the chosen strength) and ``val_loss`` (``{str(l2): loss}`` for
    every strength tried; inf where the fit or its loss was not finite).
  """
  grid = tuple(l2_grid)
  if not grid:
    raise ValueError("l2_grid: expected at least one ridge strength, got none")
  _check_solver(max_iter, tol, grid)
  train = _checked(head, *train, spec)           # once: on the device, checked, float32
  val = _checked(head, *val, spec)
  best, scores = None, {}
  for l2 in grid:
    try:
      params, info = _refit(head, *train, spec, l2, max_iter, tol)
    except FloatingPointError:
      scores[str(l2)] = math.inf
      continue
    score = _head_loss(head, params, *val, spec)
    scores[str(l2)] = score if math.isfinite(score) else math.inf
    if best is None or scores[str(l2)] < best[0]:
      best = (scores[str(l2)], l2, params, info)
  if best is None:
    raise FloatingPointError(f"head re-fit: no ridge strength of {grid} gave a finite fit")
  _, l2, params, info = best
  return params, {**info, "l2": l2, "val_loss": scores}


def _check_solver(max_iter, tol, l2s) -> None:
  if not (isinstance(max_iter, int) and max_iter >= 1):
    raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
  if not tol > 0:
    raise ValueError(f"tol: expected a float > 0, got {tol!r}")
  for l2 in l2s:
    if not l2 >= 0:
      raise ValueError(f"l2: expected a float >= 0, got {l2!r}")


def _float32(head: nnx.Module) -> nnx.Module:
  """A copy of ``head`` whose dense layer computes in float32 (params are float32
  already; a bfloat16 solve stalls at its rounding)."""
  head = nnx.clone(head)
  if jnp.dtype(head.dense.dtype or jnp.float32).itemsize < 4:
    head.dense.dtype = jnp.float32
  return head


def _checked(head, features, y, w, spec):
  if spec.name == "bmc":
    raise ValueError("spec: the head re-fit needs a per-example loss, got 'bmc' (its loss "
                     "compares every pair of examples in a batch)")
  if spec.beta != 0:
    raise ValueError(f"spec: the head re-fit needs beta 0, got {spec.beta!r} (beta-NLL's "
                     "value holds a stop-gradient factor, so it is no objective to minimise)")
  # float32 throughout (float64 labels under x64 broke the line search's cond)
  features, y, w = (jnp.asarray(v, jnp.float32) for v in (features, y, w))
  if features.ndim != 2:
    raise ValueError(f"features: expected shape [n, features], got {features.shape}")
  width = head.dense.kernel[...].shape[0]
  if features.shape[1] != width:
    raise ValueError(f"features: expected {width} columns (the head's input width), got "
                     f"{features.shape[1]}")
  if y.shape != (features.shape[0],) or w.shape != y.shape:
    raise ValueError(f"y, w: expected shape [{features.shape[0]}] (one per row of features), "
                     f"got {y.shape} and {w.shape}")
  chex.assert_equal_shape_prefix([features, y, w], 1)
  for name, v in (("features", features), ("y", y), ("w", w)):
    if is_concrete(v):
      check_finite(v, name)
  if is_concrete(w) and (bool(jnp.any(w < 0)) or not float(jnp.sum(w)) > 0):
    raise ValueError("w: expected weights >= 0 with a positive sum")
  return features, y, w


def _static(spec) -> tuple:
  return spec.name, float(spec.huber_delta), float(spec.beta), float(spec.noise_sigma)


def _objective(graphdef, name, huber_delta, beta, noise_sigma, params, rest, d, z, y, w,
               bni_prior):
  state = jax.tree.map(lambda v: v, params)
  nnx.replace_by_pure_dict(state, d)
  head = nnx.merge(graphdef, state, rest)
  learned = getattr(head, "log_noise_sigma", None)
  sigma = noise_sigma if learned is None else jnp.exp(learned[...])
  per = losses.per_example_loss(name, head(z), y, huber_delta=huber_delta,
                                noise_sigma=sigma if name == "bni" else None,
                                bni_prior=bni_prior, beta=beta)
  num, den = losses.weighted_sums(per, w)
  return num / den


_loss = jax.jit(_objective, static_argnums=(0, 1, 2, 3, 4))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _solve(graphdef, name, huber_delta, beta, noise_sigma, max_iter, tol,
           params, rest, fixed, start, z, y, w, bni_prior, l2):
  """L-BFGS over the dense layer's ``{"kernel", "bias"}`` (standardised), the
  head's other parameters ``fixed``."""
  def mean_loss(d):
    return _objective(graphdef, name, huber_delta, beta, noise_sigma, params, rest,
                      {**fixed, "dense": d}, z, y, w, bni_prior)

  def loss(d):
    return mean_loss(d) + 0.5 * l2 * jnp.sum(jnp.square(d["kernel"] - start["kernel"]))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    d, state = carry
    value, grad = value_and_grad(d, state=state)
    updates, state = opt.update(grad, state, d, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(d, updates), state

  def going(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  initial = mean_loss(start)
  d, state = jax.lax.while_loop(going, step, (start, opt.init(start)))
  grad = jax.grad(loss)(d)
  return d, {"iterations": optax.tree.get(state, "count"), "grad_norm": optax.tree.norm(grad),
             "initial_loss": initial, "loss": mean_loss(d)}
