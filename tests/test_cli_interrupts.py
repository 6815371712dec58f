"""The command line's run-directory locks and Ctrl-C handling (exit status 130,
one line, nothing deleted that a stopped command should keep)."""
import json
import shutil
import sys

import pytest

from cli_helpers import FAST, TINY, hypuc, one_line_error
from hypuc_jax import cli, config as config_lib, train


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal():
    """The tests assume Ctrl-C's default handler; a suite started as a background
    job (``cmd &`` in a script) inherits SIGINT ignored, which the CLI keeps."""
    import signal
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_run_directory_in_use_refuses_a_second_command(trained, tmp_path, capsys):
    """Writers hold an exclusive lock, predict a shared one: a command on a
    directory another command is writing (or a write while predict reads) is
    refused with one line, and nothing in the run changes."""
    import fcntl
    import os
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    fd = _hold(trained, fcntl.LOCK_EX)
    try:
        for argv in (["calibrate", "--workdir", trained], ["evaluate", "--workdir", trained],
                     ["predict", "--workdir", trained, "--data", TINY.replace("n=256", "n=8"),
                      "--output", tmp_path / "p.csv"]):
            rc, _, err = hypuc(capsys, *argv)
            assert "another hypuc command is using this run directory" in one_line_error(rc, err)
    finally:
        os.close(fd)
    assert not (tmp_path / "p.csv").exists()
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before
    fd = _hold(trained, fcntl.LOCK_SH)            # a reader: predict runs, writers wait
    try:
        rc, _, err = hypuc(capsys, "predict", "--workdir", trained, "--data",
                           TINY.replace("n=256", "n=8"), "--output", tmp_path / "p.csv")
        assert rc == 0, err
        rc, _, err = hypuc(capsys, "correct", "--workdir", trained)
        assert "another hypuc command" in one_line_error(rc, err)
    finally:
        os.close(fd)


def test_a_ctrl_c_lost_in_a_callback_still_stops_train_before_it_deletes(trained, tmp_path,
                                                                          capsys, monkeypatch):
    """JAX's gc callback can swallow the KeyboardInterrupt of a SIGINT; the
    recorded interrupt stops `train --overwrite` before the old run is
    removed (exit 130), and a training loop at its next step."""
    from hypuc_jax import _interrupt
    monkeypatch.setattr(_interrupt, "_requested", False)   # teardown restores False
    wd = tmp_path / "copy"
    shutil.copytree(trained, wd)
    before = sorted(p.name for p in wd.iterdir())
    real_install = _interrupt.install

    def install_then_lose_a_ctrl_c():
        previous = real_install()
        _interrupt._requested = True            # the handler ran; its exception was lost
        return previous
    monkeypatch.setattr(_interrupt, "install", install_then_lose_a_ctrl_c)
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", TINY, "--preset", "tiny",
                       "--seed", "5", "--overwrite", *FAST)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.name for p in wd.iterdir()) == before and (wd / "eval.json").exists()
    monkeypatch.setattr(_interrupt, "_requested", True)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config_lib.apply_overrides(
            config_lib.get_config("tiny"), ["train.parallel=none"]), str(tmp_path / "loop"))
    assert not list((tmp_path / "loop" / "checkpoints").glob("[0-9]*"))   # no step taken


def test_a_stopped_overwrite_leaves_a_directory_the_new_config_trains_in(trained, tmp_path,
                                                                          capsys, monkeypatch):
    """`train --overwrite` stopped after the old run's checkpoints were cleared but
    before the new config.json was written (here: while the model is built) left the
    old config.json next to the new fingerprint, and each config was refused,
    pointing at the other. The new config must now train without --overwrite."""
    wd = tmp_path / "copy"
    shutil.copytree(trained, wd)
    args = ("train", "--workdir", wd, "--data", TINY, "--preset", "tiny", "--seed", "5", *FAST)
    real = train.create_train_state

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "create_train_state", stop)
    rc, _, err = hypuc(capsys, *args, "--overwrite")
    assert rc == 130 and "interrupted" in err
    assert not (wd / "eval.json").exists() and not (wd / "task.json").exists()
    monkeypatch.setattr(train, "create_train_state", real)
    rc, _, err = hypuc(capsys, *args)
    assert rc == 0, err
    assert json.loads((wd / "config.json").read_text())["train"]["seed"] == 5
    assert (wd / "task.json").exists()


def test_a_ctrl_c_lost_after_the_last_check_still_exits_130(trained, tmp_path, capsys,
                                                            monkeypatch):
    """A SIGINT swallowed by a callback after the command's last check (here: at
    the end of `evaluate`) used to end with status 0, as if never pressed."""
    from hypuc_jax import _interrupt
    monkeypatch.setattr(_interrupt, "_requested", False)   # teardown restores False
    wd = tmp_path / "copy"
    shutil.copytree(trained, wd)
    real = cli._COMMANDS["evaluate"]

    def evaluate_then_lose_a_ctrl_c(args):
        real(args)
        _interrupt._requested = True            # the handler ran; its exception was lost
    monkeypatch.setitem(cli._COMMANDS, "evaluate", evaluate_then_lose_a_ctrl_c)
    rc, _, err = hypuc(capsys, "evaluate", "--workdir", wd)
    assert rc == 130 and err.strip().splitlines()[-1] == "hypuc: interrupted"


def test_a_ctrl_c_during_start_up_exits_130(tmp_path):
    """A real SIGINT while JAX starts (the console entry point, as `hypuc`):
    exit status 130 and one line, where the interpreter used to crash at
    shutdown (SIGSEGV, -11) after printing it."""
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypuc_jax.cli", "train", "--workdir", str(tmp_path / "w"),
         "--data", TINY, "--preset", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The run directory appears when the command locks it, after its handler is
    # installed (a fixed sleep from the start sometimes landed in Python's own
    # start-up on a loaded machine: status -2, a traceback); JAX's backend
    # start-up, where the crash was, follows within the next second (without
    # the fix, a signal 0.8 s after the lock crashed 4 runs of 4, 1.5 s after: 3 of 4).
    deadline = time.monotonic() + 120
    while not (tmp_path / "w").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (proc.returncode, err[-500:])
    assert err.decode().strip().splitlines()[-1] == "hypuc: interrupted"


def test_the_lock_leaves_no_directory_a_refused_command_made(tmp_path):
    from hypuc_jax import rundir
    new = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with rundir.locked([new, new / "arm"]):
            assert new.is_dir() and (new / "arm").is_dir()
            raise RuntimeError("refused")
    assert not (tmp_path / "a").exists()
    with rundir.locked([new]):
        (new / "config.json").write_text("{}")
    assert (new / "config.json").exists()         # a used directory stays
    keep = tmp_path / "keep"                      # an existing empty directory, spelt with ..
    keep.mkdir()
    with pytest.raises(RuntimeError):
        with rundir.locked([tmp_path / "typo" / ".." / "keep"]):
            raise RuntimeError("refused")
    assert keep.is_dir() and not (tmp_path / "typo").exists()


def test_a_refused_lock_removes_nothing(tmp_path):
    """A command refused because another holds the directory removes no
    directory, not even those it created itself: the other command may be
    using them (two commands on a new workdir both see it missing)."""
    import fcntl
    import os
    from hypuc_jax import rundir, workflow
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = _hold(busy, fcntl.LOCK_EX)
    try:
        with pytest.raises(workflow.WorkflowError, match="another hypuc command"):
            with rundir.locked([tmp_path / "new", busy]):
                pass
    finally:
        os.close(fd)
    assert busy.is_dir() and (tmp_path / "new").is_dir()


def test_a_ctrl_c_swallowed_by_a_callback_prints_no_traceback(monkeypatch):
    """Python reports an exception it cannot raise (in a __del__ or a gc
    callback, as JAX's) through sys.unraisablehook: "Exception ignored in
    ..." and a traceback, which broke the one-line output of an interrupted
    command. While the handler is installed a recorded Ctrl-C is dropped
    there; every other exception still reaches the previous hook."""
    import signal
    from hypuc_jax import _interrupt
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(_interrupt, "_requested", False)   # teardown restores False

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    previous = _interrupt.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            _interrupt._handler(signal.SIGINT, None)
        Raises(KeyboardInterrupt())                         # collected at once: unraisable
        assert seen == []
        Raises(ValueError("other"))
        assert [type(u.exc_value) for u in seen] == [ValueError]
    finally:
        _interrupt.restore(previous)
    assert sys.unraisablehook == seen.append


def test_the_sigint_handler_keeps_an_ignored_sigint_and_forgets_interrupts():
    import signal
    from hypuc_jax import _interrupt
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert _interrupt.install() is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
    previous = _interrupt.install()
    assert previous is old and signal.getsignal(signal.SIGINT) is _interrupt._handler
    with pytest.raises(KeyboardInterrupt):
        _interrupt._handler(signal.SIGINT, None)   # what a Ctrl-C runs
    with pytest.raises(KeyboardInterrupt):
        _interrupt.check()                         # recorded, even if the first was lost
    _interrupt.restore(previous)
    assert signal.getsignal(signal.SIGINT) is old
    _interrupt.check()                             # forgotten: library calls run on


def _hold(directory, mode):
    """Another process's lock on a run directory (a separate open file description)."""
    import fcntl
    import os
    fd = os.open(directory, os.O_RDONLY)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    return fd


def test_a_ctrl_c_while_jax_is_imported_exits_130(tmp_path, capsys, monkeypatch):
    """The handler is installed before the imports that load JAX (~1.4 s): a Ctrl-C
    there was either a raw traceback or, swallowed by JAX's callbacks, ignored while
    `run --overwrite` went on to delete and retrain. Here the import of the arms'
    module is interrupted."""
    import importlib.abc

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hypuc_jax.comparison":
                raise KeyboardInterrupt
            return None
    monkeypatch.delitem(sys.modules, "hypuc_jax.comparison", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    rc, _, err = hypuc(capsys, "run", "--quick", "--workdir", tmp_path / "w")
    assert rc == 130 and err.strip() == "hypuc: interrupted"
    assert not (tmp_path / "w").exists()
