"""The run directory: file names, atomic writers, the resolved config and the task.

Layout (docs/architecture.md)::

    DIR/config.json, scaler.json, weighting.json, checkpoints/, metrics.jsonl, tb/
                                     written by train.train_and_evaluate
    DIR/predictions_{val,test}.npz   y, mu, sigma in label units (train)
    DIR/task.json                    task name, unit, regions, thresholds, input shape;
                                     written LAST by the train stage: marks a finished run
    DIR/labels_train.npy             training labels (shot regions, report)
    DIR/calibration.json, DIR/corrections/, DIR/eval.json, DIR/outputs_{split}.npz

Every writer here goes through a temporary file in the same folder and
``os.replace``, so a failed command never leaves a half-written file that a
later command would take for a result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hypuc_jax import config as config_lib
from hypuc_jax._files import temp_file
from hypuc_jax._predictions import ThresholdSpec, has_both_outcomes

CONFIG = "config.json"
TASK = "task.json"
TRAIN_LABELS = "labels_train.npy"
CALIBRATION = "calibration.json"
CORRECTIONS = "corrections"
EVAL = "eval.json"
#: Written into a directory before train / run first changes it, never deleted: the
#: directory is the tool's even when a stop left it without config.json.
RUN_MARK = ".hypuc-run"
FLAG_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


class WorkflowError(ValueError):
    """A user-facing problem with a run directory or its inputs (one line)."""


# ----------------------------------------------------------------------------- file I/O


def _tmp_in(path: Path, suffix: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return temp_file(path.parent, prefix=f".{path.name}.", suffix=suffix)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as strict JSON via a temporary file and ``os.replace``.

    Raises:
      WorkflowError: ``obj`` holds NaN or +-inf (JSON has no such numbers;
        undefined values are written as null by the stages); nothing is written.
    """
    path = Path(path)
    tmp = _tmp_in(path, ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            try:
                json.dump(obj, f, indent=2, default=_json_default, allow_nan=False)
            except ValueError as e:
                raise WorkflowError(f"{path}: not written, it would hold NaN/inf ({e})") from None
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


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path``; a missing, unreadable (bad JSON, not UTF-8) or
    non-object file raises a ``WorkflowError`` naming ``path`` and ``what``."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no {what} found") from None
    except (OSError, ValueError) as e:            # ValueError: bad JSON or not UTF-8
        raise WorkflowError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(obj, dict):
        raise WorkflowError(f"{path}: expected a JSON object ({what}), got a "
                            f"{type(obj).__name__}")
    return obj


def load_npz(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays of ``path`` (.npz), {name: array}; missing or unreadable files, and
    files without every array named in ``keys``, raise naming ``path`` and ``what``."""
    if not path.exists():
        raise WorkflowError(f"{path}: no {what} found")
    try:
        with np.load(path) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise WorkflowError(f"{path}: cannot read {what} ({e})") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise WorkflowError(f"{path}: {what} lack the arrays {missing} (found {sorted(out)})")
    return out


def load_npy(path: Path, what: str) -> np.ndarray:
    """The array in ``path`` (.npy); missing or unreadable files name ``path`` and ``what``."""
    if not path.exists():
        raise WorkflowError(f"{path}: no {what} found; re-run `hypuc train --workdir "
                            f"{path.parent}`")
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise WorkflowError(f"{path}: cannot read {what} ({e})") from None


# ----------------------------------------------------------------------------- config


def mark_ours(workdir: str | os.PathLike) -> None:
    """Creates ``workdir`` and its :data:`RUN_MARK` (before anything there changes)."""
    os.makedirs(workdir, exist_ok=True)
    Path(workdir, RUN_MARK).touch()


def refuse_foreign_files(workdir: str | os.PathLike, names, what: str) -> None:
    """Refuses to replace files named ``names`` in ``workdir`` unless a command of
    this tool wrote there before (its :data:`RUN_MARK`; the caller checks the
    marks of older versions).

    Raises:
      WorkflowError: naming the files; ``--overwrite`` replaces them.
    """
    if os.path.lexists(os.path.join(workdir, RUN_MARK)):
        return
    found = [n for n in names if os.path.lexists(os.path.join(workdir, n))]
    if found:
        raise WorkflowError(f"--workdir: {workdir} is not {what} but holds {', '.join(found)}, "
                            "which it would replace; choose an empty or new directory, or pass "
                            "--overwrite to replace them")


def sub_runs(workdir: str | os.PathLike) -> list[str]:
    """Names of the trained run directories directly inside ``workdir`` (sorted; e.g.
    ``["baseline", "hypuc"]`` for ``hypuc run``'s DIR); entries that cannot be read are
    skipped, and a missing or unreadable ``workdir`` has none."""
    def is_run(d: Path) -> bool:
        try:
            return (d / CONFIG).is_file() and (d / TASK).is_file()
        except OSError:                      # e.g. a root-owned lost+found
            return False
    try:
        return sorted(d.name for d in Path(workdir).iterdir() if is_run(d))
    except OSError:                          # not a folder, or not listable
        return []


def load_config(workdir: str | os.PathLike) -> config_lib.Config:
    """The resolved config of a trained run directory.

    Raises:
      WorkflowError: the directory holds no trained model.
    """
    workdir = Path(workdir)
    if not (workdir / CONFIG).exists() or not (workdir / TASK).exists():
        runs = sub_runs(workdir)
        if runs:           # e.g. `hypuc run`'s DIR, which holds DIR/baseline and DIR/hypuc
            raise WorkflowError(f"{workdir}: not a run directory itself; it holds the runs "
                                f"{', '.join(runs)}: pass --workdir {workdir / runs[-1]} "
                                "(or another of them)")
        if (workdir / CONFIG).exists():     # task.json is written when training finishes
            raise WorkflowError(f"{workdir}: training has not finished (no {TASK}); re-run "
                                "the same `hypuc train` (or `hypuc run`) to resume it")
        raise WorkflowError(f"{workdir}: no trained model found (expected {CONFIG} and "
                            f"{TASK}); run `hypuc train --workdir {workdir} --data ...` first")
    d = read_json(workdir / CONFIG, "config")
    try:
        return config_lib.Config.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise WorkflowError(f"{workdir / CONFIG}: not a valid run config ({e})") from None


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
    feature_names: tuple[str, ...] = ()   # tabular: training columns, in order
    rate: float | None = None             # signals: the training records' sampling rate (Hz)
    # tabular: (min [f], max [f]) of the training rows' features (predict's range check)
    feature_range: tuple[tuple[float, ...], ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready dict (infinite region bounds as null)."""
        d = dataclasses.asdict(self)
        d["regions"] = {k: [None if np.isinf(v) else v for v in b]
                        for k, b in self.regions.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        """Inverse of :meth:`to_dict` (KeyError / TypeError / ValueError on a bad dict)."""
        return cls(name=d["name"], target=d["target"], unit=d.get("unit", ""),
                   regions={k: (-np.inf if a is None else float(a), np.inf if b is None
                                else float(b)) for k, (a, b) in d["regions"].items()},
                   thresholds=tuple((n, float(v), s) for n, v, s in d["thresholds"]),
                   kind=d["kind"], input_shape=tuple(int(v) for v in d["input_shape"]),
                   feature_names=tuple(str(v) for v in d.get("feature_names", ())),
                   rate=None if d.get("rate") is None else float(d["rate"]),
                   feature_range=tuple(tuple(float(v) for v in row)
                                       for row in d.get("feature_range", ())))


def load_task(workdir: str | os.PathLike) -> Task:
    """The run's :class:`Task` (DIR/task.json); a ``WorkflowError`` names a missing
    or invalid file."""
    load_config(workdir)  # same "no trained model" error when missing
    path = Path(workdir) / TASK
    try:
        return Task.from_dict(read_json(path, "task description"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, WorkflowError):
            raise
        raise WorkflowError(f"{path}: not a valid task description ({type(e).__name__}: {e}); "
                            f"re-run `hypuc train --workdir {workdir}`") from e


def usable_thresholds(task: Task, y: np.ndarray) -> tuple[tuple[str, float, str], ...]:
    """The task's thresholds whose event has both outcomes among labels ``y``."""
    return tuple(t for t in task.thresholds if has_both_outcomes(y, ThresholdSpec(*t)))


@contextlib.contextmanager
def locked(workdirs: Sequence[str | os.PathLike], *, shared: bool = False):
    """Advisory ``flock`` on run directories for the length of one command.

    Writing commands take it exclusive and ``predict`` (which only reads the
    run) shared, so a second command on a run directory in use fails at once
    with one clear line instead of mixing results (a correction fitted to a
    calibration that changed under it, a torn ``metrics.jsonl``). The lock is
    on the directory itself (no lock file). A directory that does not exist
    yet is created to be locked; the directories this call created are
    removed again, while still locked, if the command leaves them empty (e.g.
    after refusing its data), and never by a refused command (another
    command may be using them). A path that is not a directory is skipped:
    the command names it. Multi-process runs (``HYPUC_NUM_PROCESSES`` > 1 or
    ``HYPUC_DISTRIBUTED=1``) are not locked.

    Raises:
      WorkflowError: another command holds a conflicting lock.
    """
    from hypuc_jax.parallel import launched_multiprocess

    if launched_multiprocess():
        yield
        return
    held, created = [], []
    try:
        for d in map(Path, workdirs):
            made = _make_dirs(d)
            created.extend(made)
            if not d.is_dir():
                continue                           # a file in the way: the command says so
            fd = os.open(d, os.O_RDONLY)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                same = os.stat(d).st_ino == os.fstat(fd).st_ino   # not removed meanwhile
            except BlockingIOError:
                same = False
            if not same:
                os.close(fd)
                created = []                       # a refused command removes nothing
                raise WorkflowError(f"{d}: another hypuc command is using this run directory; "
                                    "wait for it to finish (or use another --workdir)")
            held.append(fd)
        yield
    finally:
        for p in reversed(created):                # innermost first, still locked
            with contextlib.suppress(OSError):
                p.rmdir()                          # only if empty
        for fd in held:
            os.close(fd)                           # closing releases the lock


def _make_dirs(d: Path) -> list[Path]:
    """Creates ``d`` and its missing parents; returns the ones this call made
    (outermost first): a concurrent creator's, or an existing path spelt with
    ``..``, is never listed."""
    made = []
    for p in reversed((d, *d.parents)):
        try:
            os.mkdir(p)
        except FileExistsError:
            continue
        except OSError:
            return made                            # e.g. a file on the path
        made.append(p)
    return made
