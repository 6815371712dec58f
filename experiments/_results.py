"""Shared by the analysis scripts in experiments/: print a result, save it with its command."""
from __future__ import annotations

import shlex
from pathlib import Path


def publish(text: str, out: Path | None, script: str, argv: list[str], intro: str = "") -> None:
    """Prints ``text``; with ``out``, writes it there under the command that made it.

    Args:
      text: the markdown result (tables), ending with a newline.
      out: file to write, or None to print only.
      script: file name of the script under experiments/, e.g. "bayes_floor.py".
      argv: the script's arguments, recorded verbatim in the command line.
      intro: text between the command line and the result.
    """
    print(text)
    if out:
        Path(out).write_text(f"Command: `python experiments/{script} {shlex.join(argv)}`\n\n"
                             + intro + text)
