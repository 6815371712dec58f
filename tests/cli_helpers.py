"""Shared by the command-line tests: run ``hypuc`` in-process, check its errors."""
from hypuc_jax import cli
from hypuc_jax import config as config_lib

TINY = config_lib.get_config("tiny").data.spec      # the tiny preset's data spec
FAST = ["--set", "corrections.n_estimators=10"]     # fewer boosting rounds


def hypuc(capsys, *argv):
    """``cli.main(argv)`` -> (exit code, stdout, stderr); arguments may be paths."""
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc, err):
    """Asserts a failed command printed exactly one error line and no traceback; returns it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in err
    return lines[0]
