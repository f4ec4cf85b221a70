"""kernel_connect.ssh.forward: ForwardServer and forward_tunnel over a real loopback sshd."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kernel_connect.ssh.forward import ForwardServer, forward_tunnel
from kernel_connect.ssh.registry import active
from sshd import (
    EchoServer,
    SSHServer,
    closed_port,
    exchange,
)

pytestmark = pytest.mark.ssh

# the sshd_server (session) and echo_server fixtures
pytest_plugins = ["sshd"]


@pytest.fixture
def forward(sshd_server: SSHServer, echo_server: EchoServer) -> Iterator[ForwardServer]:
    server = forward_tunnel(
        0, echo_server.port, "127.0.0.1", sshd_server.alias, **sshd_server.client_options()
    )
    yield server
    server.close()


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return bool(predicate())  # type: ignore[operator]


def test_forwards_bytes_both_ways_with_half_close(forward: ForwardServer) -> None:
    (port,) = forward.local_ports
    assert port > 0
    assert forward.server_address == ("127.0.0.1", port)
    payload = os.urandom(1_500_000)
    # the echo server answers EOF with EOF only after echoing everything: both
    # directions and the half-close travel through the channel
    assert exchange(port, payload) == payload
    assert exchange(port, b"") == b""


def test_many_connections_share_one_ssh_connection(
    forward: ForwardServer, sshd_server: SSHServer
) -> None:
    (port,) = forward.local_ports
    connections_before = set(sshd_server.connection_pids())
    results: dict[int, bytes] = {}

    def talk(n: int) -> None:
        results[n] = exchange(port, b"conn-%d " % n * 1000)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {n: b"conn-%d " % n * 1000 for n in range(8)}
    assert not set(sshd_server.connection_pids()) - connections_before


def test_nagle_is_off_on_every_socket(forward: ForwardServer) -> None:
    (port,) = forward.local_ports
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        transport_socket = forward.connection.transport.sock
        assert transport_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        pairs = list(forward._pairs)
        assert pairs, "the accepted connection is tracked"
        for local, _channel in pairs:
            assert local.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_refused_destination_is_reported_and_closes_the_local_side(
    sshd_server: SSHServer,
) -> None:
    dead = closed_port()
    with forward_tunnel(
        0, dead, "127.0.0.1", sshd_server.alias, **sshd_server.client_options()
    ) as server:
        (port,) = server.local_ports
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(10) == b""  # closed by the forwarder, not hanging
        assert time.monotonic() - start < 5
        assert wait_for(lambda: server.errors)
        assert f"127.0.0.1:{dead}" in server.errors[0]
        assert server.is_alive()  # one refused channel does not end the tunnel


def test_close_stops_everything(sshd_server: SSHServer, echo_server: EchoServer) -> None:
    before = set(sshd_server.connection_pids())
    server = forward_tunnel(
        0, echo_server.port, "127.0.0.1", sshd_server.alias, **sshd_server.client_options()
    )
    (port,) = server.local_ports
    assert server in active()
    assert wait_for(lambda: set(sshd_server.connection_pids()) - before)
    ours = set(sshd_server.connection_pids()) - before
    open_conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    open_conn.sendall(b"hold")
    assert open_conn.recv(4) == b"hold"
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 3
    assert not server.is_alive()
    assert server.closed
    assert server not in active()
    assert open_conn.recv(10) == b""  # the open connection was closed too
    open_conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # sshd's process for our connection ends: the SSH connection is really gone
    assert wait_for(lambda: not ours & set(sshd_server.connection_pids()))
    worker_threads = [t for t in threading.enumerate() if t.name.startswith("kernel-connect-ssh")]
    assert wait_for(lambda: not [t for t in worker_threads if t.is_alive()]), (
        "forwarding threads ended"
    )
    server.close()  # idempotent


def test_forward_tunnel_seed_signature(sshd_server: SSHServer, echo_server: EchoServer) -> None:
    """forward_tunnel(local_port, remote_port, remote_host, ssh_server, ssh_keyfile, password)."""
    with forward_tunnel(
        0,
        echo_server.port,
        "127.0.0.1",
        f"{sshd_server.user}@127.0.0.1:{sshd_server.port}",
        str(sshd_server.client_key),
        None,
        known_hosts=str(sshd_server.known_hosts),
        ssh_config=str(sshd_server.write_bare_ssh_config()),
    ) as server:
        assert exchange(server.local_ports[0], b"seed") == b"seed"
        assert repr(server).startswith("<ForwardServer")
