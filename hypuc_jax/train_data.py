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
from hypuc_jax.config import Config

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
  return {
      "none": {},
      "hypuc": dict(lam=w.lam, bandwidth=w.bandwidth, method=w.method, max_weight=w.max_weight),
      "inverse": dict(bins=w.bins),
      "sqrt_inv": dict(bins=w.bins),
      "lds": dict(bins=w.bins, kernel=w.lds_kernel, ks=w.lds_ks, sigma=w.lds_sigma),
      "denseweight": dict(alpha=w.dense_alpha, bandwidth=w.bandwidth, method=w.method),
  }[w.scheme]


@dataclasses.dataclass
class RunData:
  """Scaled splits of one run.

  Attributes:
    x: {split: scaled inputs [n, ...] float32}.
    y: {split: scaled labels [n] float32}.
    y_raw: {split: labels [n] in label units}.
    w_train: weights of the training examples [n_train] (mean 1 for
      "hypuc"), fitted on the raw training labels.
    scaler: the fitted ``data.Scaler``.
    weighting: the fitted ``weights.LabelWeighting``.
    input_shape: shape of one example.
  """
  x: dict
  y: dict
  y_raw: dict
  w_train: np.ndarray
  scaler: Any
  weighting: Any
  input_shape: tuple

  def transform_x(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(self.scaler.transform_x(x), np.float32)

  def inverse_y(self, y_scaled: np.ndarray) -> np.ndarray:
    return np.asarray(self.scaler.inverse_y(np.asarray(y_scaled)), np.float64)

  def inverse_scale(self, s_scaled: np.ndarray) -> np.ndarray:
    """A scale (std) in scaled units -> label units (the affine map's slope)."""
    s = np.asarray(s_scaled, np.float64)
    return np.abs(self.inverse_y(s) - self.inverse_y(np.zeros_like(s)))


def load_dataset(config: Config):
  """``data.load_for_config(config)`` when available, else ``data.load(spec)``."""
  if hasattr(data_lib, "load_for_config"):
    return data_lib.load_for_config(config)
  return data_lib.load(config.data.spec)


def prepare(config: Config) -> RunData:
  """Loads, splits, scales and weights the data of ``config``.

  Raises:
    ValueError: from the data source, or a split with no training examples.
  """
  ds = load_dataset(config)
  x, y = np.asarray(ds.x, np.float32), np.asarray(ds.y, np.float64)
  parts = data_lib.split_indices(len(y), config.data.seed, tuple(config.data.split))
  idx = {s: np.sort(np.asarray(parts[s], dtype=np.int64)) for s in SPLITS}
  if len(idx["train"]) == 0:
    raise ValueError(f"data.split: no training examples from {len(y)} records")
  scaler = data_lib.Scaler.fit(x[idx["train"]], y[idx["train"]])
  weighting = weights_lib.fit_weighting(config.weighting.scheme, y[idx["train"]],
                                        **weighting_options(config))
  return _run_data(x, y, idx, scaler, weighting)


def _run_data(x, y, idx, scaler, weighting) -> RunData:
  with jax.transfer_guard("allow"):
    w_train = np.asarray(jax.device_get(weighting(y[idx["train"]])), np.float32)
  return RunData(
      x={s: np.asarray(scaler.transform_x(x[i]), np.float32) for s, i in idx.items()},
      y={s: np.asarray(scaler.transform_y(y[i]), np.float32) for s, i in idx.items()},
      y_raw={s: y[i] for s, i in idx.items()}, w_train=w_train, scaler=scaler,
      weighting=weighting, input_shape=tuple(x.shape[1:]))


def save_run_files(paths: dict[str, str], config: Config, run: RunData) -> None:
  """Writes config.json, scaler.json and weighting.json (process 0 only)."""
  os.makedirs(os.path.dirname(paths["config"]) or ".", exist_ok=True)
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
    ValueError: ``workdir`` lacks config.json or scaler.json.
  """
  paths = run_paths(workdir)
  for key in ("config", "scaler"):
    if not os.path.exists(paths[key]):
      raise ValueError(f"workdir: {workdir} is not a trained run (missing {paths[key]})")
  with open(paths["config"]) as f:
    config = Config.from_dict(json.load(f))
  with open(paths["scaler"]) as f:
    d = json.load(f)
  shape = tuple(d.pop("input_shape"))
  empty = {s: np.zeros((0,)) for s in SPLITS}
  return config, RunData(empty, empty, empty, np.zeros((0,), np.float32),
                         data_lib.Scaler.from_dict(d), None, shape)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
  """Training-example indices of optimiser step ``step`` (1-based).

  Epoch ``e`` visits a permutation seeded by ``(seed, e)``; the last
  ``n % batch_size`` examples of each permutation are dropped.
  """
  per_epoch = n // batch_size
  epoch, pos = divmod(step - 1, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return order[pos * batch_size:(pos + 1) * batch_size]


def train_batches(run: RunData, start_step: int, batch_size: int,
                  seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Host batches for steps ``start_step + 1, ...``: this process's slice.

  Each process yields rows ``[p * b / P, (p + 1) * b / P)`` of the global
  batch ``b``; ``parallel.Placement.put_batch`` assembles the global array.
  """
  pid, nproc = jax.process_index(), jax.process_count()
  local = batch_size // nproc
  x, y, n = run.x["train"], run.y["train"], len(run.y["train"])
  mask = np.ones((local,), np.float32)
  step = start_step
  while True:
    step += 1
    idx = batch_indices(step, n, batch_size, seed)[pid * local:(pid + 1) * local]
    yield {"x": x[idx], "y": y[idx], "w": run.w_train[idx], "mask": mask}


def padded_chunks(x: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Fixed-size chunks of ``x`` (the last padded with its first row) and their valid sizes."""
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    n_valid = len(chunk)
    if n_valid < batch_size:
      pad = np.repeat(chunk[:1], batch_size - n_valid, axis=0)
      chunk = np.concatenate([chunk, pad])
    yield chunk, n_valid


def gather_to_host(tree: Any) -> Any:
  """Device outputs -> numpy on every process (all-gathered across processes)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def predict_scaled(placement, eval_fn, state, x: np.ndarray, batch_size: int):
  """Forward pass over ``x`` in fixed-size chunks (last one padded).

  Returns:
    ``(loc [n], scale [n])`` numpy arrays in scaled label units.
  """
  locs, scales = [], []
  pid, nproc = jax.process_index(), jax.process_count()
  for chunk, n_valid in padded_chunks(x, batch_size):
    local = chunk.reshape((nproc, -1) + chunk.shape[1:])[pid] if nproc > 1 else chunk
    out = eval_fn(state, placement.put_eval_batch({"x": local}))
    out = gather_to_host(out)
    locs.append(out["loc"][:n_valid])
    scales.append(out["scale"][:n_valid])
  return np.concatenate(locs), np.concatenate(scales)


def to_label_units(run, loc, scale, head):
  """Scaled ``(loc, scale)`` -> label-unit ``(mu, sigma)``; sigma None for a point head.

  A Laplace scale ``b`` is reported as its standard deviation ``sqrt(2) b``.
  """
  mu = run.inverse_y(loc)
  if head == "point":
    return mu, None
  sigma = run.inverse_scale(scale)
  return mu, (np.sqrt(2.0) * sigma if head == "laplace" else sigma)


def val_score(head: str, y: np.ndarray, mu: np.ndarray, sigma: np.ndarray | None) -> dict:
  """Validation metrics in label units; ``nll`` ranks checkpoints.

  ``sigma`` is the predictive standard deviation (Laplace: ``sqrt(2) b``).
  A point head has no likelihood: its ``nll`` is the MSE.
  """
  err = np.asarray(y, np.float64) - mu
  out = {"mae": float(np.mean(np.abs(err))), "mse": float(np.mean(err ** 2))}
  if head == "gaussian":
    out["nll"] = float(np.mean(0.5 * np.log(2 * np.pi) + np.log(sigma)
                               + 0.5 * (err / sigma) ** 2))
  elif head == "laplace":
    b = sigma / np.sqrt(2.0)
    out["nll"] = float(np.mean(np.log(2 * b) + np.abs(err) / b))
  else:
    out["nll"] = out["mse"]
  return out


def _json_default(v):
  if hasattr(v, "tolist"):
    return v.tolist()
  raise TypeError(f"not JSON serialisable: {type(v).__name__}")
