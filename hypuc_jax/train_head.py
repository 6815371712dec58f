"""The head re-fit of a trained run (``weighting.scope="head"``): the glue
between ``train.train_and_evaluate`` / ``train.predict`` and the pure
:mod:`hypuc_jax.head_refit`.

``refit_run_head`` extracts the frozen features of the training and
validation splits (``steps.feature_step`` under the run's placement), re-fits
the head with ``head_refit.select_refit`` and returns the state with the new
head; ``train`` stores it with ``checkpoints.save_head``; ``with_stored_head``
puts a stored head back into a restored state (checked against the model).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from flax import nnx

from hypuc_jax import checkpoints, head_refit, train_data
from hypuc_jax.config import Config
from hypuc_jax.steps import LossSpec, compiled_feature_step

__all__ = ["head_params", "refit_run_head", "refits_head", "with_stored_head"]


def refits_head(config: Config) -> bool:
  """Whether a run of ``config`` re-fits its head to the weighted loss after
  training (``weighting.scope="head"`` with a weighting scheme)."""
  return config.weighting.scope == "head" and config.weighting.scheme != "none"


def refit_run_head(placement, graphdef, state, run, spec: LossSpec, batch_size: int):
  """``state`` (host / first device) with its head re-fitted to the weighted
  loss on the frozen features of the training split (ridge strength chosen
  on the validation split, ``head_refit.select_refit``), and the fit's info."""
  placed = placement.put_state(state) if placement.mode == "sharding" else state
  fn = compiled_feature_step(placement, graphdef)
  parts = []
  for split in ("train", "val"):
    feats = train_data.forward_scaled(placement, fn, placed, run, run.x, run.idx[split],
                                      batch_size)["features"]
    w = run.weighting(np.asarray(run.y[run.idx[split]], np.float32))
    parts.append((feats, run.y_scaled(split), np.asarray(w, np.float32)))
  model, optimizer = nnx.merge(graphdef, state)
  params, info = head_refit.select_refit(model.out, *parts, spec,
                                         l2_grid=head_refit.L2_GRID)
  if info["iterations"] >= head_refit.MAX_ITER:
    logging.getLogger(__name__).warning(
        "head re-fit (weighting.scope=head, l2 %g): stopped at the %d-iteration limit with "
        "gradient norm %.3g (a non-smooth loss such as l1 / laplace ends there near its "
        "optimum; otherwise the weights may span too wide a range: a lower weighting.lam "
        "or weighting.max_weight)", info["l2"], info["iterations"], info["grad_norm"])
  nnx.update(model.out, params)
  return nnx.state((model, optimizer)), checkpoints.finite_or_none(info)   # as stored


def head_params(graphdef, state) -> dict:
  """The head's parameters of ``state`` as a nested ``{name: array}`` dict."""
  model, _ = nnx.merge(graphdef, state)
  return nnx.to_pure_dict(nnx.state(model.out, nnx.Param))


def with_stored_head(config: Config, graphdef, state, directory: str, step: int):
  """``state`` with the head ``train.train_and_evaluate`` re-fitted for checkpoint
  ``step`` (``weighting.scope="head"``); ``state`` itself otherwise."""
  if not refits_head(config):
    return state
  stored = checkpoints.load_head(directory)
  if stored is None or stored[0] != step:
    what = "missing" if stored is None else f"fitted to step {stored[0]}, not {step}"
    raise ValueError(f"workdir: the re-fitted head of weighting.scope=head in {directory} is "
                     f"{what}; train again (hypuc train resumes and re-fits it)")
  model, optimizer = nnx.merge(graphdef, state)
  params = nnx.state(model.out, nnx.Param)
  want = nnx.to_pure_dict(params)
  fits = jax.tree.structure(want) == jax.tree.structure(stored[1]) and all(
      np.shape(a) == np.shape(b) and np.all(np.isfinite(b))
      for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(stored[1])))
  if not fits:
    raise ValueError(f"{os.path.join(directory, checkpoints.HEAD_FILE)}: not a re-fitted head "
                     f"of this model (expected the finite arrays "
                     f"{jax.tree.map(np.shape, want)}); train again (hypuc train re-fits it)")
  nnx.replace_by_pure_dict(params, stored[1])
  nnx.update(model.out, params)
  return nnx.state((model, optimizer))
