"""File readers behind :func:`hypuc_jax.data.load`: NPZ (memory mapped), split names,
row views; CSV tables are read by :mod:`hypuc_jax.data.csv_table`, WFDB records
by :mod:`hypuc_jax.data.wfdb_records`.

Each reader validates what it reads and raises ``ValueError`` naming the
file (or record) and the problem. Nothing is written.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile

import numpy as np

from hypuc_jax.data._float32 import _F32_MAX, _check_float32_precision, _exact_in_float32

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test"}
_ROW_BLOCK = 4096
_BLOCK_BYTES = 64 * 2 ** 20      # scratch per block: long records get fewer rows


def row_block(x, max_rows: int = _ROW_BLOCK, itemsize: int | None = None,
              max_bytes: int = _BLOCK_BYTES) -> int:
    """Rows per block when scanning ``x`` [n, ...]: at most ``max_rows``, and at most
    ``max_bytes`` of ``itemsize``-byte values (default: x's own itemsize)."""
    per_row = math.prod(x.shape[1:]) * (itemsize or np.dtype(x.dtype).itemsize)
    return max(1, min(max_rows, max_bytes // max(per_row, 1)))


class RowView:
    """Rows ``rows`` of a (memory-mapped) array, without copying it.

    Supports ``shape``, ``dtype``, ``ndim``, ``len``, ``np.asarray`` and
    indexing like the numpy array ``base[rows]`` [len(rows), ...]: the first
    index (int, slice, integer or boolean array) is mapped through ``rows``
    and only the selected rows are read; further indices (a tuple) apply to
    the remaining axes with numpy's rules.
    """

    def __init__(self, base, rows):
        self.base, self.rows = base, np.asarray(rows, np.int64)

    @property
    def shape(self):
        """``(len(rows),) + base.shape[1:]``."""
        return (len(self.rows),) + tuple(self.base.shape[1:])

    @property
    def dtype(self):
        """dtype of ``base``."""
        return self.base.dtype

    @property
    def ndim(self):
        """Number of axes, ``base.ndim``."""
        return self.base.ndim

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if not index or index[0] is None or index[0] is Ellipsis:
            return np.asarray(self)[index]          # the first index is not a row selection
        first, rest = index[0], index[1:]
        picked = self.rows[first]
        if isinstance(first, slice):                # a slice keeps its axis: index the rows read
            return np.asarray(self.base[picked])[(slice(None),) + rest]
        if np.ndim(picked) == 0:
            picked = int(picked)
        # an int or integer array: base[rows[i], ...] is element for element base[rows][i, ...]
        # (the same broadcasting with the other advanced indices)
        return np.asarray(self.base[(picked,) + rest])

    @property
    def size(self):
        """Number of elements of the view, ``prod(shape)``."""
        return math.prod(self.shape)

    @property
    def nbytes(self):
        """Bytes of the view's elements, ``size * itemsize`` (none is read)."""
        return self.size * np.dtype(self.dtype).itemsize

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.base[self.rows])
        return out if dtype is None else out.astype(dtype)


def finite_rows(x) -> np.ndarray:
    """[n] bool: rows of ``x`` [n, ...] whose values are all finite in float32 (the
    model's dtype: a finite float64 beyond 3.4e38 counts as inf), read in row blocks."""
    n, step = x.shape[0], row_block(x)
    ok = np.empty(n, bool)
    for s in range(0, n, step):
        block = np.asarray(x[s:s + step])
        with np.errstate(over="ignore"):
            block = block.reshape(len(block), -1).astype(np.float32, copy=False)
        ok[s:s + len(block)] = np.isfinite(block).all(axis=1)
    return ok


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ValueError(f"{path}: {what} not found")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: expected a {what}, got a directory")


def normalise_split(values, where: str) -> np.ndarray:
    """Maps split names (train / val|valid|validation / test) to ``SPLIT_NAMES``.

    Args:
      values: split names [n] (any iterable; case and surrounding spaces ignored).
      where: what ``values`` are, for error messages (e.g. the file and column).

    Returns:
      [n] ``<U5`` array of "train", "val" or "test".

    Raises:
      ValueError: naming ``where`` and the row of the first unknown name.
    """
    out = []
    for i, v in enumerate(values):
        key = (v.decode(errors="replace") if isinstance(v, bytes) else str(v)).strip().lower()
        if key not in _SPLIT_ALIASES:
            shown = v.item() if isinstance(v, np.generic) else v   # 2, not np.int64(2)
            raise ValueError(f"{where}: row {i}: expected a split in {SPLIT_NAMES}, "
                             f"got {shown!r}")
        out.append(_SPLIT_ALIASES[key])
    return np.asarray(out, dtype="<U5")


def _npz_member_memmap(path: str, info: zipfile.ZipInfo) -> np.memmap:
    """Memory map of an uncompressed ``.npy`` member of a zip file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt zip entry {info.filename!r}")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        data_start = info.header_offset + 30 + n_name + n_extra
        f.seek(data_start)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise ValueError(f"{path}: member {info.filename!r} is not a .npy array ({e}); "
                             "save the arrays with np.savez") from e
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: array {info.filename!r} holds Python objects; expected numbers")
    needed = offset - data_start + math.prod(shape) * dtype.itemsize
    if needed > info.file_size:
        raise ValueError(f"{path}: array {info.filename[:-4]!r} is truncated (its header needs "
                         f"{needed} bytes, the member holds {info.file_size})")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                     order="F" if fortran else "C")


def _check_array_float32_range(path, name, a) -> None:
    """Raises unless the finite values of array ``a`` [n, ...] fit in float32 (row blocks)."""
    if not np.issubdtype(a.dtype, np.floating) or a.dtype.itemsize <= 4:
        return                                   # float16 / float32 always fit
    step = row_block(a)
    for s in range(0, a.shape[0], step):
        block = np.asarray(a[s:s + step])
        flat = block.reshape(len(block), -1)
        over = np.isfinite(flat) & (np.abs(flat) > _F32_MAX)
        if over.any():
            r, c = np.argwhere(over)[0]
            raise ValueError(f"{path}: array {name!r} ({a.dtype}): values exceed the float32 "
                             f"range (|value| <= {_F32_MAX:.4g}), first: row {s + int(r)} = "
                             f"{flat[r, c]:g}; rescale it before saving")


def _is_real_dtype(dtype) -> bool:
    """Integers or floats: not bool, complex (the imaginary part would be
    dropped), timedelta (an integer subtype) or objects."""
    return ((np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
            and not np.issubdtype(dtype, np.timedelta64))


def _npz_array(path: str, z, name: str) -> np.ndarray:
    """Array ``name`` of an open npz, numpy's read errors named with the file and array."""
    try:
        return np.asarray(z[name])
    except ValueError as e:
        if "allow_pickle" in str(e):
            want = ("strings train / val / test (e.g. save split.astype(str))" if name == "split"
                    else "numbers")
            raise ValueError(f"{path}: array {name!r} holds Python objects; expected "
                             f"{want}") from e
        raise ValueError(f"{path}: array {name!r}: unreadable ({e})") from e


def _check_signal_precision(path, x) -> None:
    """``_check_float32_precision`` per lead of signals ``x`` [n, time, leads] over their
    finite values, read in row blocks (two passes: the mean, then the sd, float32's
    largest rounding and the range)."""
    step, leads = row_block(x, itemsize=8), x.shape[-1]
    blocks = lambda: (np.asarray(x[s:s + step], np.float64).reshape(-1, leads)
                      for s in range(0, x.shape[0], step))
    total, count = np.zeros(leads), np.zeros(leads)
    for b in blocks():
        ok = np.isfinite(b)
        total, count = total + np.where(ok, b, 0.0).sum(axis=0), count + ok.sum(axis=0)
    mean = total / np.maximum(count, 1)
    m2, loss = np.zeros(leads), np.zeros(leads)
    lo, hi = np.full(leads, np.inf), np.full(leads, -np.inf)
    for b in blocks():
        ok = np.isfinite(b)
        b = np.where(ok, b, mean)                  # non-finite entries: neutral, not counted
        m2 += np.where(ok, np.square(b - mean), 0.0).sum(axis=0)
        loss = np.maximum(loss, np.where(ok, np.abs(b.astype(np.float32) - b), 0.0).max(axis=0))
        lo = np.minimum(lo, np.where(ok, b, np.inf).min(axis=0))
        hi = np.maximum(hi, np.where(ok, b, -np.inf).max(axis=0))
    for j in np.flatnonzero(count):
        _check_float32_precision(path, f"x[:, :, {j}]", None, what="array", stats=(
            float(mean[j]), float(np.sqrt(m2[j] / count[j])), float(loss[j]), lo[j], hi[j]))


def read_npz(path: str, *, mmap: bool, labels_optional: bool = False):
    """``x`` (memory map when ``mmap``), ``y`` [n] float32, optional ``split``.

    With ``labels_optional`` a file without ``y`` gives NaN labels.

    Raises:
      ValueError: missing/not-a-zip file, compressed ``x`` with ``mmap``,
        missing or non-.npy arrays, bad or empty shapes, x/y length
        mismatch, values beyond the float32 range.
    """
    _check_file(path, "npz file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz (zip) file")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
            needed = ("x.npy",) if labels_optional else ("x.npy", "y.npy")
            if any(name not in members for name in needed):
                want = " and ".join(f"'{n[:-4]}'" for n in needed)
                raise ValueError(f"{path}: expected array{'s' * (len(needed) > 1)} {want}, "
                                 f"found {sorted(m[:-4] for m in members)}")
            if mmap and members["x.npy"].compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: 'x' is compressed and cannot be memory mapped; save "
                                 "with np.savez (not np.savez_compressed) or add ?mmap=0 to "
                                 "load it into memory")
        try:
            npz = np.load(path, allow_pickle=False)
        except ValueError as e:          # e.g. bytes before the zip: numpy takes it for a pickle
            raise ValueError(f"{path}: unreadable npz file ({e})") from e
        with npz as z:
            y = _npz_array(path, z, "y") if "y.npy" in members else None
            split = _npz_array(path, z, "split") if "split.npy" in members else None
            x = _npz_member_memmap(path, members["x.npy"]) if mmap else _npz_array(path, z, "x")
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: unreadable npz file ({e})") from e
    if x.ndim not in (2, 3) or not _is_real_dtype(x.dtype):
        raise ValueError(f"{path}: expected numeric x of shape [n, time, leads] or [n, features], "
                         f"got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{path}: expected at least one row, got x of shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise ValueError(f"{path}: expected x with at least one "
                         f"{'time sample and lead' if x.ndim == 3 else 'feature'} per row, got "
                         f"shape {tuple(x.shape)}")
    _check_array_float32_range(path, "x", x)
    if y is None:
        y = np.full(x.shape[0], np.nan, np.float32)
    if y.ndim != 1 or not _is_real_dtype(y.dtype):
        raise ValueError(f"{path}: expected numeric y of shape [n], got {y.dtype} {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: x and y: expected the same length, got {x.shape[0]} and {y.shape[0]}")
    _check_array_float32_range(path, "y", y)
    if not labels_optional:                # training data that float32 would merge
        if not _exact_in_float32(y.dtype):
            _check_float32_precision(path, "y", y, what="array")
        if x.ndim == 2 and not _exact_in_float32(x.dtype):      # tabular, by column
            for j in range(x.shape[1]):
                _check_float32_precision(path, f"x[:, {j}]", x[:, j], what="array")
        elif not _exact_in_float32(x.dtype):                     # signals, by lead
            _check_signal_precision(path, x)
    if split is not None:
        if split.shape != y.shape:
            raise ValueError(f"{path}: expected split of shape {y.shape}, got {split.shape}")
        split = normalise_split(split, f"{path}: array 'split'")
    if x.dtype != np.float32 and not mmap:
        x = x.astype(np.float32)
    return x, y.astype(np.float32), split
