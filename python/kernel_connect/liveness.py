"""Is the kernel behind a connection file alive? Answered for thousands of files at once.

A farm's runtime directory holds a few live kernels and thousands of files of
kernels that died without cleaning up. Each file gets one of three states:

- **dead** only when this host can prove it: a TCP kernel on a local address
  whose ports nothing listens on and no live process holds in the reservation
  table, or an IPC kernel none of whose socket paths is bound;
- **alive** when its heartbeat answers (TCP) or one of its sockets is bound (IPC:
  judged by the socket paths alone, never by how fast a heartbeat answers);
- **unknown**, with the reason, for everything this host cannot judge: a
  non-local address (a remote kernel reached through a tunnel), port 0 (a
  kernel still binding its own ports), an unreadable file, ports in use whose
  heartbeat stays silent.

It stays cheap: listening TCP ports are read from /proc/net/tcp{,6} in one
pass (elsewhere a connect attempt on the local address, refused at once, tells
the same), and only heartbeats something listens on are pinged, concurrently
through one zmq poller, so the whole run costs about one timeout. Nothing is
ever sent to a non-local address.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernel_connect import _native
from kernel_connect.connect import port_names
from kernel_connect.localinterfaces import is_local_ip
from kernel_connect.secrets import redacted

#: How long a heartbeat has to answer.
DEFAULT_TIMEOUT = 1.0
#: The files considered unless told otherwise: jupyter's own naming.
DEFAULT_PATTERN = "kernel-*.json"
#: At most this many heartbeat sockets are open at once.
_WAVE = 512
#: Bind-anywhere addresses: a kernel with one of these listens on this host's loopback too.
_WILDCARDS = ("", "*", "0.0.0.0", "::", "[::]")  # noqa: S104 - compared, not bound


@dataclass(repr=False)
class ConnectionFileStatus:
    """One connection file and what is known about its kernel.

    ``alive`` is True, False (dead: proved from this host) or None (unknown:
    this host cannot judge it; ``reason`` says why). Its repr shows the
    connection info with the secrets redacted.
    """

    path: str
    info: dict[str, Any] | None = None
    error: str | None = None
    age_s: float = 0.0
    alive: bool | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        if not self.info:
            return []
        return [int(self.info[n]) for n in port_names if isinstance(self.info.get(n), int)]

    def __repr__(self) -> str:
        return (
            f"ConnectionFileStatus(path={self.path!r}, info={redacted(self.info)!r}, "
            f"error={self.error!r}, age_s={self.age_s!r}, alive={self.alive!r}, "
            f"reason={self.reason!r})"
        )

    @property
    def state(self) -> str:
        """``alive``, ``dead`` or ``unknown``."""
        return {True: "alive", False: "dead", None: "unknown"}[self.alive]


def is_connection_info(info: Any) -> bool:
    """A dict with a heartbeat port: what kernel connection files have and other
    JSON files in the runtime dir (server info, our port table) do not."""
    return isinstance(info, dict) and "hb_port" in info and "transport" in info


def scan_directory(directory: str, pattern: str = DEFAULT_PATTERN) -> list[ConnectionFileStatus]:
    """The connection files in ``directory`` whose names match ``pattern``.

    A matching file that cannot be read is listed (its kernel is unknown); one
    that reads as JSON but is not a connection file is skipped.
    """
    now = time.time()
    found: list[ConnectionFileStatus] = []
    for name in sorted(_native.glob_names(directory, pattern)):
        path = os.path.join(directory, name)
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:  # removed since the directory was read
            continue
        except OSError as err:
            found.append(_unreadable(path, err, 0.0))
            continue
        age_s = max(0.0, now - mtime)
        try:
            info = _native.read_connection_file(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as err:
            found.append(_unreadable(path, err, age_s))
            continue
        if is_connection_info(info):
            found.append(ConnectionFileStatus(path, info=info, age_s=age_s))
    return found


def _unreadable(path: str, err: Exception, age_s: float) -> ConnectionFileStatus:
    # The reader's messages name the file; the row already does.
    message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    message = message.removeprefix(f"connection file {path}: ")
    return ConnectionFileStatus(path, error=message, age_s=age_s, reason=f"unreadable: {message}")


def listening_tcp_ports() -> set[int] | None:
    """TCP ports some socket on this host listens on, or None where /proc cannot say."""
    ports: set[int] = set()
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    # fields: sl, local_address (hexip:hexport), rem_address, st
                    if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
            seen_any = True
        except OSError:
            continue
    return ports if seen_any else None


def is_local_address(ip: str) -> bool:
    """True if a kernel at ``ip`` would run on this host (no name is resolved)."""
    return ip in _WILDCARDS or is_local_ip(ip)


def _connect_address(ip: str) -> str:
    """Where to reach a local kernel bound on ``ip``."""
    if ip in _WILDCARDS or ip == "localhost":
        return "::1" if ip in ("::", "[::]") else "127.0.0.1"
    return ip.strip("[]")


def _hb_endpoint(info: dict[str, Any]) -> str:
    """The heartbeat of a local TCP kernel (never called for another host's address)."""
    ip = _connect_address(str(info.get("ip") or ""))
    if ":" in ip:
        ip = f"[{ip}]"
    return f"tcp://{ip}:{info['hb_port']}"


def _tcp_listened(ip: str, port: int, listening: set[int] | None) -> bool:
    """Whether something on this host listens on ``port`` (``ip`` is local)."""
    if listening is not None:
        return port in listening
    try:
        with socket.create_connection((_connect_address(ip), port), timeout=0.2):
            return True
    except OSError:
        return False


def unix_socket_bound(path: str) -> bool | None:
    """Whether a unix socket listens at ``path`` (``@name``: the abstract namespace);
    None when this host cannot tell (no permission, a path too long)."""
    address = "\0" + path[1:] if path.startswith("@") else path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(address)
    except BlockingIOError:  # its backlog is full: it listens
        return True
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            return False  # no file, or a socket file nobody listens on any more
        return None
    finally:
        sock.close()
    return True


def ports_in_use(status: ConnectionFileStatus, listening: set[int] | None) -> list[int]:
    """The file's TCP ports that something on this host listens on or that a live
    process holds in the reservation table (a kernel still starting)."""
    from kernel_connect.ports import LocalPortCache

    info = status.info or {}
    if info.get("transport") != "tcp":
        return []
    ip = str(info.get("ip") or "")
    table = LocalPortCache.instance().table
    busy = []
    for port in status.ports:
        if not 0 < port < 65536:
            continue
        owner = table.owner(port)
        if (owner is not None and owner[1]) or _tcp_listened(ip, port, listening):
            busy.append(port)
    return busy


def _judge(status: ConnectionFileStatus, listening: set[int] | None) -> bool:
    """Set what can be known without a heartbeat; True when the heartbeat must be pinged."""
    info = status.info
    if info is None:
        status.alive, status.reason = None, status.reason or "unreadable"
        return False
    missing = [n for n in port_names if not isinstance(info.get(n), int)]
    if missing:
        status.alive, status.reason = None, f"no {', '.join(missing)} in the file"
        return False
    if 0 in status.ports:
        status.alive = None
        status.reason = "port 0: its kernel binds its own ports and may still be starting"
        return False
    ip = str(info.get("ip") or "")
    if info.get("transport") == "ipc":
        _judge_ipc(status, ip)
        return False
    if not is_local_address(ip):
        status.alive, status.reason = None, f"non-local ip {ip}: cannot be judged from this host"
        return False
    busy = ports_in_use(status, listening)
    if not busy:
        status.alive = False
        status.reason = "nothing listens on its ports and no live process holds them"
        return False
    status.extra["busy_ports"] = busy
    status.alive = None
    if int(info["hb_port"]) in busy and _tcp_listened(ip, int(info["hb_port"]), listening):
        status.reason = f"ports {_ports_text(busy)} are in use on this host"
        return True
    status.reason = (
        f"ports {_ports_text(busy)} are in use on this host, but nothing listens on its "
        "heartbeat port (a kernel still starting?)"
    )
    return False


def _judge_ipc(status: ConnectionFileStatus, ip: str) -> None:
    info = status.info or {}
    # The heartbeat first: the socket least disturbed by a connection that says nothing.
    ports = [int(info["hb_port"]), *(p for p in status.ports if p != info["hb_port"])]
    unsure = None
    for path in (f"{ip}-{port}" for port in ports):
        bound = unix_socket_bound(path)
        if bound:
            status.alive, status.reason = True, "its sockets are bound"
            return
        if bound is None and unsure is None:
            unsure = path
    if unsure is not None:
        status.alive, status.reason = None, f"cannot check its socket {unsure}"
    elif not (ip.startswith("@") or os.path.isabs(ip)):
        status.alive = None
        status.reason = f"relative ipc path {ip}: relative to its kernel's working directory"
    else:
        status.alive, status.reason = False, "none of its sockets is bound"


def _ports_text(ports: Iterable[int]) -> str:
    return ",".join(map(str, ports))


def probe(statuses: Sequence[ConnectionFileStatus], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Set ``alive`` and ``reason`` on each status. Only local TCP heartbeats that
    something listens on are pinged; one bad file never stops the others."""
    listening = listening_tcp_ports()
    pending: list[ConnectionFileStatus] = []
    for status in statuses:
        try:
            if _judge(status, listening):
                pending.append(status)
        except Exception as err:  # whatever it is, it belongs on this file's row alone
            status.alive, status.reason = None, f"cannot be judged: {err}"
    for start in range(0, len(pending), _WAVE):
        _ping_wave(pending[start : start + _WAVE], timeout)


def _ping_wave(statuses: Iterable[ConnectionFileStatus], timeout: float) -> None:
    """Ping each status's heartbeat at once; an answer makes it alive, silence leaves
    it unknown (its ports are in use, so it is not dead)."""
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    sockets: dict[Any, ConnectionFileStatus] = {}
    try:
        for status in statuses:
            info = status.info or {}
            sock = ctx.socket(zmq.REQ)
            sock.linger = 0
            try:
                public = info.get("curve_publickey")
                if public:
                    try:
                        sock.curve_serverkey = str(public).encode("ascii")
                    except (zmq.ZMQError, UnicodeEncodeError) as err:
                        raise ValueError(f"invalid curve_publickey ({err})") from err
                    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.connect(_hb_endpoint(info))
                sock.send(b"ping", zmq.NOBLOCK)
            except (zmq.ZMQError, ValueError) as err:
                status.reason = f"heartbeat not checked: {err}; {status.reason}"
                sock.close()
                continue
            poller.register(sock, zmq.POLLIN)
            sockets[sock] = status
        deadline = time.monotonic() + timeout
        waiting = dict(sockets)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for sock, _ in poller.poll(int(remaining * 1000) + 1):
                status = waiting.pop(sock)
                sock.recv()
                status.alive, status.reason = True, "heartbeat answered"
                poller.unregister(sock)
        for status in waiting.values():
            status.reason = f"no heartbeat answer within {timeout:g} s; {status.reason}"
    finally:
        for sock in sockets:
            sock.close()
