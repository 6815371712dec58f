"""Run configuration: nested frozen dataclasses, presets, overrides, checks.

A :class:`Config` holds every knob the CLI and ``train.train_and_evaluate``
need, grouped by stage::

    Config(data, model, loss, weighting, train, calibration, corrections, regions)

``get_config(name)`` returns a preset ("potassium" default, "tiny" for tests,
"lvef", "diabetes"); ``apply_overrides(config, ["train.lr=1e-3"])`` changes
fields from strings with type coercion; ``validate(config, n_devices)`` fails
before training with a ``ValueError`` naming the offending key. ``to_dict`` /
``from_dict`` round-trip through JSON (``DIR/config.json``).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import typing
from typing import Any

from hypuc_jax import _typed_fields as typed_fields
from hypuc_jax._config_types import (  # re-exported: config.Config, config.LOSSES, ...
    LOSSES, MAX_LAM, WEIGHTINGS, WEIGHTING_FIELDS, WEIGHT_APPLY, WEIGHT_SCOPES, PARALLEL,
    SELECT_ON,
    MODEL_KINDS, CALIBRATIONS, CALIBRATION_TAILS, CALIBRATION_QUANTILES, CORRECTION_TARGETS,
    SHOT_REGION_NAMES, BANDWIDTH_RULES, KDE_METHODS, LDS_KERNELS, ACTIVATIONS, DTYPES,
    DataConfig, ModelConfig, LossConfig, WeightingConfig, TrainConfig, CalibrationConfig,
    CorrectionsConfig, Config)

__all__ = ["ACTIVATIONS", "BANDWIDTH_RULES", "CALIBRATIONS", "CALIBRATION_QUANTILES",
           "CALIBRATION_TAILS", "CORRECTION_TARGETS", "CalibrationConfig", "Config",
           "CorrectionsConfig", "DTYPES", "DataConfig", "KDE_METHODS", "LDS_KERNELS", "LOSSES",
           "LossConfig", "MAX_LAM", "MODEL_KINDS", "ModelConfig", "PARALLEL", "PRESET_NAMES",
           "SELECT_ON", "SHOT_REGION_NAMES", "TrainConfig", "WEIGHTINGS", "WEIGHTING_FIELDS",
           "WEIGHT_APPLY", "WEIGHT_SCOPES", "WeightingConfig", "apply_overrides", "get_config",
           "resolve_parallel", "validate"]

_PRESETS: dict[str, dict[str, Any]] = {
    # Default CLI job: 2000 simulated ECGs at 100 Hz, a small ResNet, 360
    # steps: ~1-2 min of training on 2 CPU cores (8 epochs took 35 s).
    "potassium": {
        "data.spec": "simulated:potassium",
        "model.widths": (16, 32, 64), "model.blocks": (1, 1, 1),
        "train.batch_size": 64, "train.epochs": 20, "train.lr": 2e-3,
        "train.warmup_steps": 50, "train.eval_every": 50,
        "train.checkpoint_every": 50, "train.log_every": 20,
    },
    # Unit / CI tests: a few hundred tiny signals, seconds on one core.
    "tiny": {
        "data.spec": "simulated:potassium?n=256&duration=2&rate=50",
        "model.widths": (8, 16), "model.blocks": (1, 1), "model.kernel_size": 5,
        "model.stem_kernel": 7, "model.groups": 4,
        "train.batch_size": 32, "train.eval_batch_size": 64, "train.steps": 12,
        "train.lr": 3e-3, "train.warmup_steps": 2, "train.log_every": 4,
        "train.eval_every": 6, "train.checkpoint_every": 6,
        "train.keep_checkpoints": 2, "train.early_stopping_patience": 0,
        "calibration.min_count": 5, "calibration.bins": 4,
        "corrections.n_estimators": 20,
    },
    "lvef": {
        "data.spec": "simulated:lvef",
        "model.widths": (16, 32, 64), "train.epochs": 8, "train.lr": 2e-3,
        "train.warmup_steps": 50, "train.eval_every": 100,
        "train.checkpoint_every": 100, "train.log_every": 20,
    },
    "diabetes": {
        "data.spec": "diabetes", "model.kind": "mlp",
        "model.widths": (64, 64), "model.blocks": (1, 1), "model.dropout": 0.1,
        "train.batch_size": 32, "train.epochs": 60, "train.lr": 3e-3,
        "train.warmup_steps": 20, "train.eval_every": 20,
        "train.checkpoint_every": 20, "train.log_every": 10,
        "train.early_stopping_patience": 10, "weighting.bins": 20,
        "calibration.bins": 5, "calibration.min_count": 10,
    },
}


PRESET_NAMES = tuple(_PRESETS)


def get_config(name: str = "potassium") -> Config:
  """Returns the preset ``name`` (potassium, tiny, lvef, diabetes).

  Raises:
    ValueError: unknown preset name.
  """
  if not isinstance(name, str) or name not in _PRESETS:
    raise ValueError(f"name: expected one of {sorted(_PRESETS)}, got {name!r}")
  return typed_fields.replace_many(Config(), _PRESETS[name].items())


def apply_overrides(config: Config, overrides: typing.Sequence[str]) -> Config:
  """Returns ``config`` with ``"section.key=value"`` overrides applied.

  Values are coerced to the field's type: ints, floats, bools
  (true/false/1/0/yes/no), ``none`` for optional fields, tuples as
  ``32,64`` or a Python literal ``(32, 64)``. ``train.epochs`` given
  without ``train.steps`` also sets ``train.steps=0``, so that the epochs
  take effect (``steps > 0`` overrides them, and some presets set steps).

  Args:
    config: the base configuration.
    overrides: strings ``"train.lr=1e-3"``, ``"model.widths=16,32"``.

  Raises:
    ValueError: malformed override, unknown key (named), or a value that
      cannot be converted to the field's type.
  """
  pairs = []
  for item in overrides:
    if not isinstance(item, str) or "=" not in item:
      raise ValueError(f"overrides: expected 'section.key=value', got {item!r}")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    pairs.append((key, parse_regions(raw) if key == "regions" else raw))
  keys = {k for k, _ in pairs}
  if "train.epochs" in keys and "train.steps" not in keys:
    pairs.append(("train.steps", "0"))
  return typed_fields.replace_many(config, pairs)


def parse_region(text: str, arg: str = "regions") -> tuple[str, float, float]:
  """``NAME=LOW:HIGH`` -> (name, low, high); an empty bound is open (+-inf).

  Raises:
    ValueError: naming ``arg``, for another form or LOW >= HIGH.
  """
  name, sep, rng = text.partition("=")
  lo, sep2, hi = rng.partition(":")
  try:
    if not (sep and sep2 and name.strip()):
      raise ValueError
    low = float(lo) if lo.strip() else -math.inf
    high = float(hi) if hi.strip() else math.inf
  except ValueError:
    raise ValueError(f"{arg}: expected NAME=LOW:HIGH, got {text!r}") from None
  if not low < high:
    raise ValueError(f"{arg}: expected LOW < HIGH, got {text!r}")
  return name.strip(), low, high


def parse_regions(text: str) -> tuple[tuple[str, float, float], ...]:
  """The value of a ``regions=`` override: ``NAME=LOW:HIGH`` items separated by
  commas (as ``--region`` takes them), or a list as config.json stores it,
  ``[["hyper", 5.5, null], ...]`` (None / null: an open bound; "" clears).

  Raises:
    ValueError: naming ``regions`` and both accepted forms.
  """
  forms = ("expected NAME=LOW:HIGH items separated by commas (an empty bound is open) or a "
           "list [[name, low, high], ...] (null for an open bound)")
  if not text[:1] or text[0] not in "([":
    out = []
    for item in filter(None, (i.strip() for i in text.split(","))):
      if "=" not in item or ":" not in item:
        raise ValueError(f"regions: {forms}, got {text!r} (item {item!r})")
      out.append(parse_region(item, "regions"))
    return tuple(out)
  try:
    items = json.loads(text) if text[:1] == "[" else None
  except ValueError:
    items = None
  if items is None:                             # a Python literal: None, tuples, quotes
    try:
      items = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f"regions: {forms}, got {text!r}") from None
  if not (isinstance(items, (list, tuple))
          and all(isinstance(r, (list, tuple)) and len(r) == 3 for r in items)):
    raise ValueError(f"regions: {forms}, got {text!r}")
  return tuple((r[0], -math.inf if r[1] is None else r[1], math.inf if r[2] is None else r[2])
               for r in items)


def _check(cond: bool, key: str, expected: str, got: Any) -> None:
  if not cond:
    raise ValueError(f"{key}: expected {expected}, got {got!r}")


_CHOICES = {"model.kind": MODEL_KINDS, "model.activation": ACTIVATIONS, "model.dtype": DTYPES,
            "loss.name": LOSSES, "weighting.scheme": WEIGHTINGS,
            "weighting.apply": WEIGHT_APPLY, "weighting.scope": WEIGHT_SCOPES,
            "weighting.method": KDE_METHODS,
            "weighting.lds_kernel": LDS_KERNELS, "train.parallel": PARALLEL,
            "train.select_on": SELECT_ON,
            "calibration.method": CALIBRATIONS, "calibration.tail": CALIBRATION_TAILS,
            "calibration.quantile": CALIBRATION_QUANTILES,
            "corrections.target": CORRECTION_TARGETS}
_AT_LEAST = {"model.stem_stride": 1, "model.groups": 1, "loss.bni_bins": 2, "weighting.bins": 2,
             "train.batch_size": 1, "train.eval_batch_size": 1, "train.log_every": 1,
             "train.eval_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 1,
             "calibration.bins": 1, "calibration.min_count": 1, "corrections.n_models": 1,
             "corrections.n_estimators": 1, "corrections.max_depth": 1, "weighting.lam": 0,
             "weighting.dense_alpha": 0, "train.steps": 0, "train.weight_decay": 0,
             "train.warmup_steps": 0, "train.grad_clip": 0, "train.early_stopping_patience": 0,
             "train.prefetch": 0}
# Upper bounds on sizes and counts: far beyond any real use, but below what
# fails only later (an array numpy cannot allocate, a boosting loop that never
# ends), so that such a value is refused by name before a run's files change.
_AT_MOST = {"model.stem_stride": 2 ** 16, "model.groups": 2 ** 16, "model.kernel_size": 2 ** 16,
            "model.stem_kernel": 2 ** 16, "loss.bni_bins": 10 ** 6, "weighting.bins": 10 ** 6,
            "weighting.lds_ks": 10 ** 6, "train.batch_size": 2 ** 24,
            "train.eval_batch_size": 2 ** 24, "train.prefetch": 2 ** 10,
            "calibration.bins": 10 ** 6, "corrections.n_models": 10 ** 3,
            "corrections.n_estimators": 10 ** 5, "corrections.max_depth": 64}
_MAX_WIDTH, _MAX_BLOCKS = 2 ** 16, 2 ** 10
_POSITIVE = ("model.sigma_min", "loss.huber_delta", "loss.noise_sigma", "weighting.lds_sigma",
             "train.lr", "corrections.learning_rate")
_ODD = ("model.kernel_size", "model.stem_kernel", "weighting.lds_ks")
_OPEN_UNIT = ("corrections.specificity",)
# calibration.xi: the central quantile z_xi must be resolvable in float64 (xi ~1e-16
# gives z = 0) and finite (1 - xi ~1e-17 gives inf)
XI_RANGE = (1e-6, 1.0 - 1e-9)


def validate(config: Config, n_devices: int = 1, n_processes: int | None = None) -> Config:
  """Checks every value before training; returns ``config`` unchanged.

  Whether the model fits the data shape is checked by
  ``train.check_model_fits`` once the data are loaded.

  Args:
    config: the configuration to check.
    n_devices: number of devices the batch is split over (global count).
    n_processes: number of JAX processes (default ``jax.process_count()``);
      each reads its slice of every batch.

  Raises:
    ValueError: naming the first offending key and what was expected.
  """
  if not isinstance(config, Config):
    raise ValueError(f"config: expected a Config, got {type(config).__name__}")
  get = lambda key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
  d, m, w, t = config.data, config.model, config.weighting, config.train
  for section in dataclasses.fields(config):
    value = getattr(config, section.name)
    if dataclasses.is_dataclass(value):
      hints = typing.get_type_hints(type(value))
      for f in dataclasses.fields(value):
        v, key = getattr(value, f.name), f"{section.name}.{f.name}"
        # A config built in Python (dataclasses.replace) skips the coercion of
        # overrides: its values must already have the field's (JSON) type.
        _check(typed_fields.has_type(v, hints[f.name]), key,
               f"a value of type {hints[f.name]} (plain Python: the config is JSON)", v)
        _check(not isinstance(v, float) or math.isfinite(v), key, "a finite number", v)
  for key, choices in _CHOICES.items():
    _check(get(key) in choices, key, f"one of {choices}", get(key))
  for key, low in _AT_LEAST.items():
    _check(get(key) >= low, key, f"a number >= {low}", get(key))
  for key, high in _AT_MOST.items():
    _check(get(key) <= high, key, f"a number <= {high}", get(key))
  for key in _POSITIVE:
    _check(get(key) > 0, key, "a number > 0", get(key))
  _check(config.corrections.learning_rate <= 1.0, "corrections.learning_rate",
         "a number in (0, 1] (the boosting shrinkage; above 1 the trees diverge)",
         config.corrections.learning_rate)
  xi = config.calibration.xi
  _check(XI_RANGE[0] <= xi <= XI_RANGE[1], "calibration.xi",
         f"a coverage in [{XI_RANGE[0]:g}, 1 - {1 - XI_RANGE[1]:.0e}]", xi)
  for key in _ODD:
    _check(get(key) >= 1 and get(key) % 2 == 1, key, "an odd int >= 1", get(key))
  for key in _OPEN_UNIT:
    _check(0 < get(key) < 1, key, "a number in (0, 1)", get(key))
  _check(bool(d.spec), "data.spec", "a non-empty string", d.spec)
  _check(len(d.split) == 3 and all(f > 0 for f in d.split) and abs(sum(d.split) - 1.0) < 1e-6,
         "data.split", "3 positive fractions (train, val, test) summing to 1", d.split)
  # resnet1d needs one block count per width; an MLP ignores blocks and may have no
  # hidden layer (a linear model). "auto" is checked by train.check_model_fits on the data.
  resnet = m.kind == "resnet1d"
  _check((not resnet or len(m.widths) > 0) and all(0 < v <= _MAX_WIDTH for v in m.widths),
         "model.widths", f"ints in [1, {_MAX_WIDTH}] (at least one for resnet1d)", m.widths)
  _check(all(0 < v <= _MAX_BLOCKS for v in m.blocks)
         and (not resnet or len(m.blocks) == len(m.widths)),
         "model.blocks", f"ints in [1, {_MAX_BLOCKS}], one per width ({len(m.widths)}) for "
         "resnet1d", m.blocks)
  _check(0.0 <= m.dropout < 1.0, "model.dropout", "a float in [0, 1)", m.dropout)
  _check(0.0 <= config.loss.beta <= 1.0, "loss.beta", "a float in [0, 1]", config.loss.beta)
  _check(config.loss.beta == 0.0 or config.loss.name in ("nll", "laplace"), "loss.beta",
         "0 unless loss.name is nll or laplace", config.loss.beta)
  _check(w.bandwidth in BANDWIDTH_RULES if isinstance(w.bandwidth, str) else w.bandwidth > 0,
         "weighting.bandwidth", f"a float > 0 or one of {BANDWIDTH_RULES}", w.bandwidth)
  _check(w.lam <= MAX_LAM, "weighting.lam", f"a float in [0, {MAX_LAM:g}]", w.lam)
  _check(0.0 <= w.defer < 1.0, "weighting.defer", "a fraction of the steps in [0, 1)", w.defer)
  _check(w.defer == 0.0 or w.apply == "loss", "weighting.defer",
         "0 unless weighting.apply is loss", w.defer)
  head_scope = w.scope == "head" and w.scheme != "none"
  _check(not head_scope or w.apply == "loss", "weighting.apply",
         "loss with weighting.scope=head (the head is re-fitted to the weighted loss)", w.apply)
  _check(not head_scope or w.defer == 0.0, "weighting.defer",
         "0 with weighting.scope=head (the network trains unweighted throughout)", w.defer)
  _check(not head_scope or config.loss.name != "bmc", "loss.name",
         "a per-example loss with weighting.scope=head (bmc compares every pair in a batch)",
         config.loss.name)
  _check(not head_scope or config.loss.beta == 0.0, "loss.beta",
         "0 with weighting.scope=head (beta-NLL's value is no objective for the head re-fit)",
         config.loss.beta)
  _check(not head_scope or t.select_on == "nll", "train.select_on",
         "nll with weighting.scope=head (the network is selected as without weights; the "
         "head's ridge strength on the weighted validation loss)", t.select_on)
  _check(w.max_weight is None or w.max_weight >= 1, "weighting.max_weight",
         "None or a float >= 1 (weights have mean 1)", w.max_weight)
  _check(isinstance(n_devices, int) and n_devices >= 1, "n_devices", "an int >= 1", n_devices)
  mode = resolve_parallel(t.parallel, n_devices)
  # pmap evaluates with one jit on one device: only sharding splits eval batches.
  for key, modes in (("batch_size", ("sharding", "pmap")), ("eval_batch_size", ("sharding",))):
    _check(mode not in modes or getattr(t, key) % n_devices == 0, f"train.{key}",
           f"a multiple of the device count {n_devices}", getattr(t, key))
  if n_processes is None:
    import jax
    n_processes = jax.process_count()
  _check(mode != "none" or n_processes == 1, "train.parallel",
         f"'sharding' or 'pmap' with {n_processes} processes ('none' would train each "
         "process alone on its slice of the batch)", t.parallel)
  for key in ("batch_size", "eval_batch_size"):       # every process reads its slice
    _check(getattr(t, key) % n_processes == 0, f"train.{key}",
           f"a multiple of the process count {n_processes}", getattr(t, key))
  _check(t.steps > 0 or t.epochs > 0, "train.epochs", "> 0 when train.steps is 0", t.epochs)
  for key in ("data.seed", "train.seed"):             # numpy, jax and scikit-learn seeds
    _check(0 <= get(key) < 2 ** 32, key, "an integer in [0, 2**32)", get(key))
  c = config.corrections                                # members are seeded seed + k
  _check(0 <= c.seed and c.seed + c.n_models - 1 < 2 ** 32, "corrections.seed",
         "an integer >= 0 with seed + n_models - 1 < 2**32", c.seed)
  reserved = SHOT_REGION_NAMES + ("overall",)
  _check(isinstance(config.regions, tuple), "regions", "a tuple of (name, low, high)",
         config.regions)
  for i, region in enumerate(config.regions):     # Config.__post_init__ made numbers floats
    _check(typed_fields.has_type(region, tuple[str, float, float]) and region[1] < region[2],
           f"regions[{i}]", "(name, low, high): a str and two floats (+-inf allowed) with "
           "low < high", region)
    _check(region[0] not in reserved
           and [r[0] for r in config.regions].count(region[0]) == 1, f"regions[{i}]",
           f"a name used once and not one of {reserved} (the shot regions and the overall block)",
           region[0])
  _check(config.corrections.enabled, "corrections.enabled",
         "true (the corrections stage always runs; this key is kept so older configs load)",
         config.corrections.enabled)
  return config


def resolve_parallel(parallel: str, n_devices: int) -> str:
  """Maps ``"auto"`` to ``"sharding"`` on > 1 device and ``"none"`` otherwise."""
  if parallel == "auto":
    return "sharding" if n_devices > 1 else "none"
  return parallel
