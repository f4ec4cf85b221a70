"""A forked child's exit leaves its parent's kernel, connection file, ports and tunnels alone.

One owner process (tests/fork_owner.py) starts a real ipykernel through
KernelManager and, for each test, opens the tunnel asked for through the real
loopback sshd, forks a child that exits normally (atexit runs) or by SIGTERM (the
inherited handlers run), and reports what survived the child's clean-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sshd import PROXY_COMMAND_ALIAS, SSHServer

pytestmark = [pytest.mark.kernel]

# the sshd_server (session) fixture
pytest_plugins = ["sshd"]

OWNER_SCRIPT = Path(__file__).with_name("fork_owner.py")

KERNEL_SURVIVES = {
    "connection_file_kept": True,
    "kernel_alive": True,
    "kernel_answers": True,
    "ports_held": True,
}
TUNNEL_SURVIVES = {
    **KERNEL_SURVIVES,
    "tunnel_alive": True,
    "tunneled_client_answers": True,
    "new_tunneled_client_answers": True,
    "tunnel_ports_held": True,
}


class Owner:
    """The owner process, spoken to one JSON line at a time."""

    def __init__(self) -> None:
        # run as a script, it imports the kernel helpers from its own directory
        self.process = subprocess.Popen(
            [sys.executable, str(OWNER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == {"ready": True}

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the owner process ended (status {self.process.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def fork(self, child: str, tunnel: dict[str, str] | None = None) -> dict[str, Any]:
        """Have the owner fork a child that ends as `child` says; what survived."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"child": child, "tunnel": tunnel}) + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def owner() -> Iterator[Owner]:
    process = Owner()
    yield process
    process.stop()


def tunnel_request(
    server: SSHServer, alias: str | None = None, backend: str = "paramiko"
) -> dict[str, str]:
    return {"server": alias or server.alias, "backend": backend, **server.client_options()}


def test_child_exit_leaves_the_parents_kernel_file_and_ports(owner: Owner) -> None:
    facts = owner.fork("exit")
    assert facts == {"child": "exit 0", **KERNEL_SURVIVES}


@pytest.mark.ssh
@pytest.mark.parametrize("backend", ["paramiko", "openssh"])
def test_child_exit_leaves_the_parents_tunnel(
    owner: Owner, sshd_server: SSHServer, backend: str
) -> None:
    facts = owner.fork("exit", tunnel_request(sshd_server, backend=backend))
    assert facts == {"child": "exit 0", **TUNNEL_SURVIVES}


@pytest.mark.ssh
def test_child_sigterm_leaves_the_parents_paramiko_tunnel(
    owner: Owner, sshd_server: SSHServer
) -> None:
    facts = owner.fork("sigterm", tunnel_request(sshd_server))
    assert facts == {"child": "SIGTERM", **TUNNEL_SURVIVES}


@pytest.mark.ssh
def test_child_exit_leaves_the_parents_proxycommand(owner: Owner, sshd_server: SSHServer) -> None:
    # paramiko's own atexit hook would SIGTERM the ProxyCommand process from the child
    facts = owner.fork("exit", tunnel_request(sshd_server, PROXY_COMMAND_ALIAS))
    assert facts == {"child": "exit 0", **TUNNEL_SURVIVES}
