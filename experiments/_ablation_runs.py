"""The runs behind experiments/ablation.py: one (variant, seed) trained, calibrated,
corrected and evaluated, or a finished one reused when its config, data and code
allow; simulated data cached once per spec and simulator source."""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np

from hypuc_jax import config as config_lib
from hypuc_jax import train_data, workflow
from hypuc_jax.checkpoints import first_difference
from hypuc_jax.train_state import fingerprint
from hypuc_jax._files import remove_path


def variant_overrides(variant: str, bandwidth: str = "scott") -> list[str]:
    """Config overrides of one ablation variant.

    Only the weighting changes, so every variant trains the config's loss
    (Gaussian NLL in the shipped presets); "bmc" replaces the loss by
    Balanced MSE, unweighted.
    """
    if variant == "bmc":
        return ["loss.name=bmc", "weighting.scheme=none"]
    if variant.startswith("hypuc-"):
        return ["weighting.scheme=hypuc", f"weighting.lam={variant[6:]}",
                f"weighting.bandwidth={bandwidth}"]
    return [f"weighting.scheme={variant}"]


PACKAGE = Path(workflow.__file__).resolve().parent
#: The modules that make simulated records: part of the cache file's name.
SIMULATOR_CODE = ("data/simulator.py", "data/sim_labels.py", "data/tasks.py")
STAMP_FILE = "code_stamp.txt"       # in each run directory: the code that trained it


def code_stamp(files=None) -> str:
    """sha1 (12 hex digits) of hypuc_jax's source: ``files`` (paths inside the package)
    or every ``.py`` file."""
    paths = ([PACKAGE / f for f in files] if files is not None
             else sorted(PACKAGE.rglob("*.py")))
    h = hashlib.sha1()
    for path in paths:
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def cache_simulated(config: str, overrides, root: Path) -> list[str]:
    """Simulates a ``simulated:`` data set once into ROOT/<preset>-<hash of the spec>.npz.

    Every variant then loads the same records memory-mapped (``npz:`` spec
    with the preset's regions and thresholds) instead of re-simulating them.

    Returns:
      The ``data.spec=...`` override to add (empty for other data sources).
    """
    from hypuc_jax import data

    cfg = workflow.make_config(config, overrides=list(overrides))
    kind, preset, options = data.parse_spec(cfg.data.spec)
    if kind != "simulated":
        return []
    preset = preset or "potassium"
    digest = hashlib.sha1((cfg.data.spec + code_stamp(SIMULATOR_CODE)).encode()).hexdigest()[:10]
    path = root / f"{preset}-{digest}.npz"
    if not path.exists():
        ds = data.load(cfg.data.spec)
        workflow.save_npz(path, x=np.asarray(ds.x, np.float32), y=np.asarray(ds.y, np.float32))
    kept = "".join(f"&{k}={options[k]}" for k in ("above", "below", "cuts", "strict")
                   if k in options)               # the task's extra thresholds and regions
    rate = options.get("rate", "100")
    return [f"data.spec=npz:{path}?task={preset}&rate={rate}{kept}"]


def variant_config(config: str, variant: str, seed: int, overrides, bandwidth="scott",
                   split_per_seed: bool = False) -> config_lib.Config:
    """The config of one (variant, seed) run: ``seed`` sets ``train.seed``, and with
    ``split_per_seed`` also ``data.seed``; ``overrides`` (``--set``) before the variant's."""
    split = [f"data.seed={seed}"] if split_per_seed else []
    return workflow.make_config(config, seed=seed, overrides=list(overrides) + split
                                + variant_overrides(variant, bandwidth))


def run_variant(config: str, variant: str, seed: int, workdir: Path, overrides, bandwidth="scott",
                log=print, split_per_seed: bool = False, recalibrate: bool = False) -> dict:
    """Trains/evaluates one (variant, seed) unless its eval.json exists; returns eval.json.

    ``seed`` sets ``train.seed`` (initialisation, batch order, boosting); with
    ``split_per_seed`` it also sets ``data.seed``, the train/val/test split.
    ``recalibrate``: a finished run's post-training stages run again.
    """
    cfg = variant_config(config, variant, seed, overrides, bandwidth, split_per_seed)
    if (workdir / workflow.EVAL).exists():
        stored = workflow.load_config(workdir)
        changed = _changed_sections(stored, cfg)
        if changed - POST_TRAINING:
            raise workflow.WorkflowError(
                f"{workdir}: holds a finished run of another config (differs in "
                f"{sorted(changed)}); use another --workdir")
        if changed and not recalibrate:
            raise workflow.WorkflowError(
                f"{workdir}: the finished run was calibrated/corrected/evaluated with other "
                f"{sorted(changed)} settings; pass --recalibrate to redo those stages")
        _check_same_data(cfg, workdir)
        if not recalibrate:
            ev = workflow.read_json(workdir / workflow.EVAL, "evaluation")
            if ev.get("split") != "test":
                raise workflow.WorkflowError(f"{workdir / workflow.EVAL}: expected the test "
                                             f"split's evaluation, got split {ev.get('split')!r}")
            return ev
        for name in workflow._EVALUATED:     # a failed re-run must not leave the old result
            remove_path(workdir / name)   # next to the new config
        kept = stored.to_dict()              # training sections (and data path) as trained
        kept.update({k: v for k, v in cfg.to_dict().items() if k in POST_TRAINING})
        workflow.write_json(workdir / workflow.CONFIG, kept)
        workflow.calibrate_stage(workdir)
        workflow.correct_stage(workdir)
        return workflow.evaluate_stage(workdir, "test")
    if (workdir / workflow.CONFIG).exists():         # unfinished: resumed if the same config
        try:
            stored = config_lib.Config.from_dict(workflow.read_json(workdir / workflow.CONFIG,
                                                                    "config"))
        except (KeyError, TypeError, ValueError):
            stored = cfg                                 # the pipeline names what is wrong
        then, now = fingerprint(stored), fingerprint(cfg)   # what the pipeline compares
        if then != now:
            raise workflow.WorkflowError(
                f"{workdir}: holds an unfinished run of another config "
                f"({first_difference(then, now)}); delete that folder to train it afresh, "
                "or use another --workdir")
    t0 = time.time()
    stamp_file, current = workdir / STAMP_FILE, code_stamp()
    before = stamp_file.read_text().strip() if stamp_file.exists() else None
    ckpt = Path(train_data.run_paths(str(workdir))["checkpoints"])
    resumed = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
    if not resumed:                          # written first: an interrupted run keeps it
        workdir.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(current + "\n")
    ev = workflow.pipeline(cfg, workdir)
    if resumed and before != current:        # trained partly by other (or unknown) code
        current = f"{before or 'unrecorded'}+{current}"
    stamp_file.write_text(current + "\n")
    log(f"  {variant:<14} seed {seed}: test MAE {ev['uncalibrated']['overall']['mae']:.4f} "
        f"({time.time() - t0:.0f} s)")
    return ev


def _check_same_data(cfg, workdir: Path) -> None:
    """Refuses a finished run whose checkpoints were trained on other data than ``cfg``'s
    (an npz spec is compared by file name, so the stored data stamp decides), and one
    without a data stamp (trained before stamps existed): what it was trained on is
    unknown, and the cache file's name does not say how many records it held."""
    from hypuc_jax.checkpoints import DATA_STAMP_FILE
    if not (Path(train_data.run_paths(str(workdir))["checkpoints"]) / DATA_STAMP_FILE).exists():
        raise workflow.WorkflowError(
            f"{workdir}: holds a finished run without a record of its training data "
            f"(checkpoints/{DATA_STAMP_FILE}, written since 2026-12-05), so it cannot be "
            f"checked against --data {cfg.data.spec!r}; use another --workdir")
    ds = workflow._dataset(cfg)
    if train_data.trained_on_other_data(workdir, ds.x, ds.y, train_data.split_for(cfg, ds)):
        raise workflow.WorkflowError(
            f"{workdir}: holds a finished run trained on other data than --data "
            f"{cfg.data.spec!r} (labels, split or records differ); use another --workdir")


#: Config sections that only the calibrate / correct / evaluate stages read.
POST_TRAINING = frozenset({"calibration", "corrections", "regions"})


_CACHE_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9a-f]{10}\.npz")     # cache_simulated's files


def _changed_sections(stored, cfg) -> set[str]:
    """Top-level config sections that differ between a stored run and ``cfg``.

    An npz spec counts by its file name (a cache or file under another
    ``--workdir``), and every file of ``cache_simulated`` as one (its name
    also hashes the simulator's source, which a comment changes): whether
    the records are the same is :func:`_check_same_data`'s to decide.
    """
    a, b = stored.to_dict(), cfg.to_dict()
    for d in (a, b):
        spec = d["data"]["spec"]
        if spec.startswith("npz:"):
            path, _, query = spec[4:].partition("?")
            name = Path(path).name
            d["data"]["spec"] = f"npz:{'<cache>' if _CACHE_NAME.fullmatch(name) else name}?{query}"
    return {k for k in a if a[k] != b[k]}
