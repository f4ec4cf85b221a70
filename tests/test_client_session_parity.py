"""The client side's jupyter_client 8.10 behaviours, on one real ipykernel and real sockets.

- Session takes ``zmq.asyncio`` sockets (and ZMQStreams) and reads and writes
  them at once, as blocking sockets: frames and MessageTrackers, not futures.
- A client's zmq context is its own, as in jupyter_client: ending the
  process-wide context, or the client's, never waits on another's sockets.
- ``get_*_msg`` and the channels' ``get_msg`` take ``timeout`` first, as in
  jupyter_client 8; ``block`` stays keyword-only for older callers.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Awaitable, Callable
from queue import Empty
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
from traitlets import TraitError

from kernel_connect.channels import AsyncZMQSocketChannel, ZMQSocketChannel
from kernel_connect.client import AsyncKernelClient, BlockingKernelClient
from kernel_connect.manager import KernelManager
from kernel_connect.session import DONE, Session
from kernel_connect.threaded import ThreadedKernelClient, ThreadedZMQSocketChannel
from kernel_fixtures import READY_TIMEOUT, result_text, run_code

pytestmark = pytest.mark.kernel

Kernel = tuple[KernelManager, BlockingKernelClient]
T = TypeVar("T")

# Seconds any single wait here may take before the test counts it as a hang.
BOUND = 20.0


def run(aw: Awaitable[T], timeout: float = BOUND) -> T:
    """Run a coroutine on a fresh event loop, failing after ``timeout`` instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(aw, timeout)

    return asyncio.run(bounded())


def ends_within(fn: Callable[[], Any], seconds: float, release: Callable[[], Any]) -> Any:
    """``fn()`` in a thread; its result, or AssertionError if it is still waiting
    after ``seconds`` (then ``release()`` unblocks it, so the thread ends)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        release()
        thread.join(BOUND)
        raise AssertionError(f"still waiting after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def async_client(km: KernelManager) -> AsyncKernelClient:
    """An AsyncKernelClient of the module's kernel (no manager: it watches the heartbeat)."""
    kc = AsyncKernelClient()
    kc.load_connection_info(km.get_connection_info())
    return kc


# -- Session on zmq.asyncio sockets ------------------------------------------------


def test_session_talks_to_a_kernel_over_asyncio_sockets(kernel: Kernel) -> None:
    km, _ = kernel
    session = km.session.clone()

    async def go() -> None:
        ctx = zmq.asyncio.Context()
        shell = ctx.socket(zmq.DEALER)
        try:
            shell.connect(km._make_url("shell"))
            assert session.recv(shell) == (None, None)  # nothing yet: no future
            sent = session.send(shell, "kernel_info_request")
            assert sent is not None and sent["tracker"] is DONE
            assert await shell.poll(BOUND * 1000, zmq.POLLIN)
            idents, reply = session.recv(shell)
            assert idents == []
            assert reply is not None and reply["msg_type"] == "kernel_info_reply"
            assert reply["parent_header"]["msg_id"] == sent["msg_id"]

            # Already packed parts go out the same way.
            again = session.msg("kernel_info_request")
            parts = [session.pack(again[k]) for k in ("header", "parent_header", "metadata")]
            session.send_raw(shell, [*parts, session.pack(again["content"])])
            assert await shell.poll(BOUND * 1000, zmq.POLLIN)
            _, raw_reply = session.recv(shell)
            assert raw_reply is not None
            assert raw_reply["parent_header"]["msg_id"] == again["msg_id"]
        finally:
            shell.close(linger=0)
            ctx.term()

    run(go())


def test_tracked_zero_copy_send_on_an_asyncio_socket_gives_a_tracker() -> None:
    session = Session(key=b"tracking", copy_threshold=1)

    async def go() -> None:
        ctx = zmq.asyncio.Context()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        try:
            port = a.bind_to_random_port("tcp://127.0.0.1")
            b.connect(f"tcp://127.0.0.1:{port}")
            # Without buffers nothing is zero-copy: the done tracker, as jupyter_client.
            hello = session.send(a, "hello", track=True)
            assert hello is not None and hello["tracker"] is DONE
            sent = session.send(a, "data", buffers=[b"x" * 100_000], track=True)
            assert sent is not None
            tracker = sent["tracker"]
            assert isinstance(tracker, zmq.MessageTracker)
            for expected in ("hello", "data"):
                assert await b.poll(BOUND * 1000, zmq.POLLIN)
                _, msg = session.recv(b, copy=False)
                assert msg is not None and msg["msg_type"] == expected
            assert bytes(msg["buffers"][0]) == b"x" * 100_000
            del sent, msg
            tracker.wait(BOUND)  # zmq let go of the buffer once it was sent
            assert tracker.done
        finally:
            a.close(linger=0)
            b.close(linger=0)
            ctx.term()

    run(go())


def test_session_reads_a_zmqstream_through_its_socket_and_never_tracks_it() -> None:
    from tornado.ioloop import IOLoop
    from zmq.eventloop.zmqstream import ZMQStream

    session = Session(key=b"stream")
    ctx = zmq.Context()
    loop = IOLoop(make_current=False)
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    stream = ZMQStream(b, io_loop=loop)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        sent = session.send(a, "hello")
        assert sent is not None
        assert b.poll(BOUND * 1000, zmq.POLLIN)
        _, msg = session.recv(stream)
        assert msg is not None and msg["msg_id"] == sent["msg_id"]
        # A stream sends later, from its loop: there is nothing to track.
        queued = session.send(stream, "back", buffers=[b"y" * 100_000], track=True)
        assert queued is not None and queued["tracker"] is DONE
    finally:
        stream.close(linger=0)
        a.close(linger=0)
        loop.close()
        ctx.term()


# -- the client's zmq context ---------------------------------------------------------

# Each step prints its name first, so a hang names the step that hung.
_TEARDOWNS = textwrap.dedent(
    """
    import asyncio, sys, zmq
    from kernel_connect.client import AsyncKernelClient, BlockingKernelClient
    from kernel_connect.connect import read_connection_file

    info = read_connection_file(sys.argv[1])

    def step(name):
        print(name, flush=True)

    async def main():
        sync = BlockingKernelClient()
        sync.load_connection_info(info)
        sync.start_channels()
        sync.wait_for_ready(timeout=30)
        kc = AsyncKernelClient()
        kc.load_connection_info(info)
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        await kc.kernel_info(reply=True, timeout=30)
        step("zmq.Context.instance().destroy() while both clients run")
        zmq.Context.instance().destroy(linger=0)
        await kc.kernel_info(reply=True, timeout=30)
        step("async client: stop_channels(), then context.term() while another client runs")
        kc.stop_channels()
        kc.context.term()
        sync.kernel_info(reply=True, timeout=30)
        step("async client's context.destroy() on a running client")
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        kc.context.destroy(linger=0)
        kc.stop_channels()
        step("blocking client: stop_channels(), context.term()")
        sync.stop_channels()
        sync.context.term()
        step("done")

    asyncio.run(main())
    """
)


def test_tear_downs_that_end_zmq_contexts_never_hang(kernel: Kernel) -> None:
    km, _ = kernel
    try:
        done = subprocess.run(
            [sys.executable, "-c", _TEARDOWNS, km.connection_file],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"hung at: {out.strip().splitlines()[-1:]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "done"


def test_a_client_ends_the_context_it_made_and_makes_another_when_restarted(
    kernel: Kernel,
) -> None:
    km, _ = kernel
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        first = kc.context
        assert first is not zmq.Context.instance()
        kc.stop_channels()
        assert first.closed
        kc.start_channels()  # again, as a reconnect to new ports does
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert kc.context is not first and not kc.context.closed
        reply, outputs = run_code(kc, "'again'")
        assert reply["content"]["status"] == "ok" and result_text(outputs) == "'again'"
    finally:
        kc.stop_channels()
    assert kc.context.closed


def test_an_async_clients_context_is_an_asyncio_context_of_its_own(kernel: Kernel) -> None:
    km, _ = kernel
    kc = async_client(km)

    async def go() -> zmq.Context[Any]:
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            ctx = kc.context
            assert isinstance(ctx, zmq.asyncio.Context)
            assert ctx.underlying != zmq.Context.instance().underlying
            reply = await kc.execute("1", reply=True, timeout=BOUND)
            assert reply["content"]["status"] == "ok"
            return ctx
        finally:
            kc.stop_channels()

    assert run(go()).closed


def test_a_context_given_to_a_client_is_left_open(kernel: Kernel) -> None:
    km, _ = kernel
    ctx = zmq.Context()
    try:
        kc = km.client(context=ctx)
        kc.start_channels()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        kc.stop_channels()
        assert not ctx.closed
    finally:
        ctx.destroy(linger=0)
    with pytest.raises(TraitError):
        AsyncKernelClient(context=zmq.Context.instance())  # not asyncio, as jupyter_client


def test_a_collected_client_ends_its_unused_context_quietly() -> None:
    kc = BlockingKernelClient()
    ctx = kc.context  # made, never used for a channel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyzmq's "unclosed context" ResourceWarning
        del kc
        gc.collect()
    assert ctx.closed


# -- get_msg / get_*_msg signatures ----------------------------------------------------


def _positional(fn: Any) -> list[tuple[str, Any]]:
    """(name, default) of the parameters a caller may pass by position (self excluded)."""
    return [
        (p.name, p.default)
        for p in list(inspect.signature(fn).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def test_channel_get_msg_signatures_are_jupyter_clients() -> None:
    import jupyter_client.channels as jc

    pairs = [
        (ZMQSocketChannel, jc.ZMQSocketChannel),
        (AsyncZMQSocketChannel, jc.AsyncZMQSocketChannel),
    ]
    for ours, theirs in pairs:
        for name in ("get_msg", "get_msgs", "msg_ready"):
            assert _positional(getattr(ours, name)) == _positional(getattr(theirs, name)), (
                ours.__name__,
                name,
            )
        block = inspect.signature(ours.get_msg).parameters["block"]
        assert block.kind is block.KEYWORD_ONLY and block.default is True
    assert _positional(ZMQSocketChannel.get_msg) == [("timeout", None)]
    # The threaded channels hand messages to handlers: neither library gives them these.
    import jupyter_client.threaded as jc_threaded

    for name in ("get_msg", "get_msgs", "msg_ready"):
        assert hasattr(ThreadedZMQSocketChannel, name) is False
        assert hasattr(jc_threaded.ThreadedZMQSocketChannel, name) is False


@pytest.mark.parametrize("channel", ["shell", "iopub", "stdin", "control"])
def test_client_get_msg_signatures_take_timeout_first(channel: str) -> None:
    import jupyter_client.threaded

    name = f"get_{channel}_msg"
    for cls in (BlockingKernelClient, AsyncKernelClient):
        fn = getattr(cls, name)
        assert _positional(fn) == [("timeout", None)], (cls.__name__, name)
        assert inspect.signature(fn).parameters["block"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.iscoroutinefunction(AsyncKernelClient.__dict__[name])
    # jupyter_client's threaded client has no get_*_msg (replies go to handlers): nor has ours.
    theirs = jupyter_client.threaded.ThreadedKernelClient
    assert hasattr(ThreadedKernelClient, name) is hasattr(theirs, name) is False


def test_a_positional_timeout_bounds_blocking_waits(kernel: Kernel) -> None:
    km, _ = kernel
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        # Nothing ever comes on stdin unless the kernel asks for input.
        with pytest.raises(Empty):
            ends_within(lambda: kc.get_stdin_msg(0.2), 10, kc.stop_channels)
        with pytest.raises(Empty):
            ends_within(lambda: kc.stdin_channel.get_msg(0.2), 10, kc.stop_channels)
        msg_id = kc.kernel_info()
        reply = kc.get_shell_msg(BOUND)
        assert reply["parent_header"]["msg_id"] == msg_id
        # The older keyword forms still work.
        with pytest.raises(Empty):
            kc.get_control_msg(block=False)
        with pytest.raises(Empty):
            kc.shell_channel.get_msg(block=False, timeout=5)
        msg_id = kc.kernel_info()
        assert kc.get_shell_msg(block=True, timeout=BOUND)["parent_header"]["msg_id"] == msg_id
        assert kc.shell_channel.get_msgs() == []
        assert kc.shell_channel.msg_ready() is False
    finally:
        kc.stop_channels()


def test_a_positional_timeout_bounds_async_waits(kernel: Kernel) -> None:
    km, _ = kernel
    kc = async_client(km)

    async def go() -> None:
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            with pytest.raises(Empty):
                await asyncio.wait_for(kc.get_stdin_msg(0.2), 10)
            with pytest.raises(Empty):
                await asyncio.wait_for(kc.stdin_channel.get_msg(0.2), 10)
            msg_id = kc.kernel_info()
            reply = await kc.get_shell_msg(BOUND)
            assert reply["parent_header"]["msg_id"] == msg_id
            with pytest.raises(Empty):
                await kc.get_control_msg(block=False)
            msg_id = kc.kernel_info()
            reply = await kc.shell_channel.get_msg(timeout=BOUND, block=True)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert await kc.shell_channel.get_msgs() == []
            assert await kc.shell_channel.msg_ready() is False
        finally:
            kc.stop_channels()

    run(go(), timeout=READY_TIMEOUT)


def test_a_client_that_cannot_wait_refuses_reply_true_before_sending() -> None:
    """The base KernelClient only sends: ``reply=True`` is a TypeError that
    names the faces that wait, raised before anything is sent."""
    from kernel_connect.client import KernelClient

    kc = KernelClient()
    with pytest.raises(TypeError, match="BlockingKernelClient or AsyncKernelClient"):
        kc.execute("1", reply=True)
    assert kc._shell_channel is None, "nothing was sent, so no channel was opened"
