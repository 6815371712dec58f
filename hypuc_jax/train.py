"""Training: train state, ``train_step``, ``eval_step``, ``train_and_evaluate``.

Layout follows the Flax examples. The train state is the NNX state of
``(model, nnx.Optimizer)`` split into ``(graphdef, state)``, so one pure
step function serves every execution mode of :mod:`hypuc_jax.parallel`
("none", "sharding", "pmap"). The step computes the per-example loss, the
weighted sums ``(sum w*l, sum w)`` and the gradient of ``sum w*l``; under
pmap all three are ``psum``-ed across devices, then the gradient is divided
by the GLOBAL ``sum w`` (under "sharding" the jitted sums already are
global). A step whose loss or gradient norm is not finite leaves the state
unchanged and is reported in its metrics; the loop raises on the next
logging step, keeping the last good checkpoint.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hypuc_jax import checkpoints, losses, parallel, train_data, train_logging
from hypuc_jax import data as data_lib
from hypuc_jax.config import Config, resolve_parallel, validate
# Re-exported: train.create_train_state / make_optimizer / build_model are the
# Flax-examples entry points.
from hypuc_jax.train_state import (FINGERPRINT_DEFAULTS, build_model,  # noqa: F401
                                   check_model_fits, create_train_state, fingerprint,
                                   make_optimizer)

__all__ = ["LossSpec", "TrainResult", "TRACE_COUNTS", "build_model", "check_model_fits",
           "compiled_steps", "create_train_state", "eval_step", "fingerprint",
           "make_optimizer", "predict", "train_and_evaluate", "train_step"]

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
    mean), ``grad_norm``, ``lr``, ``weight_sum`` and ``finite`` (1 when the
    update was applied, 0 when it was skipped as non-finite).
  """
  TRACE_COUNTS["train_step"] += 1
  chex.assert_rank([batch["y"], batch["w"], batch["mask"]], 1)
  chex.assert_equal_shape([batch["y"], batch["w"], batch["mask"]])
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
        beta=spec.beta)
    return losses.weighted_sums(per_example, batch["w"], batch["mask"])

  (num, den), grads = nnx.value_and_grad(weighted_sum, has_aux=True)(model)
  if axis_name is not None:
    num, den, grads = jax.lax.psum((num, den, grads), axis_name)
  den_safe = jnp.where(den > 0, den, 1.0)
  grads = jax.tree.map(lambda g: g / den_safe, grads)
  loss = num / den_safe
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  step = optimizer.step[...]
  optimizer.update(model, grads)
  new_state = nnx.state((model, optimizer))
  if axis_name is not None:               # keys back to the replicated ones
    new_state = parallel.restore_keys(new_state, jax.tree.unflatten(
        jax.tree.structure(state), old_leaves))
  leaves, treedef = jax.tree.flatten(new_state)
  leaves = jax.lax.cond(finite, lambda: leaves, lambda: old_leaves)
  new_state = jax.tree.unflatten(treedef, leaves)
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step),
             "weight_sum": den, "finite": finite.astype(jnp.float32)}
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, state: nnx.State,
              batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Deterministic forward pass (dropout off).

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
  try:
    key = (placement.mode, placement.n_devices, id(graphdef), hash(spec), id(schedule))
  except TypeError:                               # unhashable spec (a BNI prior)
    key = None
  if key is not None and key in _STEP_CACHE:
    return _STEP_CACHE[key][1]
  fns = (placement.compile_step(bind_train_step(graphdef, spec, schedule)),
         placement.compile_eval(bind_eval_step(graphdef)))
  if key is not None:
    if len(_STEP_CACHE) >= 16:
      _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
    _STEP_CACHE[key] = ((graphdef, spec, schedule), fns)
  return fns


_STEP_CACHE: dict = {}


# ----------------------------------------------------------------------------
# Run driver: data -> state -> loop (log / eval / checkpoint) -> predictions.

@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What ``train_and_evaluate`` produced.

  Attributes:
    workdir: run directory.
    steps: optimiser steps done in total (including a resumed part).
    best_step: step of the best checkpoint (lowest ``train.select_on``
      validation score).
    best_metrics: validation metrics at ``best_step``.
    final_metrics: last logged train metrics and last validation metrics.
    stopped_early: whether early stopping ended training.
    paths: run files by name (config, scaler, weighting, checkpoints,
      metrics, tb, predictions_val, predictions_test).
  """
  workdir: str
  steps: int
  best_step: int | None
  best_metrics: dict
  final_metrics: dict
  stopped_early: bool
  paths: dict


def _open_store(config: Config, directory: str, overwrite: bool = False,
                read_only: bool = False):
  return checkpoints.CheckpointStore(directory, keep=config.train.keep_checkpoints,
                                     fingerprint=fingerprint(config), overwrite=overwrite,
                                     optional_defaults=FINGERPRINT_DEFAULTS, read_only=read_only)


def train_and_evaluate(config: Config, workdir: str, *, overwrite: bool = False,
                       stop_after: int | None = None) -> TrainResult:
  """Trains on ``config.data.spec``, early-stops on the validation score, writes the run dir.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` when there
  is one (same config fingerprint); the batch order is a function of the
  step, so a resumed run equals an uninterrupted one.

  Args:
    config: run configuration (validated here).
    workdir: run directory (created).
    overwrite: replace checkpoints from a different model/config instead
      of refusing the workdir.
    stop_after: stop (as if interrupted) after this many steps of THIS
      call, right after saving a checkpoint; None runs to the end.

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: invalid config (naming the key), a model that does not fit
      the data, or a workdir holding another run's checkpoints.
    FloatingPointError: the loss or gradient became NaN/inf; the last good
      checkpoint is kept.
  """
  parallel.maybe_initialize_distributed()
  n_devices = jax.device_count()
  validate(config, n_devices)
  mode = resolve_parallel(config.train.parallel, n_devices)
  t = config.train
  run = train_data.prepare(config)
  check_model_fits(config, run.input_shape)
  steps_per_epoch = len(run.idx["train"]) // t.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"train.batch_size: expected <= the {len(run.idx['train'])} training "
                     f"examples, got {t.batch_size}")
  total = t.steps if t.steps > 0 else t.epochs * steps_per_epoch
  paths = train_data.run_paths(workdir)
  store = _open_store(config, paths["checkpoints"], overwrite)
  graphdef, state, schedule = create_train_state(config, run.input_shape, total)
  head = losses.head_for_loss(config.loss.name)
  spec = LossSpec.from_config(config, run.y_scaled("train"))
  if jax.process_index() == 0:
    train_data.save_run_files(paths, config, run)
  meta = {"best_nll": float("inf"), "best_step": None, "bad_evals": 0, "val": {}}
  start = store.latest_step() or 0
  if start:
    state, meta = store.restore(start, state)
  placement = parallel.Placement(mode)
  state = placement.put_state(state)
  step_fn, eval_fn = compiled_steps(placement, graphdef, spec, schedule)
  logger = train_logging.TrainLogger(workdir, total, fresh=start == 0)
  end = total if stop_after is None else min(total, start + stop_after)
  host_batches = map(placement.host_layout,
                     train_data.train_batches(run, start, t.batch_size, t.seed,
                                              config.weighting.apply))
  batches = (data_lib.prefetch_to_device(host_batches, t.prefetch, placement.data_sharding)
             if t.prefetch else map(placement.put_batch, host_batches))
  guard_level = "disallow" if t.transfer_guard else "allow"
  pending, last_train, step = [], {}, start
  stopped_early = bool(t.early_stopping_patience
                       and meta["bad_evals"] >= t.early_stopping_patience)  # resumed a stopped run
  if stopped_early:
    end = start
  tick, tick_step = None, start

  y_val = run.y[run.idx["val"]]
  w_val = np.asarray(run.weighting(np.asarray(y_val, np.float32)), np.float64)

  def evaluate(state_):
    loc, scale = train_data.predict_scaled(placement, eval_fn, placement.get_state(state_),
                                           run, run.x, run.idx["val"], t.eval_batch_size)
    mu, sigma = train_data.to_label_units(run, loc, scale, head)
    return train_data.val_score(head, y_val, mu, sigma, w_val)

  try:
    for step in range(start + 1, end + 1):
      batch = next(batches)            # host work (weights, scaling) outside the guard
      with jax.transfer_guard(guard_level):
        state, metrics = step_fn(state, batch)
      pending.append(metrics)
      if tick is None:                      # after the first (compiling) step
        jax.block_until_ready(metrics)
        tick, tick_step = time.perf_counter(), step
        logger.start(step)
      do_eval = step % t.eval_every == 0 or step == total   # not at a stop_after: a
      do_ckpt = do_eval or step % t.checkpoint_every == 0 or step == end  # resumed run equals
      if step % t.log_every == 0 or do_ckpt:
        host = jax.device_get(pending)
        pending = []
        bad = [i for i, m in enumerate(host) if m["finite"] < 1]
        if bad:
          last = store.latest_step()
          raise FloatingPointError(
              f"non-finite loss or gradient at step {step - len(host) + bad[0] + 1} "
              f"(loss {host[bad[0]]['loss']}, grad norm {host[bad[0]]['grad_norm']}); "
              f"training stopped, last good checkpoint: step {last} in {paths['checkpoints']}"
              " (try a lower train.lr or train.grad_clip)")
        now = time.perf_counter()
        last_train = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        last_train.pop("finite")
        last_train["examples_per_s"] = train_logging.throughput(
            (step - tick_step) * t.batch_size, now - tick) if step > tick_step else 0.0
        tick, tick_step = now, step
        logger.log(step, last_train)
        logger.progress_bar(step, last_train["loss"])
      val = None
      if do_eval:
        val = evaluate(state)
        logger.log(step, val, prefix="val")
        meta["val"] = val
        score = val[t.select_on]
        if score < meta["best_nll"]:            # "best_nll": the best train.select_on score
          meta.update(best_nll=score, best_step=step, bad_evals=0)
        else:
          meta["bad_evals"] += 1
      if do_ckpt:
        store.save(step, placement.get_state(state), meta, None if val is None else score)
      if t.early_stopping_patience and meta["bad_evals"] >= t.early_stopping_patience:
        stopped_early = True
        break
  finally:
    logger.close()
    if hasattr(batches, "close"):
      batches.close()                      # stops the prefetch thread
  if step < total and not stopped_early:   # interrupted on purpose (stop_after)
    store.close()
    return TrainResult(workdir, step, meta["best_step"], {}, last_train, False, paths)
  best = store.best_step() or store.latest_step()
  best_state, best_meta = store.restore(best, placement.get_state(state))
  if placement.mode == "sharding":                # eval runs on the mesh; else on device 0
    best_state = placement.put_state(best_state)
  for split in ("val", "test"):
    if len(run.idx[split]):
      loc, scale = train_data.predict_scaled(placement, eval_fn, best_state,
                                             run, run.x, run.idx[split], t.eval_batch_size)
      mu, sigma = train_data.to_label_units(run, loc, scale, head)
      if jax.process_index() == 0:
        np.savez(paths[f"predictions_{split}"], y=run.y[run.idx[split]], mu=mu,
                 sigma=np.full_like(mu, np.nan) if sigma is None else sigma)
  store.close()
  return TrainResult(workdir, step, best, best_meta.get("val", {}),
                     {"train": last_train, "val": meta["val"]}, stopped_early, paths)


def predict(workdir: str, x, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
  """Predictions of the best checkpoint of a run, in label units.

  Args:
    workdir: a run directory written by :func:`train_and_evaluate`.
    x: raw inputs ``[n, time, leads]`` or ``[n, features]`` (unscaled); a
      memory map (or ``data.RowView``) is read in batches, never whole.
    batch_size: forward-pass chunk size.

  Returns:
    ``(mu [n], sigma [n])``; sigma is None for a point head.

  Raises:
    ValueError: ``workdir`` is not a trained run, or ``x`` has the wrong
      shape for the model.
  """
  config, run = train_data.load_run(workdir)
  x = train_data.check_inputs(x, run.input_shape)
  graphdef, template, schedule = create_train_state(config, run.input_shape, 1)
  paths = train_data.run_paths(workdir)
  if not os.path.isdir(paths["checkpoints"]):
    raise ValueError(f"workdir: no checkpoint in {paths['checkpoints']}")
  store = _open_store(config, paths["checkpoints"], read_only=True)   # writes nothing
  step = store.best_step() or store.latest_step()
  if step is None:
    raise ValueError(f"workdir: no checkpoint in {paths['checkpoints']}")
  state, _ = store.restore(step, template)
  store.close()
  placement = parallel.Placement("none")
  # Eval only: the loss spec (and a BNI prior) is irrelevant here.
  _, eval_fn = compiled_steps(placement, graphdef, LossSpec(config.loss.name), schedule)
  head = losses.head_for_loss(config.loss.name)
  loc, scale = train_data.predict_scaled(placement, eval_fn, placement.put_state(state), run,
                                         x, np.arange(len(x)), batch_size)
  return train_data.to_label_units(run, loc, scale, head)
