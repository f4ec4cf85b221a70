"""The SEED.md usage examples that involve kernels, run against real ipykernel processes.

Each test follows one example of the seed specification (jupyter_client replaced
by kernel_connect) and asserts what the example only prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from kernel_connect import (
    KernelManager,
    LocalPortCache,
    find_connection_file,
    launch_kernel,
    write_connection_file,
)
from kernel_connect.client import BlockingKernelClient
from kernel_fixtures import (
    ipykernel_argv,
    pid_alive,
    result_text,
    run_code,
    stream_text,
    wait_until,
)

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def started_km() -> Iterator[KernelManager]:
    """``km = KernelManager(); km.start_kernel()`` as the examples do."""
    km = KernelManager()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.stop_channels()
    yield km
    km.shutdown_kernel(now=True)


def test_finding_and_loading_connection_files(started_km: KernelManager) -> None:
    """Example "Finding and Loading Connection Files"."""
    name = os.path.basename(started_km.connection_file)
    conn_file = find_connection_file(name)
    assert os.path.samefile(conn_file, started_km.connection_file)
    with pytest.raises(OSError, match="kernel-12345-no-such"):
        find_connection_file("kernel-12345-no-such.json")

    km = KernelManager()
    km.load_connection_file(conn_file)
    assert km.ports == started_km.ports
    assert km.session.key == started_km.session.key
    kc = km.client()
    assert isinstance(kc, BlockingKernelClient)
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        assert result_text(run_code(kc, "'loaded'")[1]) == "'loaded'"
    finally:
        kc.stop_channels()
    # km loaded the file but did not write it: it must not remove it.
    km.cleanup_connection_file()
    assert os.path.exists(conn_file)


def test_working_with_connection_information(started_km: KernelManager) -> None:
    """Example "Working with Connection Information"."""
    conn_info = started_km.get_connection_info()
    assert conn_info["shell_port"] == started_km.shell_port > 0
    assert conn_info["iopub_port"] == started_km.iopub_port > 0
    assert conn_info["transport"] == "tcp"
    assert conn_info["ip"] == "127.0.0.1"

    km2 = KernelManager()
    km2.load_connection_info(conn_info)
    assert km2.get_connection_info() == conn_info
    kc = km2.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
    finally:
        kc.stop_channels()
    # "Clean up" comes last in the example; it runs in the module teardown below.


def test_direct_socket_connections(started_km: KernelManager) -> None:
    """Example "Direct Socket Connections", with a properly signed request."""
    km = started_km
    context = zmq.Context()
    shell_socket = km.connect_shell()
    iopub_socket = km.connect_iopub()
    try:
        assert shell_socket.type == zmq.DEALER
        assert iopub_socket.type == zmq.SUB
        assert shell_socket.linger == iopub_socket.linger == 1000
        # The seed sends raw frames; a kernel drops unsigned ones, so sign it.
        request = km.session.send(shell_socket, "kernel_info_request")
        assert request is not None
        assert shell_socket.poll(30_000)
        _, reply = km.session.recv(shell_socket)
        assert reply is not None
        assert reply["msg_type"] == "kernel_info_reply"
        assert reply["parent_header"]["msg_id"] == request["msg_id"]
        # iopub is subscribed to everything: the request's status messages arrive.
        assert iopub_socket.poll(30_000)
        message = iopub_socket.recv_multipart()
        assert b"<IDS|MSG>" in message
    finally:
        shell_socket.close()
        iopub_socket.close()
        context.term()


def test_cleanup_after_start(tmp_path: Path) -> None:
    """The examples end with ``km.cleanup_connection_file()`` / ``km.shutdown_kernel()``."""
    km = KernelManager()
    km.start_kernel()
    conn, ports = km.connection_file, km.ports
    assert km.kernel is not None
    pid = km.kernel.pid
    km.shutdown_kernel()
    km.cleanup_connection_file()
    assert not os.path.exists(conn)
    assert not pid_alive(pid)
    assert not any(LocalPortCache.instance().table.holds(p) for p in ports)


def test_low_level_kernel_launching(tmp_path: Path) -> None:
    """Example "Low-Level Kernel Launching"."""
    fname, info = write_connection_file(str(tmp_path / "connection-file.json"))
    kernel_cmd = ipykernel_argv(fname)
    workdir = tmp_path / "custom-working-dir"
    workdir.mkdir()
    custom_env = {"PYTHONPATH": "/custom/path", "PATH": os.environ["PATH"]}
    kernel_proc = launch_kernel(
        kernel_cmd,
        env=custom_env,
        cwd=str(workdir),
        independent=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert kernel_proc.pid > 0
        assert kernel_proc.poll() is None  # "Kernel is running"
        kc = BlockingKernelClient()
        kc.load_connection_file(fname)
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            code = "import os, sys; print(os.getcwd()); print('/custom/path' in sys.path)"
            outputs = run_code(kc, code)[1]
            assert stream_text(outputs) == f"{workdir}\nTrue\n"
        finally:
            kc.stop_channels()
    finally:
        kernel_proc.terminate()
        code = kernel_proc.wait(30)
        LocalPortCache.instance().return_ports(
            [info[p] for p in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")]
        )
    assert code is not None
    assert kernel_proc.poll() is not None
    assert wait_until(lambda: not pid_alive(kernel_proc.pid), 5)


def test_launch_with_the_current_interpreter() -> None:
    """The example's command uses ``sys.executable``: the kernel runs our interpreter."""
    proc = launch_kernel(
        [sys.executable, "-c", "import sys; print(sys.executable)"], stdout=subprocess.PIPE
    )
    out, _ = proc.communicate(timeout=30)
    assert out.decode().strip() == sys.executable
