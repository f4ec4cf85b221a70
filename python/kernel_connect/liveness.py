"""Is the kernel behind a connection file alive? Answered for thousands of files at once.

A farm's runtime directory holds a few live kernels and thousands of files of
kernels that died without cleaning up. Pinging each file's heartbeat in turn
would cost one timeout per dead kernel. Instead:

1. ports nobody listens on are dead at once: on Linux the listening TCP ports
   are read from /proc/net/tcp{,6} in one pass (elsewhere a connect attempt,
   refused at once on loopback, tells the same);
2. every remaining heartbeat is pinged concurrently through one zmq poller, so
   the whole run costs about one timeout.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernel_connect import _native
from kernel_connect.localinterfaces import is_local_ip

#: How long a heartbeat has to answer.
DEFAULT_TIMEOUT = 1.0
#: At most this many heartbeat sockets are open at once.
_WAVE = 512


@dataclass
class ConnectionFileStatus:
    """One connection file and what is known about its kernel."""

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
        # The order tunnel_to_kernel and the farm table use: shell, iopub, stdin, hb, control.
        names = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
        return [int(self.info[n]) for n in names if isinstance(self.info.get(n), int)]


def is_connection_info(info: Any) -> bool:
    """A dict with a heartbeat port: what kernel connection files have and other
    JSON files in the runtime dir (server info, our port table) do not."""
    return isinstance(info, dict) and "hb_port" in info and "transport" in info


def scan_directory(directory: str) -> list[ConnectionFileStatus]:
    """Every ``*.json`` connection file in ``directory`` (others are skipped)."""
    now = time.time()
    found: list[ConnectionFileStatus] = []
    for name in sorted(_native.glob_names(directory, "*.json")):
        path = os.path.join(directory, name)
        try:
            mtime = os.stat(path).st_mtime
            info = _native.read_connection_file(path)
        except (OSError, ValueError) as err:
            if name.startswith("kernel-"):
                found.append(ConnectionFileStatus(path, error=str(err), reason="unreadable"))
            continue
        if is_connection_info(info):
            found.append(ConnectionFileStatus(path, info=info, age_s=max(0.0, now - mtime)))
    return found


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


def _hb_endpoint(info: dict[str, Any]) -> str:
    if info.get("transport") == "ipc":
        return f"ipc://{info['ip']}-{info['hb_port']}"
    ip = str(info.get("ip") or "127.0.0.1")
    if ip in ("0.0.0.0", "*"):  # noqa: S104 - a bind address; connect to loopback
        ip = "127.0.0.1"
    if ":" in ip and not ip.startswith("["):
        ip = f"[{ip}]"
    return f"tcp://{ip}:{info['hb_port']}"


def _quick_verdict(status: ConnectionFileStatus, listening: set[int] | None) -> bool | None:
    """False when the heartbeat certainly cannot answer; None when it must be pinged."""
    info = status.info or {}
    if info.get("transport") == "ipc":
        path = f"{info.get('ip')}-{info.get('hb_port')}"
        return None if os.path.exists(path) else False
    hb = info.get("hb_port")
    if not isinstance(hb, int) or hb <= 0:
        return False
    ip = str(info.get("ip") or "127.0.0.1")
    if not is_local_ip(ip):
        return None
    if listening is not None:
        return None if hb in listening else False
    try:
        with socket.create_connection(("127.0.0.1", hb), timeout=0.2):
            return None
    except OSError:
        return False


def probe(statuses: Sequence[ConnectionFileStatus], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Set ``alive`` and ``reason`` on each status with a heartbeat ping."""
    listening = listening_tcp_ports()
    pending: list[ConnectionFileStatus] = []
    for status in statuses:
        if status.info is None:
            status.alive, status.reason = False, status.reason or "unreadable"
            continue
        verdict = _quick_verdict(status, listening)
        if verdict is False:
            status.alive, status.reason = False, "nothing listens on its heartbeat port"
        else:
            pending.append(status)
    for start in range(0, len(pending), _WAVE):
        _ping_wave(pending[start : start + _WAVE], timeout)


def _ping_wave(statuses: Iterable[ConnectionFileStatus], timeout: float) -> None:
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    sockets: dict[Any, ConnectionFileStatus] = {}
    try:
        for status in statuses:
            info = status.info or {}
            sock = ctx.socket(zmq.REQ)
            sock.linger = 0
            public = info.get("curve_publickey")
            if public:
                client_public, client_secret = zmq.curve_keypair()
                sock.curve_serverkey = str(public).encode("ascii")
                sock.curve_publickey = client_public
                sock.curve_secretkey = client_secret
            try:
                sock.connect(_hb_endpoint(info))
                sock.send(b"ping", zmq.NOBLOCK)
            except zmq.ZMQError as err:
                status.alive, status.reason = False, f"heartbeat unreachable ({err})"
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
            status.alive, status.reason = False, f"no heartbeat answer within {timeout:g} s"
    finally:
        for sock in sockets:
            sock.close()


def ports_in_use(status: ConnectionFileStatus, listening: set[int] | None) -> list[int]:
    """The file's TCP ports that something on this host listens on or that a live
    process holds in the reservation table (a kernel still starting)."""
    from kernel_connect.connect import LocalPortCache

    info = status.info or {}
    if info.get("transport") != "tcp":
        return []
    table = LocalPortCache.instance().table
    busy = []
    for port in status.ports:
        owner = table.owner(port) if 0 < port < 65536 else None
        if (listening is not None and port in listening) or (owner is not None and owner[1]):
            busy.append(port)
    return busy
