"""Splits, scaling and fixed-shape batches for training and evaluation.

* :func:`split_indices`: deterministic train / val / test indices from a seed
  (or a fixed per-row split).
* :class:`Scaler` (:mod:`hypuc_jax.data.scaler`): the standardisation the
  batches apply.
* :func:`batch_iterator`: host batches ``{"x", "y", "w", "mask"}`` of one
  fixed shape, so a jitted step never recompiles: training shuffles per
  epoch from ``(seed, epoch)`` (or, with ``resample``, draws the epoch with
  probability proportional to the label weights) and drops the remainder;
  evaluation keeps the order, pads the last batch and masks the padding.
  In multi-host runs every process gets its slice of each global batch.
  Rows are read by index, so a memory-mapped ``x`` is never loaded whole.
* :func:`prefetch_to_device`: a background thread assembles the next batches and
  ``device_put``\\ s them (optionally with a ``NamedSharding``) while the step runs.
"""
from __future__ import annotations

import math
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np

from hypuc_jax import _validation as V
from hypuc_jax.data.readers import SPLIT_NAMES, normalise_split
from hypuc_jax.data.scaler import Scaler, _check_indices  # noqa: F401  (Scaler re-exported)


def _check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def split_indices(n: int, seed: int, fractions=(0.6, 0.2, 0.2), fixed=None) -> dict[str, np.ndarray]:
    """Deterministic train / val / test row indices.

    Args:
      n: number of rows (> 0).
      seed: integer seed of the random permutation.
      fractions: (train, val, test) fractions, each >= 0, summing to 1; part
        sizes are ``round(f_train * n)``, ``round(f_val * n)`` and the rest.
      fixed: optional [n] per-row split names (train / val / test, e.g. a
        CSV split column); overrides ``seed`` and ``fractions``.

    Returns:
      ``{"train", "val", "test"}`` -> sorted int64 index arrays, disjoint,
      covering ``range(n)``.

    Raises:
      ValueError: bad arguments, or a part left empty.
    """
    n = _check_int(n, "n", minimum=1)
    if fixed is not None:
        fixed = normalise_split(np.asarray(fixed).ravel(), "fixed")
        if fixed.shape[0] != n:
            raise ValueError(f"fixed: expected {n} split names (one per row), got {fixed.shape[0]}")
        out = {s: np.flatnonzero(fixed == s).astype(np.int64) for s in SPLIT_NAMES}
        for s, idx in out.items():
            if idx.size == 0:
                raise ValueError(f"fixed: the fixed split column leaves {s!r} empty")
        return out
    seed = _check_int(seed, "seed", minimum=0)
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0) or abs(f.sum() - 1) > 1e-6:
        raise ValueError(f"fractions: expected 3 non-negative numbers summing to 1, got {fractions!r}")
    n_train, n_val = int(round(f[0] * n)), int(round(f[1] * n))
    n_val = min(n_val, n - n_train)
    sizes = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
    for s, size in sizes.items():
        if size <= 0:
            raise ValueError(f"fractions: {tuple(fractions)} of n={n} rows leaves {s!r} empty")
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def batch_iterator(x, y, indices=None, batch_size: int = 64, *, train: bool = True,
                   seed: int = 0, epoch: int = 0, num_epochs: int | None = 1,
                   weight_fn: Callable | None = None, resample: bool = False,
                   scaler: Scaler | None = None, process_index: int | None = None,
                   process_count: int | None = None,
                   start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape host batches of rows ``indices`` of ``(x, y)``.

    Args:
      x: [n, ...] inputs (numpy array, memory map or anything indexable by
        an integer array); only the rows of each batch are read.
      y: [n] labels in label units.
      indices: [m] integer rows in ``[0, n)`` to iterate over (default
        all), e.g. a split part; a boolean mask is refused (use
        ``np.flatnonzero(mask)``).
      batch_size: GLOBAL batch size, divisible by ``process_count``.
      train: True: shuffle per epoch with ``np.random.default_rng([seed,
        epoch])`` and drop the remainder (needs >= batch_size rows); False:
        keep the order of ``indices``, pad the last batch and mask it.
      seed: shuffling seed.
      epoch: first epoch (the shuffle of epoch e is the same on resume).
      num_epochs: epochs to run, None for endless.
      weight_fn: optional callable ``y [b] -> w [b]`` on labels in label
        units (e.g. a fitted ``weights.LabelWeighting``); default weight 1.
      resample: training only, needs ``weight_fn``. Each epoch draws
        ``len(indices)`` rows WITH replacement, row i with probability
        ``w_i / sum(w)`` (from ``(seed, epoch)``), and every drawn row gets
        weight 1. The weighted loss ``sum w*l / sum w`` is then estimated by
        the plain batch mean: the same objective in expectation, with the
        rare labels seen more often instead of weighted more, which gives
        lower-variance gradients (An et al., ICLR 2021). A batch may hold
        a row more than once (in-batch losses such as BMC see the copies).
      scaler: optional fitted :class:`Scaler` applied to x and y.
      process_index, process_count: this process's slice of every global
        batch (default ``jax.process_index()``, ``jax.process_count()``).
      start_batch: skip the first ``start_batch`` batches of the first epoch
        without reading them (a resumed run continues mid-epoch; the
        epoch's shuffle is the same, so the batches that follow are too).

    Yields:
      ``{"x": [b, ...] float32, "y": [b] float32, "w": [b] float32,
      "mask": [b] float32}`` with ``b = batch_size // process_count``;
      padded rows have x = y = w = mask = 0. Training batches hold their
      rows in increasing index order; evaluation batches hold them in the
      order of ``indices``. Either way ``x`` is read in increasing row order
      (cheap reads from a memory map).
    """
    V.as_array(y, "y", ndim=1)
    V.check_same_length("x", x, "y", y)
    idx = np.arange(len(y), dtype=np.int64) if indices is None else _check_indices(indices, len(y))
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    pcount = _check_int(jax.process_count() if process_count is None else process_count,
                        "process_count", minimum=1)
    pindex = jax.process_index() if process_index is None else process_index
    if isinstance(pindex, bool) or not isinstance(pindex, (int, np.integer)) or not 0 <= pindex < pcount:
        raise ValueError(f"process_index: expected an integer in [0, {pcount}), got {pindex!r}")
    if batch_size % pcount:
        raise ValueError(f"batch_size: expected a multiple of process_count={pcount}, got {batch_size}")
    if train and idx.size < batch_size:
        raise ValueError(f"batch_size: training drops the remainder, so it needs at least "
                         f"batch_size={batch_size} rows, got {idx.size}")
    if num_epochs is not None:
        _check_int(num_epochs, "num_epochs", minimum=1)
    start_batch = _check_int(start_batch, "start_batch", minimum=0)
    if not isinstance(resample, (bool, np.bool_)):
        raise ValueError(f"resample: expected a bool, got {resample!r}")
    prob = None
    if resample:
        if not train or weight_fn is None:
            raise ValueError(f"resample: needs train=True and a weight_fn, got train={train}, "
                             f"weight_fn={weight_fn!r}")
        prob = _sampling_probabilities(weight_fn, np.asarray(y)[idx])
        weight_fn = None                       # the draw carries the weights
    return _batches(x, np.asarray(y), idx, batch_size, train, seed, epoch, num_epochs, weight_fn,
                    prob, scaler, int(pindex), pcount, start_batch)


def _sampling_probabilities(weight_fn, labels) -> np.ndarray:
    with jax.transfer_guard("allow"):          # may be a jitted weighting
        w = np.asarray(weight_fn(np.asarray(labels, np.float32)), np.float64)
    if w.shape != labels.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weight_fn: expected finite weights >= 0 with a positive sum, one per "
                         f"label, to resample with; got shape {w.shape}, range "
                         f"[{np.min(w) if w.size else None}, {np.max(w) if w.size else None}]")
    return w / w.sum()


def _batches(x, y, idx, batch_size, train, seed, epoch, num_epochs, weight_fn, prob, scaler,
             pindex, pcount, start_batch=0):
    local = batch_size // pcount
    row_shape = tuple(x.shape[1:])
    e = epoch
    while num_epochs is None or e < epoch + num_epochs:
        if not train:
            order = idx
        elif prob is None:
            order = idx[np.random.default_rng([seed, e]).permutation(idx.size)]
        else:
            order = idx[np.random.default_rng([seed, e]).choice(idx.size, size=idx.size, p=prob)]
        n_batches = idx.size // batch_size if train else math.ceil(idx.size / batch_size)
        for b in range(start_batch if e == epoch else 0, n_batches):
            rows = order[b * batch_size:(b + 1) * batch_size][pindex * local:(pindex + 1) * local]
            yield _assemble(x, y, np.sort(rows) if train else rows, local, row_shape, weight_fn,
                            scaler)
        e += 1


def _assemble(x, y, rows, local, row_shape, weight_fn, scaler):
    valid = rows.size
    xb = np.zeros((local,) + row_shape, np.float32)
    yb, wb, mb = (np.zeros(local, np.float32) for _ in range(3))
    if valid:
        if np.all(rows[1:] >= rows[:-1]):             # training batches: already in row order
            xr = np.asarray(x[rows], np.float32)
        else:                                         # read x in row order, keep rows' order
            ascending = np.argsort(rows, kind="stable")
            xr = np.empty((valid,) + row_shape, np.float32)
            xr[ascending] = np.asarray(x[rows[ascending]], np.float32)
        yr = np.asarray(y[rows], np.float32)
        if weight_fn is not None:  # may be a jitted weighting: its transfers are intended
            with jax.transfer_guard("allow"):
                w = np.asarray(weight_fn(yr), np.float32)
            if w.shape != yr.shape or not (np.isfinite(w).all() and (w >= 0).all()):
                raise ValueError(f"weight_fn: expected finite weights >= 0 of shape {yr.shape}, "
                                 f"one per label, got shape {w.shape} with range "
                                 f"[{np.min(w) if w.size else None}, "
                                 f"{np.max(w) if w.size else None}]")
            wb[:valid] = w
        else:
            wb[:valid] = 1.0
        if scaler is not None:
            xr, yr = scaler.transform_x(xr), scaler.transform_y(yr)
        xb[:valid], yb[:valid], mb[:valid] = xr, yr, 1.0
    return {"x": xb, "y": yb, "w": wb, "mask": mb}


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetch_to_device(iterator, size: int = 2, sharding=None) -> Iterator[Any]:
    """Moves batches to device ``size`` steps ahead, on a background thread.

    Args:
      iterator: yields pytrees of host arrays (e.g. :func:`batch_iterator`).
      size: number of device batches held ahead (>= 1).
      sharding: optional ``jax.sharding.Sharding`` (e.g.
        ``NamedSharding(mesh, P("data"))``) applied to every leaf. With
        several processes each one passes its LOCAL rows and the global
        array is assembled with ``jax.make_array_from_process_local_data``.

    Yields:
      the same pytrees as device arrays; an exception in ``iterator`` is
      re-raised here. Closing the generator stops the thread.
    """
    size = _check_int(size, "size", minimum=1)
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(f"sharding: expected a jax.sharding.Sharding or None, got {type(sharding).__name__}")
    return _prefetch(iter(iterator), size, sharding)


def _put(batch, sharding):
    if sharding is None:
        return jax.device_put(batch)
    if jax.process_count() > 1:
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), batch)
    return jax.device_put(batch, sharding)


def _prefetch(iterator, size, sharding):
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for batch in iterator:
                if not offer(_put(batch, sharding)):
                    return
            offer(_END)
        except BaseException as e:  # handed to the consumer, re-raised there
            offer(_Failure(e))

    thread = threading.Thread(target=worker, name="prefetch_to_device", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
