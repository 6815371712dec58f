"""The config of a run from what the user gives: a preset or an experiment
JSON file, the ``hypuc train`` flags, ``--region`` and ``--set`` overrides
(``make_config``). The stored config of a trained run is read by
``rundir.load_config``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from hypuc_jax import config as config_lib
from hypuc_jax.rundir import WorkflowError, read_json


def parse_region(text: str) -> tuple[str, float, float]:
    """Parses ``--region NAME=LOW:HIGH`` (either bound may be empty for +-inf)."""
    try:
        return config_lib.parse_region(text, "--region")
    except ValueError as e:
        raise WorkflowError(str(e)) from None


def base_config(name: str) -> config_lib.Config:
    """A preset by name, or a JSON experiment file {"preset": NAME, "overrides": [...]}.

    Raises:
      WorkflowError: unreadable file or malformed content.
    """
    if not name.endswith(".json"):
        if name not in config_lib.PRESET_NAMES:
            raise WorkflowError(f"--preset: expected one of {list(config_lib.PRESET_NAMES)} or "
                                f"an experiment .json file, got {name!r}")
        return config_lib.get_config(name)
    d = read_json(Path(name), "experiment config")
    unknown = sorted(set(d) - {"preset", "overrides", "description"})
    if unknown or not isinstance(d.get("overrides", []), list):
        raise WorkflowError(f"{name}: expected {{\"preset\": NAME, \"overrides\": [...], "
                            f"\"description\": TEXT}}"
                            + (f", got unknown keys {unknown}" if unknown else ""))
    try:
        return config_lib.apply_overrides(config_lib.get_config(d.get("preset", "potassium")),
                                          d.get("overrides", []))
    except ValueError as e:
        raise WorkflowError(f"{name}: {e}") from None


def make_config(base: str | config_lib.Config = "potassium", *, data: str | None = None,
                target: str | None = None, loss: str | None = None,
                weighting: str | None = None, lam: float | None = None,
                parallel: str | None = None, epochs: int | None = None,
                batch_size: int | None = None, seed: int | None = None,
                regions: Sequence[str] = (), overrides: Sequence[str] = ()
                ) -> config_lib.Config:
    """A config from a preset plus the CLI's named flags, then ``--set`` overrides.

    Args:
      base: preset name, experiment JSON file (see ``base_config``) or a Config.
      data, target, loss, weighting, lam, parallel, epochs, batch_size, seed:
        the ``hypuc train`` flags (None keeps the preset's value).
      regions: ``NAME=LOW:HIGH`` strings added to the named regions.
      overrides: ``section.key=value`` strings, applied last.

    Raises:
      ValueError: an unknown key or a value of the wrong type (named).
    """
    cfg = base_config(base) if isinstance(base, str) else base
    if target is not None:       # a column name as given ("None" too): not override text
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, target=str(target)))
    flags = [("data.spec", data), ("loss.name", loss),
             ("weighting.scheme", weighting), ("weighting.lam", lam),
             ("train.parallel", parallel), ("train.epochs", epochs),
             ("train.batch_size", batch_size), ("train.seed", seed)]
    for key, value in flags:
        if value is not None:
            cfg = config_lib.apply_overrides(cfg, [f"{key}={value}"])
    if epochs is not None:
        cfg = config_lib.apply_overrides(cfg, ["train.steps=0"])
    if regions and any(o.split("=", 1)[0].strip() == "regions" for o in overrides):
        raise ValueError("--region and --set regions=: both give the named regions (the "
                         "--set would replace the --region ones); use one of them")
    if regions:
        cfg = dataclasses.replace(cfg, regions=tuple(cfg.regions) + tuple(
            parse_region(r) for r in regions))
    cfg = config_lib.apply_overrides(cfg, list(overrides))
    scheme = cfg.weighting.scheme
    if lam is not None and scheme != "hypuc":    # stored, fingerprinted, unused
        raise ValueError(f"--lam: applies to --weighting hypuc only, got weighting {scheme!r}")
    _check_weighting_keys(scheme, overrides)
    return cfg


def _check_weighting_keys(scheme: str, overrides: Sequence[str]) -> None:
    """Refuses ``--set weighting.<field>`` that ``scheme`` would ignore (scheme
    "none" ignores every one: ``hypuc run`` gives its baseline the same keys).
    An experiment JSON's own overrides are not checked: one file serves every
    variant of an ablation."""
    if scheme not in config_lib.WEIGHTING_FIELDS:        # "none", or unknown: validate names it
        return
    used = config_lib.WEIGHTING_FIELDS[scheme] + ("bins",)   # bins: also the shot regions'
    for item in overrides:
        section, _, field = str(item).partition("=")[0].strip().partition(".")
        users = [s for s, fields in config_lib.WEIGHTING_FIELDS.items() if field in fields]
        if section == "weighting" and users and field not in used:
            raise ValueError(f"--set weighting.{field}: used by --weighting "
                             f"{' / '.join(users)} only; {scheme!r} would ignore it")
