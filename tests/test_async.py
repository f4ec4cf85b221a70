"""AsyncKernelManager and AsyncKernelClient on real ipykernel kernels: the asyncio face.

The tests run their coroutines on one event loop per module (no pytest plug-in
needed), each bounded by a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio

import kernel_connect
from kernel_connect.channels import AsyncZMQSocketChannel
from kernel_connect.client import AsyncKernelClient, KernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.errors import KernelDiedError, KernelStartCancelledError
from kernel_connect.manager import AsyncKernelManager, KernelManager, start_new_async_kernel
from kernel_fixtures import (
    READY_TIMEOUT,
    file_mode,
    pid_alive,
    ports_held,
    result_text,
    stream_text,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel

T = TypeVar("T")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module's coroutines (and its shared kernel)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T], timeout: float = READY_TIMEOUT) -> T:
    """Run ``aw`` on ``loop``, failing after ``timeout`` seconds instead of hanging."""
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


@pytest.fixture(scope="module")
def akernel(
    loop: asyncio.AbstractEventLoop,
) -> Iterator[tuple[AsyncKernelManager, AsyncKernelClient]]:
    """One ready asyncio kernel and client for the module."""
    km, kc = run(loop, start_new_async_kernel(startup_timeout=READY_TIMEOUT))
    yield km, kc
    kc.stop_channels()
    run(loop, km.shutdown_kernel(now=True))


async def start_async(**kwargs: Any) -> tuple[AsyncKernelManager, AsyncKernelClient]:
    """A kernel of its own (for tests that kill or restart it) and a ready client."""
    start = kwargs.pop("start", {})
    km = AsyncKernelManager(**kwargs)
    await km.start_kernel(**start)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY_TIMEOUT)
    except BaseException:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        raise
    return km, kc


async def run_code(kc: AsyncKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    reply = await kc.execute_interactive(code, timeout=30, output_hook=outputs.append)
    return reply, outputs


# -- the names, classes and signatures ---------------------------------------------


def test_async_classes_follow_jupyter_clients_layout() -> None:
    assert kernel_connect.AsyncKernelManager is AsyncKernelManager
    assert kernel_connect.AsyncKernelClient is AsyncKernelClient
    assert kernel_connect.start_new_async_kernel is start_new_async_kernel
    assert issubclass(AsyncKernelManager, KernelManager)
    assert issubclass(AsyncKernelClient, KernelClient)
    from kernel_connect.asynchronous import AsyncKernelClient as FromModule

    assert FromModule is AsyncKernelClient


COROUTINES = {
    "start_kernel": "**kw",
    "pre_start_kernel": "**kw",
    "post_start_kernel": "**kw",
    "shutdown_kernel": "now=False, restart=False",
    "restart_kernel": "now=False, newports=False, **kw",
    "interrupt_kernel": "",
    "signal_kernel": "signum",
    "is_alive": "",
    "request_shutdown": "restart=False",
    "finish_shutdown": "waittime=None, pollinterval=0.1, restart=False",
    "cleanup_resources": "restart=False",
}


def _params(fn: Any) -> str:
    sig = inspect.signature(fn)
    parts = []
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return ", ".join(parts)


@pytest.mark.parametrize("name", sorted(COROUTINES))
def test_async_manager_methods_are_coroutines_with_jupyter_client_signatures(name: str) -> None:
    from jupyter_client import AsyncKernelManager as JCAsyncKernelManager

    ours = getattr(AsyncKernelManager, name)
    assert inspect.iscoroutinefunction(ours), name
    assert _params(ours) == COROUTINES[name]
    theirs = getattr(JCAsyncKernelManager, name)
    if name != "pre_start_kernel":  # theirs has transport_encryption keyword-only; ours in **kw
        assert _params(ours) == _params(theirs)


@pytest.mark.parametrize(
    "name",
    [
        "get_shell_msg",
        "get_iopub_msg",
        "get_stdin_msg",
        "get_control_msg",
        "wait_for_ready",
        "execute_interactive",
        "is_alive",
        "_recv_reply",
    ],
)
def test_async_client_waits_are_coroutines(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(AsyncKernelClient, name))


def test_execute_interactive_has_jupyter_clients_signature() -> None:
    from jupyter_client import AsyncKernelClient as JCAsyncKernelClient

    assert _params(AsyncKernelClient.execute_interactive) == _params(
        JCAsyncKernelClient.execute_interactive
    )
    assert _params(AsyncKernelClient.wait_for_ready) == "timeout=None"


# -- a shared kernel -------------------------------------------------------------------


def test_start_new_async_kernel_gives_a_ready_asyncio_pair(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    km, kc = akernel
    assert isinstance(km.context, zmq.asyncio.Context)
    assert not km.context.closed
    assert isinstance(kc.shell_channel, AsyncZMQSocketChannel)
    assert isinstance(kc.shell_channel.socket, zmq.asyncio.Socket)
    assert isinstance(km.ready, asyncio.Future)
    assert km.ready.done() and km.ready.result() is None
    assert run(loop, km.is_alive()) is True
    assert run(loop, kc.is_alive()) is True
    assert km.shutting_down is False
    assert kc.kernel_info_reply is not None
    assert file_mode(km.connection_file) == 0o600
    assert all(ports_held(km.ports))


def test_channels_run_without_threads(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    km, _ = akernel
    before = threading.active_count()

    async def go() -> str:
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            during = threading.active_count()
            reply, outputs = await run_code(kc, "'no threads'")
            assert reply["content"]["status"] == "ok"
            assert threading.active_count() == during
            return result_text(outputs)
        finally:
            kc.stop_channels()

    assert run(loop, go()) == "'no threads'"
    assert threading.active_count() == before


def test_every_request_method_takes_reply_and_timeout(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    _, kc = akernel

    async def go() -> None:
        await run_code(kc, "alpha_beta = 1")
        cases: list[tuple[str, Any]] = [
            ("execute_reply", kc.execute("1 + 1", reply=True, timeout=30)),
            ("kernel_info_reply", kc.kernel_info(reply=True, timeout=30)),
            ("complete_reply", kc.complete("alpha_b", reply=True, timeout=30)),
            ("inspect_reply", kc.inspect("len", reply=True, timeout=30)),
            (
                "history_reply",
                kc.history(hist_access_type="tail", n=3, reply=True, timeout=30),
            ),
            ("comm_info_reply", kc.comm_info(reply=True, timeout=30)),
            ("is_complete_reply", kc.is_complete("for x in y:", reply=True, timeout=30)),
        ]
        for msg_type, pending in cases:
            assert inspect.isawaitable(pending), msg_type
            reply = await pending
            assert isinstance(reply, dict), msg_type
            assert reply["msg_type"] == msg_type
        complete = await kc.complete("alpha_b", reply=True, timeout=30)
        assert "alpha_beta" in complete["content"]["matches"]
        # Without reply: the msg_id at once, and the reply on the channel.
        msg_id = kc.history(hist_access_type="tail", n=1)
        assert isinstance(msg_id, str)
        assert (await kc._recv_reply(msg_id, timeout=30))["msg_type"] == "history_reply"

    run(loop, go())


def test_reply_timeout_raises_timeout_error(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    km, kc = akernel

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await kc.execute("import time; time.sleep(30)", reply=True, timeout=0.2)
        await km.interrupt_kernel()
        # The interrupted request still replies; drain it so later tests start clean.
        reply = await kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"

    run(loop, go())


def test_get_msg_coroutines(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    _, kc = akernel

    async def go() -> None:
        with pytest.raises(Empty):
            await kc.get_shell_msg(timeout=0.05)
        while True:  # earlier tests' broadcasts
            try:
                await kc.get_iopub_msg(block=False)
            except Empty:
                break
        with pytest.raises(Empty):
            await kc.get_iopub_msg(block=False)
        msg_id = kc.execute("print('got it')")
        reply = await kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        seen: list[dict[str, Any]] = []
        while not any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in seen
        ):
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                seen.append(msg)
        assert stream_text(seen) == "got it\n"
        # control: a kernel_info_request sent on the control channel is answered there.
        request = kc.session.msg("kernel_info_request")
        kc.control_channel.send(request)
        control_reply = await kc.get_control_msg(timeout=30)
        assert control_reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
        # stdin: the kernel's input_request, answered with input().
        msg_id = kc.execute("name = input('who? ')", allow_stdin=True)
        request = await kc.get_stdin_msg(timeout=30)
        assert request["msg_type"] == "input_request"
        assert request["content"]["prompt"] == "who? "
        kc.input("Ada")
        await kc._recv_reply(msg_id, timeout=30)
        assert result_text((await run_code(kc, "name"))[1]) == "'Ada'"

    run(loop, go())


def test_execute_interactive_awaits_a_coroutine_stdin_hook(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    _, kc = akernel
    prompts: list[str] = []

    async def answer(msg: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        prompts.append(msg["content"]["prompt"])
        kc.input("Grace")

    async def go() -> None:
        outputs: list[dict[str, Any]] = []
        reply = await kc.execute_interactive(
            "print(input('name? '))", timeout=30, stdin_hook=answer, output_hook=outputs.append
        )
        assert reply["content"]["status"] == "ok"
        assert stream_text(outputs) == "Grace\n"

    run(loop, go())
    assert prompts == ["name? "]


def test_interrupt_kernel_coroutine_stops_a_loop(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    km, kc = akernel

    async def go() -> dict[str, Any]:
        msg_id = kc.execute(
            "import time\nprint('looping', flush=True)\nwhile True: time.sleep(0.05)"
        )
        while True:
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        await km.interrupt_kernel()
        return await kc._recv_reply(msg_id, timeout=30)

    reply = run(loop, go())
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert run(loop, km.is_alive())


def test_signal_kernel_coroutine(
    loop: asyncio.AbstractEventLoop, akernel: tuple[AsyncKernelManager, AsyncKernelClient]
) -> None:
    km, _ = akernel
    # Signal 0 checks the process is there without disturbing it.
    run(loop, km.signal_kernel(0))
    stopped = AsyncKernelManager()
    with pytest.raises(RuntimeError, match="no kernel is running"):
        run(loop, stopped.signal_kernel(signal.SIGINT))


# -- kernels of their own ----------------------------------------------------------------


def test_restart_kernel_coroutine_keeps_ports_and_key(loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        km, kc = await start_async()
        try:
            assert km.kernel is not None
            pid, ports, key, context = km.kernel.pid, km.ports, km.session.key, km.context
            first_ready = km.ready
            await km.restart_kernel()
            assert km.kernel is not None and km.kernel.pid != pid
            assert km.ports == ports and km.session.key == key
            assert km.ready is not first_ready and km.ready.done()
            assert km.context is context and not context.closed
            assert km.shutting_down is False
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            assert result_text((await run_code(kc, "'restarted'"))[1]) == "'restarted'"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
        assert not pid_alive(pid)

    run(loop, go())


def test_shutdown_kernel_coroutine_cleans_up_and_closes_its_context(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def go() -> None:
        km, kc = await start_async()
        kc.stop_channels()
        assert km.kernel is not None
        pid, ports, conn = km.kernel.pid, km.ports, km.connection_file
        await km.shutdown_kernel()  # polite: through the control socket
        assert km.exit_code == 0
        assert not pid_alive(pid)
        assert not os.path.exists(conn)
        assert not any(ports_held(ports))
        assert km.context.closed
        assert km.shutting_down is True
        assert km.ready.done()
        assert not await km.is_alive()

    run(loop, go())


def test_async_with_shuts_the_kernel_down(loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> tuple[int, str]:
        async with AsyncKernelManager() as km:
            await km.start_kernel()
            assert km.kernel is not None
            return km.kernel.pid, km.connection_file

    pid, conn = run(loop, go())
    assert not pid_alive(pid)
    assert not os.path.exists(conn)


def test_client_notices_a_sigkilled_kernel(loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        km, kc = await start_async()
        started = asyncio.Event()

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                started.set()

        try:
            call = asyncio.ensure_future(
                kc.execute_interactive(
                    "print('sleeping', flush=True); import time; time.sleep(600)",
                    output_hook=hook,
                )
            )
            await asyncio.wait_for(started.wait(), READY_TIMEOUT)
            assert km.kernel is not None
            os.kill(km.kernel.pid, signal.SIGKILL)
            with pytest.raises(KernelDiedError, match="during the execution of") as info:
                await asyncio.wait_for(call, READY_TIMEOUT)
            assert info.value.exit_code == -signal.SIGKILL
            assert km.session.key.decode() not in str(info.value)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    run(loop, go())


@pytest.fixture
def never_binding_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A kernel that never writes its ports back: it writes its pid to a file, then waits."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    running = tmp_path / "running"
    code = (
        "import os, signal, sys\n"
        "path = sys.argv[1]\n"
        "with open(path + '.tmp', 'w') as f:\n"
        "    f.write(str(os.getpid()))\n"
        "os.rename(path + '.tmp', path)\n"
        "signal.pause()\n"
    )
    argv = [sys.executable, "-c", code, str(running), "{connection_file}"]
    write_kernel_spec(tmp_path, "never-binds", argv)
    return "never-binds", running


def test_shutdown_in_another_task_cancels_a_zero_race_start(
    loop: asyncio.AbstractEventLoop, never_binding_spec: tuple[str, Path]
) -> None:
    name, running = never_binding_spec
    km = AsyncKernelManager(kernel_name=name, kernel_binds_ports=True)
    held_before = LocalPortCache.instance().table.held()

    async def go() -> None:
        start = asyncio.ensure_future(km.start_kernel())
        while not running.exists():  # the kernel runs; the start waits for its ports
            assert not start.done(), start
            await asyncio.sleep(0.01)
        pid = int(running.read_text())
        conn = km.connection_file
        start_ready = km.ready  # the start's; the shutdown has one of its own
        await km.shutdown_kernel()
        with pytest.raises(KernelStartCancelledError, match="cancelled"):
            await asyncio.wait_for(start, READY_TIMEOUT)
        assert not pid_alive(pid)
        assert not os.path.exists(conn)
        # The start's future carries its failure: nothing awaiting it is left pending.
        assert isinstance(start_ready.exception(), KernelStartCancelledError)
        assert km.ready.done() and km.ready.result() is None

    run(loop, go())
    assert not km.has_kernel
    assert LocalPortCache.instance().table.held() == held_before


def test_port_clash_is_recovered_by_the_managers_policy(loop: asyncio.AbstractEventLoop) -> None:
    """A process outside the table binds a reserved port before the kernel does: the
    client asks its owner (the manager), which restarts the kernel on new ports."""
    km = AsyncKernelManager()
    km.write_connection_file()  # ports reserved now; the kernel binds them later
    taken = km.shell_port
    outsider = socket.socket()

    async def go() -> None:
        await km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            assert km.port_clash_restarts == 1
            assert km.shell_port != taken
            assert kc.shell_port == km.shell_port
            with open(km.connection_file) as f:
                assert json.load(f)["shell_port"] == km.shell_port
            assert result_text((await run_code(kc, "'recovered'"))[1]) == "'recovered'"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    try:
        outsider.bind((km.ip, taken))
        outsider.listen()
        run(loop, go())
    finally:
        outsider.close()
    assert not os.path.exists(km.connection_file)


def test_cancelling_a_start_leaves_nothing_behind(
    loop: asyncio.AbstractEventLoop, never_binding_spec: tuple[str, Path]
) -> None:
    """A start task cancelled while it waits (zero-race: for the kernel's ports) cleans
    up on its way out, waiting for the killed kernel in the same loop."""
    name, running = never_binding_spec
    km = AsyncKernelManager(kernel_name=name, kernel_binds_ports=True)
    held_before = LocalPortCache.instance().table.held()

    async def go() -> None:
        start = asyncio.ensure_future(km.start_kernel())
        while not running.exists():
            assert not start.done(), start
            await asyncio.sleep(0.01)
        pid = int(running.read_text())
        conn = km.connection_file
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert not pid_alive(pid)
        assert not os.path.exists(conn)
        assert km.ready.cancelled()

    run(loop, go())
    assert not km.has_kernel
    assert LocalPortCache.instance().table.held() == held_before


def test_client_without_a_manager_uses_the_heartbeat(loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        km, kc = await start_async()
        kc.stop_channels()
        orphan = AsyncKernelClient()
        orphan.load_connection_file(km.connection_file)
        assert orphan.liveness is None
        started = asyncio.Event()

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                started.set()

        try:
            orphan.start_channels()
            await orphan.wait_for_ready(timeout=READY_TIMEOUT)
            assert await orphan.is_alive()  # a heartbeat ping, awaited
            call = asyncio.ensure_future(
                orphan.execute_interactive(
                    "print('sleeping', flush=True); import time; time.sleep(600)",
                    output_hook=hook,
                )
            )
            await asyncio.wait_for(started.wait(), READY_TIMEOUT)
            assert km.kernel is not None
            os.kill(km.kernel.pid, signal.SIGKILL)
            with pytest.raises(KernelDiedError, match="heartbeat") as info:
                await asyncio.wait_for(call, READY_TIMEOUT)
            assert info.value.exit_code is None  # no process to ask
            assert not await orphan.is_alive()
        finally:
            orphan.stop_channels()
            await km.shutdown_kernel(now=True)

    run(loop, go())
