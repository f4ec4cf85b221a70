"""jupyter_client 8.10 manager behaviours that kernel-connect's managers must share.

``km.provisioner`` (jupyter_client's LocalProvisioner surface over the manager's
own process handling), the blocking IOLoopKernelManager's restarter and streams
on a background event loop, ZMQStreams from the IOLoop managers' ``connect_*``,
``owns_kernel``, the stderr capture file of a dropped manager, and the client's
typed view of its manager (``KernelOwner``). All on real ipykernel kernels.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from zmq.eventloop.zmqstream import ZMQStream

from kernel_connect.client import BlockingKernelClient, KernelOwner
from kernel_connect.errors import KernelDeath
from kernel_connect.ioloop import AsyncIOLoopKernelManager, IOLoopKernelManager, background_loop
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_connect.mixin import PORT_NAMES
from kernel_connect.multikernelmanager import MultiKernelManager
from kernel_connect.provisioner import LocalProvisioner
from kernel_fixtures import READY_TIMEOUT, pid_alive, result_text, run_code

pytestmark = pytest.mark.kernel

T = TypeVar("T")

#: Bound for one restart, or one message, in the tests below.
EVENT_TIMEOUT = 30.0


def run(aw: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(aw, READY_TIMEOUT * 2)

    return asyncio.run(bounded())


def wait_ready(km: KernelManager) -> None:
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        kc.stop_channels()


def iopub_message_arrives(stream: ZMQStream, km: KernelManager, got: threading.Event) -> bool:
    """Ask the kernel (kernel_info: it publishes its status) until ``stream`` saw a message."""
    stream.on_recv(lambda msg: got.set())
    kc = km.client()
    kc.start_channels()
    try:
        for _ in range(int(EVENT_TIMEOUT / 0.5)):
            kc.kernel_info()
            if got.wait(0.5):  # the subscription may take a moment: ask again
                return True
        return False
    finally:
        kc.stop_channels()


# -- 1. km.provisioner ------------------------------------------------------------------


def test_provisioner_shows_the_running_kernel(kernel: tuple) -> None:
    km, _ = kernel
    prov = km.provisioner
    assert isinstance(prov, LocalProvisioner)
    assert prov.has_process and prov.process is km.kernel
    assert km.kernel is not None and prov.pid == km.kernel.pid
    assert prov.pgid == os.getpgid(km.kernel.pid)
    assert prov.kernel_id == km.kernel_id and prov.kernel_spec is km.kernel_spec
    info = prov.connection_info
    assert [info[name] for name in PORT_NAMES] == km.ports and info["key"] == km.session.key
    assert km.session.key.decode() not in repr(prov)  # the key never in a repr
    assert run(prov.poll()) is None
    assert prov.get_shutdown_wait_time(7.0) == 7.0 and prov.get_stable_start_time() == 10.0
    here = Path(__file__).resolve()
    relative = os.path.relpath(here)  # the kernel was started in our working directory
    assert km.resolve_path(relative) == prov.resolve_path(relative) == here.as_posix()
    assert km.resolve_path("no/such/file") is None


def test_provisioner_lifecycle_kill_wait_restart_and_shutdown() -> None:
    """None before the first start; one object from then on; kill and wait act through
    the manager (its process group signal, its reaping)."""

    async def go() -> None:
        km = AsyncKernelManager()
        assert km.provisioner is None and km.resolve_path(".") is None
        await km.start_kernel()
        try:
            prov = km.provisioner
            assert prov is not None and prov.has_process
            first = prov.pid
            assert first is not None
            await prov.kill()  # a crash: signalled, not waited for, not reaped
            assert prov.has_process and km.has_kernel
            assert await asyncio.wait_for(prov.wait(), EVENT_TIMEOUT) == -signal.SIGKILL
            assert not prov.has_process and prov.process is None and not km.has_kernel
            assert prov.pid == first and not pid_alive(first)  # pid kept, as jupyter_client
            assert await prov.poll() == 0 and await prov.wait() == 0  # nothing left
            assert not await km.is_alive()
            await km.restart_kernel(now=True)
            assert km.provisioner is prov and prov.has_process and prov.pid != first
            await prov.terminate()
            assert await asyncio.wait_for(prov.wait(), EVENT_TIMEOUT) == -signal.SIGTERM
            await km.restart_kernel(now=True)
            assert km.provisioner is prov and prov.has_process
        finally:
            await km.shutdown_kernel(now=True)
        assert km.provisioner is prov and not prov.has_process and await prov.poll() == 0

    run(go())


# -- 2. the blocking IOLoopKernelManager's background loop -----------------------------


def test_blocking_ioloop_manager_restarts_while_the_callers_loop_is_blocked() -> None:
    """Started from a coroutine whose loop then blocks (as jupyter_client's
    test_restart_check): the restarter runs in the background loop, not in the
    blocked one, and so do the callbacks of the manager's ZMQStreams."""
    restarted = threading.Event()
    threads: list[str] = []

    def on_restart() -> None:
        threads.append(threading.current_thread().name)
        restarted.set()

    async def go() -> None:
        km = IOLoopKernelManager()
        km.start_kernel()
        try:
            km.add_restart_callback(on_restart)
            prov = km.provisioner
            assert prov is not None
            old = prov.pid
            assert old is not None
            await prov.kill()
            # Blocks this loop: the restart must happen elsewhere.
            assert restarted.wait(EVENT_TIMEOUT)
            assert threads == ["kernel-connect-ioloop"]
            wait_ready(km)  # waits out the restart (under way in the background)
            assert prov.pid != old and km.is_alive()

            stream = km.connect_iopub()
            try:
                assert stream.io_loop.asyncio_loop is background_loop()
                got = threading.Event()
                assert iopub_message_arrives(stream, km, got)  # this loop still blocked
            finally:
                stream.close(linger=0)
        finally:
            km.shutdown_kernel(now=True)
        assert km.context.closed

    run(go())


# -- 3. ZMQStreams from the IOLoop managers -------------------------------------------


def test_async_ioloop_manager_streams_run_in_the_callers_loop() -> None:
    """AsyncIOLoopKernelManager.connect_* give ZMQStreams on the running loop (plain
    sockets, though the manager's context is a zmq.asyncio one); the manager's own
    control socket stays a socket: its polite shutdown reaches the kernel."""

    async def go() -> None:
        km = AsyncIOLoopKernelManager(autorestart=False)
        await km.start_kernel()
        try:
            loop = asyncio.get_running_loop()
            kinds = {
                km.connect_shell: zmq.DEALER,
                km.connect_iopub: zmq.SUB,
                km.connect_stdin: zmq.DEALER,
                km.connect_hb: zmq.REQ,
                km.connect_control: zmq.DEALER,
            }
            for connect, kind in kinds.items():
                stream = connect()
                assert isinstance(stream, ZMQStream) and type(stream.socket) is zmq.Socket
                assert stream.socket.type == kind and stream.io_loop.asyncio_loop is loop
                stream.close(linger=0)

            stream = km.connect_iopub()
            seen: dict[str, asyncio.Event] = {
                "status": asyncio.Event(),
                "shutdown_reply": asyncio.Event(),
            }

            def on_iopub(frames: list[bytes]) -> None:  # runs in this loop
                _, parts = km.session.feed_identities(frames)
                msg_type = km.session.deserialize(parts, content=False)["header"]["msg_type"]
                if msg_type in seen:
                    seen[msg_type].set()

            stream.on_recv(on_iopub)
            kc = km.client()
            kc.start_channels()
            try:
                for _ in range(int(EVENT_TIMEOUT / 0.5)):
                    kc.kernel_info()
                    try:
                        await asyncio.wait_for(seen["status"].wait(), 0.5)
                        break
                    except asyncio.TimeoutError:
                        continue  # the subscription may take a moment: ask again
                assert seen["status"].is_set()
                # ipykernel publishes its shutdown_reply on IOPub too: the request,
                # sent on the manager's control socket, got there.
                shutdown = asyncio.ensure_future(km.shutdown_kernel())
                await asyncio.wait_for(seen["shutdown_reply"].wait(), EVENT_TIMEOUT)
            finally:
                kc.stop_channels()
                stream.close(linger=0)  # before the shutdown ends our context
            await shutdown
        finally:
            await km.shutdown_kernel(now=True)

    run(go())


def test_blocking_ioloop_manager_streams_and_lean_import(python: str) -> None:
    km = IOLoopKernelManager()  # never started: connecting is all we do
    km.load_connection_info({"ip": "127.0.0.1", **{name: 1 for name in PORT_NAMES}})
    try:
        stream = km.connect_shell()
        assert isinstance(stream, ZMQStream) and stream.socket.type == zmq.DEALER
        assert stream.io_loop.asyncio_loop is background_loop()
        stream.close(linger=0)
    finally:
        km.context.destroy(linger=0)
    code = "import sys, kernel_connect.ioloop; assert 'tornado' not in sys.modules"
    subprocess.run([python, "-c", code], check=True, timeout=READY_TIMEOUT)


# -- 4. owns_kernel -------------------------------------------------------------------


def test_a_manager_that_does_not_own_its_kernel_leaves_it_alone(
    kernel: tuple, tmp_path: Path
) -> None:
    km, kc = kernel
    assert km.owns_kernel is True
    for cls in (KernelManager, AsyncKernelManager):
        other = cls(owns_kernel=False)
        other.load_connection_info(km.get_connection_info())
        other.connection_file = km.connection_file
        assert other.owns_kernel is False and other.provisioner is None
        if cls is KernelManager:
            assert other.is_alive() is True
            other.shutdown_kernel()
            other.shutdown_kernel(now=True)
            with pytest.raises(RuntimeError, match="owns_kernel=False"):
                other.start_kernel()
        else:
            assert run(other.is_alive()) is True
            run(other.shutdown_kernel())
            with pytest.raises(RuntimeError, match="owns_kernel=False"):
                run(other.start_kernel())
        assert not other.shutting_down and other.provisioner is None
        assert km.is_alive() and os.path.exists(km.connection_file)
        wait_ready(other)  # the kernel still answers, through the other manager too
    assert result_text(run_code(kc, "'still here'")[1]) == "'still here'"

    # A MultiKernelManager's kernels found in external_connection_dir are of this kind.
    external = tmp_path / "external"
    external.mkdir()
    Path(external / "kernel-theirs.json").write_bytes(Path(km.connection_file).read_bytes())
    mkm = MultiKernelManager(external_connection_dir=str(external))
    (kid,) = mkm.list_kernel_ids()
    assert mkm.get_kernel(kid).owns_kernel is False
    mkm.shutdown_kernel(kid)
    assert km.is_alive()


# -- 5. the stderr capture file of a dropped manager ---------------------------------


def test_a_dropped_managers_capture_file_is_closed_in_its_own_process_only() -> None:
    km = KernelManager()
    km.start_kernel()
    assert km.kernel is not None
    proc = km.kernel
    capture = km._stderr_file
    assert capture is not None and not capture.closed
    try:
        # A forked child that drops its copy of the manager leaves the file open.
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without any clean-up
            try:
                del km
                gc.collect()
                os.write(wfd, b"open" if not capture.closed else b"closed")
            finally:
                os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            assert r.read() == b"open"
        os.waitpid(pid, 0)
        assert not capture.closed

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            del km
            gc.collect()
        assert capture.closed
        unclosed = [w for w in caught if "unclosed file" in str(w.message)]
        assert unclosed == []
    finally:
        proc.kill()
        proc.wait(READY_TIMEOUT)


# -- 6. the client sees its manager only through KernelOwner ------------------------------


class _PortsOwner:
    """A KernelOwner that is no manager: it reports one failed start, then gives the
    kernel's real ports. Whether (and how) to recover is its decision alone."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.recovered = 0

    def is_alive(self) -> bool:
        return True

    def death(self) -> KernelDeath:
        return KernelDeath("not dead", exit_code=None, stderr_tail="")

    def start_failure(self) -> KernelDeath | None:
        if self.recovered:
            return None
        return KernelDeath("pretend it lost a port", exit_code=None, stderr_tail="")

    def recover(self) -> dict[str, int] | None:
        self.recovered += 1
        return self.ports

    async def recover_async(self) -> dict[str, int] | None:
        return self.recover()


def test_the_client_recovers_through_its_owner_only(kernel: tuple, tmp_path: Path) -> None:
    km, _ = kernel
    owner_view = km.client().liveness
    assert isinstance(owner_view, KernelOwner)  # what a manager gives its clients

    info: dict[str, Any] = km.get_connection_info()
    real = {name: int(info[name]) for name in PORT_NAMES}
    kc = BlockingKernelClient()
    # Nothing listens on these: the client can only get going through its owner.
    kc.load_connection_info({**info, **{name: 1 for name in PORT_NAMES}})
    owner = _PortsOwner(real)
    kc.liveness = owner
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        kc.stop_channels()
    assert owner.recovered == 1 and kc.shell_port == real["shell_port"]
