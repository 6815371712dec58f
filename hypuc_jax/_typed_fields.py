"""Typed fields of frozen dataclasses set from strings or JSON values.

The generic half of :mod:`hypuc_jax.config`: ``replace_many`` applies
``("section.key", value)`` pairs to a nested frozen dataclass, coercing each
value to the field's annotated type (int, float, bool, str, Optional,
Union, fixed or variadic tuples); ``from_dict`` builds a dataclass from a
nested dict. Every error is a ``ValueError`` that names the dotted key.
"""
from __future__ import annotations

import ast
import dataclasses
import types
import typing
from typing import Any, Union


def replace_many(config, pairs):
  """Returns the dataclass ``config`` with each ``("a.b", value)`` pair applied."""
  for key, value in pairs:
    config = replace_path(config, key.split("."), value, key)
  return config


def replace_path(obj, parts: list[str], value: Any, key: str):
  """Sets the field at ``parts`` (the split dotted ``key``) of dataclass ``obj``."""
  fields = {f.name: f for f in dataclasses.fields(obj)}
  if parts[0] not in fields:
    raise ValueError(f"{key}: unknown config key; expected one of "
                     f"{sorted(fields)} at {type(obj).__name__}")
  hints = typing.get_type_hints(type(obj))
  sub = getattr(obj, parts[0])
  if len(parts) > 1:
    if not dataclasses.is_dataclass(sub):
      raise ValueError(f"{key}: unknown config key ({parts[0]} has no sub-keys)")
    return dataclasses.replace(obj, **{parts[0]: replace_path(sub, parts[1:], value, key)})
  if dataclasses.is_dataclass(sub):
    raise ValueError(f"{key}: is a section; set one of its keys, e.g. {key}.<name>=...")
  return dataclasses.replace(obj, **{parts[0]: coerce(value, hints[parts[0]], key)})


def coerce(value: Any, tp: Any, key: str, text: bool = True) -> Any:
  """Converts ``value`` (an override's string, or with ``text=False`` a JSON value)
  to type ``tp``. Only override text spells None as "none" / "null": in JSON that
  is null, and a string (a column named "None") stays a string."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (Union, types.UnionType):
    if type(None) in args and (value is None or (text and isinstance(value, str) and
                                                 value.lower() in ("none", "null"))):
      return None
    errors = []
    for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
      try:
        return coerce(value, a, key, text)
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(f"{key}: expected {tp}, got {value!r}")
  if origin is tuple:
    if isinstance(value, str):
      text = value.strip()
      try:
        value = ast.literal_eval(text) if text[:1] in "([" else [
            v.strip() for v in text.split(",") if v.strip()]
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"{key}: expected a tuple, got {value!r}") from e
      if not isinstance(value, (list, tuple)):
        value = [value]
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{key}: expected a tuple, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(coerce(v, args[0], key, text) for v in value)
    if len(value) != len(args):
      raise ValueError(f"{key}: expected {len(args)} items, got {value!r}")
    return tuple(coerce(v, a, key, text) for v, a in zip(value, args))
  if tp is bool:
    if isinstance(value, bool):
      return value
    word = str(value).strip().lower()
    if word in ("true", "1", "yes", "on"):
      return True
    if word in ("false", "0", "no", "off"):
      return False
    raise ValueError(f"{key}: expected a bool (true/false), got {value!r}")
  if tp is int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
      raise ValueError(f"{key}: expected an int, got {value!r}")
    try:
      return int(value) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError) as e:                # None, lists, dicts, complex
      raise ValueError(f"{key}: expected an int, got {value!r}") from e
  if tp is float:
    if isinstance(value, bool):
      raise ValueError(f"{key}: expected a float, got {value!r}")
    try:
      return float(value)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{key}: expected a float, got {value!r}") from e
  if tp is str:
    if not isinstance(value, str):
      raise ValueError(f"{key}: expected a string, got {value!r}")
    return value
  raise ValueError(f"{key}: unsupported field type {tp}")


def has_type(value: Any, tp: Any) -> bool:
  """Whether ``value`` already is of field type ``tp`` (plain Python values: ints
  for floats allowed, bools never numbers, tuples element-wise), with no coercion."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (Union, types.UnionType):
    return any(has_type(value, a) for a in args)
  if origin is tuple:
    if not isinstance(value, tuple):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(has_type(v, args[0]) for v in value)
    return len(value) == len(args) and all(has_type(v, a) for v, a in zip(value, args))
  if tp is type(None):
    return value is None
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return type(value) is int
  if tp is float:
    return type(value) in (int, float)
  return isinstance(value, tp)


def from_dict(cls, d: dict, prefix: str = ""):
  """Builds dataclass ``cls`` from nested dict ``d``; unknown keys raise ValueError."""
  if not isinstance(d, dict):
    raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a dict, got "
                     f"{type(d).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in d.items():
    key = f"{prefix}{name}"
    if name not in fields:
      raise ValueError(f"{key}: unknown config key; expected one of {sorted(fields)}")
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
      kwargs[name] = from_dict(tp, value, key + ".")
    else:
      kwargs[name] = coerce(value, tp, key, text=False)
  return cls(**kwargs)
