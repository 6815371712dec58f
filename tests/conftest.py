"""Test session setup: 8 simulated CPU devices for every test.

The device count must be fixed before JAX initialises its backends, so it is
set here, at import time of the first conftest, before any test module
imports jax.numpy or runs an operation.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
#: XLA flags for the test session, each unless the environment sets it already.
#: Most of the suite's time is XLA compiling small programs, most of that in
#: LLVM's optimisation of the generated CPU code: without LLVM's optimiser (HLO
#: optimisations such as fusion still run) the suite takes ~40% less time. The
#: programs compute the same values up to rounding (which may differ, as between
#: CPUs; the suite passed both with and without these flags when they were
#: introduced) and run slower, which the small test programs do not notice.
#: `hypuc` itself and the benchmarks under experiments/ run with XLA's defaults.
TEST_XLA_FLAGS = {"xla_force_host_platform_device_count": "8",
                  "xla_backend_optimization_level": "0",
                  "xla_llvm_disable_expensive_passes": "true"}
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_flags, *(f"--{k}={v}" for k, v in TEST_XLA_FLAGS.items()
                                              if k not in _flags)]).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def n_devices():
    """Number of (simulated) devices available to the test session."""
    return jax.device_count()


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """``hypuc run --quick`` (parallel none): baseline + HypUC on the tiny preset, and the
    report; shared by the command-line tests, which copy it before changing anything."""
    from cli_helpers import FAST
    from hypuc_jax import cli
    wd = tmp_path_factory.mktemp("run") / "main"
    rc = cli.main(["run", "--quick", "--workdir", str(wd), "--set", "train.parallel=none",
                   "--set", "regions=[['hyper', 5.5, 7.5]]", *FAST])
    assert rc == 0
    return wd


@pytest.fixture(scope="session")
def trained(quick_run):
    """The HypUC arm of ``quick_run``: a trained, calibrated, corrected run directory."""
    return quick_run / "hypuc"
