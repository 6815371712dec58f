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
