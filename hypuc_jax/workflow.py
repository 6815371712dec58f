"""Stage orchestration shared by the ``hypuc`` CLI and the experiments.

Each stage reads and writes one run directory (layout in
docs/architecture.md), so the CLI commands can run one at a time::

    train_stage      -> config.json, checkpoints/, ... (train.train_and_evaluate)
                        + predictions_{val,test}.npz, task.json, labels_train.npy
    calibrate_stage  -> calibration.json        (validation split only)
    correct_stage    -> corrections/            (validation split only)
    evaluate_stage   -> eval.json, outputs_{split}.npz
    predict_stage    -> a CSV of per-record predictions for new data
    run_comparison   -> baseline/ + hypuc/ + report.md + figures/

Every file is written to a temporary name first and moved into place with
``os.replace``, so an interrupted or failed command never leaves a file that
a later command would take for a result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hypuc_jax import config as config_lib

CONFIG = "config.json"
TASK = "task.json"
TRAIN_LABELS = "labels_train.npy"
CALIBRATION = "calibration.json"
CORRECTIONS = "corrections"
EVAL = "eval.json"
FLAG_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


class WorkflowError(ValueError):
    """A user-facing problem with a run directory or its inputs (one line)."""


# ----------------------------------------------------------------------------- file I/O


def _tmp_in(path: Path, suffix: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return tmp


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_in(path, ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _clean(obj: Any) -> Any:
    """Replaces non-finite floats by None (JSON null) recursively."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_in(path, ".npz")
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_in(path, ".npy")
    try:
        np.save(tmp, np.asarray(array))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no {what} found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise WorkflowError(f"{path}: cannot read {what} ({e})") from None


def load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise WorkflowError(f"{path}: no {what} found")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- config


def load_config(workdir: str | os.PathLike) -> config_lib.Config:
    """The resolved config of a trained run directory.

    Raises:
      WorkflowError: the directory holds no trained model.
    """
    workdir = Path(workdir)
    if not (workdir / CONFIG).exists() or not (workdir / TASK).exists():
        raise WorkflowError(f"{workdir}: no trained model found (expected {CONFIG} and "
                            f"{TASK}); run `hypuc train --workdir {workdir} --data ...` first")
    return config_lib.Config.from_dict(read_json(workdir / CONFIG, "config"))


def parse_region(text: str) -> tuple[str, float, float]:
    """Parses ``NAME=LOW:HIGH`` (either bound may be empty for +-inf)."""
    name, sep, rng = text.partition("=")
    lo, sep2, hi = rng.partition(":")
    try:
        if not (sep and sep2 and name.strip()):
            raise ValueError
        low = float(lo) if lo.strip() else -np.inf
        high = float(hi) if hi.strip() else np.inf
    except ValueError:
        raise WorkflowError(f"--region: expected NAME=LOW:HIGH, got {text!r}") from None
    if not low < high:
        raise WorkflowError(f"--region: expected LOW < HIGH, got {text!r}")
    return name.strip(), low, high


def base_config(name: str) -> config_lib.Config:
    """A preset by name, or a JSON experiment file {"preset": NAME, "overrides": [...]}.

    Raises:
      WorkflowError: unreadable file or malformed content.
    """
    if not name.endswith(".json"):
        return config_lib.get_config(name)
    d = read_json(Path(name), "experiment config")
    if not isinstance(d, dict) or not isinstance(d.get("overrides", []), list):
        raise WorkflowError(f"{name}: expected {{\"preset\": NAME, \"overrides\": [...]}}")
    return config_lib.apply_overrides(config_lib.get_config(d.get("preset", "potassium")),
                                      d.get("overrides", []))


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
    flags = [("data.spec", data), ("data.target", target), ("loss.name", loss),
             ("weighting.scheme", weighting), ("weighting.lam", lam),
             ("train.parallel", parallel), ("train.epochs", epochs),
             ("train.batch_size", batch_size), ("train.seed", seed)]
    for key, value in flags:
        if value is not None:
            cfg = config_lib.apply_overrides(cfg, [f"{key}={value}"])
    if epochs is not None:
        cfg = config_lib.apply_overrides(cfg, ["train.steps=0"])
    if regions:
        cfg = dataclasses.replace(cfg, regions=tuple(cfg.regions) + tuple(
            parse_region(r) for r in regions))
    return config_lib.apply_overrides(cfg, list(overrides))


# ----------------------------------------------------------------------------- task


@dataclasses.dataclass(frozen=True)
class Task:
    """What the post-training stages need to know about a run's task (task.json)."""
    name: str
    target: str
    unit: str
    regions: dict[str, tuple[float, float]]
    thresholds: tuple[tuple[str, float, str], ...]
    kind: str
    input_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["regions"] = {k: [None if np.isinf(v) else v for v in b]
                        for k, b in self.regions.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        return cls(name=d["name"], target=d["target"], unit=d.get("unit", ""),
                   regions={k: (-np.inf if a is None else float(a), np.inf if b is None
                                else float(b)) for k, (a, b) in d["regions"].items()},
                   thresholds=tuple((n, float(v), s) for n, v, s in d["thresholds"]),
                   kind=d["kind"], input_shape=tuple(int(v) for v in d["input_shape"]))


def load_task(workdir: str | os.PathLike) -> Task:
    load_config(workdir)  # same "no trained model" error when missing
    return Task.from_dict(read_json(Path(workdir) / TASK, "task description"))


def usable_thresholds(task: Task, y: np.ndarray) -> tuple[tuple[str, float, str], ...]:
    """The task's thresholds whose event has both outcomes among labels ``y``."""
    out = []
    for name, value, direction in task.thresholds:
        pos = y > value if direction == "above" else y < value
        if pos.any() and not pos.all():
            out.append((name, value, direction))
    return tuple(out)


# ----------------------------------------------------------------------------- stages


def _predictions(workdir: Path, split: str) -> dict[str, np.ndarray]:
    load_config(workdir)
    path = workdir / f"predictions_{split}.npz"
    if not path.exists():
        raise WorkflowError(f"{path}: no {split} predictions; the training run did not finish "
                            f"(re-run `hypuc train --workdir {workdir}`)")
    p = load_npz(path, f"{split} predictions")
    const = read_json(workdir / TASK, "task description").get("constant_sigma")
    p["sigma"] = _sigma_or_constant(p["mu"], p["sigma"], const)
    return p


def calibrate_stage(workdir: str | os.PathLike, method: str | None = None) -> dict:
    """Fits the calibration on the validation predictions; writes calibration.json.

    Args:
      workdir: a trained run directory.
      method: "hyperfine", "global", "isotonic" or "none" (None: the config's).

    Returns:
      The saved calibrator dict.
    """
    from hypuc_jax import calibration

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    method = method or cfg.calibration.method
    val = _predictions(workdir, "val")
    if method == "none":
        d = {"method": "none"}
    else:
        kwargs = {"task": task.name}
        if method == "hyperfine":
            kwargs.update(n_bins=cfg.calibration.bins, min_count=cfg.calibration.min_count,
                          xi=cfg.calibration.xi)
        elif method == "isotonic":
            kwargs.update(xi=cfg.calibration.xi)
        d = calibration.fit_calibrator(method, val["mu"], val["sigma"], val["y"],
                                       **kwargs).to_dict()
    write_json(workdir / CALIBRATION, d)
    # Corrections and evaluation depend on the calibration: drop stale ones.
    _remove(workdir / CORRECTIONS)
    _remove(workdir / EVAL)
    return d


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def calibrated_sigma(workdir: Path, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Applies the run's saved calibration to (mu, sigma)."""
    return _calibrator(workdir)(mu, sigma)


def _calibrator(workdir: Path):
    """(mu, sigma) -> calibrated sigma, with ``.bins(mu)`` (None unless hyperfine)."""
    from hypuc_jax import calibration

    path = workdir / CALIBRATION
    if not path.exists():
        raise WorkflowError(f"{workdir}: not calibrated; run `hypuc calibrate --workdir "
                            f"{workdir}` first")
    d = read_json(path, "calibration")
    cal = None if d.get("method") == "none" else calibration.calibrator_from_dict(
        d, task=load_task(workdir).name)

    def apply(mu, sigma):
        return np.asarray(sigma if cal is None else cal.apply(mu, sigma), dtype=np.float64)

    apply.bins = lambda mu: cal.bin_index(mu) if hasattr(cal, "bin_index") else None
    return apply


def correct_stage(workdir: str | os.PathLike) -> dict:
    """Fits the boosted corrections and decisions on the calibrated validation predictions.

    Writes DIR/corrections/ (the corrector's files) atomically: it is saved
    into a temporary folder first and renamed into place.

    Returns:
      {"thresholds": [...], "skipped": [...]} as written to its manifest.
    """
    from hypuc_jax import corrections

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    val = _predictions(workdir, "val")
    sigma_cal = calibrated_sigma(workdir, val["mu"], val["sigma"])
    ths = usable_thresholds(task, val["y"])
    c = cfg.corrections
    corrector = corrections.fit_corrections(
        val["mu"], sigma_cal, val["y"], ths, n_models=c.n_models, max_iter=c.n_estimators,
        max_leaf_nodes=2 ** c.max_depth, learning_rate=c.learning_rate, seed=c.seed,
        min_samples_leaf=max(2, min(20, len(val["y"]) // 20)), task=task.name)
    tmp = Path(tempfile.mkdtemp(prefix=".corrections.", dir=workdir))
    try:
        corrector.save(tmp)
        _remove(workdir / CORRECTIONS)
        os.replace(tmp, workdir / CORRECTIONS)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _remove(workdir / EVAL)
    return {"thresholds": [t[0] for t in ths],
            "skipped": [t[0] for t in task.thresholds if t not in ths]}


def _load_corrector(workdir: Path):
    from hypuc_jax import corrections

    if not (workdir / CORRECTIONS).exists():
        raise WorkflowError(f"{workdir}: no corrections; run `hypuc correct --workdir "
                            f"{workdir}` first")
    return corrections.load_corrector(workdir / CORRECTIONS, task=load_task(workdir).name)


def _named_regions(cfg: config_lib.Config, task: Task) -> dict[str, tuple[float, float]]:
    regions = dict(task.regions)
    regions.update({name: (lo, hi) for name, lo, hi in cfg.regions})
    return regions


def evaluate_stage(workdir: str | os.PathLike, split: str = "test") -> dict:
    """Scores the run on ``split``; writes DIR/eval.json and DIR/outputs_{split}.npz.

    eval.json: {"split", "n", "uncalibrated", "calibrated", "corrected",
    "decisions": {name: {"auroc", "auprc", "baseline_auroc", ...}},
    "flagging": {"mae_kept_at": {fraction: mae}}}; each of the first three
    blocks is ``metrics.evaluate(...)`` for (mu, sigma), (mu, calibrated
    sigma) and (corrected value, calibrated sigma).
    """
    from hypuc_jax import corrections, flagging, metrics

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    pred = _predictions(workdir, split)
    y, mu, sigma = pred["y"], pred["mu"], pred["sigma"]
    cal = _calibrator(workdir)
    sigma_cal = cal(mu, sigma)
    bins = cal.bins(mu)
    corrector = _load_corrector(workdir)
    corrected, probs = corrector.predict(mu, sigma_cal)
    train_labels = np.load(workdir / TRAIN_LABELS)
    regions = _named_regions(cfg, task)
    ev = {"split": split, "n": int(len(y))}
    for stage, (m, s) in {"uncalibrated": (mu, sigma), "calibrated": (mu, sigma_cal),
                          "corrected": (corrected, sigma_cal)}.items():
        ev[stage] = metrics.evaluate(y, m, s, train_labels=train_labels, regions=regions)
    ev["decisions"] = {}
    ths = [t for t in task.thresholds if t[0] in probs]
    base = corrections.baseline_scores(mu, sigma_cal, ths) if ths else {}
    spec = cfg.corrections.specificity
    for name, value, direction in ths:
        event = y > value if direction == "above" else y < value
        d = metrics.decision_metrics(event, np.asarray(probs[name]), specificity=spec)
        by_mu = metrics.decision_metrics(event, base[name]["threshold_mu"], specificity=spec)
        gauss = metrics.decision_metrics(event, base[name]["gaussian"], specificity=spec)
        d.update(baseline_auroc=by_mu["auroc"], baseline_auprc=by_mu["auprc"],
                 gaussian_auroc=gauss["auroc"], gaussian_auprc=gauss["auprc"])
        ev["decisions"][name] = d
    kept = flagging.selective_risk(y, mu, sigma_cal, FLAG_FRACTIONS)
    ev["flagging"] = {"mae_kept_at": {str(float(f)): v for f, v in kept.items()}}
    ev = _clean(ev)
    save_npz(workdir / f"outputs_{split}.npz", y=y, mu=mu, sigma=sigma, sigma_cal=sigma_cal,
             corrected=corrected, **({} if bins is None else {"mu_bin": bins}),
             **{f"prob__{k}": v for k, v in probs.items()})
    write_json(workdir / EVAL, ev)
    return ev


# ----------------------------------------------------------------------------- training


_DOWNSTREAM = (TASK, TRAIN_LABELS, "predictions_val.npz", "predictions_test.npz", CALIBRATION,
               CORRECTIONS, EVAL, "outputs_test.npz", "outputs_val.npz")


def _sigma_or_constant(mu, sigma, const: float | None) -> np.ndarray:
    """Point models: sigma None (or NaN) becomes the run's constant sigma."""
    if sigma is None or not np.all(np.isfinite(sigma)):
        return np.full(np.shape(mu), float(const))
    return np.asarray(sigma, dtype=np.float64)


def train_stage(cfg: config_lib.Config, workdir: str | os.PathLike, *,
                overwrite: bool = False) -> Task:
    """Trains ``cfg`` into ``workdir`` (train.train_and_evaluate) and records the task.

    ``task.json`` is written last: it marks a finished training run, so a
    crash mid-way leaves a directory that later commands refuse. Point
    models (mse, l1, huber, bmc, bni) get a constant sigma: the RMS of
    their validation residuals (a homoscedastic Gaussian), recorded in
    task.json so every later stage uses the same value.

    Args:
      cfg: the resolved config.
      workdir: run directory.
      overwrite: replace a run of a different config in ``workdir``
        (otherwise refused; a run of the same config resumes).
    """
    import jax

    from hypuc_jax import data as data_lib
    from hypuc_jax import train as train_lib
    from hypuc_jax import train_data

    workdir = Path(workdir)
    config_lib.validate(cfg, n_devices=jax.device_count())
    if (workdir / CONFIG).exists() and not overwrite:
        old = config_lib.Config.from_dict(read_json(workdir / CONFIG, "config"))
        if train_lib.fingerprint(old) != train_lib.fingerprint(cfg):
            raise WorkflowError(f"{workdir}: holds a run of a different config; choose another "
                                "--workdir or pass --overwrite")
    for name in _DOWNSTREAM:
        _remove(workdir / name)
    train_lib.train_and_evaluate(cfg, str(workdir), overwrite=overwrite)
    ds = train_data.load_dataset(cfg)
    y = np.asarray(ds.y, dtype=np.float64)
    parts = data_lib.split_indices(len(y), cfg.data.seed, tuple(cfg.data.split))
    val = load_npz(workdir / "predictions_val.npz", "val predictions")
    const = None
    if not np.all(np.isfinite(val["sigma"])):
        const = float(np.sqrt(np.mean((val["y"] - val["mu"]) ** 2)))
    save_npy(workdir / TRAIN_LABELS, y[np.sort(np.asarray(parts["train"]))])
    info = ds.task
    task = Task(name=info.name, target=info.target, unit=info.unit, regions=dict(info.regions),
                thresholds=tuple((t.name, float(t.value), t.direction) for t in info.thresholds),
                kind=ds.kind, input_shape=tuple(int(v) for v in np.shape(ds.x)[1:]))
    write_json(workdir / TASK, dict(task.to_dict(), constant_sigma=const))
    return task


def predict_stage(workdir: str | os.PathLike, spec: str, output: str | os.PathLike) -> int:
    """Predicts every record of data ``spec`` with a trained, calibrated, corrected run.

    Writes a CSV with one row per record: mu, sigma, sigma_cal, lower_95,
    upper_95 (calibrated central 95% interval), corrected, p_<threshold>
    (boosted decision probabilities), entropy and flag (entropy above the
    90th percentile of the validation predictions), plus y when the data
    holds labels.

    Returns:
      The number of rows written.
    """
    from scipy import stats

    from hypuc_jax import data as data_lib
    from hypuc_jax import train as train_lib

    workdir = Path(workdir)
    load_config(workdir)
    task = load_task(workdir)
    meta = read_json(workdir / TASK, "task description")
    corrector = _load_corrector(workdir)
    ds = data_lib.load(spec)
    shape = tuple(int(v) for v in np.shape(ds.x)[1:])
    if shape != task.input_shape:
        raise WorkflowError(f"--data: expected records of shape {task.input_shape} (as in "
                            f"training), got {shape} from {spec!r}")
    mu, sigma = train_lib.predict(str(workdir), np.asarray(ds.x))
    mu = np.asarray(mu, np.float64)
    sigma = _sigma_or_constant(mu, sigma, meta.get("constant_sigma"))
    sigma_cal = calibrated_sigma(workdir, mu, sigma)
    corrected, probs = corrector.predict(mu, sigma_cal)
    val = _predictions(workdir, "val")
    val_sigma = calibrated_sigma(workdir, val["mu"], val["sigma"])
    cut = float(np.quantile(val_sigma, 0.9))
    z = stats.norm.ppf(0.975)
    cols = {"mu": mu, "sigma": sigma, "sigma_cal": sigma_cal, "lower_95": mu - z * sigma_cal,
            "upper_95": mu + z * sigma_cal, "corrected": corrected,
            **{f"p_{k}": v for k, v in probs.items()},
            "entropy": 0.5 * np.log(2 * np.pi * np.e * sigma_cal ** 2),
            "flag": (sigma_cal > cut).astype(int)}
    if getattr(ds, "y", None) is not None:
        cols = {"y": np.asarray(ds.y, np.float64), **cols}
    output = Path(output)
    tmp = _tmp_in(output, ".csv")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(",".join(cols) + "\n")
            for row in zip(*cols.values()):
                f.write(",".join(repr(int(v)) if isinstance(v, (np.integer, int))
                                 else f"{float(v):.6g}" for v in row) + "\n")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(mu)


# ----------------------------------------------------------------------------- end to end


def pipeline(cfg: config_lib.Config, workdir: str | os.PathLike) -> dict:
    """train -> calibrate -> correct -> evaluate(test) for one config; returns eval.json."""
    train_stage(cfg, workdir)
    calibrate_stage(workdir)
    correct_stage(workdir)
    return evaluate_stage(workdir, "test")


def label_curves(cfg: config_lib.Config, train_labels: np.ndarray, n_grid: int = 400):
    """(grid [g], KDE density [g], training weight [g]) for the report's first figure."""
    from hypuc_jax import kde, train_data, weights

    lo, hi = float(np.min(train_labels)), float(np.max(train_labels))
    grid = np.linspace(lo, hi, n_grid)
    w = cfg.weighting
    dens = np.asarray(kde.gaussian_kde(train_labels, grid, bandwidth=w.bandwidth))
    if w.scheme == "none":
        return grid, dens, np.ones_like(grid)
    fn = weights.fit_weighting(w.scheme, train_labels, **train_data.weighting_options(cfg))
    return grid, dens, np.asarray(fn(grid))


def load_run_outputs(workdir: str | os.PathLike, name: str, split: str = "test"):
    """Reads an evaluated run directory into a ``report.RunOutputs``."""
    from hypuc_jax import report

    workdir = Path(workdir)
    cfg = load_config(workdir)
    task = load_task(workdir)
    ev = read_json(workdir / EVAL, "evaluation (run `hypuc evaluate`)")
    out = load_npz(workdir / f"outputs_{split}.npz", f"{split} outputs")
    train_labels = np.load(workdir / TRAIN_LABELS)
    return report.RunOutputs(
        name=name, eval=ev, y=out["y"], mu=out["mu"], sigma=out["sigma"],
        sigma_cal=out["sigma_cal"], corrected=out["corrected"],
        decision_probs={k[len("prob__"):]: v for k, v in out.items() if k.startswith("prob__")},
        thresholds=[t for t in task.thresholds if f"prob__{t[0]}" in out],
        train_labels=train_labels, regions=_named_regions(cfg, task),
        label_density=label_curves(cfg, train_labels), unit=task.unit,
        mu_bins=out.get("mu_bin"))


def comparison_configs(preset: str = "potassium", *, data: str | None = None, seed: int | None
                       = None, overrides: Sequence[str] = ()) -> dict[str, config_lib.Config]:
    """The two configs of ``hypuc run``: unweighted NLL baseline and HypUC, same budget."""
    common = dict(data=data, seed=seed, loss="nll", overrides=overrides)
    return {"baseline": make_config(preset, weighting="none", **common),
            "hypuc": make_config(preset, weighting="hypuc", **common)}


def run_comparison(workdir: str | os.PathLike, *, preset: str = "potassium",
                   data: str | None = None, seed: int | None = None,
                   overrides: Sequence[str] = (), log=print) -> dict:
    """``hypuc run``: baseline and HypUC into DIR/baseline and DIR/hypuc, then the report.

    Returns:
      {"report": path, "eval": {run: eval.json}, "checks": [...]}.
    """
    from hypuc_jax import report

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _remove(workdir / "report.md")
    cfgs = comparison_configs(preset, data=data, seed=seed, overrides=overrides)
    evals = {}
    for name, cfg in cfgs.items():
        log(f"[{name}] training {cfg.loss.name} with weighting={cfg.weighting.scheme} "
            f"on {cfg.data.spec} -> {workdir / name}")
        evals[name] = pipeline(cfg, workdir / name)
    runs = [load_run_outputs(workdir / name, name) for name in cfgs]
    w = cfgs["hypuc"].weighting
    extra = [f"Data: `{cfgs['hypuc'].data.spec}`; both runs: loss `nll`, same seed and budget "
             f"(preset `{preset}`); HypUC: KDE weights with lam={w.lam}, bandwidth={w.bandwidth}. "
             f"Calibration: `{cfgs['hypuc'].calibration.method}` on the validation split."]
    path = report.write_report(workdir, runs, extra=extra)
    return {"report": str(path), "eval": evals, "checks": report.checks(runs[0], runs[-1])}
