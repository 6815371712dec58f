"""Training driver: ``train_and_evaluate`` (data -> state -> loop -> predictions), ``predict``.

Layout follows the Flax examples. The pure step functions live in
:mod:`hypuc_jax.steps` and the train state in :mod:`hypuc_jax.train_state`;
both are re-exported here (``train.train_step``, ``train.create_train_state``).
The loop logs, evaluates on the validation split, checkpoints and early-stops;
a step reported non-finite by ``train_step`` raises on the next logging step,
keeping the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np

from hypuc_jax import (_interrupt, checkpoints, losses, parallel, train_data, train_head,
                       train_logging)
from hypuc_jax import data as data_lib
from hypuc_jax._validation import is_int
from hypuc_jax.config import Config, resolve_parallel, validate
# Re-exported: train.create_train_state / make_optimizer / build_model /
# train_step are the Flax-examples entry points.
from hypuc_jax.steps import (TRACE_COUNTS, LossSpec, bind_eval_step,  # noqa: F401
                             bind_train_step, compiled_steps, eval_step, train_step)
from hypuc_jax.train_head import refits_head  # noqa: F401  (re-exported)
from hypuc_jax.train_state import (FINGERPRINT_DEFAULTS, build_model,  # noqa: F401
                                   check_model_fits, create_train_state, fingerprint,
                                   make_optimizer, selection_change)

__all__ = ["LossSpec", "TrainResult", "TRACE_COUNTS", "bind_eval_step", "bind_train_step",
           "build_model", "check_model_fits",
           "compiled_steps", "create_train_state", "eval_step", "fingerprint",
           "make_optimizer", "predict", "refits_head", "selection_change", "train_and_evaluate",
           "train_step"]


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
    best_metrics: validation metrics at ``best_step`` (with
      ``weighting.scope="head"``: of the re-fitted model, plus the solver's
      ``head_refit`` info as stored, non-finite numbers None: ``l2`` None
      when validation kept the trained head).
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
                read_only: bool = False, data_stamp: str | None = None):
  return checkpoints.CheckpointStore(directory, keep=config.train.keep_checkpoints,
                                     fingerprint=fingerprint(config), data_stamp=data_stamp,
                                     overwrite=overwrite, optional_defaults=FINGERPRINT_DEFAULTS,
                                     read_only=read_only)


def _stored_config(path: str) -> dict | None:
  """The run's config.json as a dict; None when unreadable (then rewritten as before)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def train_and_evaluate(config: Config, workdir: str, *, overwrite: bool = False,
                       stop_after: int | None = None, dataset=None) -> TrainResult:
  """Trains on ``config.data.spec``, early-stops on the validation score, writes the run dir.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` when there
  is one (same config fingerprint); the batch order is a function of the
  step, so a resumed run equals an uninterrupted one.

  Args:
    config: run configuration (validated here).
    workdir: run directory (created).
    overwrite: delete the checkpoints ``workdir`` holds and train from
      scratch (otherwise a run of the same config and data resumes, and
      one of another config or data is refused).
    stop_after: stop (as if interrupted) after this many steps of THIS
      call, right after saving a checkpoint; None runs to the end.
    dataset: the ``data.Dataset`` of ``config.data.spec`` if already loaded,
      or the ``train_data.RunData`` that ``train_data.prepare`` made of it
      (``workflow.train_stage`` passes the one it checked); else loaded here.

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: invalid config (naming the key), a model that does not fit
      the data, or a workdir holding the checkpoints of another config or
      of other training data.
    FloatingPointError: the loss or gradient became NaN/inf; the last good
      checkpoint is kept.
  """
  if stop_after is not None and not (is_int(stop_after) and stop_after >= 0):
    raise ValueError(f"stop_after: expected None or an int >= 0, got {stop_after!r}")
  parallel.maybe_initialize_distributed()
  n_devices = jax.device_count()
  validate(config, n_devices)
  mode = resolve_parallel(config.train.parallel, n_devices)
  t = config.train
  if isinstance(dataset, train_data.RunData):
    if dataset.prepared_for != train_data.prepared_key(config):
      raise ValueError("dataset: a RunData prepared for another config (its data or "
                       "weighting section differs); pass the data.Dataset, or the RunData "
                       "that train_data.prepare made for this config")
    run = dataset
  else:
    run = train_data.prepare(config, dataset)
  check_model_fits(config, run.input_shape)
  steps_per_epoch = len(run.idx["train"]) // t.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"train.batch_size: expected <= the {len(run.idx['train'])} training "
                     f"examples, got {t.batch_size}")
  total = t.steps if t.steps > 0 else t.epochs * steps_per_epoch
  # weighting.defer: steps 1..unweighted train unweighted and are not candidates
  # (no effect without a weighting, so `hypuc run --set weighting.defer=F` keeps
  # the plain baseline)
  unweighted = (min(int(round(config.weighting.defer * total)), total - 1)
                if config.weighting.scheme != "none" else 0)
  # weighting.scope=head: the network trains unweighted (as the plain baseline),
  # then the head is re-fitted to the weighted loss on its frozen features
  head_scope = refits_head(config)
  paths = train_data.run_paths(workdir)
  if overwrite and jax.process_index() == 0 and os.path.exists(paths["config"]):
    # before the checkpoints go: an old config.json beside the new fingerprint would
    # refuse both configs after a stop in between
    os.remove(paths["config"])
  stored = None if overwrite else checkpoints.stored_data_stamp(paths["checkpoints"])
  store = _open_store(config, paths["checkpoints"], overwrite,
                      data_stamp=train_data.matching_stamp(stored, run.x, run.y, run.idx))
  if not overwrite and store.latest_step() and os.path.exists(paths["config"]):
    change = selection_change(_stored_config(paths["config"]), config)
    if change:
      raise ValueError(f"{change}: the checkpoints in {paths['checkpoints']} were evaluated "
                       "and selected with the stored value; keep it, or pass overwrite=True "
                       "(CLI: --overwrite) to train afresh")
  graphdef, state, schedule = create_train_state(config, run.input_shape, total)
  head = losses.head_for_loss(config.loss.name)
  spec = LossSpec.from_config(config, run.y_scaled("train"))
  if jax.process_index() == 0:
    train_data.save_run_files(paths, config, run)
  meta = {"best_nll": float("inf"), "best_step": None, "bad_evals": 0, "val": {}}
  start = store.latest_step() or 0
  if start:
    state, meta = store.restore(start, state)
  elif jax.process_index() == 0:             # a fresh start: an earlier run's predictions go
    for split in ("val", "test"):
      if os.path.exists(paths[f"predictions_{split}"]):
        os.remove(paths[f"predictions_{split}"])
  carried = meta.pop("unlogged", [])        # train metrics of steps not logged before a stop
  placement = parallel.Placement(mode)
  state = placement.put_state(state)
  step_fn, eval_fn = compiled_steps(placement, graphdef, spec, schedule)
  logger = train_logging.TrainLogger(workdir, total, fresh=start == 0, resume_step=start)
  end = total if stop_after is None else min(total, start + stop_after)
  host_batches = train_data.train_batches(run, start, t.batch_size, t.seed,
                                          config.weighting.apply,
                                          total if head_scope else unweighted)
  batches = (data_lib.prefetch_to_device(map(placement.host_layout, host_batches), t.prefetch,
                                         placement.data_sharding)
             if t.prefetch else map(placement.put_batch, host_batches))  # put_batch lays out
  guard_level = "disallow" if t.transfer_guard else "allow"
  pending, last_train, step = [], {}, start
  stopped_early = bool(t.early_stopping_patience
                       and meta["bad_evals"] >= t.early_stopping_patience)  # resumed a stopped run
  if stopped_early:
    end = start
  tick, tick_step = None, start

  y_val = run.y[run.idx["val"]]
  w_val = np.asarray(run.weighting(np.asarray(y_val, np.float32)), np.float64)

  def kept():
    last = store.latest_step()
    return ("no checkpoint was saved yet" if last is None else
            f"last good checkpoint: step {last} in {paths['checkpoints']}")

  def evaluate(state_, step_):
    out = train_data.forward_scaled(placement, eval_fn, placement.get_state(state_),
                                    run, run.x, run.idx["val"], t.eval_batch_size)
    mu, sigma = train_data.to_label_units(run, out["loc"], out["scale"], head)
    bad = ~np.isfinite(mu) if sigma is None else ~(np.isfinite(mu) & np.isfinite(sigma))
    if bad.any():          # a NaN score would count as "no better" and end training quietly
      rows = run.idx["val"][bad]
      raise FloatingPointError(
          f"non-finite validation predictions at step {step_} for {int(bad.sum())} of "
          f"{bad.size} validation records (data rows {rows[:5].tolist()}"
          f"{', ...' if rows.size > 5 else ''}); training stopped, {kept()} (check those "
          "records' inputs for extreme values, or try a lower train.lr)")
    return train_data.val_score(head, y_val, mu, sigma, w_val)

  try:
    for step in range(start + 1, end + 1):
      _interrupt.check()               # a Ctrl-C swallowed by a callback still stops here
      batch = next(batches)            # host work (weights, scaling) outside the guard
      with jax.transfer_guard(guard_level):
        state, metrics = step_fn(state, batch)
      pending.append(metrics)
      if tick is None:                      # after the first (compiling) step
        jax.block_until_ready(metrics)
        tick, tick_step = time.perf_counter(), step
        logger.start(step)
      do_eval = step % t.eval_every == 0 or step == total   # not at a stop_after: a
      do_ckpt = do_eval or step % t.checkpoint_every == 0     # resumed run equals
      do_log = do_ckpt or step % t.log_every == 0            # an uninterrupted one
      if do_log or step == end:
        host = jax.device_get(pending)
        pending = []
        bad = [i for i, m in enumerate(host) if m["finite"] < 1]
        if bad:
          raise FloatingPointError(
              f"non-finite loss or gradient at step {step - len(host) + bad[0] + 1} "
              f"(loss {host[bad[0]]['loss']}, grad norm {host[bad[0]]['grad_norm']}); "
              f"training stopped, {kept()} (try a lower train.lr or train.grad_clip)")
        host = carried + [{k: float(v) for k, v in m.items()} for m in host]
        carried = []
      if step == end and not do_log:           # a stop between records (stop_after):
        meta["unlogged"] = host                # the resumed run logs these steps with its own
      elif do_log:
        now = time.perf_counter()
        # loss, grad norm, weight sum: means since the last record; lr: at this step
        last_train = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        last_train["lr"] = float(host[-1]["lr"])
        last_train.pop("finite")
        last_train["examples_per_s"] = train_logging.throughput(
            (step - tick_step) * t.batch_size, now - tick) if step > tick_step else 0.0
        tick, tick_step = now, step
        logger.log(step, last_train)
        logger.progress_bar(step, last_train["loss"])
      score = None
      if do_eval:
        val = evaluate(state, step)
        logger.log(step, val, prefix="val")
        meta["val"] = val
        if step > unweighted:                   # a candidate for the run's model
          score = val[t.select_on]
          if score < meta["best_nll"]:          # "best_nll": the best train.select_on score
            meta.update(best_nll=score, best_step=step, bad_evals=0)
          else:
            meta["bad_evals"] += 1
      if do_ckpt or step == end:
        store.save(step, placement.get_state(state), meta, score)
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
  best_val = best_meta.get("val", {})
  if head_scope:
    best_state, info = train_head.refit_run_head(placement, graphdef, best_state, run, spec,
                                                 t.eval_batch_size)
    if jax.process_index() == 0:
      checkpoints.save_head(paths["checkpoints"], best,
                            train_head.head_params(graphdef, best_state), info)
  if placement.mode == "sharding":                # eval runs on the mesh; else on device 0
    best_state = placement.put_state(best_state)
  for split in ("val", "test"):
    if len(run.idx[split]):
      out = train_data.forward_scaled(placement, eval_fn, best_state,
                                      run, run.x, run.idx[split], t.eval_batch_size)
      mu, sigma = train_data.to_label_units(run, out["loc"], out["scale"], head)
      if split == "val" and head_scope:       # the run's model is the re-fitted one
        best_val = {**train_data.val_score(head, y_val, mu, sigma, w_val),
                    "head_refit": info}
      if jax.process_index() == 0:
        np.savez(paths[f"predictions_{split}"], y=run.y[run.idx[split]], mu=mu,
                 sigma=np.full_like(mu, np.nan) if sigma is None else sigma)
  store.close()
  return TrainResult(workdir, step, best, best_val,
                     {"train": last_train, "val": meta["val"]}, stopped_early, paths)


def predict(workdir: str, x, *, batch_size: int | None = None,
            finite_checked: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
  """Predictions of the best checkpoint of a run, in label units.

  Args:
    workdir: a run directory written by :func:`train_and_evaluate`.
    x: raw inputs ``[n, time, leads]`` or ``[n, features]`` (unscaled); a
      memory map (or ``data.RowView``) is read in batches, never whole.
    batch_size: forward-pass chunk size; default the run's
      ``train.eval_batch_size``, with which its stored predictions were made
      (another chunking can change the last float bits). Prediction runs on
      one device: a run trained with ``parallel="none"`` (or pmap) is
      reproduced bit for bit, a sharded one to float rounding (~1e-7), its
      evaluation having split each batch over the devices.
    finite_checked: ``x`` comes from ``data.load(..., labels_optional=True)``,
      which has checked every row finite: skip the second full scan.

  Returns:
    ``(mu [n], sigma [n])``; sigma is None for a point head.

  Raises:
    ValueError: ``workdir`` is not a trained run, or ``x`` has the wrong
      shape for the model.
  """
  config, run = train_data.load_run(workdir)
  x = train_data.check_inputs(x, run.input_shape, finite_checked=finite_checked)
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
  state = train_head.with_stored_head(config, graphdef, state, paths["checkpoints"], step)
  placement = parallel.Placement("none")
  # Eval only: the loss spec (and a BNI prior) is irrelevant here.
  _, eval_fn = compiled_steps(placement, graphdef, LossSpec(config.loss.name), schedule)
  head = losses.head_for_loss(config.loss.name)
  out = train_data.forward_scaled(placement, eval_fn, placement.put_state(state), run,
                                  x, np.arange(len(x)),
                                  batch_size or config.train.eval_batch_size)
  return train_data.to_label_units(run, out["loc"], out["scale"], head)
