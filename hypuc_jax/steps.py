"""The pure step functions: ``train_step``, ``eval_step`` and their compiled forms.

The train state is the NNX state of ``(model, nnx.Optimizer)`` split into
``(graphdef, state)``, so one pure step function serves every execution mode
of :mod:`hypuc_jax.parallel` ("none", "sharding", "pmap"). The step computes
the per-example loss, the weighted sums ``(sum w*l, sum w)`` and the
gradient of ``sum w*l``; under pmap all three are ``psum``-ed across
devices, then the gradient is divided by the GLOBAL ``sum w`` (under
"sharding" the jitted sums already are global). A step whose loss or
gradient norm is not finite leaves the state unchanged and reports it in
its metrics (``finite`` = 0); the loop in :mod:`hypuc_jax.train` acts on it.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hypuc_jax import losses, parallel
from hypuc_jax.config import Config

__all__ = ["LossSpec", "TRACE_COUNTS", "bind_eval_step", "bind_train_step",
           "compiled_feature_step", "compiled_steps", "eval_step", "feature_step", "train_step"]

#: Python-side trace counter per step function (incremented while tracing).
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static description of the training loss (closed over by the step).

  Attributes:
    name: loss name (``losses.LOSS_NAMES``).
    beta: beta-NLL exponent (``losses.variance_weighted``; 0 = plain NLL).
    huber_delta: Huber delta.
    noise_sigma: fixed Balanced-MSE noise scale (used unless the model owns
      a learnable one).
    bni_prior: histogram prior of the scaled training labels for "bni".
  """
  name: str = "nll"
  huber_delta: float = 1.0
  noise_sigma: float = 1.0
  bni_prior: Any = None
  beta: float = 0.0

  @classmethod
  def from_config(cls, config: Config, train_labels: np.ndarray | None = None) -> "LossSpec":
    """Builds the spec; ``train_labels`` (scaled) give the BNI prior."""
    prior = None
    if config.loss.name == "bni":
      if train_labels is None:
        raise ValueError("train_labels: loss 'bni' needs the training labels for its prior")
      centers, probs = losses.histogram_prior(train_labels, config.loss.bni_bins)
      prior = losses.HistogramPrior(jnp.asarray(centers), jnp.asarray(probs))
    return cls(config.loss.name, config.loss.huber_delta, config.loss.noise_sigma, prior,
               float(config.loss.beta))


def _noise(model, spec: LossSpec):
  learned = model.noise_sigma() if spec.name in ("bmc", "bni") else None
  return spec.noise_sigma if learned is None else learned


def train_step(graphdef: nnx.GraphDef, spec: LossSpec, schedule: optax.Schedule,
               state: nnx.State, batch: dict[str, jax.Array],
               axis_name: str | None = None) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One optimiser step on the weighted loss sum(w*l)/sum(w) of the global batch.

  Args:
    graphdef, spec, schedule: static parts (bind with ``functools.partial``).
    state: the ``(model, optimizer)`` state.
    batch: ``x [b, ...]``, ``y [b]`` (scaled labels), ``w [b]`` weights,
      ``mask [b]`` (0 for padding); under pmap ``b`` is the per-device part.
    axis_name: pmap axis to ``psum`` over, or None (jit / sharding).

  Returns:
    ``(new_state, metrics)`` with scalar metrics ``loss`` (global weighted
    mean), ``grad_norm``, ``lr``, ``weight_sum`` and ``finite`` (0 when the
    update was skipped as non-finite, or because a kept row has a negative
    weight: weights must be >= 0). A batch whose ``weight_sum`` is 0 leaves
    the state as it was (loss 0, finite 1). Rows with ``mask`` 0 count for
    nothing, whatever their x, y and w hold (NaN included).
  """
  TRACE_COUNTS["train_step"] += 1
  chex.assert_rank([batch["y"], batch["w"], batch["mask"]], 1,
                   custom_message='batch["y"], batch["w"], batch["mask"]: expected shape [b]')
  chex.assert_equal_shape([batch["y"], batch["w"], batch["mask"]],
                          custom_message='batch["y"], batch["w"], batch["mask"]: expected '
                          'one length b')
  # Padded rows count for nothing, whatever they hold: a NaN there would otherwise
  # reach the gradients through the backward pass (0 * NaN) and skip the step.
  keep = batch["mask"] > 0
  batch = dict(batch,
               x=jnp.where(keep.reshape((-1,) + (1,) * (batch["x"].ndim - 1)), batch["x"], 0),
               y=jnp.where(keep, batch["y"], 0), w=jnp.where(keep, batch["w"], 0))
  old_leaves = jax.tree.leaves(state)     # before merge: updates mutate in place
  if axis_name is not None:               # pmap: each device its own dropout stream
    state = parallel.fold_device_keys(state, axis_name)
  model, optimizer = nnx.merge(graphdef, state)
  model.train()

  def weighted_sum(model):
    pred = model(batch["x"])
    per_example = losses.per_example_loss(
        spec.name, pred, batch["y"], huber_delta=spec.huber_delta,
        noise_sigma=_noise(model, spec), bni_prior=spec.bni_prior, mask=batch["mask"],
        beta=spec.beta, axis_name=axis_name)   # in-batch losses (BMC) see the global batch
    return losses.weighted_sums(per_example, batch["w"], batch["mask"])

  (num, den), grads = nnx.value_and_grad(weighted_sum, has_aux=True)(model)
  negative = jnp.sum((batch["w"] < 0).astype(jnp.int32))   # w >= 0 is not checked under jit
  if axis_name is not None:
    num, den, grads, negative = jax.lax.psum((num, den, grads, negative), axis_name)
  den_safe = jnp.where(den > 0, den, 1.0)
  # float64 weights (x64 mode) must not promote float32 gradients, and so the parameters
  grads = jax.tree.map(lambda g: (g / den_safe).astype(g.dtype), grads)
  loss = num / den_safe
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (negative == 0)
  step = optimizer.step[...]
  optimizer.update(model, grads)
  new_state = nnx.state((model, optimizer))
  if axis_name is not None:               # keys back to the replicated ones
    new_state = parallel.restore_keys(new_state, jax.tree.unflatten(
        jax.tree.structure(state), old_leaves))
  leaves, treedef = jax.tree.flatten(new_state)
  # a batch of zero total weight changes nothing (no momentum or weight-decay step)
  leaves = jax.lax.cond(finite & (den > 0), lambda: leaves, lambda: old_leaves)
  new_state = jax.tree.unflatten(treedef, leaves)
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step),
             "weight_sum": den, "finite": finite.astype(jnp.float32)}
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, state: nnx.State,
              batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Deterministic forward pass (dropout off).

  Args:
    graphdef: static model/optimizer graph (bind with ``functools.partial``).
    state: the ``(model, optimizer)`` state.
    batch: ``x [b, ...]`` scaled inputs (e.g. ``[b, time, leads]``); other
      keys are ignored (``train_data.forward_scaled`` passes only ``x``, and
      drops padded rows with the host batch's ``mask``).

  Returns:
    ``{"loc": [b], "scale": [b]}`` in scaled label units (scale 0 for a
    point head).
  """
  TRACE_COUNTS["eval_step"] += 1
  model, _ = nnx.merge(graphdef, state)
  model.eval()
  pred = model(batch["x"])
  scale = jnp.zeros_like(pred.loc) if pred.scale is None else pred.scale
  return {"loc": pred.loc, "scale": scale}


def feature_step(graphdef: nnx.GraphDef, state: nnx.State,
                 batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The features the head reads (``model.features``, eval mode).

  Args: as :func:`eval_step`. Returns: ``{"features": [b, features]}``.
  """
  TRACE_COUNTS["feature_step"] += 1
  model, _ = nnx.merge(graphdef, state)
  model.eval()
  return {"features": model.features(batch["x"])}


def compiled_feature_step(placement: parallel.Placement, graphdef) -> Callable:
  """:func:`feature_step` compiled for ``placement`` (as the eval step), cached per process."""
  key = ("features", placement.mode, placement.n_devices, id(graphdef))
  if key not in _STEP_CACHE:
    if len(_STEP_CACHE) >= 16:
      _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
    _STEP_CACHE[key] = (graphdef, placement.compile_eval(
        functools.partial(feature_step, graphdef)))
  return _STEP_CACHE[key][1]


def bind_train_step(graphdef, spec: LossSpec, schedule) -> Callable:
  """``train_step`` with its static parts bound: ``fn(state, batch, axis_name)``."""
  return functools.partial(train_step, graphdef, spec, schedule)


def bind_eval_step(graphdef) -> Callable:
  """``eval_step`` with the graphdef bound: ``fn(state, batch)``."""
  return functools.partial(eval_step, graphdef)


def compiled_steps(placement: parallel.Placement, graphdef, spec: LossSpec,
                   schedule) -> tuple[Callable, Callable]:
  """``(train_step, eval_step)`` compiled for ``placement``, cached per process.

  Runs with the same model, loss and schedule objects (``create_train_state``
  caches them per config: a resumed run, predict after training) reuse the
  compiled functions. GraphDefs are unhashable, so the key holds their id and
  the cache keeps them alive.
  """
  # The spec itself (not its hash) is in the key: dict lookup then compares the
  # fields, so specs whose floats merely hash alike (1.0 and 2**61) stay apart. A
  # BNI prior (arrays, unhashable) enters by its values.
  prior = spec.bni_prior
  spec_key = (spec if prior is None else
              (dataclasses.replace(spec, bni_prior=None),
               tuple((np.asarray(a).dtype.str, np.asarray(a).tobytes()) for a in prior)))
  key = (placement.mode, placement.n_devices, id(graphdef), spec_key, id(schedule))
  if key in _STEP_CACHE:
    return _STEP_CACHE[key][1]
  fns = (placement.compile_step(bind_train_step(graphdef, spec, schedule)),
         placement.compile_eval(bind_eval_step(graphdef)))
  if len(_STEP_CACHE) >= 16:
    _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
  _STEP_CACHE[key] = ((graphdef, spec, schedule), fns)
  return fns


_STEP_CACHE: dict = {}
