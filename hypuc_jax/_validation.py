"""Input checks shared by the public functions of every stage.

Public functions validate concrete inputs on the host and raise ``ValueError``
naming the argument and what was expected. Inside ``jit`` the inputs are
tracers whose values cannot be inspected, so value checks (finiteness,
positivity) are skipped there and only shape checks (``chex``) apply.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def is_int(x: Any) -> bool:
    """True for a python or numpy integer scalar (not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x: Any) -> bool:
    """True for a python or numpy real scalar: int or float (not a bool)."""
    return is_int(x) or isinstance(x, (float, np.floating))


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds concrete values (not a tracer under jit/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def plain_scalar(x: Any) -> Any:
    """A concrete 0-d numpy / jax array as its Python scalar (``.item()``: a float,
    an int or a bool); anything else, a tracer included, unchanged. For the scalar
    option checks, so ``jnp.array(0.9)`` passes where ``0.9`` does."""
    if hasattr(x, "dtype") and np.ndim(x) == 0 and is_concrete(x):
        return x.item()
    return x


def check_concrete(x: Any, name: str) -> None:
    """A ValueError naming ``name`` when ``x`` is traced (inside jax.jit / vmap): for the
    host-side (numpy) functions, which need its values."""
    if not is_concrete(x):
        raise ValueError(f"{name}: got a traced array; this function runs on concrete "
                         "(numpy) values, call it outside jax.jit / vmap")


def concrete_values(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array when its values are known, else None.

    Known: not a tracer, or a tracer of ``jax.grad`` / ``jax.linearize`` on
    concrete inputs (its primal values). Unknown under jit and vmap.
    """
    if is_concrete(x):
        return np.asarray(x)
    value = getattr(x, "to_concrete_value", lambda: None)()
    return None if value is None else np.asarray(value)


def as_array(x: Any, name: str, *, ndim: tuple[int, ...] | int | None = None,
             allow_empty: bool = False):
    """Returns ``x`` as an array (numpy or jax, unchanged if already one).

    Args:
      x: array-like.
      name: argument name used in error messages.
      ndim: allowed number(s) of dimensions, or None for any.
      allow_empty: whether a zero-size array is accepted.

    numpy integers beyond the int32 range come back as float64 when jax's
    64-bit mode is off (jax would silently wrap them to int32).

    Raises:
      ValueError: not real numbers (strings, objects, complex), wrong number
        of dimensions, or empty when not allowed.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: expected a numeric array, got {type(x).__name__}") from e
    if not (jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)
            or jnp.issubdtype(x.dtype, jnp.bool_)):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    if (isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer) and x.size
            and not jax.config.jax_enable_x64
            and (x.max() > np.iinfo(np.int32).max or x.min() < np.iinfo(np.int32).min)):
        x = x.astype(np.float64)     # jax would wrap them to int32 without a word
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(x.shape)}")
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(x.shape)}")
    return x


def check_finite(x: Any, name: str) -> None:
    """Raises ValueError if concrete ``x`` holds NaN or inf (no-op under jit)."""
    if is_concrete(x):
        arr = np.asarray(x)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(f"{name}: expected finite values, found {bad} NaN/inf entries")


def as_representable(x: Any, name: str) -> jax.Array:
    """``jnp.asarray(x)``, refused by name (``check_representable``) when finite
    host values overflow jax's dtype; numpy's overflow warning of that cast is
    not shown, the error says it."""
    with np.errstate(over="ignore"):
        converted = jnp.asarray(x)
    check_representable(x, converted, name)
    return converted


def check_representable(x: Any, converted: jax.Array, name: str) -> None:
    """Raises ValueError if finite host values ``x`` overflowed when converted
    to ``converted``'s floating dtype (float64 beyond ~3.4e38 becomes inf in
    float32 when jax's 64-bit mode is off), instead of a silent inf or NaN."""
    if (isinstance(x, np.ndarray) and is_concrete(converted)
            and jnp.issubdtype(converted.dtype, jnp.floating)
            and np.dtype(x.dtype).itemsize > np.dtype(converted.dtype).itemsize):
        limit = float(jnp.finfo(converted.dtype).max)
        over = int(np.count_nonzero(np.abs(x) > limit))
        if over:
            raise ValueError(f"{name}: expected values within the {converted.dtype} range "
                             f"(|x| <= {limit:.4g}; jax's 64-bit mode is off), found {over} "
                             "beyond it")


def check_positive(x: Any, name: str, *, strict: bool = True, scalar: bool = False) -> None:
    """Raises ValueError unless concrete ``x`` is finite and > 0 (>= 0 if not strict).

    ``scalar``: ``x`` must also be one number of shape (), not a boolean (True
    would pass as 1). Arrays may be boolean (0/1 weights). Shape and dtype are
    checked on tracers too (jit / vmap), the values only when concrete."""
    if scalar and np.ndim(x) != 0:
        raise ValueError(f"{name}: expected a scalar, got shape {np.shape(x)}")
    if scalar and not is_concrete(x) and jnp.issubdtype(x.dtype, jnp.bool_):
        raise ValueError(f"{name}: expected real numbers, got a traced boolean")
    if is_concrete(x):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.number) or jnp.issubdtype(arr.dtype, jnp.floating)
                or (np.issubdtype(arr.dtype, np.bool_) and not scalar)) or np.iscomplexobj(arr):
            raise ValueError(f"{name}: expected real numbers, got {type(x).__name__} "
                             f"of dtype {arr.dtype}")
        ok = np.all(np.isfinite(arr)) and (np.all(arr > 0) if strict else np.all(arr >= 0))
        if not ok:
            rel = "> 0" if strict else ">= 0"
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            shown = (arr if arr.size <= 4 else f"{bad} NaN/inf entries" if bad
                     else f"array with min {np.min(arr)!r}")
            raise ValueError(f"{name}: expected finite values {rel}, got {shown}")


def check_same_length(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Raises ValueError if the leading dimensions of ``a`` and ``b`` differ."""
    la, lb = np.shape(a)[:1], np.shape(b)[:1]
    if la != lb:
        raise ValueError(
            f"{name_a} and {name_b}: expected the same length, got {la[0] if la else 'scalar'}"
            f" and {lb[0] if lb else 'scalar'}")


def as_float(*arrays: jax.Array) -> list[jax.Array]:
    """Integer / bool arrays promoted to the default float (float32; float64
    under ``jax_enable_x64``, so int64 keeps its precision): their differences
    would wrap. Floating arrays unchanged."""
    default = jnp.result_type(float)
    return [x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(default) for x in arrays]


def as_vectors(*, finite: bool = True, **arrays: Any) -> list[jax.Array]:
    """Checks named 1-D arrays of one length and returns them as jax arrays.

    Shape checks run on every call (also while tracing); the finiteness check
    only on concrete values.

    Args:
      finite: whether to require finite values.
      **arrays: name=array-like, each of shape ``[n]`` with the same ``n``.

    Returns:
      The arrays as jax arrays ``[n]``, in argument order.

    Raises:
      ValueError: an array not 1-D or empty, lengths that differ, or (when
        ``finite`` and concrete) a NaN/inf entry, or a finite entry that
        becomes inf in jax's dtype (float64 beyond ~3.4e38 with 64-bit mode
        off); the message names the array.
    """
    out, first = [], None
    for name, x in arrays.items():
        x = as_array(x, name, ndim=1)
        if finite:
            check_finite(x, name)
        if first is None:
            first = (name, x)
        check_same_length(first[0], first[1], name, x)
        out.append(as_representable(x, name) if finite else jnp.asarray(x))
    chex.assert_equal_shape(out)
    return out


def as_positive_scalar(x: Any, name: str) -> jax.Array:
    """Returns ``x`` as a scalar jax array ``[]``, checked > 0 when concrete.

    Raises:
      ValueError: ``x`` has more than one element, is a boolean, or is
        concrete and not finite and positive.
    """
    if isinstance(x, (bool, np.bool_, str, bytes)):     # True is not 1, nor "1"
        raise ValueError(f"{name}: expected a real number, got {x!r}")
    x = as_array(x, name)
    if x.size != 1:
        raise ValueError(f"{name}: expected a scalar, got shape {tuple(x.shape)}")
    x = jnp.reshape(jnp.asarray(x), ())
    check_positive(x, name, scalar=True)
    return x
