"""Shared test set-up: every test session gets its own Jupyter runtime directory,
so the port table, connection files and kernels never touch the user's own."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports jupyter_core or opens the port table. Child
# processes (kernels, helper scripts) inherit them and so share the same table.
# The table is the session's own file, not the host-wide one, so a test run
# never disturbs (nor is disturbed by) a farm on the same host; the tests of
# the default location unset KERNEL_CONNECT_PORT_TABLE in a child process.
_RUNTIME = tempfile.mkdtemp(prefix="kc-test-runtime-")
_TABLE_DIR = tempfile.mkdtemp(prefix="kc-test-table-")
os.environ["JUPYTER_RUNTIME_DIR"] = _RUNTIME
os.environ["KERNEL_CONNECT_PORT_TABLE"] = os.path.join(_TABLE_DIR, "ports")
os.environ.pop("KERNEL_CONNECT_PORT_RANGE", None)
os.environ.pop("KERNEL_CONNECT_LEASE_SECONDS", None)

# Shared fixtures: `kernel` (a module-wide ready kernel) and the kernel helpers.
pytest_plugins = ["kernel_fixtures"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_RUNTIME, ignore_errors=True)
    shutil.rmtree(_TABLE_DIR, ignore_errors=True)


@pytest.fixture
def runtime_dir() -> Path:
    """The session's private Jupyter runtime directory."""
    return Path(_RUNTIME)


@pytest.fixture
def python() -> str:
    """The interpreter running the tests, for helper subprocesses."""
    return sys.executable


@pytest.fixture
def fresh_port_cache() -> Iterator[None]:
    """A LocalPortCache singleton created anew for one test (to change settings)."""
    from kernel_connect.ports import LocalPortCache

    LocalPortCache.clear_instance()
    yield
    LocalPortCache.clear_instance()
