"""Interoperability both ways with jupyter_client: their client on our kernel, ours on theirs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kernel_connect.client import BlockingKernelClient
from kernel_connect.manager import KernelManager
from kernel_fixtures import result_text, run_code, start_ready_kernel, stop_kernel

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def our_kernel() -> Iterator[KernelManager]:
    km, kc = start_ready_kernel()
    kc.stop_channels()
    yield km
    stop_kernel(km)


def test_jupyter_client_talks_to_a_kernel_we_started(our_kernel: KernelManager) -> None:
    from jupyter_client import BlockingKernelClient as JCClient

    jc = JCClient(connection_file=our_kernel.connection_file)
    jc.load_connection_file()
    jc.start_channels()
    try:
        jc.wait_for_ready(timeout=60)
        outputs: list[dict] = []
        reply = jc.execute_interactive("21 * 2", timeout=30, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        assert result_text(outputs) == "42"
        assert jc.is_alive()
    finally:
        jc.stop_channels()


def test_jupyter_client_manager_reads_our_connection_file(our_kernel: KernelManager) -> None:
    from jupyter_client import KernelManager as JCManager

    jkm = JCManager()
    jkm.load_connection_file(our_kernel.connection_file)
    assert jkm.get_connection_info()["shell_port"] == our_kernel.shell_port
    assert jkm.session.key == our_kernel.session.key
    assert jkm.session.signature_scheme == our_kernel.session.signature_scheme


@pytest.fixture(scope="module")
def their_kernel() -> Iterator[object]:
    from jupyter_client import KernelManager as JCManager

    jkm = JCManager()
    jkm.start_kernel()
    yield jkm
    jkm.shutdown_kernel(now=True)


def test_our_client_talks_to_a_kernel_jupyter_client_started(their_kernel: object) -> None:
    conn = their_kernel.connection_file  # type: ignore[attr-defined]
    kc = BlockingKernelClient()
    kc.load_connection_file(conn)
    with kc:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply, outputs = run_code(kc, "import os; os.getpid()")
        assert reply["content"]["status"] == "ok"
        assert int(result_text(outputs)) == their_kernel.provisioner.process.pid  # type: ignore[attr-defined]
        assert kc.is_alive()


def test_our_manager_loads_their_file_and_gets_a_working_client(their_kernel: object) -> None:
    conn = their_kernel.connection_file  # type: ignore[attr-defined]
    km = KernelManager()
    km.load_connection_file(conn)
    kc = km.client()
    with kc:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert result_text(run_code(kc, "'theirs'")[1]) == "'theirs'"
    km.cleanup_connection_file()  # not ours: must stay
    assert os.path.exists(conn)
