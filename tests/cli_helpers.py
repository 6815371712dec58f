"""Shared by the command-line tests: run ``hypuc`` in-process, check its errors."""
from hypuc_jax import cli


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
