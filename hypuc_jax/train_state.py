"""Model, optimiser and initial train state of a run (cached per process).

``create_train_state(config, input_shape, total_steps)`` builds the model
(``models.create_model`` with ``config.model``) and an ``nnx.Optimizer``
(AdamW, warmup + cosine decay, global-norm clipping) and returns
``(graphdef, state, schedule)``. Graphdefs, optimisers and a jitted
initialiser are cached by the parts of the config that shape them, so
repeated runs of one model in a process (resume, predict after training,
tests) compile once. ``fingerprint(config)`` is the part of a config that a
checkpoint must match to be resumed.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import jax
import optax
from flax import nnx

from hypuc_jax import losses, models
from hypuc_jax.config import Config


def make_optimizer(config: Config, total_steps: int) -> tuple[optax.GradientTransformation,
                                                              optax.Schedule]:
  """AdamW with linear warmup + cosine decay, after global-norm clipping.

  Returns:
    ``(tx, schedule)``; ``schedule(step)`` is the learning rate.
  """
  t = config.train
  warmup = min(t.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup > 0 else t.lr, peak_value=t.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  parts.append(optax.adamw(schedule, weight_decay=t.weight_decay))
  return optax.chain(*parts), schedule


def build_model(config: Config, input_shape: tuple[int, ...], *, rngs: nnx.Rngs):
  """``models.create_model`` with the sizes from ``config.model``.

  Raises:
    ValueError: the model does not fit ``input_shape``; the message names
      the ``model.<key>`` at fault.
  """
  m = config.model
  kind = m.kind if m.kind != "auto" else ("resnet1d" if len(input_shape) == 2 else "mlp")
  kwargs: dict[str, Any] = dict(dropout=m.dropout, sigma_min=m.sigma_min, dtype=m.dtype)
  if kind == "resnet1d":
    kwargs.update(widths=m.widths, blocks=m.blocks, kernel_size=m.kernel_size,
                  stem_kernel=m.stem_kernel, stem_stride=m.stem_stride, groups=m.groups)
  else:
    kwargs.update(hidden=m.widths, activation=m.activation)
  if config.loss.name in ("bmc", "bni") and config.loss.learn_noise:
    kwargs["noise_sigma_init"] = config.loss.noise_sigma
  try:
    return models.create_model(kind, tuple(input_shape),
                               losses.head_for_loss(config.loss.name), rngs=rngs, **kwargs)
  except ValueError as e:
    raise ValueError(f"model.{e} (data example shape {tuple(input_shape)})") from e


def check_model_fits(config: Config, input_shape: tuple[int, ...]) -> None:
  """Raises ValueError naming the key when the model cannot take ``input_shape``."""
  nnx.eval_shape(lambda: build_model(config, input_shape, rngs=nnx.Rngs(0)))


def create_train_state(config: Config, input_shape: tuple[int, ...], total_steps: int,
                       ) -> tuple[nnx.GraphDef, nnx.State, optax.Schedule]:
  """Initialises model + optimiser from ``config.train.seed``.

  Args:
    config: run configuration.
    input_shape: shape of ONE example, ``(time, leads)`` or ``(features,)``.
    total_steps: planned optimiser steps (length of the cosine schedule).

  Returns:
    ``(graphdef, state, schedule)``: ``nnx.merge(graphdef, state)`` gives
    ``(model, optimizer)``; ``state`` is a pytree of fresh arrays.
  """
  key = (_model_key(config), tuple(int(v) for v in input_shape))
  tx, schedule = _optimizer(key[0], int(total_steps))
  graphdef = _graphdef(*key, tx)
  return graphdef, _state_init(*key)(), schedule


def _init_fn(config: Config, input_shape: tuple[int, ...], tx):
  seed = config.train.seed

  def init():
    model = build_model(config, input_shape, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
  return init


# Caches keyed by the parts of the config that shape the model and optimiser:
# runs of one model in a process (resume, predict after training, tests)
# share graphdefs and compiled functions.
def _model_key(config: Config) -> str:
  d = config.to_dict()
  opt = {k: d["train"][k] for k in ("lr", "weight_decay", "warmup_steps", "grad_clip", "seed")}
  return json.dumps({"model": d["model"], "loss": d["loss"], "train": opt}, sort_keys=True)


@functools.lru_cache(maxsize=32)
def _optimizer(config_json: str, total_steps: int):
  return make_optimizer(Config.from_dict(json.loads(config_json)), total_steps)


@functools.lru_cache(maxsize=32)
def _graphdef(config_json: str, input_shape: tuple[int, ...], tx):
  init = _init_fn(Config.from_dict(json.loads(config_json)), input_shape, tx)
  return nnx.split(nnx.eval_shape(init))[0]


@functools.lru_cache(maxsize=16)
def _state_init(config_json: str, input_shape: tuple[int, ...]):
  """Jitted initialiser (one compile, not one per init op); the optimiser
  state's structure and initial values do not depend on the schedule length."""
  tx, _ = _optimizer(config_json, 1)
  init = _init_fn(Config.from_dict(json.loads(config_json)), input_shape, tx)
  return jax.jit(lambda: nnx.split(init())[1])


_NOT_FINGERPRINTED = {"train": ("log_every", "eval_every", "checkpoint_every",
                                "keep_checkpoints", "early_stopping_patience", "prefetch",
                                "transfer_guard", "parallel", "eval_batch_size")}

# Keys left out of the fingerprint (fingerprints written before they mattered lack
# them) that still decide which checkpoint becomes the run's model: a run with
# checkpoints must keep them, checked against its config.json (selection_change).
SELECTION_KEYS = ("eval_every", "early_stopping_patience")


def selection_change(stored_config: dict, config: Config) -> str | None:
  """The first of ``SELECTION_KEYS`` whose stored value differs from ``config``'s, as
  "train.KEY: stored A, now B"; None when they agree (or the stored config lacks them).

  Args:
    stored_config: a run's config.json, as a dict.
    config: the config asked for now.
  """
  stored = stored_config.get("train") if isinstance(stored_config, dict) else None
  for key in SELECTION_KEYS:
    now = getattr(config.train, key)
    if isinstance(stored, dict) and key in stored and stored[key] != now:
      return f"train.{key}: stored {stored[key]!r}, now {now!r}"
  return None


# Keys added to the config after checkpoints were first written, with the value
# that reproduces the older behaviour: ``CheckpointStore(optional_defaults=)``
# treats such a key at that value like an absent one, so run directories
# trained before the key existed still match.
FINGERPRINT_DEFAULTS = {"weighting": {"apply": "loss", "defer": 0.0, "scope": "network"},
                        "loss": {"beta": 0.0},
                        "train": {"select_on": "nll"}}


def fingerprint(config: Config) -> dict:
  """The part of the config that must match to resume from a checkpoint."""
  d = config.to_dict()
  out = {k: d[k] for k in ("data", "model", "loss", "weighting", "train")}
  out["train"] = {k: v for k, v in out["train"].items()
                  if k not in _NOT_FINGERPRINTED["train"]}
  return out
