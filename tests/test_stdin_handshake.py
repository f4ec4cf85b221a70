"""wait_for_ready returns only once stdin is connected, so an input() right after it is heard.

The kernel sends an input_request to its stdin ROUTER addressed to our
identity; a ROUTER drops a message for a peer whose connection has not
finished its handshake, and the kernel then waits for an input_reply forever.
At a kernel's start our first connection attempts find nothing listening, and
libzmq retries each socket after its own reconnect interval (100 ms plus up to
100 ms of jitter), so shell and IOPub can be up, kernel_info answered, while
stdin is not. A relay in front of the kernel's stdin port reproduces that on a
running kernel: it closes our first connection, as a kernel not listening yet
would, and forwards the next one.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from queue import Empty

import pytest

from kernel_connect.client import AsyncKernelClient, BlockingKernelClient
from kernel_connect.errors import KernelTimeoutError
from kernel_connect.manager import KernelManager
from kernel_connect.threaded import ThreadedKernelClient
from kernel_fixtures import READY_TIMEOUT

pytestmark = pytest.mark.kernel

ROUNDS = 4  # each round is a fresh client whose stdin comes up late
# How long an input_request may take to arrive; it never does when it was dropped.
INPUT_TIMEOUT = 10.0
REPLY_TIMEOUT = 30.0


class StdinRelay:
    """A TCP relay to ``port`` that closes the first ``refused`` connections at once and
    forwards the later ones byte for byte, in a thread of its own."""

    def __init__(self, port: int, refused: int = 1) -> None:
        self.target = port
        self.refused = refused
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="stdin-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        peer: dict[socket.socket, socket.socket] = {}
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        conn, _ = sock.accept()
                        self.accepted += 1
                        if self.accepted <= self.refused:
                            conn.close()
                            continue
                        upstream = socket.create_connection(("127.0.0.1", self.target))
                        peer[conn], peer[upstream] = upstream, conn
                        sel.register(conn, selectors.EVENT_READ)
                        sel.register(upstream, selectors.EVENT_READ)
                        continue
                    data = sock.recv(65536)
                    if data:
                        peer[sock].sendall(data)
                        continue
                    other = peer.pop(sock)
                    del peer[other]
                    for s in (sock, other):
                        sel.unregister(s)
                        s.close()
        finally:
            for s in peer:
                s.close()
            sel.close()
            self._listener.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()


def _lost(km: KernelManager, round_: int) -> str:
    """Free the kernel from the input() whose request was lost; say what happened."""
    km.interrupt_kernel()
    return (
        f"round {round_}: no input_request within {INPUT_TIMEOUT} s of wait_for_ready: "
        "the kernel sent it before our stdin connection was up, and it was dropped"
    )


def test_input_right_after_wait_for_ready_blocking(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, _ = kernel
    for round_ in range(ROUNDS):
        relay = StdinRelay(km.stdin_port)
        kc = km.client()
        kc.stdin_port = relay.port
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=READY_TIMEOUT)
            accepted_when_ready, watched_when_ready = relay.accepted, dict(kc._handshakes)
            msg_id = kc.execute("input('name? ')", allow_stdin=True)
            try:
                request = kc.get_stdin_msg(timeout=INPUT_TIMEOUT)
            except Empty:
                lost = _lost(km, round_)
                kc._recv_reply(msg_id, timeout=REPLY_TIMEOUT)
                pytest.fail(lost)
            assert request["msg_type"] == "input_request"
            assert request["parent_header"]["msg_id"] == msg_id
            kc.input("x")
            assert kc._recv_reply(msg_id, timeout=REPLY_TIMEOUT)["content"]["status"] == "ok"
            # Ready only once the retried stdin connection was up; its monitor then closed.
            assert accepted_when_ready >= 2
            assert watched_when_ready == {}
        finally:
            kc.stop_channels()
            relay.close()


def test_input_right_after_wait_for_ready_async(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, _ = kernel

    async def one_round(round_: int) -> None:
        relay = StdinRelay(km.stdin_port)
        kc = AsyncKernelClient()
        kc.load_connection_info(km.get_connection_info())
        kc.stdin_port = relay.port
        try:
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            accepted_when_ready, watched_when_ready = relay.accepted, dict(kc._handshakes)
            msg_id = kc.execute("input('name? ')", allow_stdin=True)
            try:
                request = await kc.get_stdin_msg(timeout=INPUT_TIMEOUT)
            except Empty:
                lost = _lost(km, round_)
                await kc._recv_reply(msg_id, timeout=REPLY_TIMEOUT)
                pytest.fail(lost)
            assert request["parent_header"]["msg_id"] == msg_id
            kc.input("x")
            reply = await kc._recv_reply(msg_id, timeout=REPLY_TIMEOUT)
            assert reply["content"]["status"] == "ok"
            assert accepted_when_ready >= 2
            assert watched_when_ready == {}
        finally:
            kc.stop_channels()
            relay.close()

    async def rounds() -> None:
        for round_ in range(ROUNDS):
            await one_round(round_)

    asyncio.run(rounds())


def test_wait_for_ready_says_stdin_never_connected(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, _ = kernel
    relay = StdinRelay(km.stdin_port, refused=10**6)  # stdin never comes up
    kc = km.client()
    kc.stdin_port = relay.port
    try:
        kc.start_channels()
        with pytest.raises(KernelTimeoutError, match="replied to kernel_info, but our stdin"):
            kc.wait_for_ready(timeout=1.0)
        assert "stdin" in kc._handshakes  # still watched: a later wait may still see it
    finally:
        kc.stop_channels()
        relay.close()
    assert kc._handshakes == {}


def test_without_stdin_nothing_is_watched(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, _ = kernel
    kc = km.client()
    try:
        kc.start_channels(stdin=False)
        assert kc._handshakes == {}
        kc.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        kc.stop_channels()
    threaded = ThreadedKernelClient()
    threaded.load_connection_info(km.get_connection_info())
    try:
        threaded.start_channels()  # no wait_for_ready to read a monitor
        assert threaded._handshakes == {}
    finally:
        threaded.stop_channels()
