"""ThreadedKernelClient on a real ipykernel: messages reach call_handlers in one I/O thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from traitlets import Type

from kernel_connect.manager import KernelManager
from kernel_connect.threaded import ThreadedKernelClient, ThreadedZMQSocketChannel
from kernel_fixtures import READY_TIMEOUT, start_ready_kernel, stop_kernel

pytestmark = pytest.mark.kernel

IO_THREAD = "kernel-client-io"


class QueueChannel(ThreadedZMQSocketChannel):
    """Puts (thread name, message) of every message it gets into its client's queue."""

    received: queue.Queue[tuple[str, dict[str, Any]]]

    def call_handlers(self, msg: dict[str, Any]) -> None:
        self.received.put((threading.current_thread().name, msg))


class QueueClient(ThreadedKernelClient):
    shell_channel_class = Type(QueueChannel)
    iopub_channel_class = Type(QueueChannel)
    stdin_channel_class = Type(QueueChannel)
    control_channel_class = Type(QueueChannel)

    def start_channels(self, *args: Any, **kwargs: Any) -> None:
        QueueChannel.received = self.received = queue.Queue()
        super().start_channels(*args, **kwargs)


def is_idle(msg: dict[str, Any], msg_id: str) -> bool:
    return (
        msg["msg_type"] == "status"
        and msg["parent_header"].get("msg_id") == msg_id
        and msg["content"]["execution_state"] == "idle"
    )


@pytest.fixture(scope="module")
def kernel_manager() -> Iterator[KernelManager]:
    km, kc = start_ready_kernel()
    kc.stop_channels()
    yield km
    stop_kernel(km)


def reply_to(
    kc: QueueClient, msg_id: str, seen: list[dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]]:
    """The reply to ``msg_id`` and the thread it came in (other messages go to ``seen``)."""
    while True:
        thread, msg = kc.received.get(timeout=READY_TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"].endswith("_reply"):
            return thread, msg
        if seen is not None:
            seen.append(msg)


def test_messages_reach_call_handlers_in_the_io_thread(kernel_manager: KernelManager) -> None:
    km = kernel_manager
    km.client_class = f"{__name__}.QueueClient"
    kc = km.client()
    assert isinstance(kc, QueueClient)
    before = threading.active_count()
    kc.start_channels()
    try:
        assert kc.ioloop is not None
        assert threading.active_count() == before + 1  # one thread, not one per channel
        thread, reply = reply_to(kc, kc.kernel_info())
        assert thread == IO_THREAD
        assert reply["msg_type"] == "kernel_info_reply"
        assert kc.kernel_info_reply is not None  # noticed in the I/O thread
        # Requests may be sent from any thread.
        sent: list[str] = []
        sender = threading.Thread(target=lambda: sent.append(kc.execute("print('hi')")))
        sender.start()
        sender.join(READY_TIMEOUT)
        outputs: list[dict[str, Any]] = []
        thread, reply = reply_to(kc, sent[0], outputs)
        assert thread == IO_THREAD and reply["content"]["status"] == "ok"
        kc.iopub_channel.flush()
        while not any(is_idle(m, sent[0]) for m in outputs):  # IOPub may trail the reply
            thread, msg = kc.received.get(timeout=READY_TIMEOUT)
            assert thread == IO_THREAD
            outputs.append(msg)
        assert any(m["msg_type"] == "stream" and m["content"]["text"] == "hi\n" for m in outputs)
        assert kc.is_alive()
        with pytest.raises(TypeError, match="call_handlers"):
            kc.kernel_info(reply=True)
    finally:
        kc.stop_channels()
    assert kc.ioloop is None
    assert not [t for t in threading.enumerate() if t.name == IO_THREAD and t.is_alive()]
    with pytest.raises(OSError, match="closed"):
        ThreadedZMQSocketChannel.flush(kc_closed_channel(km))


def kc_closed_channel(km: KernelManager) -> ThreadedZMQSocketChannel:
    """A channel of a client whose channels were started and stopped again."""
    kc = ThreadedKernelClient()
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels(shell=False, stdin=False, hb=False, control=False)
    channel = kc.iopub_channel
    kc.stop_channels()
    return channel
