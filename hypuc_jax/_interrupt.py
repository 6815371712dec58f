"""Ctrl-C that cannot be lost: the CLI's SIGINT handler records it here too.

Python raises the KeyboardInterrupt of a SIGINT wherever the main thread
is; inside a callback that swallows exceptions (JAX registers a garbage
collection callback, and Python only prints "Exception ignored in ...")
it is lost, and the command would go on, deleting an old run for
``--overwrite`` and training to the end. :func:`check` re-raises a
recorded interrupt; the training loop calls it every step and
``workflow.train_stage`` before it removes anything. While installed, such
a swallowed KeyboardInterrupt is also not printed (Python's "Exception
ignored in ..." traceback): it is recorded, so the command still ends
with one line and status 130.
"""
from __future__ import annotations

import signal
import sys
import threading

_requested = False


def _quiet_unraisable(previous):
    """An ``sys.unraisablehook`` that drops KeyboardInterrupts (recorded by the
    handler) and passes everything else to ``previous``."""
    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested):
            previous(unraisable)
    hook.previous = previous
    return hook


def _handler(signum, frame):
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install():
    """Makes SIGINT record itself (and raise KeyboardInterrupt).

    Returns:
      The previous handler (for :func:`restore`), or None where nothing
      changes: off the main thread (signals cannot be handled there) and
      when SIGINT is ignored (e.g. a job started with ``&`` by a script).
    """
    global _requested
    _requested = False
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        return None                    # an ignored SIGINT (a background job) stays ignored
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    return signal.signal(signal.SIGINT, _handler)


def restore(previous) -> None:
    """Puts back the handler :func:`install` replaced (None: nothing to do) and
    forgets a recorded interrupt, so later library calls are not stopped."""
    global _requested
    _requested = False
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = getattr(sys.unraisablehook, "previous", sys.unraisablehook)


def check() -> None:
    """Raises KeyboardInterrupt if a SIGINT was recorded since :func:`install`."""
    if _requested:
        raise KeyboardInterrupt
