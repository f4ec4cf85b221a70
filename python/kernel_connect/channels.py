"""Channels of a kernel client: one zmq socket each (blocking or asyncio), plus the heartbeat.

No channel runs a thread: blocking channels wait in the caller's thread, asyncio
channels in the running loop, and the heartbeat pings on demand. A
:class:`HandshakeWatch` tells when a channel's connection to the kernel is up.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from queue import Empty
from typing import Any

import zmq

from kernel_connect.errors import KernelDeath
from kernel_connect.session import Session, blocking_view

log = logging.getLogger(__name__)


def _monitor_event(frames: list[bytes]) -> int:
    """The event number of one zmq monitor message (its first frame packs the
    16-bit event and a 32-bit value; the second is the endpoint).

    Ours rather than zmq.utils.monitor.recv_monitor_message, which imports
    zmq.asyncio, and with it asyncio, into every blocking client.
    """
    event: int = struct.unpack_from("=H", frames[0])[0]
    return event


class SocketChannel:
    """What the message channels share: one zmq socket, signed messages, read-ahead.

    Reads and sends never wait here; the subclasses add the waiting, blocking
    (:class:`ZMQSocketChannel`) or awaiting (:class:`AsyncZMQSocketChannel`).

    Parameters
    ----------
    socket : zmq.Socket
        A connected socket; the channel owns and closes it.
    session : Session
        Signs outgoing and checks incoming messages.
    loop : object, optional
        Unused (jupyter_client's signature).
    """

    def __init__(self, socket: zmq.Socket[Any], session: Session, loop: Any = None) -> None:
        self.socket: zmq.Socket[Any] | None = socket
        self._view: zmq.Socket[Any] | None = blocking_view(socket)
        self.session = session
        # Messages whose replies nobody waits for any more (see ``discard``).
        self._discard_parents: set[str] = set()
        # Messages read but handed back (see ``requeue``); served first.
        self._pending: deque[dict[str, Any]] = deque()

    def requeue(self, msgs: list[dict[str, Any]]) -> None:
        """Hand back messages read ahead of time; they are returned first, in order."""
        self._pending.extend(msgs)

    def discard(self, parent_ids: set[str]) -> None:
        """Silently drop future messages that are replies to ``parent_ids``."""
        self._discard_parents |= parent_ids

    def take(self) -> dict[str, Any] | None:
        """The next message if one is here now (without waiting), else None.

        Messages that fail verification (wrong key, replay) or answer a
        discarded request are dropped on the way.
        """
        if self._pending:
            return self._pending.popleft()
        view = self._view
        if view is None:
            raise RuntimeError("channel is closed")
        while True:
            try:
                _, msg = self.session.recv(view, mode=zmq.NOBLOCK)
            except ValueError as e:
                # A message we cannot verify is not ours to act on.
                log.warning("dropping a message that failed verification: %s", e)
                continue
            if msg is None:
                return None
            parent = msg["parent_header"].get("msg_id")
            if parent is not None and parent in self._discard_parents:
                continue
            return msg

    def take_all(self) -> list[dict[str, Any]]:
        """Every message that is here now."""
        msgs = []
        while (msg := self.take()) is not None:
            msgs.append(msg)
        return msgs

    def ready_now(self) -> bool:
        """Whether a message is waiting (read ahead, or on the socket)."""
        if self._pending:
            return True
        return bool(self._view is not None and self._view.poll(0, zmq.POLLIN))

    def send(self, msg: dict[str, Any]) -> None:
        """Sign and send a message dict (as built by ``Session.msg``)."""
        if self._view is None:
            raise RuntimeError("channel is closed")
        self.session.send(self._view, msg)

    def start(self) -> None:
        """Nothing to start: the socket is connected already (API parity)."""

    def stop(self) -> None:
        """Close the channel."""
        self.close()

    def close(self) -> None:
        """Close the socket (pending outgoing messages linger briefly)."""
        sock, self.socket, self._view = self.socket, None, None
        if sock is not None:
            sock.close()

    def is_alive(self) -> bool:
        """Whether the channel is open."""
        return self.socket is not None


class ZMQSocketChannel(SocketChannel):
    """A blocking channel (shell, iopub, stdin or control) over one zmq socket."""

    def get_msg(self, timeout: float | None = None, *, block: bool = True) -> dict[str, Any]:
        """Return the next message.

        ``timeout`` comes first, as in jupyter_client 8 (``get_msg(5)`` waits
        five seconds); ``block`` is kept, keyword-only, for callers of the
        older ``get_msg(block=..., timeout=...)``.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (None: forever; 0: only a message already here).
        block : bool
            False: only take a message that is already here, whatever ``timeout``.

        Raises
        ------
        queue.Empty
            If no message came in time.
        """
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            msg = self.take()
            if msg is not None:
                return msg
            if not block:
                raise Empty
            if deadline is None:
                wait_ms: int | None = None
            else:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            assert self._view is not None
            if not self._view.poll(wait_ms, zmq.POLLIN) and wait_ms is not None:
                if self.ready_now():
                    continue
                raise Empty

    def get_msgs(self) -> list[dict[str, Any]]:
        """Return every message that is already waiting (without waiting for more)."""
        if self.socket is None:
            raise RuntimeError("channel is closed")
        return self.take_all()

    def msg_ready(self) -> bool:
        """Whether a message is waiting."""
        return self.ready_now()


class AsyncZMQSocketChannel(SocketChannel):
    """A channel over one ``zmq.asyncio`` socket: its waits are coroutines.

    Reads and sends go through a blocking view of the socket and never wait;
    waiting awaits the socket's readiness in the running loop (no thread).

    Raises
    ------
    ValueError
        If ``socket`` is not a ``zmq.asyncio.Socket``.
    """

    def __init__(self, socket: zmq.Socket[Any], session: Session, loop: Any = None) -> None:
        import zmq.asyncio

        if not isinstance(socket, zmq.asyncio.Socket):
            raise ValueError("AsyncZMQSocketChannel needs a zmq.asyncio socket")
        super().__init__(socket, session, loop)

    async def get_msg(self, timeout: float | None = None, *, block: bool = True) -> dict[str, Any]:
        """Return the next message (``queue.Empty`` if none came within ``timeout`` s).

        The parameters are those of :meth:`ZMQSocketChannel.get_msg`: ``timeout``
        first, as in jupyter_client 8; ``block`` keyword-only.
        """
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            msg = self.take()
            if msg is not None:
                return msg
            if not block:
                raise Empty
            if deadline is None:
                wait_ms: int | None = None
            else:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            sock: Any = self.socket  # a zmq.asyncio socket: poll is awaitable
            if sock is None:
                raise RuntimeError("channel is closed")
            ready = await sock.poll(wait_ms, zmq.POLLIN)
            if not ready and wait_ms is not None and not self.ready_now():
                raise Empty

    async def get_msgs(self) -> list[dict[str, Any]]:
        """Return every message that is already waiting (without waiting for more)."""
        if self.socket is None:
            raise RuntimeError("channel is closed")
        return self.take_all()

    async def msg_ready(self) -> bool:
        """Whether a message is waiting."""
        return self.ready_now()


class HandshakeWatch:
    """Whether a connecting socket's connection to its peer is up: its ZMTP handshake done.

    A DEALER queues what we send until its connection is up, so the kernel's
    answers to our requests always find their way back. What the kernel starts
    itself does not wait: an ``input_request`` goes to the stdin ROUTER
    addressed to our identity, and the ROUTER drops it unless our connection
    has completed its handshake, leaving the kernel waiting for a reply that
    never comes. Only a socket monitor tells when that is (ZMQ_IMMEDIATE would
    let POLLOUT tell, but would also make a send with no connection up block,
    and drop replies queued across a reconnect). So the watch is attached
    before the socket connects (``before_connect``), or the event could be
    missed, and closed once it has served: the monitor costs an inproc socket
    pair.

    Parameters
    ----------
    socket : zmq.Socket
        The socket to watch, not connected yet; the caller keeps owning it.
    """

    _EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
    _serial = itertools.count()

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self._watched: zmq.Socket[Any] | None = socket
        # An address of our own: pyzmq's default is named after the socket's fd,
        # which a new socket may reuse while libzmq still holds the old endpoint.
        addr = f"inproc://kernel-connect-handshake-{next(self._serial)}"
        #: The monitor socket (of the watched socket's kind, asyncio or not), to poll.
        self.socket: zmq.Socket[Any] | None = socket.get_monitor_socket(self._EVENTS, addr)
        self._view: zmq.Socket[Any] | None = blocking_view(self.socket)
        self._up = False

    def pending(self) -> bool:
        """Whether the connection is still to come up (reads the events that arrived).

        False once the handshake has succeeded (and the connection not dropped
        since), and when the watched socket or the watch is closed: nothing to
        wait for then.
        """
        view, watched = self._view, self._watched
        if view is None or watched is None or watched.closed:
            return False
        while True:
            try:
                event = _monitor_event(view.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return not self._up
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._up = True
            elif event == zmq.EVENT_DISCONNECTED:
                self._up = False

    def close(self) -> None:
        """Stop monitoring and close the monitor socket (the watched socket stays open)."""
        watched, self._watched = self._watched, None
        sock, self.socket, self._view = self.socket, None, None
        if watched is not None and not watched.closed:
            with suppress(zmq.ZMQError):
                watched.disable_monitor()
        if sock is not None:
            sock.close(linger=0)


class HBChannel:
    """The heartbeat: ping the kernel and see whether the echo comes back in time.

    Pings are made on demand rather than by a background thread, so a client
    costs no thread and no CPU while idle.

    Parameters
    ----------
    connect : callable
        Returns a new REQ socket connected to the kernel's heartbeat port.
    time_to_dead : float
        Seconds to wait for an echo before the kernel counts as dead.
    """

    def __init__(self, connect: Callable[[], zmq.Socket[Any]], time_to_dead: float = 1.0) -> None:
        self._connect = connect
        self.time_to_dead = time_to_dead
        self._socket: zmq.Socket[Any] | None = None
        self._lock = threading.Lock()
        self._paused = False
        self._running = False

    def start(self) -> None:
        """Enable heartbeat checks."""
        self._running = True

    def stop(self) -> None:
        """Disable checks and close the socket."""
        self._running = False
        self.close()

    def pause(self) -> None:
        """Report the kernel as beating without pinging (e.g. while it is busy in C)."""
        self._paused = True

    def unpause(self) -> None:
        """Resume real pings."""
        self._paused = False

    def is_alive(self) -> bool:
        """Whether the channel is running."""
        return self._running

    @property
    def paused(self) -> bool:
        """Whether checks are paused (see :meth:`pause`)."""
        return self._paused

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None

    def is_beating(self, timeout: float | None = None) -> bool:
        """Ping the kernel and wait for the echo.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait (default ``time_to_dead``).

        Returns
        -------
        bool
            True if the kernel echoed in time (always True while paused).
        """
        if self._paused:
            return True
        wait = self.time_to_dead if timeout is None else timeout
        with self._lock:
            if self._socket is None:
                self._socket = self._connect()
            sock = self._socket
            view = blocking_view(sock)
            payload = b"ping %f" % time.monotonic()
            view.send(payload)
            if not view.poll(max(0, int(wait * 1000)), zmq.POLLIN):
                # A REQ socket that missed its reply is stuck: start afresh.
                sock.close(linger=0)
                self._socket = None
                return False
            return bool(view.recv() == payload)

    async def is_beating_async(self, timeout: float | None = None) -> bool:
        """:meth:`is_beating` for asyncio: the wait for the echo is awaited.

        Each call pings on a socket of its own, so concurrent calls (and a
        blocking :meth:`is_beating` in another thread) never share a REQ cycle.
        """
        import zmq.asyncio

        if self._paused:
            return True
        wait = self.time_to_dead if timeout is None else timeout
        sock = self._connect()
        try:
            view = blocking_view(sock)
            payload = b"ping %f" % time.monotonic()
            view.send(payload)
            poller = zmq.asyncio.Poller()
            poller.register(sock, zmq.POLLIN)
            if not await poller.poll(max(0, int(wait * 1000))):
                return False
            return bool(view.recv() == payload)
        finally:
            sock.close(linger=0)


class HeartbeatWatch:
    """A heartbeat that never blocks, for checking on a kernel between slices of a long wait.

    Each :meth:`is_alive` call sends a ping when none is out, or looks (without
    waiting) for the echo of the one that is. A ping not echoed within
    ``time_to_dead`` is a missed beat. The kernel counts as dead after
    ``missed_beats`` misses in a row, so one slow echo on a loaded host or a
    slow link is not a death. Until the kernel has shown it is up (an echo, or
    :meth:`kernel_answered`) it may still be starting, nothing listening on its
    port yet, so it counts as dead only after ``first_echo_grace`` seconds as well.

    Parameters
    ----------
    connect : callable
        Returns a new REQ socket connected to the kernel's heartbeat port.
    time_to_dead : float
        Seconds to wait for each echo.
    missed_beats : int
        Misses in a row that make the kernel dead.
    first_echo_grace : float
        Seconds from the first check during which a kernel that never showed
        it is up is taken to be starting rather than dead.
    where : str
        The heartbeat's address, for the death description.
    """

    def __init__(
        self,
        connect: Callable[[], zmq.Socket[Any]],
        time_to_dead: float = 1.0,
        missed_beats: int = 3,
        first_echo_grace: float = 30.0,
        where: str = "",
    ) -> None:
        self._connect = connect
        self.time_to_dead = time_to_dead
        self.missed_beats = max(1, missed_beats)
        self.first_echo_grace = first_echo_grace
        self.where = where
        self._lock = threading.Lock()
        self._socket: zmq.Socket[Any] | None = None
        self._view: zmq.Socket[Any] | None = None
        self._payload = b""
        self._sent_at: float | None = None  # when the ping that is out was sent
        self._next_ping = float("-inf")
        self._started: float | None = None
        self._last_echo: float | None = None
        self._answered = False
        #: Pings in a row that went unanswered.
        self.missed = 0

    def kernel_answered(self) -> None:
        """Note that the kernel is up (it replied on another channel): no start-up grace."""
        self._answered = True

    def is_alive(self) -> bool:
        """Advance the heartbeat without blocking; False once the kernel counts as dead."""
        with self._lock:
            now = time.monotonic()
            if self._started is None:
                self._started = now
            if self._sent_at is not None:
                self._collect_echo(now)
            if self._sent_at is None and now >= self._next_ping:
                self._ping(now)
            return not self._dead(now)

    def _collect_echo(self, now: float) -> None:
        assert self._sent_at is not None
        sock = self._view
        if sock is not None and sock.poll(0, zmq.POLLIN) and sock.recv() == self._payload:
            self.missed = 0
            self._last_echo = now
            self._sent_at = None
            # Alive: the next ping can wait as long as an echo may take.
            self._next_ping = now + self.time_to_dead
            return
        if now - self._sent_at >= self.time_to_dead:
            self.missed += 1
            self._sent_at = None
            self._next_ping = now
            # A REQ socket that missed its reply is stuck: start afresh.
            self._close_socket()

    def _ping(self, now: float) -> None:
        if self._socket is None:
            self._socket = self._connect()
            self._view = blocking_view(self._socket)
        assert self._view is not None
        self._payload = b"watch %f" % now
        self._sent_at = now
        # Not sent (queue full): it counts as missed, like a ping without an echo.
        with suppress(zmq.Again):
            self._view.send(self._payload, zmq.NOBLOCK)

    def _dead(self, now: float) -> bool:
        if self.missed < self.missed_beats:
            return False
        if self._last_echo is not None or self._answered:
            return True
        assert self._started is not None
        return now - self._started >= self.first_echo_grace

    def death(self) -> KernelDeath:
        """How the kernel ended, as far as the heartbeat can tell."""
        with self._lock:
            since = self._last_echo if self._last_echo is not None else self._started
            silent = 0.0 if since is None else time.monotonic() - since
            never = "" if self._last_echo is not None else " (it never echoed one)"
        where = f" at {self.where}" if self.where else ""
        return KernelDeath(
            f"no heartbeat echo from the kernel{where} for {silent:.1f} s, "
            f"{self.missed} missed beats in a row{never}: it died or cannot be reached"
        )

    def _close_socket(self) -> None:
        sock, self._socket, self._view = self._socket, None, None
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        """Close the socket (a later :meth:`is_alive` opens a new one)."""
        with self._lock:
            self._close_socket()
            self._sent_at = None


__all__ = [
    "AsyncZMQSocketChannel",
    "HBChannel",
    "HandshakeWatch",
    "HeartbeatWatch",
    "SocketChannel",
    "ZMQSocketChannel",
    "blocking_view",
]
