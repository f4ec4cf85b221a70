"""Blocking channels of a kernel client: one zmq socket each, plus the heartbeat."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

import zmq

from kernel_connect.session import Session

log = logging.getLogger(__name__)


class ZMQSocketChannel:
    """A blocking channel (shell, iopub, stdin or control) over one zmq socket.

    Parameters
    ----------
    socket : zmq.Socket
        A connected socket; the channel owns and closes it.
    session : Session
        Signs outgoing and checks incoming messages.
    """

    def __init__(self, socket: zmq.Socket[Any], session: Session) -> None:
        self.socket: zmq.Socket[Any] | None = socket
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

    def _recv_one(self) -> dict[str, Any] | None:
        """Read one waiting message; None if it was dropped or unreadable."""
        assert self.socket is not None
        try:
            _, msg = self.session.recv(self.socket, mode=zmq.NOBLOCK)
        except ValueError as e:
            # A message we cannot verify (wrong key, replay) is not ours to act on.
            log.warning("dropping a message that failed verification: %s", e)
            return None
        if msg is None:
            return None
        parent = msg["parent_header"].get("msg_id")
        if parent is not None and parent in self._discard_parents:
            return None
        return msg

    def get_msg(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Return the next message.

        Parameters
        ----------
        block : bool
            Wait for one (True) or only take one that is already here.
        timeout : float, optional
            Seconds to wait at most (None: forever).

        Raises
        ------
        queue.Empty
            If no message came in time.
        """
        if self.socket is None:
            raise RuntimeError("channel is closed")
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            if block:
                if deadline is None:
                    wait_ms: int | None = None
                else:
                    wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            else:
                wait_ms = 0
            if self.socket.poll(wait_ms, zmq.POLLIN):
                msg = self._recv_one()
                if msg is not None:
                    return msg
                continue
            raise Empty

    def get_msgs(self) -> list[dict[str, Any]]:
        """Return every message that is already waiting."""
        msgs = []
        while True:
            try:
                msgs.append(self.get_msg(block=False))
            except Empty:
                return msgs

    def msg_ready(self) -> bool:
        """Whether a message is waiting."""
        if self._pending:
            return True
        return bool(self.socket is not None and self.socket.poll(0, zmq.POLLIN))

    def send(self, msg: dict[str, Any]) -> None:
        """Sign and send a message dict (as built by ``Session.msg``)."""
        if self.socket is None:
            raise RuntimeError("channel is closed")
        self.session.send(self.socket, msg)

    def start(self) -> None:
        """Nothing to start: the socket is connected already (API parity)."""

    def stop(self) -> None:
        """Close the channel."""
        self.close()

    def close(self) -> None:
        """Close the socket (pending outgoing messages linger briefly)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def is_alive(self) -> bool:
        """Whether the channel is open."""
        return self.socket is not None


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
            payload = b"ping %f" % time.monotonic()
            sock.send(payload)
            if not sock.poll(max(0, int(wait * 1000)), zmq.POLLIN):
                # A REQ socket that missed its reply is stuck: start afresh.
                sock.close(linger=0)
                self._socket = None
                return False
            return bool(sock.recv() == payload)


__all__ = ["HBChannel", "ZMQSocketChannel"]
