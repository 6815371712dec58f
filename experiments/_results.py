"""Shared by the analysis scripts in experiments/: find a variant's seed runs, read their
predictions, print a result, save it with its command."""
from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED_DIR = re.compile(r"seed(0|[1-9][0-9]*)")      # seed<int> as the pipeline writes it


def seed_dirs(run_dir: Path, seeds=None, arg: str = "--runs", plain: bool = False) -> list[Path]:
    """The ``seed<N>/`` run directories of a variant folder, sorted by N.

    Other folders (``seed1_old``, ``seed01``) are not seeds and are skipped.

    Args:
      run_dir: an ablation variant folder (``VARIANT/seed<N>/``).
      seeds: only these seeds (each must exist); None: every ``seed<N>/``.
      arg: the command-line argument that named ``run_dir`` (for errors).
      plain: a folder without ``seed<N>/`` (and ``seeds`` None) is itself
        the one run directory: ``[run_dir]``.

    Raises:
      FileNotFoundError: ``run_dir`` is not a folder, or holds no seed run.
      ValueError: a requested seed has no ``seed<N>/``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{arg} {run_dir}: no such folder")
    found = {int(d.name[4:]): d for d in run_dir.iterdir()
             if d.is_dir() and SEED_DIR.fullmatch(d.name)}
    if seeds is not None:
        missing = sorted(set(seeds) - set(found))
        if missing:
            raise ValueError(f"--seeds: {run_dir} ({arg}) has no run for seeds {missing}")
        found = {s: d for s, d in found.items() if s in set(seeds)}
    if not found:
        if plain and seeds is None:
            return [run_dir]
        raise FileNotFoundError(f"{arg}: no seed<N>/ run directories in {run_dir}")
    return [found[s] for s in sorted(found)]


def seeds_per_run(parser, seeds, runs: list) -> list:
    """``--seeds`` (``action="append"``) as one seed list (or None: all) per ``--runs`` folder.

    Given once, the list holds for every run; given once per ``--runs``
    folder, the k-th list is the k-th folder's (variants of different
    ablations number their seeds differently). Anything else is an error.
    """
    if not seeds:
        return [None] * len(runs)
    if not runs:
        parser.error("--seeds: needs --runs")
    if len(seeds) == 1:
        return seeds * len(runs)
    if len(seeds) != len(runs):
        parser.error(f"--seeds: given {len(seeds)} times for {len(runs)} --runs folders; give "
                     "it once (every run) or once per --runs folder, in their order")
    return seeds


def predictions(run_dir: Path, name: str, arg: str = "--runs") -> dict[str, np.ndarray]:
    """The arrays of ``run_dir/name`` (``predictions_<split>.npz``, ``outputs_<split>.npz``).

    A point model (task.json's ``constant_sigma``) saves a NaN ``sigma``; it
    is replaced by that constant, as the pipeline does
    (``hypuc_jax.stages._sigma_or_constant``, which also refuses NaN mu).
    ``arg``: the command-line argument that named the run (for errors).

    Raises:
      FileNotFoundError: no such file (an unfinished run).
      ValueError: NaN/inf mu, or NaN/inf sigma of a probabilistic model.
    """
    from hypuc_jax.stages import _sigma_or_constant

    path, task = Path(run_dir) / name, Path(run_dir) / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"{arg} {run_dir}: no {name} (an unfinished run?)")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    const = json.loads(task.read_text()).get("constant_sigma") if task.exists() else None
    out["sigma"] = _sigma_or_constant(out["mu"], out.get("sigma"), const, f"{arg} {path}")
    return out


def check_out(parser, out) -> None:
    """Before any work: ``--out`` must be a file path whose folder exists or can be made."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        parser.error(f"--out {out}: is a folder, expected a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        parser.error(f"--out {out}: cannot create its folder {out.parent} (a file is in the way)")
    except OSError as e:
        parser.error(f"--out {out}: cannot create its folder {out.parent} ({e.strerror})")
    try:                                    # a folder that exists but takes no files
        tempfile.NamedTemporaryFile(dir=out.parent).close()
    except OSError as e:
        parser.error(f"--out {out}: cannot write in {out.parent} ({e.strerror})")


def at_least(parser, **values) -> None:
    """Before any work: each ``--name`` (given as name=(value, minimum)) is >= its minimum."""
    for name, (value, low) in values.items():
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: expected at least {low}")


def run_main(script: str, main) -> None:
    """Runs a script's ``main()`` from the command line and exits with its status.

    Bad input found after the arguments were parsed (a ValueError, KeyError or
    OSError out of ``main``: an unreadable run file, a refused reuse) is one line
    ``SCRIPT: error: ...`` and exit status 2, as argparse's own errors, not a
    traceback. Tests call ``main()`` directly and see the exception.
    """
    try:
        code = main()
    except (ValueError, KeyError, OSError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def command_line(script: str, argv: list[str]) -> str:
    """The command that made a result: ``python experiments/SCRIPT ARGS`` (quoted)."""
    return shlex.join(["python", f"experiments/{script}", *map(str, argv)])


def write_result(out: Path, text: str) -> None:
    """Writes ``text`` to ``out`` whole or not at all (temp file + rename), making its folder."""
    from hypuc_jax.report import write_text_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)


def publish(text: str, out: Path | None, script: str, argv: list[str], intro: str = "") -> None:
    """Prints ``text``; with ``out``, writes it there under the command that made it.

    Args:
      text: the markdown result (tables), ending with a newline.
      out: file to write (its folder is made; check it first with
        :func:`check_out`), or None to print only.
      script: file name of the script under experiments/, e.g. "bayes_floor.py".
      argv: the script's arguments, recorded verbatim in the command line.
      intro: text between the command line and the result.
    """
    print(text)
    if out:
        write_result(out, f"Command: `{command_line(script, argv)}`\n\n" + intro + text)
