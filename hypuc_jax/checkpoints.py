"""Orbax checkpoints of the train state: last N + best by the validation score.

``CheckpointStore(DIR/checkpoints, keep=N, fingerprint=...)`` wraps an orbax
``CheckpointManager`` whose preservation policy keeps the latest ``keep``
checkpoints and the single best one (lowest ``val_nll``: the metric name
under which the loop stores its ``train.select_on`` score, the plain
validation NLL by default). Each checkpoint
holds the state (a pytree flattened to ``{path: array}``; PRNG key arrays
stored as their raw key data) and a JSON ``meta`` dict (loop position,
early-stopping counters).

A workdir belongs to one model/config and one data set: the store writes a
fingerprint of the config (``fingerprint.json``) and, when given, a stamp of
the training data (``data_stamp.json``, a separate file so that readers of
the fingerprint alone are unaffected) next to the checkpoints, and refuses
to open a directory whose fingerprint or stamp differs. ``overwrite=True``
deletes whatever checkpoints the directory holds and starts afresh.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from hypuc_jax._files import remove_path, remove_trash, write_text_atomic

FINGERPRINT_FILE = "fingerprint.json"
DATA_STAMP_FILE = "data_stamp.json"
#: The head re-fitted to the best checkpoint's features (``weighting.scope="head"``).
HEAD_FILE = "refit_head.npz"
_DATA_STAMP_KEY = "data_stamp"
_FINGERPRINT_TMP = ".fingerprint-"
METRIC = "val_nll"


def flatten_state(state: Any) -> dict[str, Any]:
  """``{keypath: array}`` of a state pytree, PRNG keys as raw key data."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat[jax.tree_util.keystr(path)] = leaf
  return flat


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
  """Inverse of :func:`flatten_state`, with ``template``'s structure and key types."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, leaf in leaves_with_path:
    value = flat[jax.tree_util.keystr(path)]
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
      value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    leaves.append(value)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _read_fingerprint(path: str) -> dict:
  """The stored fingerprint; a damaged file is a ``ValueError`` naming it."""
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable checkpoint fingerprint ({e}); the checkpoints "
                     "cannot be matched to a config: train again with --overwrite") from None
  if not isinstance(stored, dict):
    raise ValueError(f"{path}: expected a JSON object (the checkpoint fingerprint), got "
                     f"{type(stored).__name__}")
  return stored


class CheckpointStore:
  """Keeps the last ``keep`` checkpoints plus the best by ``val_nll``.

  Args:
    directory: checkpoint directory (``DIR/checkpoints``).
    keep: number of most recent checkpoints kept (>= 1).
    fingerprint: JSON-able description of the model/config that produced
      the checkpoints; a directory with another fingerprint is refused.
    data_stamp: a digest of the training data (``train_data.data_stamp``),
      stored with the fingerprint; a directory whose checkpoints were
      trained on data with another stamp is refused. None (readers) skips
      the check.
    overwrite: delete the checkpoints the directory holds (of any
      fingerprint) and start afresh, instead of resuming or refusing.
    optional_defaults: ``{section: {key: value}}`` of keys added to the
      fingerprint later: on both sides a key at its listed value counts as
      absent, so fingerprints written before (without it) and after (with
      it at that value) match.
    read_only: open existing checkpoints for restoring only: nothing in
      ``directory`` is written (the fingerprint is checked, not rewritten).

  Raises:
    ValueError: ``keep`` < 1, or (unless ``overwrite``) the directory holds
      checkpoints from a different model/config or, given ``data_stamp``,
      trained on other data.
  """

  def __init__(self, directory: str, *, keep: int, fingerprint: dict,
               data_stamp: str | None = None, overwrite: bool = False,
               optional_defaults: dict | None = None, read_only: bool = False):
    if not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep: expected an int >= 1, got {keep!r}")
    self.directory = os.path.abspath(directory)
    self.is_writer = jax.process_index() == 0 and not read_only
    if read_only and overwrite:
      raise ValueError("overwrite: a read-only store cannot delete checkpoints")
    fp_path = os.path.join(self.directory, FINGERPRINT_FILE)
    fingerprint = json.loads(json.dumps(fingerprint))
    # Process 0's fingerprint temp file is not a checkpoint (another process may
    # look while it is being written).
    if os.path.isdir(self.directory) and [e for e in os.listdir(self.directory)
                                          if not e.startswith(_FINGERPRINT_TMP)]:
      if overwrite:
        if self.is_writer:
          remove_path(self.directory)
          remove_trash(os.path.dirname(self.directory),   # its own earlier stopped deletions
                       of=os.path.basename(self.directory))
      else:
        diff = fingerprint_difference(self.directory, fingerprint, optional_defaults)
        if diff:
          raise ValueError(
              f"workdir: {self.directory} holds checkpoints from a different model or "
              f"config ({diff}); use another workdir or pass overwrite=True "
              "(CLI: --overwrite) to delete them")
        stored_stamp = stored_data_stamp(self.directory)
        if data_stamp is not None and stored_stamp not in (None, data_stamp):
          raise ValueError(
              f"workdir: {self.directory} holds checkpoints trained on other data (the "
              "labels, split or records differ); use another workdir or pass overwrite=True "
              "(CLI: --overwrite) to delete them")
    if self.is_writer:
      os.makedirs(self.directory, exist_ok=True)
      if not os.path.exists(fp_path) or _read_fingerprint(fp_path) != fingerprint:
        _write_json_atomic(fp_path, fingerprint)
      stamp_path = os.path.join(self.directory, DATA_STAMP_FILE)
      if data_stamp is not None and stored_data_stamp(self.directory) != data_stamp:
        _write_json_atomic(stamp_path, {_DATA_STAMP_KEY: data_stamp})
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: -_score(m), n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # A read-only manager makes orbax log two warnings that restate the
    # request ("read_only=True", "directory is read only"); keep stderr clean.
    quiet = _absl_level(logging.ERROR) if read_only else contextlib.nullcontext()
    with quiet:
      # best_fn makes orbax store the metrics with each step (the policy ranks by them).
      options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only,
                                             read_only=read_only,
                                             best_fn=_score, best_mode="min",
                                             enable_async_checkpointing=False)
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    """Step of the most recent checkpoint, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step of the stored checkpoint with the lowest ``val_nll``, or None."""
    scored = [(self._manager.metrics(s), s) for s in self._manager.all_steps()]
    scored = [(float(m[METRIC]), s) for m, s in scored if m and METRIC in m
              and np.isfinite(m[METRIC])]
    return min(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    """Steps of the stored checkpoints tracked by the orbax manager, in increasing order."""
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, val_nll: float | None = None) -> None:
    """Saves ``state`` (single copy) and ``meta`` at ``step``.

    Args:
      step: optimiser step.
      state: the state pytree (device or host arrays; a replicated state is
        copied to the host first, which is the cheapest path for orbax).
      meta: JSON-able loop position / counters.
      val_nll: validation score of this state (``train.select_on``; ranks the
        best checkpoint);
        None when not evaluated at this step.
    """
    metrics = None if val_nll is None else {METRIC: float(val_nll)}
    # Without a score orbax warns "Requested `tracked_metric`; did not provide
    # metrics" on every save: intended here (not a candidate), so kept quiet.
    with _absl_level(logging.ERROR) if metrics is None else contextlib.nullcontext():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(jax.device_get(flatten_state(state))),
          meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, template: Any) -> tuple[Any, dict]:
    """Restores ``(state, meta)`` at ``step`` with ``template``'s structure.

    Arrays come back on the first local device (place them with
    ``parallel.Placement.put_state``).
    """
    device = jax.local_devices()[0]
    abstract = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype,
                                        sharding=jax.sharding.SingleDeviceSharding(device))
                for k, v in flatten_state(template).items()}
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return unflatten_state(template, out["state"]), dict(out["meta"])

  def close(self) -> None:
    """Closes the orbax manager (after any save still in progress); call once, at the end."""
    self._manager.close()


@contextlib.contextmanager
def _absl_level(level: int):
  logger = logging.getLogger("absl")
  old = logger.level
  logger.setLevel(level)
  try:
    yield
  finally:
    logger.setLevel(old)


def _score(metrics: dict) -> float:
  """A checkpoint's rank (lower is better); a NaN score ranks last, as +inf (NaN
  compares false both ways, and orbax's best-N policy then deleted the real best)."""
  value = float(metrics[METRIC])
  return value if not np.isnan(value) else float("inf")


def fingerprint_difference(directory: str, fingerprint: dict,
                           optional_defaults: dict | None = None) -> str | None:
  """How the fingerprint stored in checkpoint folder ``directory`` differs from
  ``fingerprint`` ("section.key: stored A, now B"), or None when they match or
  the folder holds nothing (missing, empty, or only a fingerprint being written).
  A folder with entries but no fingerprint differs; ``optional_defaults`` as for
  :class:`CheckpointStore`.

  Raises:
    ValueError: an unreadable stored fingerprint (named).
  """
  if not os.path.isdir(directory) or not [e for e in os.listdir(directory)
                                          if not e.startswith(_FINGERPRINT_TMP)]:
    return None
  fp_path = os.path.join(directory, FINGERPRINT_FILE)
  stored = _read_fingerprint(fp_path) if os.path.exists(fp_path) else None
  if stored:                             # written inside the fingerprint by an earlier build
    stored.pop(_DATA_STAMP_KEY, None)
  fingerprint = json.loads(json.dumps(fingerprint))
  stored_n, wanted_n = (_drop_defaults(f, optional_defaults or {}) for f in (stored, fingerprint))
  if stored_n == wanted_n:
    return None
  return first_difference(stored_n, wanted_n, (stored, fingerprint))


def is_store(directory: str) -> bool:
  """Whether ``directory`` is a checkpoint folder of this tool (a fingerprint or a
  saved step), not merely something named like one."""
  return os.path.isdir(directory) and (
      os.path.isfile(os.path.join(directory, FINGERPRINT_FILE)) or has_checkpoints(directory))


def has_checkpoints(directory: str) -> bool:
  """Whether ``directory`` holds a saved checkpoint (a step folder; not orbax's
  temporary folder of an unfinished save)."""
  return os.path.isdir(directory) and any(
      e.is_dir() and e.name.isdigit() for e in os.scandir(directory))


def stored_data_stamp(directory: str) -> str | None:
  """The training-data stamp stored with the checkpoints in ``directory``, or None.

  Raises:
    ValueError: a damaged ``data_stamp.json`` (named).
  """
  path = os.path.join(directory, DATA_STAMP_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      stamp = json.load(f)[_DATA_STAMP_KEY]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: unreadable training-data stamp ({e}); train again with "
                     "--overwrite") from None
  if not isinstance(stamp, str):
    raise ValueError(f"{path}: expected a string stamp, got {type(stamp).__name__}")
  return stamp


def save_head(directory: str, step: int, params: dict, info: dict | None = None) -> None:
  """Writes a re-fitted head (``weighting.scope="head"``) next to the checkpoints.

  Args:
    directory: the checkpoint directory.
    step: the checkpoint whose features the head was fitted to.
    params: the head's parameters as a nested ``{name: array}`` dict
      (``nnx.to_pure_dict``).
    info: JSON-able facts of the fit (``head_refit.select_refit``'s info);
      non-finite numbers are stored as null (``l2`` null: the trained head kept).

  The file (:data:`HEAD_FILE`) is replaced atomically, so a stop leaves the
  old file or the new one; deleting the checkpoints deletes it too.
  """
  flat = {"/".join(path): np.asarray(v) for path, v in _flat_items(params)}
  tmp = os.path.join(directory, _FINGERPRINT_TMP + HEAD_FILE)
  with open(tmp, "wb") as f:
    np.savez(f, __step__=np.int64(step),
             __info__=np.str_(json.dumps(finite_or_none(info or {}), allow_nan=False)),
             **flat)
  os.replace(tmp, os.path.join(directory, HEAD_FILE))


def load_head(directory: str) -> tuple[int, dict, dict] | None:
  """``(step, params, info)`` of the head :func:`save_head` wrote, or None when
  there is none.

  Raises:
    ValueError: the file exists but is unreadable (the message names it).
  """
  path = os.path.join(directory, HEAD_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      step = int(z["__step__"])
      info = json.loads(str(z["__info__"])) if "__info__" in z.files else {}
      params: dict = {}
      for key in z.files:
        if key not in ("__step__", "__info__"):
          *outer, last = key.split("/")
          node = params
          for name in outer:
            node = node.setdefault(name, {})
          node[last] = np.asarray(z[key])
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: unreadable re-fitted head ({e}); train again") from None
  return step, params, info


def finite_or_none(tree: Any) -> Any:
  """``tree`` (nested dicts) with every non-finite float replaced by None (strict JSON)."""
  if isinstance(tree, dict):
    return {k: finite_or_none(v) for k, v in tree.items()}
  if isinstance(tree, float) and not np.isfinite(tree):
    return None
  return tree


def _flat_items(tree: dict, prefix: tuple = ()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat_items(value, prefix + (str(key),))
    else:
      yield prefix + (str(key),), value


def _write_json_atomic(path: str, obj: dict) -> None:
  """Writes ``obj`` to ``path`` atomically; the temp file's prefix marks it for
  other processes listing the directory (not a checkpoint)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True), prefix=_FINGERPRINT_TMP)


def _drop_defaults(fp: Any, defaults: dict) -> Any:
  """``fp`` without the keys of ``defaults`` ({section: {key: value}}) at their value."""
  if not isinstance(fp, dict):
    return fp
  out = dict(fp)
  for section, keys in defaults.items():
    if isinstance(out.get(section), dict):
      out[section] = {k: v for k, v in out[section].items()
                      if not (k in keys and v == keys[k])}
  return out


def first_difference(stored: Any, wanted: Any, raw: tuple | None = None,
                     prefix: str = "") -> str:
  """Human-readable first key where two (normalised) fingerprints differ.

  ``raw``: the un-normalised ``(stored, wanted)``, whose values are shown.
  """
  if stored is None and not prefix:
    return "no fingerprint found"
  raw = (stored, wanted) if raw is None else raw
  if isinstance(stored, dict) and isinstance(wanted, dict):
    for key in sorted(set(stored) | set(wanted)):
      if stored.get(key) != wanted.get(key):
        sub = tuple(r.get(key) if isinstance(r, dict) else None for r in raw)
        return first_difference(stored.get(key), wanted.get(key), sub, f"{prefix}{key}.")
  return f"{prefix.rstrip('.')}: stored {raw[0]!r}, now {raw[1]!r}"
