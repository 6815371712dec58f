"""The data of one training run: splits, scaling, weights, batch order, run files.

``prepare(config)`` loads ``config.data.spec``, splits it with
``data.split_indices`` (the same call the workflow uses), fits the
``data.Scaler`` and the label weighting ONCE on the training split, and
returns a :class:`RunData`. The training batch order is a pure function of
the step (a seeded permutation per epoch, remainder dropped so every batch
has one shape), which makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import jax
import numpy as np

from hypuc_jax import data as data_lib
from hypuc_jax import weights as weights_lib
from hypuc_jax._data_stamp import (  # noqa: F401  (re-exported: training and tests read them here)
    STAMP_FULL_BYTES, STAMP_RECORDS, data_stamp, matching_stamp)
from hypuc_jax._validation import as_array
from hypuc_jax.data import readers
from hypuc_jax.config import WEIGHT_APPLY, WEIGHTING_FIELDS, Config

SPLITS = ("train", "val", "test")


def run_paths(workdir: str) -> dict[str, str]:
  """Files of a run directory (see docs/architecture.md)."""
  join = lambda name: os.path.join(workdir, name)
  return {"config": join("config.json"), "scaler": join("scaler.json"),
          "weighting": join("weighting.json"), "checkpoints": join("checkpoints"),
          "metrics": join("metrics.jsonl"), "tb": join("tb"),
          "predictions_val": join("predictions_val.npz"),
          "predictions_test": join("predictions_test.npz")}


def weighting_options(config: Config) -> dict[str, Any]:
  """``weights.fit_weighting`` options of ``config.weighting.scheme``."""
  w = config.weighting
  return {_OPTION_NAMES.get(f, f): getattr(w, f) for f in WEIGHTING_FIELDS.get(w.scheme, ())}


#: ``weights.fit_weighting`` argument names of the config fields that differ.
_OPTION_NAMES = {"lds_kernel": "kernel", "lds_ks": "ks", "lds_sigma": "sigma",
                 "dense_alpha": "alpha"}


@dataclasses.dataclass
class RunData:
  """Data of one run: raw records, split indices and the fitted transforms.

  Attributes:
    x: raw inputs [n, time, leads] or [n, features] (array or memory map).
    y: labels [n] in label units.
    idx: {split: sorted row indices}.
    scaler: ``data.Scaler`` fitted on the training rows.
    weighting: ``weights.LabelWeighting`` fitted on the training labels
      (label units), applied per batch by the batch iterator.
    input_shape: shape of one example.
    prepared_for: :func:`prepared_key` of the config ``prepare`` fitted it
      for (None: not made by ``prepare``).
  """
  x: Any
  y: np.ndarray
  idx: dict
  scaler: Any
  weighting: Any
  input_shape: tuple
  prepared_for: tuple | None = None

  def y_scaled(self, split: str) -> np.ndarray:
    """Scaled labels [n_split] float32 of ``split`` ("train", "val" or "test")."""
    return np.asarray(self.scaler.transform_y(self.y[self.idx[split]]), np.float32)

  def inverse_y(self, y_scaled: np.ndarray) -> np.ndarray:
    """Scaled locations [n] -> label units [n], float64 (``Scaler.inverse_y``)."""
    return np.asarray(self.scaler.inverse_y(np.asarray(y_scaled, np.float64)), np.float64)

  def inverse_scale(self, s_scaled: np.ndarray) -> np.ndarray:
    """Scaled scales [n] -> label units [n], float64 (``Scaler.inverse_scale``)."""
    return np.asarray(self.scaler.inverse_scale(np.asarray(s_scaled, np.float64)), np.float64)


def load_dataset(config: Config):
  """``data.load_for_config(config)`` (spec, strict, target)."""
  return data_lib.load_for_config(config)


def split_for(config: Config, ds) -> dict[str, np.ndarray]:
  """Split indices of ``ds``: its fixed split column if any, else seeded fractions.

  Raises:
    ValueError: naming ``data.split`` or the data's split column when a
      split would be empty.
  """
  fixed = getattr(ds, "split", None)
  try:
    return data_lib.split_indices(len(ds.y), config.data.seed, tuple(config.data.split),
                                  fixed=fixed)
  except ValueError as e:
    where = "the split column of --data" if fixed is not None else "data.split"
    raise ValueError(f"{where} ({config.data.spec}): {e}") from e


def prepared_key(config: Config) -> tuple:
  """What :func:`prepare`'s result depends on: the data section and the weighting
  section but for how the weights are applied (``apply``, ``defer``, ``scope``),
  compared as values (lam 1 equals lam 1.0)."""
  return (config.data, dataclasses.replace(config.weighting, apply="loss", defer=0.0,
                                           scope="network"))


def prepare(config: Config, dataset=None) -> RunData:
  """Loads and splits the data; fits the scaler and the weighting on train only.

  ``dataset``: the ``data.Dataset`` of ``config.data.spec`` when the caller
  has loaded it already (it is then not read again).

  Raises:
    ValueError: from the data source, the split, the scaler (labels or inputs
      that overflow float32 once centred) or the weighting fit.
  """
  ds = load_dataset(config) if dataset is None else dataset
  y = np.asarray(ds.y, np.float64)
  idx = {s: np.sort(np.asarray(i, np.int64)) for s, i in split_for(config, ds).items()}
  scaler = data_lib.Scaler.fit(ds.x, y, idx["train"])
  try:
    weighting = weights_lib.fit_weighting(config.weighting.scheme, y[idx["train"]],
                                          **weighting_options(config))
  except ValueError as e:     # the library's argument names, as config keys
    raise ValueError(f"weighting (scheme {config.weighting.scheme!r}) of the training labels: "
                     f"{e} (config keys: weighting.method, weighting.bandwidth)") from None
  return RunData(ds.x, y, idx, scaler, weighting, tuple(int(v) for v in ds.x.shape[1:]),
                 prepared_key(config))


def trained_on_other_data(workdir: str, x: Any, y: Any, idx: dict) -> bool:
  """Whether the checkpoints in ``workdir`` were trained on other data than (x, y, idx)
  (False when they carry no stamp): their stamp against :func:`matching_stamp`.

  Args:
    workdir: run directory.
    x: records [n, ...]; y: labels [n]; idx: {split: row indices}.
  """
  from hypuc_jax import checkpoints
  stored = checkpoints.stored_data_stamp(run_paths(str(workdir))["checkpoints"])
  return stored is not None and stored != matching_stamp(stored, x, np.asarray(y, np.float64),
                                                         idx)


def save_run_files(paths: dict[str, str], config: Config, run: RunData) -> None:
  """Writes config.json, scaler.json and weighting.json (process 0 only)."""
  os.makedirs(os.path.dirname(paths["config"]) or ".", exist_ok=True)
  with jax.transfer_guard("allow"):
    payload = {"config": config.to_dict(),
               "scaler": dict(run.scaler.to_dict(), input_shape=list(run.input_shape)),
               "weighting": run.weighting.to_dict()}
  for name, value in payload.items():
    tmp = paths[name] + ".tmp"
    with open(tmp, "w") as f:
      json.dump(value, f, indent=1, default=_json_default)
    os.replace(tmp, paths[name])


def load_run(workdir: str) -> tuple[Config, RunData]:
  """Config and scaling of a finished run (no data loaded).

  Raises:
    ValueError: ``workdir`` lacks config.json or scaler.json, or either is
      unreadable or invalid (the message names the file).
  """
  paths = run_paths(workdir)
  for key in ("config", "scaler"):
    if not os.path.exists(paths[key]):
      raise ValueError(f"workdir: {workdir} is not a trained run (missing {paths[key]})")
  try:
    with open(paths["config"], encoding="utf-8") as f:
      config = Config.from_dict(json.load(f))
  except (OSError, KeyError, TypeError, ValueError) as e:     # ValueError: JSON, UTF-8
    raise ValueError(f"{paths['config']}: not a valid run config ({e})") from None
  try:
    with open(paths["scaler"], encoding="utf-8") as f:
      d = json.load(f)
    shape = tuple(int(v) for v in d.pop("input_shape"))
    scaler = data_lib.Scaler.from_dict(d)
  except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
    raise ValueError(f"{paths['scaler']}: not a valid scaler file "
                     f"({type(e).__name__}: {e}); re-run training") from None
  return config, RunData(None, np.zeros((0,)), {}, scaler, None, shape)


def train_batches(run: RunData, start_step: int, batch_size: int, seed: int,
                  apply: str = "loss", unweighted_steps: int = 0
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Host batches for steps ``start_step + 1, ...`` (this process's slice).

  ``data.batch_iterator`` shuffles (``apply="loss"``) or resamples by weight
  (``apply="resample"``; the plain shuffle for scheme "none") epoch ``e``
  with ``(seed, e)`` and drops the remainder; resuming starts at the step's
  epoch and skips the batches already seen (without reading them), so the
  sequence equals an uninterrupted run's. The batches of steps
  ``1..unweighted_steps`` carry weight 1 (``weighting.defer``; loss weights
  only), the same rows in the same order.
  """
  if apply not in WEIGHT_APPLY:
    raise ValueError(f"apply: expected one of {WEIGHT_APPLY}, got {apply!r}")
  if unweighted_steps and apply != "loss":
    raise ValueError(f"unweighted_steps: expected 0 with apply={apply!r} (loss weights only), "
                     f"got {unweighted_steps}")
  per_epoch = len(run.idx["train"]) // batch_size
  epoch, pos = divmod(start_step, per_epoch)
  resample = apply == "resample" and run.weighting.scheme != "none"
  batches = data_lib.batch_iterator(run.x, run.y, run.idx["train"], batch_size, train=True,
                                    seed=seed, epoch=epoch, num_epochs=None,
                                    weight_fn=run.weighting, resample=resample,
                                    scaler=run.scaler, start_batch=pos)
  if start_step >= unweighted_steps:
    return batches
  return _unweighted_until(batches, start_step, unweighted_steps)


def _unweighted_until(batches, start_step: int, unweighted_steps: int):
  for step, batch in enumerate(batches, start_step + 1):
    if step <= unweighted_steps:
      batch["w"] = np.ones_like(batch["w"])
    yield batch


class _XOnly:
  """Scales x only (eval batches carry dummy labels)."""

  def __init__(self, scaler):
    self.scaler = scaler

  def transform_x(self, x):
    return self.scaler.transform_x(x)

  def transform_y(self, y):
    return y


def check_inputs(x, input_shape: tuple, *, finite_checked: bool = False) -> Any:
  """``x`` [n, *input_shape] for prediction: checked, memory maps kept as they are.

  Finiteness is checked in row blocks (``data.readers.finite_rows``), so a
  memory-mapped ``x`` is never loaded whole; ``finite_checked`` skips that
  scan for inputs ``data.load(..., labels_optional=True)`` has just checked.

  Raises:
    ValueError: naming ``x``: not numeric, wrong shape, empty, or a row with NaN/inf
      (in float32, the model's dtype).
  """
  x = as_array(x, "x", ndim=len(input_shape) + 1)
  if tuple(x.shape[1:]) != tuple(input_shape):
    raise ValueError(f"x: expected shape [n, {', '.join(map(str, input_shape))}], "
                     f"got {tuple(x.shape)}")
  ok = np.ones(1, bool) if finite_checked else readers.finite_rows(x)
  if not ok.all():
    raise ValueError(f"x: expected finite float32 values, found {int(ok.size - ok.sum())} rows "
                     f"with NaN/inf or |value| > 3.4e38 (first: row {int(np.flatnonzero(~ok)[0])})")
  return x


def forward_scaled(placement, fn, state, run: RunData, x, indices,
                   batch_size: int) -> dict[str, np.ndarray]:
  """A compiled per-example function over rows ``indices`` of raw ``x`` (scaled,
  padded, masked batches), its outputs on the host.

  Args:
    placement: ``parallel.Placement`` that places each eval batch.
    fn: compiled ``fn(state, {"x": [b, ...]}) -> {name: [b, ...]}``:
      ``steps.eval_step`` (``loc``, ``scale``: in scaled label units, scale 0
      for a point head) or ``steps.feature_step`` (``features``).
    state: the ``(model, optimizer)`` state for ``fn``.
    run: gives the scaler applied to ``x``.
    x: raw inputs [N, *input_shape] (array or memory map; only the rows read).
    indices: [n] integer rows of ``x`` to predict, in the order wanted.
    batch_size: global eval batch size (the last batch is padded).

  Returns:
    ``{name: [n, ...]}`` in the order of ``indices``, padding dropped.
  """
  parts: dict[str, list] = {}
  it = data_lib.batch_iterator(x, np.zeros(len(x), np.float32), indices, batch_size,
                               train=False, scaler=_XOnly(run.scaler))
  for batch in it:
    out = gather_to_host(fn(state, placement.put_eval_batch({"x": batch["x"]})))
    keep = gather_to_host(batch["mask"]) > 0 if jax.process_count() > 1 else batch["mask"] > 0
    for name, v in out.items():
      parts.setdefault(name, []).append(v[keep])
  return {name: np.concatenate(v) for name, v in parts.items()}


def gather_to_host(tree: Any) -> Any:
  """Device outputs -> numpy on every process (all-gathered across processes)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def to_label_units(run, loc, scale, head):
  """Scaled ``(loc, scale)`` -> label-unit ``(mu, sigma)``; sigma None for a point head.

  A Laplace scale ``b`` is reported as its standard deviation ``sqrt(2) b``.
  """
  mu = run.inverse_y(loc)
  if head == "point":
    return mu, None
  sigma = run.inverse_scale(scale)
  return mu, (np.sqrt(2.0) * sigma if head == "laplace" else sigma)


def val_score(head: str, y: np.ndarray, mu: np.ndarray, sigma: np.ndarray | None,
              weights: np.ndarray | None = None) -> dict:
  """Validation metrics in label units; ``nll`` or ``weighted_nll`` ranks checkpoints.

  Args:
    head: "gaussian", "laplace" or "point".
    y, mu: [n] labels and predicted locations.
    sigma: [n] predictive standard deviation (Laplace: ``sqrt(2) b``); None
      for a point head, whose likelihood is replaced by the squared error.
    weights: [n] label weights of the validation examples (the run's
      weighting applied to ``y``); None means all ones.

  Returns:
    ``{"mae", "mse", "nll", "weighted_nll"}``; ``weighted_nll`` is
    ``sum w*l / sum w`` of the per-example ``l`` whose mean is ``nll``.
  """
  err = np.asarray(y, np.float64) - mu
  if head == "gaussian":
    per = 0.5 * np.log(2 * np.pi) + np.log(sigma) + 0.5 * (err / sigma) ** 2
  elif head == "laplace":
    b = sigma / np.sqrt(2.0)
    per = np.log(2 * b) + np.abs(err) / b
  else:
    per = err ** 2
  w = np.ones_like(per) if weights is None else np.asarray(weights, np.float64)
  return {"mae": float(np.mean(np.abs(err))), "mse": float(np.mean(err ** 2)),
          "nll": float(np.mean(per)), "weighted_nll": float(np.sum(w * per) / np.sum(w))}


def _json_default(v):
  if hasattr(v, "tolist"):
    return v.tolist()
  raise TypeError(f"not JSON serialisable: {type(v).__name__}")
