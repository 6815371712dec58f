"""The ``hypuc`` command line: run / train / calibrate / correct / evaluate / predict.

Each command is a thin wrapper over :mod:`hypuc_jax.workflow`; the run
directory holds the resolved config, so commands after ``train`` need only
``--workdir``. Errors print one line on stderr and exit with status 1
(``--debug`` shows the traceback); argparse usage errors exit with 2. A
command holds a lock on its run directory (``rundir.locked``; shared for
``predict``), so a second command on a directory in use is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from hypuc_jax import __version__
from hypuc_jax import config as config_lib

_EPILOG = """Data specs: simulated:potassium[?n=..&rate=..&seed=..], simulated:lvef,
csv:PATH (with --target COL), npz:PATH (arrays x, y), wfdb:DIR, diabetes.
The run directory layout is described in docs/architecture.md."""


_PRESETS = ("potassium, tiny, lvef, diabetes, or an experiment file like "
            "experiments/configs/potassium.json")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``hypuc train: error: ... (see --help)``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return text


def _add_common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: the subcommand's --debug must not reset one given before it.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors instead of one line")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hypuc", description="HypUC: KDE-weighted probabilistic regression, hyperfine "
        "calibration, boosted corrections and decisions for imbalanced clinical targets.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback on errors instead of one line")
    parser.add_argument("--version", action="version", version=f"hypuc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("run", help="train baseline + HypUC, calibrate, correct, evaluate, report",
                       description="The main job: trains the unweighted Gaussian-NLL baseline and "
                       "HypUC (KDE weights) with the same seed and budget into DIR/baseline and "
                       "DIR/hypuc, calibrates, corrects, evaluates both on the test split and "
                       "writes DIR/report.md with DIR/figures/*.png.")
    p.add_argument("--workdir", default="runs/main", type=_path,
                   help="output directory (default: ./runs/main; a finished run of the same "
                   "config there is reused)")
    p.add_argument("--overwrite", action="store_true",
                   help="train both arms from scratch, replacing what --workdir holds (deleted "
                   "when training starts; by default a run of the same config and data resumes "
                   "or is reused, and one of another config or data is refused)")
    p.add_argument("--data", default=None,
                   help="data spec (default: the preset's, the simulated potassium task)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="tiny data and model (the 'tiny' preset): about 15-30 s on 2 CPU "
                      "cores, for smoke tests; not with --preset")
    size.add_argument("--preset", default=None,
                      help=f"config preset, one of {_PRESETS} (default: potassium with 8000 "
                      "records, 10 epochs, 5 calibration bins, 5 x 100 boosting rounds of "
                      "trees with 4 leaves; tiny with --quick). Naming a preset, potassium included, "
                      "runs the preset as it is (potassium: 2000 records, 20 epochs)")
    p.add_argument("--seed", type=int, default=None, help="training seed for both runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both runs, e.g. train.epochs=3 (repeatable)")
    _add_common(p)

    p = sub.add_parser("train", help="train one model into a run directory",
                       description="Trains one model and stores its config, checkpoints, logs "
                       "and validation/test predictions in --workdir.")
    p.add_argument("--workdir", required=True, type=_path,
                   help="run directory (created; a finished or interrupted run of the same "
                   "config and data resumes from its latest checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="train from scratch, replacing what --workdir holds (deleted when "
                   "training starts; by default a run of the same config and data resumes, and "
                   "one of another config or data is refused)")
    p.add_argument("--data", required=True, help="data spec, e.g. simulated:potassium, csv:PATH")
    p.add_argument("--preset", default="potassium",
                   help=f"config preset the flags below modify, one of {_PRESETS} "
                   "(default: potassium)")
    p.add_argument("--target", default=None,
                   help="target column (csv and wfdb data; or the spec's target=COL)")
    p.add_argument("--loss", choices=config_lib.LOSSES, default=None,
                   help="per-example loss (default nll: Gaussian negative log-likelihood)")
    p.add_argument("--weighting", choices=config_lib.WEIGHTINGS, default=None,
                   help="label weighting (default hypuc: KDE weights 1/rho(y)^lam)")
    p.add_argument("--lam", type=float, default=None, help="HypUC weight exponent lambda >= 0")
    p.add_argument("--parallel", choices=config_lib.PARALLEL, default=None,
                   help="data parallelism over devices (auto: sharding on > 1 device)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch size (a multiple of the device count when parallel)")
    p.add_argument("--seed", type=int, default=None, help="training seed")
    p.add_argument("--region", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="extra named evaluation region [LOW, HIGH); a bound may be empty; "
                   "the name must differ from the task's own regions (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. train.lr=1e-3 or model.widths=16,32,64 "
                   "(repeatable, applied after the flags above)")
    _add_common(p)

    p = sub.add_parser("calibrate", help="fit the uncertainty calibration on the validation split")
    p.add_argument("--workdir", required=True, type=_path, help="a trained run directory")
    p.add_argument("--method", choices=("hyperfine", "global", "isotonic"), default=None,
                   help="calibration method (default: the run config's, hyperfine)")
    p.add_argument("--tail", choices=("auto", "gaussian"), default=None,
                   help="hyperfine only: 'auto' fits a Student-t tail (dof chosen by "
                   "cross-fitted validation UCE, Gaussian included), 'gaussian' keeps the "
                   "Gaussian (default: the run config's calibration.tail, auto)")
    _add_common(p)

    p = sub.add_parser("correct", help="fit boosted corrections and decisions (validation split)")
    p.add_argument("--workdir", required=True, type=_path,
                   help="a trained and calibrated run directory")
    _add_common(p)

    p = sub.add_parser("evaluate", help="score a run and write DIR/eval.json "
                       "(DIR/eval_val.json for --split val)")
    p.add_argument("--workdir", required=True, type=_path,
                   help="a trained, calibrated, corrected run directory")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="split to evaluate (default: test, written to DIR/eval.json; val is "
                   "written to DIR/eval_val.json)")
    _add_common(p)

    p = sub.add_parser("predict", help="predict new data with a finished run",
                       description="Writes one CSV row per record: y (when the data has "
                       "labels), mu, sigma, calibrated sigma, "
                       "central 95% interval of the calibrated predictive (Gaussian or its "
                       "fitted Student-t tail), corrected value, decision probabilities, entropy, "
                       "flag (top 10% entropy of validation, or out of range) and out_of_range "
                       "(a tabular feature, or a sample of a signal lead, beyond its training "
                       "range by more than the range's width). y, mu, the sigmas, the interval "
                       "and the corrected value are in the run's label unit (task.json "
                       "'unit'); p_* are probabilities; entropy is in nats of that unit.")
    p.add_argument("--workdir", required=True, type=_path,
                   help="a trained, calibrated, corrected run directory")
    p.add_argument("--data", required=True, help="data spec with records shaped as in training")
    p.add_argument("--output", required=True, type=_path, metavar="FILE.csv",
                   help="CSV file to write (a path ending in .csv)")
    _add_common(p)
    parser.commands = sub.choices             # name -> subparser: its own usage errors
    return parser


def _summary_table(evals: dict) -> str:
    keys = ("mae", "rmse", "nll", "coverage_95", "uce")
    lines = [f"{'run':<10} {'stage':<13} " + " ".join(f"{k:>11}" for k in keys)]
    for name, ev in evals.items():
        for stage in ("uncalibrated", "calibrated", "corrected"):
            m = ev[stage]["overall"]
            lines.append(f"{name:<10} {stage:<13} " + " ".join(
                f"{m[k]:>11.4g}" if m.get(k) is not None else f"{'-':>11}" for k in keys))
    return "\n".join(lines)


def _cmd_run(a) -> None:
    from hypuc_jax import comparison

    workdir = a.workdir
    overrides = list(a.overrides)
    preset = a.preset or ("tiny" if a.quick else comparison.DEFAULT_RUN[0])
    if a.preset is None and not a.quick:  # --data replaces the default's data spec
        overrides = [o for o in comparison.DEFAULT_RUN[1]
                     if not (a.data and o.startswith("data.spec="))] + overrides
    out = comparison.run_comparison(workdir, preset=preset, data=a.data, seed=a.seed,
                                    overrides=overrides, overwrite=a.overwrite,
                                    log=lambda s: print(s, flush=True))
    print(_summary_table(out["eval"]))
    for row in out["checks"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["passed"]]
        print(f"  [{mark:>6}] {row['claim']}: {row['measured']}")
    print(f"report: {out['report']}")


def _cmd_train(a) -> None:
    from hypuc_jax import workflow

    cfg = workflow.make_config(a.preset, data=a.data, target=a.target, loss=a.loss,
                               weighting=a.weighting, lam=a.lam, parallel=a.parallel,
                               epochs=a.epochs, batch_size=a.batch_size, seed=a.seed,
                               regions=a.region, overrides=a.overrides)
    task = workflow.train_stage(cfg, a.workdir, overwrite=a.overwrite)
    from hypuc_jax.train import refits_head
    scope = ", scope=head" if refits_head(cfg) else ""
    print(f"trained {task.name} ({cfg.loss.name}, weighting={cfg.weighting.scheme}{scope}) "
          f"-> {a.workdir}")


def _cmd_calibrate(a) -> None:
    from hypuc_jax import workflow

    d = workflow.calibrate_stage(a.workdir, a.method, a.tail)
    tail = "" if d.get("dof", "-") == "-" else (
        ", Gaussian tail" if d["dof"] is None else f", Student-t tail dof {d['dof']:g}")
    print(f"calibration ({d['method']}{tail}) -> {Path(a.workdir) / workflow.CALIBRATION}")


def _cmd_correct(a) -> None:
    from hypuc_jax import workflow

    d = workflow.correct_stage(a.workdir)
    skipped = f"; skipped (one outcome only in validation): {d['skipped']}" if d["skipped"] else ""
    print(f"corrections for thresholds {d['thresholds']} -> "
          f"{Path(a.workdir) / workflow.CORRECTIONS}{skipped}")


def _cmd_evaluate(a) -> None:
    from hypuc_jax import workflow

    ev = workflow.evaluate_stage(a.workdir, a.split)
    print(_summary_table({Path(a.workdir).name or "run": ev}))
    print(f"eval -> {workflow.eval_path(a.workdir, a.split)}")
    if ev["in_sample"]:
        print("note: in-sample numbers: the checkpoint, calibration, corrections and decisions "
              "were chosen or fitted on the validation split (use --split test to judge them)")


def _cmd_predict(a) -> None:
    from hypuc_jax import inference

    n = inference.predict_stage(a.workdir, a.data, a.output)
    print(f"{n} predictions -> {a.output}")


_COMMANDS = {"run": _cmd_run, "train": _cmd_train, "calibrate": _cmd_calibrate,
             "correct": _cmd_correct, "evaluate": _cmd_evaluate, "predict": _cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hypuc`` console script.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
      0 on success, 1 on an error (one line on stderr), 130 when interrupted
      (Ctrl-C). Usage errors raise SystemExit(2) from argparse.
    """
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:    # after the command: its usage (`hypuc --help` lists no command flags)
        words = list(sys.argv[1:] if argv is None else argv)
        before = words.index(unknown[0]) < words.index(args.command)
        (parser if before else parser.commands[args.command]).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    from hypuc_jax import _interrupt           # light: no JAX yet

    previous = _interrupt.install()            # before the imports that load JAX (~1.4 s)
    try:
        from hypuc_jax import rundir
        dirs = [args.workdir]
        if args.command == "run":
            from hypuc_jax.comparison import ARMS
            dirs += [Path(args.workdir) / arm for arm in ARMS]
        _interrupt.check()     # a Ctrl-C that JAX's import-time callbacks swallowed
        with rundir.locked(dirs, shared=args.command == "predict"):
            _COMMANDS[args.command](args)
            _interrupt.check()     # a Ctrl-C swallowed by a callback after the last check
    except KeyboardInterrupt:
        print("hypuc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line for every failure
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"hypuc {args.command}: error: {msg}", file=sys.stderr)
        return 1
    finally:
        _interrupt.restore(previous)
    return 0


def console() -> None:
    """The ``hypuc`` console script: :func:`main`, then exit with its status.

    After an interrupt the process leaves with ``os._exit(130)`` (streams
    flushed): a Ctrl-C during JAX's start-up otherwise made the interpreter
    crash at shutdown (SIGSEGV, status 139) after printing "interrupted".
    """
    import os

    rc = main()
    if rc == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    console()
