"""ThreadedKernelClient: channels that hand every message to a handler, in one I/O thread.

As jupyter_client.threaded: each message channel calls ``call_handlers(msg)``
for every message that arrives, in the client's I/O thread (subclass the
channel classes and set the client's ``*_channel_class`` traits to act on
them, as GUI frontends do), and ``send`` may be called from any thread. One
thread per client, running an asyncio event loop (no tornado): the sockets
are watched with ``loop.add_reader``, no thread per channel. The heartbeat is
pinged on demand (``is_alive``). Replies are delivered to the handlers, so
``reply=True`` is not available here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ClassVar, NoReturn

import zmq
from traitlets import Instance, Type

from kernel_connect.client import KernelClient
from kernel_connect.session import Session

log = logging.getLogger(__name__)

# How long to wait for the I/O thread to set up or close a channel.
_LOOP_CALL_TIMEOUT_S = 10.0


class IOLoopThread(threading.Thread):
    """A daemon thread running an asyncio event loop (``ioloop``) for a ThreadedKernelClient."""

    def __init__(self) -> None:
        super().__init__(name="kernel-client-io", daemon=True)
        #: The thread's event loop (None until started, and after stop).
        self.ioloop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; return once its event loop runs."""
        super().start()
        if not self._loop_ready.wait(_LOOP_CALL_TIMEOUT_S):
            raise RuntimeError("the I/O thread's event loop did not start")
        if self._error is not None:
            raise RuntimeError("the I/O thread's event loop did not start") from self._error

    def run(self) -> None:
        """Run the event loop until :meth:`stop`."""
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        except BaseException as e:
            self._error = e
            self._loop_ready.set()
            raise
        self.ioloop = loop
        loop.call_soon(self._loop_ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop the event loop and join the thread."""
        loop = self.ioloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        self.ioloop = None

    def close(self) -> None:
        """Nothing left to release once stopped (jupyter_client's API)."""


def _call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any], timeout: float) -> Any:
    """Run ``fn`` in ``loop``'s thread and wait (``timeout`` s at most) for its result."""
    if loop.is_closed():
        raise RuntimeError("the I/O thread has stopped")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return fn()
    done: Future[Any] = Future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)

    loop.call_soon_threadsafe(call)
    return done.result(timeout)


class ThreadedZMQSocketChannel:
    """A channel whose messages are handed to :meth:`call_handlers` in the I/O thread.

    Parameters
    ----------
    socket : zmq.Socket
        A connected (blocking) socket; the channel owns it and, once set up,
        uses it only in the I/O thread.
    session : Session
        Signs outgoing and checks incoming messages.
    loop : asyncio event loop
        The client's I/O loop (``ThreadedKernelClient.ioloop``).
    """

    def __init__(
        self, socket: zmq.Socket[Any], session: Session, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        if loop is None:
            socket.close(linger=0)
            raise RuntimeError("start the client's channels first: its I/O thread is not running")
        self.socket: zmq.Socket[Any] | None = socket
        self.session = session
        self.ioloop = loop
        self._is_alive = False
        # Called with every message before the handlers (the client watches for
        # its kernel_info_reply this way).
        self._inspect: Callable[[dict[str, Any]], Any] | None = None
        _call_in_loop(loop, self._setup, _LOOP_CALL_TIMEOUT_S)

    def _setup(self) -> None:
        sock = self.socket
        assert sock is not None
        self.ioloop.add_reader(sock.FD, self._on_readable)
        self._on_readable()  # the FD signals edges: take what came before we watched

    def _on_readable(self) -> None:
        """Read every waiting message and hand each to the handlers (I/O thread)."""
        sock = self.socket
        while sock is not None and int(sock.get(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle_recv(frames)
            sock = self.socket

    def _handle_recv(self, frames: list[bytes]) -> None:
        _, parts = self.session.feed_identities(frames)
        try:
            msg = self.session.deserialize(parts)
        except ValueError as e:
            log.warning("dropping a message that failed verification: %s", e)
            return
        if self._inspect is not None:
            self._inspect(msg)
        try:
            self.call_handlers(msg)
        except Exception:
            log.exception("a channel's call_handlers failed")

    def call_handlers(self, msg: dict[str, Any]) -> None:
        """Called in the I/O thread with every message; override to handle them.

        Hand the work to the application's own thread when it must run there
        (a GUI's, for instance).
        """

    def process_events(self) -> None:
        """Process pending GUI events (for subclasses; nothing here)."""

    def send(self, msg: dict[str, Any]) -> None:
        """Sign and send a message dict from the I/O thread (callable from any thread)."""
        if self.socket is None:
            raise RuntimeError("channel is closed")
        self.ioloop.call_soon_threadsafe(self._send_in_loop, msg)

    def _send_in_loop(self, msg: dict[str, Any]) -> None:
        sock = self.socket
        if sock is None:
            return
        self.session.send(sock, msg)
        self._on_readable()  # a send may consume the FD's edge for a waiting message

    def flush(self, timeout: float = 1.0) -> None:
        """Hand every message that has arrived so far to the handlers (thread-safe).

        Raises
        ------
        OSError
            If the channel is closed.
        """
        if self.socket is None or self.ioloop.is_closed():
            raise OSError("Attempt to flush closed stream")
        stop_time = time.monotonic() + timeout
        # Twice, so that the loop makes at least one full pass between them.
        for _ in range(2):
            try:
                _call_in_loop(
                    self.ioloop, self._on_readable, max(0.0, stop_time - time.monotonic())
                )
            except FutureTimeout:
                return

    def start(self) -> None:
        """Mark the channel running."""
        self._is_alive = True

    def stop(self) -> None:
        """Mark the channel stopped."""
        self._is_alive = False

    def is_alive(self) -> bool:
        """Whether the channel runs."""
        return self._is_alive

    def close(self) -> None:
        """Stop watching the socket and close it (in the I/O thread while it runs)."""
        self._is_alive = False
        if self.socket is None:
            return
        if self.ioloop.is_closed():
            self._close_socket()
            return
        try:
            _call_in_loop(self.ioloop, self._close_in_loop, _LOOP_CALL_TIMEOUT_S)
        except (RuntimeError, FutureTimeout):
            self._close_socket()

    def _close_in_loop(self) -> None:
        sock = self.socket
        if sock is not None:
            self.ioloop.remove_reader(sock.FD)
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.close(linger=0)


class ThreadedKernelClient(KernelClient[NoReturn, ThreadedZMQSocketChannel]):
    """A client whose channels deliver messages to handlers in one I/O thread.

    ``start_channels`` starts the I/O thread (an asyncio loop); the request
    methods return the msg_id and may be called from any thread; replies and
    output reach the channels' ``call_handlers``. ``stop_channels`` closes
    the channels and stops the thread.
    """

    ioloop_thread = Instance(IOLoopThread, allow_none=True)

    # No wait_for_ready here (as jupyter_client's): no stdin monitor to read.
    _handshake_channels: ClassVar[frozenset[str]] = frozenset()

    shell_channel_class = Type(ThreadedZMQSocketChannel, klass=object)
    iopub_channel_class = Type(ThreadedZMQSocketChannel, klass=object)
    stdin_channel_class = Type(ThreadedZMQSocketChannel, klass=object)
    control_channel_class = Type(ThreadedZMQSocketChannel, klass=object)

    @property
    def ioloop(self) -> asyncio.AbstractEventLoop | None:
        """The I/O thread's event loop (None while the channels are stopped)."""
        thread = self.ioloop_thread
        return thread.ioloop if thread is not None else None

    def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        """Start the I/O thread, then connect the selected channels."""
        if self.ioloop_thread is None or not self.ioloop_thread.is_alive():
            self.ioloop_thread = IOLoopThread()
            self.ioloop_thread.start()
        if shell:
            self.shell_channel._inspect = self._check_kernel_info_reply
        super().start_channels(shell, iopub, stdin, hb, control)

    def _check_kernel_info_reply(self, msg: dict[str, Any]) -> None:
        """Record the first kernel_info_reply (runs in the I/O thread)."""
        if msg["msg_type"] == "kernel_info_reply":
            self._handle_kernel_info_reply(msg)
            if self._shell_channel is not None:
                self._shell_channel._inspect = None

    def stop_channels(self) -> None:
        """Close the channels (while the I/O thread runs), then stop the thread."""
        super().stop_channels()
        thread, self.ioloop_thread = self.ioloop_thread, None
        if thread is not None:
            thread.stop()

    def is_alive(self) -> bool:
        """Whether the kernel is alive: its manager's view when a manager made this
        client, else one heartbeat ping (True when nothing can tell)."""
        if self.liveness is not None:
            return self.liveness.is_alive()
        if self._hb_channel is not None and self._hb_channel.is_alive():
            return self._hb_channel.is_beating()
        return True

    def _request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> str:
        if reply:  # refused before anything is sent
            self._reply("", timeout, channel)
        return super()._request(channel, msg_type, content, False, timeout)

    def _reply(self, msg_id: str, timeout: float | None, channel: str) -> NoReturn:
        raise TypeError(
            "ThreadedKernelClient delivers replies to its channels' call_handlers; "
            "reply=True needs BlockingKernelClient or AsyncKernelClient"
        )


__all__ = ["IOLoopThread", "ThreadedKernelClient", "ThreadedZMQSocketChannel"]
