"""Local port forwarding over one paramiko SSH connection (``ssh -L`` in-process).

A `ForwardServer` owns local listening sockets, each forwarded to a host and
port as seen from the SSH server.  One thread accepts on all of them; each
accepted connection gets a thread that opens a ``direct-tcpip`` channel and
copies bytes both ways (half-closes included).  TCP_NODELAY is set on every
local socket and on the SSH socket, so small kernel messages are not held back.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
from collections.abc import Sequence
from typing import Any

from kernel_connect.ssh.connection import SSHConnection, open_connection, set_nodelay
from kernel_connect.ssh.errors import LocalPortInUseError
from kernel_connect.ssh.options import SSHOptions
from kernel_connect.ssh.registry import register, unregister

__all__ = ["Forward", "ForwardServer", "bind_listener", "forward_tunnel"]

logger = logging.getLogger("kernel_connect.ssh")

CHUNK = 256 * 1024
LISTEN_BACKLOG = 128
CHANNEL_OPEN_TIMEOUT = 30.0


def bind_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    """Bind and listen on `host`:`port` (0 lets the OS choose).

    Raises
    ------
    LocalPortInUseError
        When another socket holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # lets a tunnel reuse a port whose old connections sit in TIME_WAIT;
        # Linux still refuses a second listener on the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LocalPortInUseError(
                f"local port {port} on {host} is already in use by another socket", port
            ) from None
        raise
    return sock


class Forward:
    """One forwarded port: a local listener and the destination it leads to."""

    def __init__(self, listener: socket.socket, remote_host: str, remote_port: int):
        self.listener = listener
        self.local_port: int = listener.getsockname()[1]
        self.remote_host = remote_host
        self.remote_port = remote_port

    def __repr__(self) -> str:
        return f"<Forward {self.local_port} -> {self.remote_host}:{self.remote_port}>"


class ForwardServer:
    """Forwards local ports over one SSH connection, in background threads.

    Parameters
    ----------
    connection : SSHConnection
        The authenticated connection to forward over; closed with the server
        when `owns_connection` is true.
    forwards : sequence of Forward
        The listeners and their destinations.

    Notes
    -----
    Use as a context manager or call `close()`.  `errors` lists the channel
    opens the SSH server refused (a closed remote port, for instance).
    """

    def __init__(
        self,
        connection: SSHConnection,
        forwards: Sequence[Forward],
        *,
        owns_connection: bool = True,
    ):
        self.connection = connection
        self.forwards = list(forwards)
        self.owns_connection = owns_connection
        self.errors: list[str] = []
        # re-entrant: close() may run from a signal handler on a thread holding it
        self._lock = threading.RLock()
        self._pairs: set[tuple[socket.socket, Any]] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        # registered here, not in the thread, so close() can never race the registration
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        for forward in self.forwards:
            self._selector.register(forward.listener, selectors.EVENT_READ, forward)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="kernel-connect-ssh-accept", daemon=True
        )

    # -- compatibility with socketserver / multiprocessing.Process users --------
    @property
    def server_address(self) -> tuple[str, int]:
        """(host, port) of the first listener, as socketserver servers have."""
        host, port = self.forwards[0].listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def local_ports(self) -> tuple[int, ...]:
        """The local ports, in the order the forwards were given."""
        return tuple(f.local_port for f in self.forwards)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        routes = ", ".join(
            f"{f.local_port}->{f.remote_host}:{f.remote_port}" for f in self.forwards
        )
        return f"<ForwardServer {routes} via {self.connection.host.name} {state}>"

    def __enter__(self) -> ForwardServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start(self) -> ForwardServer:
        """Start accepting in the background (idempotent); returns self."""
        if not self._acceptor.is_alive() and not self.closed:
            self._acceptor.start()
        return self

    def is_alive(self) -> bool:
        """True while the server accepts and its SSH connection is up."""
        return not self.closed and self.connection.is_active()

    def serve_forever(self) -> None:
        """Block until `close()` is called from another thread."""
        self.start()
        self._closed.wait()

    def join(self, timeout: float | None = None) -> None:
        """Wait until closed (for code written against multiprocessing.Process)."""
        self._closed.wait(timeout)

    def terminate(self) -> None:
        """Same as `close()`."""
        self.close()

    def close(self) -> None:
        """Stop accepting, close every forwarded connection and (if owned) the SSH connection."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            pairs = list(self._pairs)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        current = threading.current_thread()
        if self._acceptor.is_alive() and self._acceptor is not current:
            self._acceptor.join(timeout=2.0)
        for forward in self.forwards:
            with contextlib.suppress(OSError):
                forward.listener.close()
        # waking each pump through its local socket lets it close its own channel
        # (closing a channel under a thread selecting on it would leave it blocked)
        for sock, _channel in pairs:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self.owns_connection:
            self.connection.close()
        unregister(self)
        for thread in list(self._threads):
            if thread is not current and thread.is_alive():
                thread.join(timeout=2.0)
        if not self._acceptor.is_alive():
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def abandon(self) -> None:
        """Let go of the forwarding without closing anything: for a forked child.

        The parent still accepts on these listeners and forwards over this SSH
        connection; a child that woke the acceptor, shut a forwarded socket down
        or closed a channel would break them.  Afterwards the server reads as
        closed here and `close()` does nothing.
        """
        # first, so that no channel collected from here on can speak on it; owned or
        # not, the connection is the parent's
        self.connection.abandon()
        # new ones: a thread of the parent may have held the old ones at the fork
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._closed.set()

    # -- internals -------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self.closed:
            for key, _ in self._selector.select():
                if key.data is None or self.closed:
                    return
                try:
                    conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                self._spawn(conn, peer, key.data)

    def _spawn(self, conn: socket.socket, peer: Any, forward: Forward) -> None:
        set_nodelay(conn)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(conn, peer, forward),
            name=f"kernel-connect-ssh-forward-{forward.local_port}",
            daemon=True,
        )
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)
        thread.start()

    def _serve_connection(self, conn: socket.socket, peer: Any, forward: Forward) -> None:
        destination = (forward.remote_host, forward.remote_port)
        try:
            channel = self.connection.transport.open_channel(
                "direct-tcpip", destination, peer[:2], timeout=CHANNEL_OPEN_TIMEOUT
            )
        except Exception as exc:  # paramiko raises several kinds here
            conn.close()
            if self.closed:
                return  # the transport went away under us: not the destination's fault
            message = (
                f"SSH server {self.connection.host.name} could not connect to "
                f"{forward.remote_host}:{forward.remote_port} (local port "
                f"{forward.local_port}): {exc}"
            )
            logger.debug(message)
            with self._lock:
                self.errors.append(message)
            return
        with self._lock:
            closing = self._closed.is_set()
            if not closing:
                self._pairs.add((conn, channel))
        if closing:
            self._close_pair(conn, channel)
            return
        try:
            _pump(conn, channel, self._closed)
        except Exception as exc:  # a broken connection ends only itself
            logger.debug("forward %s ended: %r", forward, exc)
        finally:
            with self._lock:
                self._pairs.discard((conn, channel))
            self._close_pair(conn, channel)

    @staticmethod
    def _close_pair(sock: socket.socket, channel: Any) -> None:
        # shutdown wakes a thread blocked in select on the socket; close alone may not
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(Exception):
            channel.close()


def _pump(sock: socket.socket, channel: Any, stopping: threading.Event) -> None:
    """Copy bytes between a local socket and an SSH channel until both ends are done.

    Returns at once when the local side ends while `stopping` is set.
    """
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, "local")
        selector.register(channel, selectors.EVENT_READ, "remote")
        open_ends = 2
        while open_ends:
            for key, _ in selector.select():
                if key.data == "local":
                    data = sock.recv(CHUNK)
                    if data:
                        channel.sendall(data)
                        continue
                    if stopping.is_set():
                        return
                    channel.shutdown_write()
                else:
                    data = channel.recv(CHUNK)
                    if data:
                        sock.sendall(data)
                        continue
                    if channel.closed and open_ends == 2:
                        # the server closed the channel outright: nothing more will come
                        return
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                selector.unregister(key.fileobj)
                open_ends -= 1


def forward_tunnel(
    local_port: int,
    remote_port: int,
    remote_host: str,
    ssh_server: str,
    ssh_keyfile: str | None = None,
    password: str | None = None,
    **options: Any,
) -> ForwardServer:
    """Forward a local port to `remote_host`:`remote_port` as seen from `ssh_server`.

    Parameters
    ----------
    local_port : int
        Port to listen on at 127.0.0.1 (0 picks a free one; see `local_ports`).
    remote_port : int
        Destination port.
    remote_host : str
        Destination host, as the SSH server resolves it.
    ssh_server : str
        ``[user@]host[:port]`` or an ssh-config alias.
    ssh_keyfile : str, optional
        Private key to offer.
    password : str, optional
        Login password / key passphrase.
    **options
        ``known_hosts``, ``allow_new_host``, ``ssh_config``, ``timeout`` (see
        `kernel_connect.ssh.options.SSHOptions`).

    Returns
    -------
    ForwardServer
        Already serving in a background thread; close it (or use ``with``).
        It is also closed when the process exits.
    """
    settings = SSHOptions.from_kwargs(keyfile=ssh_keyfile, password=password, **options)
    listener = bind_listener(local_port)
    try:
        connection = open_connection(ssh_server, settings)
    except BaseException:
        listener.close()
        raise
    server = ForwardServer(connection, [Forward(listener, remote_host, remote_port)])
    register(server)
    return server.start()
