"""tunnel_to_kernel end to end: a real ipykernel reached through a real sshd, both
backends, one SSH connection per kernel, clear failures, and no tunnel process
outliving its client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kernel_connect import tunnel_to_kernel as exported_tunnel_to_kernel
from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import read_connection_file
from kernel_connect.manager import KernelManager
from kernel_connect.ssh.errors import ForwardError, LocalPortInUseError
from kernel_connect.ssh.tunnel import CHANNELS, TunnelPorts, close_all_tunnels, tunnel_to_kernel
from kernel_fixtures import (
    pid_alive,
    ports_held,
    result_text,
    run_code,
    stream_text,
    wait_until,
)
from sshd import SSHServer, children_of, closed_port

pytestmark = [pytest.mark.ssh, pytest.mark.kernel]

BACKENDS = ["paramiko", "openssh"]

# the sshd_server (session) and echo_server fixtures
pytest_plugins = ["sshd"]


@pytest.fixture(autouse=True)
def _no_leftover_tunnels() -> Iterator[None]:
    yield
    close_all_tunnels()


def tunneled_client(connection_file: str, ports: tuple[int, ...]) -> BlockingKernelClient:
    info: dict[str, Any] = dict(read_connection_file(connection_file))
    info.update({f"{name}_port": port for name, port in zip(CHANNELS, ports, strict=True)})
    info["ip"] = "127.0.0.1"
    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels()
    return client


def execute_round_trip(client: BlockingKernelClient, count: int = 15) -> float:
    """Median seconds for an execute request to get its reply."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        msg_id = client.execute("pass", silent=True)
        reply = client.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_answers_through_one_ssh_connection(
    backend: str, kernel: tuple[KernelManager, BlockingKernelClient], sshd_server: SSHServer
) -> None:
    km, _ = kernel
    logins_before = sshd_server.accepted_logins()
    ssh_before = set(children_of_ssh())
    ports = tunnel_to_kernel(
        km.connection_file, sshd_server.alias, backend=backend, **sshd_server.client_options()
    )
    try:
        assert isinstance(ports, TunnelPorts)
        assert len(ports) == 5
        assert len(set(ports)) == 5
        assert all(isinstance(p, int) for p in ports)
        assert ports_held(list(ports)) == [True] * 5  # reserved in the port table
        # one login, and (OpenSSH) one ssh process, for all five ports
        assert sshd_server.accepted_logins() == logins_before + 1
        new_ssh = set(children_of_ssh()) - ssh_before
        assert len(new_ssh) == (1 if backend == "openssh" else 0)
        client = tunneled_client(km.connection_file, ports)
        try:
            client.wait_for_ready(timeout=30)
            reply, outputs = run_code(client, "import os\nprint('via ssh')\n6 * 7")
            assert reply["content"]["status"] == "ok"
            assert result_text(outputs) == "42"
            assert stream_text(outputs) == "via ssh\n"
            assert client.is_alive()
            # Nagle left on anywhere (e.g. sshd without a session) costs ~40 ms here
            assert execute_round_trip(client) < 0.025
        finally:
            client.stop_channels()
    finally:
        ports.close()
    assert not ports.is_alive()
    assert ports_held(list(ports)) == [False] * 5  # given back
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert wait_until(lambda: not set(children_of_ssh()) - ssh_before, 5)


def children_of_ssh() -> list[int]:
    """This process's ssh children."""
    found = []
    for pid in children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii") as comm:
                if comm.read().strip() == "ssh":
                    found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_tunnels_all_reach_the_kernel(
    backend: str, kernel: tuple[KernelManager, BlockingKernelClient], sshd_server: SSHServer
) -> None:
    km, _ = kernel
    info = dict(read_connection_file(km.connection_file))
    for _ in range(4 if backend == "paramiko" else 2):
        start = time.monotonic()
        with exported_tunnel_to_kernel(
            info, sshd_server.alias, backend=backend, **sshd_server.client_options()
        ) as ports:
            client = tunneled_client(km.connection_file, ports)
            try:
                client.kernel_info()
                reply = client.get_shell_msg(timeout=10)
                assert reply["msg_type"] == "kernel_info_reply"
            finally:
                client.stop_channels()
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_remote_ports_are_a_clear_error(
    backend: str, kernel: tuple[KernelManager, BlockingKernelClient], sshd_server: SSHServer
) -> None:
    km, _ = kernel
    info = dict(read_connection_file(km.connection_file))
    dead = closed_port()
    info["iopub_port"] = dead
    info["hb_port"] = dead
    start = time.monotonic()
    with pytest.raises(ForwardError) as raised:
        tunnel_to_kernel(info, sshd_server.alias, backend=backend, **sshd_server.client_options())
    assert time.monotonic() - start < 8
    message = str(raised.value)
    assert f"iopub (127.0.0.1:{dead})" in message
    assert f"hb (127.0.0.1:{dead})" in message
    assert "shell" not in message.split("kernel's", 1)[1].split(":")[0]
    assert info["key"] not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_port_taken_is_a_clear_error(
    backend: str, kernel: tuple[KernelManager, BlockingKernelClient], sshd_server: SSHServer
) -> None:
    km, _ = kernel
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    free = [closed_port() for _ in range(4)]
    try:
        start = time.monotonic()
        with pytest.raises(LocalPortInUseError, match=str(port)):
            tunnel_to_kernel(
                km.connection_file, sshd_server.alias, backend=backend,
                local_ports=[*free[:2], port, *free[2:]], **sshd_server.client_options(),
            )  # fmt: skip
        assert time.monotonic() - start < 8
    finally:
        taken.close()


def test_ipc_kernels_cannot_be_tunneled(sshd_server: SSHServer) -> None:
    info = {"transport": "ipc", "ip": "/tmp/kernel", "shell_port": 1, "iopub_port": 2,
            "stdin_port": 3, "hb_port": 4, "control_port": 5}  # fmt: skip
    with pytest.raises(ValueError, match="tcp"):
        tunnel_to_kernel(info, sshd_server.alias, **sshd_server.client_options())


CLIENT = """
import json, os, signal, sys, time
from kernel_connect.ssh.tunnel import tunnel_to_kernel
connection_file, server, backend, known_hosts, ssh_config, mode = sys.argv[1:]
ports = tunnel_to_kernel(connection_file, server, backend=backend,
                         known_hosts=known_hosts, ssh_config=ssh_config)
print(json.dumps({"ports": list(ports), "ssh_pid": getattr(ports.tunnel, "pid", None)}),
      flush=True)
sys.stdin.readline()  # the test looks at the server side first
if mode == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
elif mode == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["exit", "sigterm", "sigkill"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tunnel_outlives_its_client(
    backend: str,
    mode: str,
    kernel: tuple[KernelManager, BlockingKernelClient],
    sshd_server: SSHServer,
) -> None:
    km, _ = kernel
    connections_before = set(sshd_server.connection_pids())
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, km.connection_file, sshd_server.alias, backend,
         str(sshd_server.known_hosts), str(sshd_server.ssh_config), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdin is not None
        line = client.stdout.readline()
        assert line, client.stderr.read() if client.stderr else ""
        report = json.loads(line)
        ours = set(sshd_server.connection_pids()) - connections_before
        assert ours, "the client's SSH connection shows on the server"
        client.stdin.write("go\n")
        client.stdin.flush()
        returncode = client.wait(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    expected = {"exit": 0, "sigterm": -signal.SIGTERM, "sigkill": -signal.SIGKILL}[mode]
    assert returncode == expected
    if backend == "openssh":
        assert report["ssh_pid"] is not None
        assert wait_until(lambda: not pid_alive(report["ssh_pid"]), 10), "ssh survived"
    # the server side of the connection (sshd's child and its `cat`) ends too
    assert wait_until(lambda: not ours & set(sshd_server.connection_pids()), 10)
    for port in report["ports"]:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reserved_port_taken_by_another_program_is_replaced(
    backend: str,
    kernel: tuple[KernelManager, BlockingKernelClient],
    sshd_server: SSHServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port table cannot stop programs outside it: such a port is swapped for a new one."""
    from kernel_connect.ssh import tunnel as tunnel_module

    km, _ = kernel
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    handed_out: list[list[int]] = []

    def wrap(real: Callable[[int], list[int]]) -> Callable[[int], list[int]]:
        def hand_out(n: int) -> list[int]:
            ports = real(n)
            if not handed_out:
                ports[1] = port  # iopub's port is already someone else's
            handed_out.append(ports)
            return ports

        return hand_out

    # The five are held for the tunnel; a replacement is leased.
    monkeypatch.setattr(tunnel_module, "_hold_ports", wrap(tunnel_module._hold_ports))
    monkeypatch.setattr(
        tunnel_module, "select_random_ports", wrap(tunnel_module.select_random_ports)
    )
    try:
        with tunnel_to_kernel(
            km.connection_file, sshd_server.alias, backend=backend, **sshd_server.client_options()
        ) as ports:
            assert port not in ports
            assert len(handed_out) == 2  # the five, then one replacement
            assert ports[1] == handed_out[1][0]
            client = tunneled_client(km.connection_file, ports)
            try:
                client.wait_for_ready(timeout=30)
            finally:
                client.stop_channels()
    finally:
        taken.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_is_alive_notices_a_lost_connection(
    backend: str, kernel: tuple[KernelManager, BlockingKernelClient], sshd_server: SSHServer
) -> None:
    km, _ = kernel
    before = set(sshd_server.connection_pids())
    with tunnel_to_kernel(
        km.connection_file, sshd_server.alias, backend=backend, **sshd_server.client_options()
    ) as ports:
        assert ports.is_alive()
        ours = set(sshd_server.connection_pids()) - before
        assert ours
        for pid in ours:  # the server side of our connection dies
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not ports.is_alive(), 10)
