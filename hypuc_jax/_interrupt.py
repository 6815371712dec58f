"""Ctrl-C that cannot be lost: the CLI's SIGINT handler records it here too.

Python raises the KeyboardInterrupt of a SIGINT wherever the main thread
is; inside a callback that swallows exceptions (JAX registers a garbage
collection callback, and Python only prints "Exception ignored in ...")
it is lost, and the command would go on, deleting an old run for
``--overwrite`` and training to the end. :func:`check` re-raises a
recorded interrupt; the training loop calls it every step and
``workflow.train_stage`` before it removes anything.
"""
from __future__ import annotations

import signal
import threading

_requested = False


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
    return signal.signal(signal.SIGINT, _handler)


def restore(previous) -> None:
    """Puts back the handler :func:`install` replaced (None: nothing to do) and
    forgets a recorded interrupt, so later library calls are not stopped."""
    global _requested
    _requested = False
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def check() -> None:
    """Raises KeyboardInterrupt if a SIGINT was recorded since :func:`install`."""
    if _requested:
        raise KeyboardInterrupt
