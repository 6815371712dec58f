"""Test session setup: 8 simulated CPU devices for every test.

The device count must be fixed before JAX initialises its backends, so it is
set here, at import time of the first conftest, before any test module
imports jax.numpy or runs an operation.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

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
