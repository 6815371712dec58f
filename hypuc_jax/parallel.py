"""Device placement and the three execution modes of the train step.

A train step is written once as a pure function
``step(state, batch, axis_name) -> (state, metrics)`` (see
``train.train_step``); this module turns it into a compiled callable:

- ``"none"``: ``jax.jit`` on one device.
- ``"sharding"``: a one-axis mesh ``("data",)``; the state is replicated
  (``P()``), the batch is split along its leading axis (``P("data")``) and
  one jitted step runs on the GLOBAL batch, so ``sum(w*l)`` and ``sum(w)``
  are global sums by construction (XLA inserts the all-reduces).
- ``"pmap"``: ``jax.pmap`` over a ``[devices, batch/devices, ...]`` batch;
  the step ``psum``-s the numerator, denominator and gradients under
  ``axis_name="data"`` before dividing.

All modes donate the state buffers. Multi-host: each process feeds its own
slice of the global batch; ``Placement.put_batch`` (and ``data.prefetch_to_device``)
assemble the global array.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"
MODES = ("none", "sharding", "pmap")


def launched_multiprocess() -> bool:
  """True when the environment launches several processes (``HYPUC_NUM_PROCESSES``
  > 1, or ``HYPUC_DISTRIBUTED=1`` for a cluster JAX detects); reads nothing else."""
  return _env_int("HYPUC_NUM_PROCESSES", "1") > 1 or os.environ.get("HYPUC_DISTRIBUTED") == "1"


def maybe_initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when launched multi-process.

  Multi-process is detected from the environment: ``HYPUC_NUM_PROCESSES``
  > 1 (with ``HYPUC_COORDINATOR`` and ``HYPUC_PROCESS_ID``), or a cluster
  JAX auto-detects (``JAX_COORDINATOR_ADDRESS``, SLURM, TPU pods) when
  ``HYPUC_DISTRIBUTED=1``. Safe to call twice.

  Returns:
    True when this process is part of a multi-process run.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  n = _env_int("HYPUC_NUM_PROCESSES", "1")
  if n > 1:
    coordinator = os.environ.get("HYPUC_COORDINATOR")
    if not coordinator:
      raise ValueError("HYPUC_COORDINATOR: expected host:port of process 0 when "
                       f"HYPUC_NUM_PROCESSES={n}, got nothing")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=n,
                               process_id=_env_int("HYPUC_PROCESS_ID", None))
    return True
  if os.environ.get("HYPUC_DISTRIBUTED") == "1":
    jax.distributed.initialize()
    return jax.process_count() > 1
  return False


def _env_int(name: str, default: str | None) -> int:
  """Environment variable ``name`` as an int; a ValueError names it when missing or malformed."""
  text = os.environ.get(name, default)
  try:
    return int(text)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected an integer, got {text!r}") from None


def make_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
  """A one-axis ``("data",)`` mesh over all (or the first n) devices.

  Axes are ``Auto`` so that ``jit`` propagates shardings itself.
  """
  n = jax.device_count() if n_devices is None else n_devices
  return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def _to_host(x: Any) -> Any:
  """Host copy of one state leaf; typed PRNG keys keep their implementation."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(jax.device_get(jax.random.key_data(x)),
                                    impl=jax.random.key_impl(x))
  return jax.device_get(x)


class Placement:
  """Where state and batches live for one execution mode.

  Args:
    mode: "none", "sharding" or "pmap".
    n_devices: devices used by "sharding"/"pmap" (default: all).
  """

  def __init__(self, mode: str, n_devices: int | None = None):
    if mode not in MODES:
      raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    self.mode = mode
    self.n_devices = 1 if mode == "none" else (n_devices or jax.device_count())
    self.mesh = make_mesh(self.n_devices) if mode != "none" else None
    self.devices = jax.devices()[:self.n_devices]
    # pmap maps over this process's devices (its collectives still span every
    # process), so its state and batches are [local devices, ...] arrays.
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self._local_sharding = (NamedSharding(jax.sharding.Mesh(np.array(self.local_devices), (AXIS,)),
                                          P(AXIS)) if mode == "pmap" else None)

  @property
  def replicated(self):
    """``NamedSharding(mesh, P())``: a full copy on every mesh device; None under "none"."""
    return NamedSharding(self.mesh, P()) if self.mesh is not None else None

  @property
  def batch_sharding(self):
    """``NamedSharding(mesh, P("data"))``: the leading (batch) axis split over the mesh;
    None under "none"."""
    return NamedSharding(self.mesh, P(AXIS)) if self.mesh is not None else None

  def put_state(self, state: Any) -> Any:
    """Moves a host/device state to its place (replicated on each device).

    With several processes a state already on one local device (a restored
    checkpoint) is copied to the host first: the CPU backend has no
    cross-host device-to-device transfer.
    """
    if self.mode != "none" and jax.process_count() > 1:
      state = jax.tree.map(_to_host, state)
    if self.mode == "sharding":
      return jax.device_put(state, self.replicated)
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: jax.device_put(
          jnp.broadcast_to(x, (n,) + x.shape), self._local_sharding), state)
    return jax.device_put(state, self.devices[0])

  def get_state(self, state: Any) -> Any:
    """The single-copy state (first replica under pmap), still on device."""
    if self.mode == "pmap":
      return jax.tree.map(_first_replica, state)
    return state

  @property
  def data_sharding(self) -> jax.sharding.Sharding:
    """Sharding of a batch laid out by :meth:`host_layout`."""
    if self.mode == "pmap":
      return self._local_sharding
    if self.mesh is not None:
      return self.batch_sharding
    return jax.sharding.SingleDeviceSharding(self.devices[0])

  def host_layout(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Under "pmap" reshapes the leading axis to [local devices, batch/devices].

    Args:
      batch: host arrays, e.g. ``x [b, ...]``, ``y [b]``, ``w [b]``, ``mask [b]``,
        ``b`` this process's rows.

    Returns:
      The same tree: unchanged under "none" and "sharding"; each leaf
      [b, ...] -> [local devices, b / local devices, ...] under "pmap".

    Raises:
      ValueError: under "sharding" or "pmap", a leading (batch) axis that is
        not a multiple of this process's device count.
    """
    if self.mode == "none":
      return batch
    n = len(self.local_devices)
    for x in jax.tree.leaves(batch):
      if np.ndim(x) == 0 or np.shape(x)[0] % n:
        raise ValueError(f"batch: parallel mode {self.mode!r} splits the leading (batch) axis "
                         f"over {n} local devices; expected a multiple of {n}, got shape "
                         f"{np.shape(x)}")
    if self.mode != "pmap":
      return batch
    return jax.tree.map(lambda x: np.reshape(x, (n, -1) + x.shape[1:]), batch)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Moves a host batch (this process's slice) onto the devices.

    With several processes the global array is assembled from every
    process's slice. ``data.prefetch_to_device(map(host_layout, it), n,
    data_sharding)`` does the same ahead of time on a thread.

    Args:
      batch: host arrays with a leading batch axis [b, ...] (e.g. ``x [b, ...]``,
        ``y [b]``, ``w [b]``, ``mask [b]``), ``b`` this process's rows.

    Returns:
      Device arrays with ``data_sharding``: [b, ...] on one device ("none");
      [b, ...] split over the mesh ("sharding"; with several processes the
      global [b * processes, ...]); [local devices, b / local devices, ...]
      ("pmap", laid out by :meth:`host_layout`).

    Raises:
      ValueError: from :meth:`host_layout`.
    """
    batch = self.host_layout(batch)
    if self.mode == "sharding" and jax.process_count() > 1:
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
          self.data_sharding, x), batch)
    return jax.device_put(batch, self.data_sharding)

  def compile_step(self, step: Callable, *, donate: bool = True) -> Callable:
    """Compiles ``step(state, batch, axis_name) -> (state, metrics)``.

    Metrics come back replicated (a single copy, even under pmap).
    """
    donate_argnums = (0,) if donate else ()
    if self.mode == "pmap":
      mapped = jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS,
                        donate_argnums=donate_argnums)

      def run(state, batch):
        state, metrics = mapped(state, batch)
        return state, jax.tree.map(_first_replica, metrics)
      return run
    fn = functools.partial(step, axis_name=None)
    if self.mode == "sharding":
      return jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding),
                     out_shardings=(self.replicated, self.replicated),
                     donate_argnums=donate_argnums)
    return jax.jit(fn, donate_argnums=donate_argnums)

  def compile_eval(self, fn: Callable) -> Callable:
    """Compiles ``fn(state, batch) -> per-example outputs`` (no donation).

    Eval always runs as one jit (the state taken from ``get_state``): on the
    mesh under "sharding", on this process's first device otherwise (pmap
    included; each process then evaluates its own slice of the batch).
    """
    if self.mode == "sharding":
      return jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding),
                     out_shardings=self.batch_sharding)
    return jax.jit(fn)

  def put_eval_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Moves a host eval batch onto the devices, where :meth:`compile_eval`'s function runs.

    Args:
      batch: host arrays [b, ...], e.g. ``{"x": [b, ...]}``.

    Returns:
      Under "sharding", :meth:`put_batch` (split over the mesh; ``b`` a
      multiple of the local device count); otherwise the arrays [b, ...]
      unchanged in shape on this process's first device (pmap included).
    """
    if self.mode == "sharding":
      return self.put_batch(batch)
    return jax.device_put(batch, self.local_devices[0] if self.local_devices else self.devices[0])


def _first_replica(x: jax.Array) -> jax.Array:
  """Replica 0 of a [devices, ...] array, as a single-device [...] array.

  No host round trip (safe under a "disallow" transfer guard).
  """
  return x.addressable_data(0).reshape(x.shape[1:])


def _is_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def fold_device_keys(state: Any, axis_name: str) -> Any:
  """Inside ``pmap``: every PRNG-key leaf of ``state`` (the models' ``nnx.Rngs``
  streams, e.g. dropout) folded with the device index, so devices draw
  different masks from a replicated state. Pair with :func:`restore_keys`."""
  index = jax.lax.axis_index(axis_name)
  return jax.tree.map(lambda x: jax.random.fold_in(x, index) if _is_key(x) else x, state)


def restore_keys(new_state: Any, old_state: Any) -> Any:
  """``new_state`` with its PRNG-key leaves taken from ``old_state`` (same tree):
  the replicated keys return, while the streams' counters advance as usual."""
  return jax.tree.map(lambda new, old: old if _is_key(old) else new, new_state, old_state)
