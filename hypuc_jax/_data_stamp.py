"""A digest of the data a run trains on, stored beside its checkpoints.

``data_stamp`` hashes the labels, the split and the records, so a resumed
run, ``hypuc train`` without ``--overwrite`` and the ablation runner can
tell whether existing checkpoints were trained on the same data;
``matching_stamp`` computes it in the format of a stored stamp, so run
directories written before the current format keep resuming.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

__all__ = ["STAMP_FULL_BYTES", "STAMP_RECORDS", "data_stamp", "matching_stamp"]

#: Records hashed by ``data_stamp`` (spread evenly over the data set).
STAMP_RECORDS = 64
STAMP_FULL_BYTES = 2 ** 28        # records up to this size are hashed whole
_STAMP_V2 = "v2:"


def data_stamp(x: Any, y: Any, idx: dict, *, legacy: bool = False) -> str:
  """A digest of what training reads: labels, split and the records.

  Hashes every label (float64), the sorted indices of each split, the
  records' shape and dtype, and every record when they take at most
  ``STAMP_FULL_BYTES`` (256 MB), else ``STAMP_RECORDS`` records spread evenly
  over the data, so changed labels, another split or edited records are told
  apart without reading a large memory-mapped data set whole. ``legacy``: the
  stamp of run directories written before session 13 (always the sample;
  an edited record outside it went unnoticed), for :func:`matching_stamp`.

  Args:
    x: records [n, ...] (array, memory map or row view).
    y: labels [n].
    idx: {split: row indices}.

  Returns:
    A hex digest (prefixed "v2:" unless ``legacy``).
  """
  h = hashlib.sha1()
  h.update(np.ascontiguousarray(np.asarray(y, np.float64)).tobytes())
  for name in sorted(idx):
    h.update(name.encode())
    h.update(np.sort(np.asarray(idx[name], np.int64)).tobytes())
  n = int(np.shape(x)[0])
  h.update(repr((tuple(int(v) for v in np.shape(x)), str(x.dtype))).encode())
  size = math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize
  if legacy or size > STAMP_FULL_BYTES:
    rows = np.unique(np.linspace(0, n - 1, min(n, STAMP_RECORDS)).astype(np.int64))
    h.update(np.ascontiguousarray(np.asarray(x[rows])).tobytes())
  else:
    step = max(1, STAMP_FULL_BYTES // 16 // max(size // n, 1))    # 16 MB blocks
    for s in range(0, n, step):
      h.update(np.ascontiguousarray(np.asarray(x[np.arange(s, min(n, s + step))])).tobytes())
  return h.hexdigest() if legacy else _STAMP_V2 + h.hexdigest()


def matching_stamp(stored: str | None, x: Any, y: Any, idx: dict) -> str:
  """``data_stamp`` of (x, y, idx) in the format of a ``stored`` one (a run
  directory's, None: the current format), so that older run directories keep
  resuming; compare it with ``stored``."""
  legacy = stored is not None and not stored.startswith(_STAMP_V2)
  return data_stamp(x, y, idx, legacy=legacy)
