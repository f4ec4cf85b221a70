"""SSH tunnels to kernels: jupyter_client's tunnel API, one SSH connection per kernel.

`tunnel_to_kernel` forwards all five kernel ports over ONE SSH connection --
in-process over paramiko when it is installed, else one ``ssh`` process with
five ``-L`` forwards -- checks host keys against known_hosts, probes every
forwarded port end to end before returning, and keeps a handle that closes the
tunnels on demand, at exit and on SIGTERM.  The single-port functions
(`ssh_tunnel`, `openssh_tunnel`, `paramiko_tunnel`, `open_tunnel`,
`tunnel_connection`) keep jupyter_client's names and signatures.

paramiko is imported only when a paramiko tunnel is made.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import selectors
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from kernel_connect.connect import TUNNEL_PORT_NAMES
from kernel_connect.ssh.errors import (
    ForwardError,
    LocalPortInUseError,
    SSHException,
    SSHTunnelError,
)
from kernel_connect.ssh.openssh import OpenSSHTunnel, run_ssh_check, start_openssh
from kernel_connect.ssh.options import DEFAULT_TIMEOUT, SSHOptions
from kernel_connect.ssh.registry import active, close_all

__all__ = [
    "CHANNELS",
    "SSHException",
    "TunnelPorts",
    "active_tunnels",
    "close_all_tunnels",
    "default_backend",
    "open_tunnel",
    "openssh_tunnel",
    "paramiko_tunnel",
    "select_random_ports",
    "ssh_tunnel",
    "try_passwordless_ssh",
    "tunnel_connection",
    "tunnel_to_kernel",
]

#: The kernel's channels, in the order tunnel_to_kernel returns their local ports.
CHANNELS = tuple(name.removesuffix("_port") for name in TUNNEL_PORT_NAMES)
BACKENDS = ("paramiko", "openssh")
# a kernel that listens on every interface is reached on the server's loopback
WILDCARD_IPS = {"": "127.0.0.1", "*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104
PROBE_TIMEOUT = 5.0
BIND_ATTEMPTS = 3


# a connection-info dict, or the path of a connection file
ConnectionInfoArg = Mapping[str, Any] | str | os.PathLike[str]


class Tunnel(Protocol):
    """What both backends' handles offer."""

    @property
    def local_ports(self) -> tuple[int, ...]: ...

    def is_alive(self) -> bool: ...

    def close(self) -> None: ...


def default_backend() -> str:
    """The default backend: "paramiko" where it is installed, otherwise "openssh"."""
    return "paramiko" if importlib.util.find_spec("paramiko") is not None else "openssh"


def _backend(backend: str | None, paramiko: Any = None) -> str:
    if backend is None and paramiko is not None:
        # jupyter_client's flag: truthy means paramiko
        backend = "paramiko" if paramiko else "openssh"
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown SSH backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def select_random_ports(n: int) -> list[int]:
    """Lease `n` distinct free local ports from kernel-connect's port table.

    No other kernel-connect user is handed them while the lease lasts:
    ``LocalPortCache.lease_seconds`` (120 s by default,
    ``KERNEL_CONNECT_LEASE_SECONDS``), long enough to bind them; a bound port
    is then protected by the OS. ``LocalPortCache.instance().return_ports``
    ends the lease sooner, and so does this process taking
    ``kernel_connect.ports.MAX_LEASED_PORTS`` (4,096) newer leased ports.
    """
    from kernel_connect.ports import LocalPortCache

    return list(LocalPortCache.instance().lease("127.0.0.1", n))


def _hold_ports(n: int) -> list[int]:
    """`n` ports held by this process until a tunnel's close returns them."""
    from kernel_connect.ports import LocalPortCache

    return list(LocalPortCache.instance().reserve("127.0.0.1", n))


def _return_ports(ports: Iterable[int]) -> None:
    from kernel_connect.ports import LocalPortCache

    with contextlib.suppress(Exception):
        LocalPortCache.instance().return_ports(list(ports))


class TunnelPorts(tuple[int, int, int, int, int]):
    """The local ports of a kernel's tunnels (a plain tuple), plus their handle.

    ``shell, iopub, stdin, hb, control = tunnel_to_kernel(...)`` works as with
    jupyter_client; ``ports.close()`` (or ``with``) closes the tunnels early.
    """

    tunnel: Tunnel
    _reserved: tuple[int, ...]

    def __new__(
        cls, ports: Sequence[int], tunnel: Tunnel, reserved: Sequence[int] = ()
    ) -> TunnelPorts:
        if len(ports) != len(CHANNELS):
            raise ValueError(f"a kernel has {len(CHANNELS)} ports, not {len(ports)}")
        self = super().__new__(cls, ports)
        self.tunnel = tunnel
        self._reserved = tuple(reserved)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # a handle on this process's tunnels cannot travel: copies are plain tuples
        return (tuple, (tuple(self),))

    def __enter__(self) -> TunnelPorts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_alive(self) -> bool:
        """True while the tunnels are up."""
        return self.tunnel.is_alive()

    def close(self) -> None:
        """Close the tunnels and give their local ports back to the port table."""
        self.tunnel.close()
        reserved, self._reserved = self._reserved, ()
        _return_ports(reserved)


def close_all_tunnels() -> None:
    """Close every tunnel this process opened (also done at exit)."""
    close_all()


def active_tunnels() -> list[Any]:
    """The tunnels this process has open."""
    return active()


# -- the two backends ---------------------------------------------------------------


def _paramiko_forward(
    server: str,
    forwards: Sequence[tuple[int, str, int]],
    options: SSHOptions,
    reserve_more: bool,
) -> tuple[Any, list[int]]:
    """Bind the local ports, then log in once and forward them all over paramiko.

    Returns the ForwardServer and the ports it listens on (which differ from
    the ones asked for only when `reserve_more` let us replace a port another
    program took).
    """
    from kernel_connect.ssh.connection import open_connection
    from kernel_connect.ssh.forward import Forward, ForwardServer, bind_listener
    from kernel_connect.ssh.registry import register

    listeners = []
    try:
        for local_port, _, _ in forwards:
            listeners.append(_bind_with_retry(bind_listener, local_port, reserve_more))
        connection = open_connection(server, options)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    routes = [
        Forward(listener, remote_host, remote_port)
        for listener, (_, remote_host, remote_port) in zip(listeners, forwards, strict=True)
    ]
    forward_server = ForwardServer(connection, routes)
    register(forward_server)
    forward_server.start()
    return forward_server, list(forward_server.local_ports)


def _bind_with_retry(bind: Any, port: int, reserve_more: bool) -> Any:
    for _attempt in range(BIND_ATTEMPTS):
        try:
            return bind(port)
        except LocalPortInUseError:
            # a reserved port can still be taken by a program outside the table
            if not reserve_more:
                raise
            port = select_random_ports(1)[0]
    return bind(port)


def _openssh_forward(
    server: str,
    forwards: Sequence[tuple[int, str, int]],
    options: SSHOptions,
    reserve_more: bool,
) -> tuple[OpenSSHTunnel, list[int]]:
    forwards = list(forwards)
    for _attempt in range(BIND_ATTEMPTS):
        try:
            tunnel = start_openssh(server, forwards, options)
            return tunnel, list(tunnel.local_ports)
        except LocalPortInUseError as exc:
            if not reserve_more or exc.port not in [f[0] for f in forwards]:
                raise
            replacement = select_random_ports(1)[0]
            forwards = [
                (replacement, h, p) if lp == exc.port else (lp, h, p) for lp, h, p in forwards
            ]
    tunnel = start_openssh(server, forwards, options)
    return tunnel, list(tunnel.local_ports)


def _forward(
    backend: str,
    server: str,
    forwards: Sequence[tuple[int, str, int]],
    options: SSHOptions,
    reserve_more: bool = False,
) -> tuple[Any, list[int]]:
    if backend == "paramiko":
        return _paramiko_forward(server, forwards, options, reserve_more)
    return _openssh_forward(server, forwards, options, reserve_more)


# -- jupyter_client's single-port API ---------------------------------------------


def openssh_tunnel(
    lport: int,
    rport: int,
    server: str,
    remoteip: str = "127.0.0.1",
    keyfile: str | None = None,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> Any:
    """Forward ``127.0.0.1:lport`` to ``remoteip:rport`` as seen from `server`, with ssh.

    Parameters
    ----------
    lport : int
        Local port to listen on (at 127.0.0.1).
    rport : int
        Destination port.
    server : str
        ``[user@]host[:port]``, ``[ipv6]:port`` or an ssh-config alias.
    remoteip : str
        Destination host as the server sees it.
    keyfile : str, optional
        Private key to offer (ssh_config and the agent still apply).
    password : str, optional
        Password / key passphrase.  Without one, ssh runs in BatchMode unless
        this process has a terminal to ask on.
    timeout : float
        Seconds allowed for logging in and opening the forward.
    **options
        ``known_hosts``, ``allow_new_host``, ``ssh_config``.

    Returns
    -------
    subprocess.Popen
        The ssh process; it lives until killed, until the process exits
        (also on SIGTERM or SIGKILL: its stdin closes) or `close_all_tunnels`.
    """
    settings = SSHOptions.from_kwargs(
        keyfile=keyfile, password=password, timeout=timeout, **options
    )
    tunnel = start_openssh(server, [(lport, remoteip, rport)], settings)
    return tunnel.process


def paramiko_tunnel(
    lport: int,
    rport: int,
    server: str,
    remoteip: str = "127.0.0.1",
    keyfile: str | None = None,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> Any:
    """Forward ``127.0.0.1:lport`` to ``remoteip:rport`` as seen from `server`, with paramiko.

    Same parameters as `openssh_tunnel`.  The forward runs in this process, in
    background threads.

    Returns
    -------
    kernel_connect.ssh.forward.ForwardServer
        With ``close()``, ``is_alive()``, ``terminate()`` and ``join()``.
    """
    settings = SSHOptions.from_kwargs(
        keyfile=keyfile, password=password, timeout=timeout, **options
    )
    forward_server, _ = _paramiko_forward(server, [(lport, remoteip, rport)], settings, False)
    return forward_server


def ssh_tunnel(
    lport: int,
    rport: int,
    server: str,
    remoteip: str = "127.0.0.1",
    keyfile: str | None = None,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> Any:
    """Create an SSH tunnel with the system's ssh (`openssh_tunnel`).

    Returns
    -------
    subprocess.Popen
        The ssh process.
    """
    return openssh_tunnel(lport, rport, server, remoteip, keyfile, password, timeout, **options)


def try_passwordless_ssh(
    server: str, keyfile: str | None, paramiko: Any = None, **options: Any
) -> bool:
    """Whether `server` accepts a login without a password (keys or agent).

    Returns False when the server refuses the login; raises for anything else
    (unknown host key, unreachable server), naming the cause.
    """
    backend = _backend(options.pop("backend", None), paramiko)
    settings = SSHOptions.from_kwargs(keyfile=keyfile, **options)
    if backend == "openssh":
        return run_ssh_check(server, settings)
    from kernel_connect.ssh.connection import _login_error, open_connection
    from kernel_connect.ssh.errors import SSHAuthenticationError

    try:
        connection = open_connection(server, settings, session=False, prompt=False)
    except SSHAuthenticationError:
        return False
    except SSHTunnelError:
        raise
    except Exception as exc:  # mapped to the tunnel errors
        raise _login_error(exc, server, settings) from None
    connection.close()
    return True


def _split_zmq_url(addr: str) -> tuple[str, int]:
    scheme, sep, rest = addr.partition("://")
    if not sep or scheme != "tcp":
        raise ValueError(f"only tcp:// addresses can be tunneled, not {addr!r}")
    if rest.startswith("["):
        host, _, port_text = rest[1:].partition("]:")
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit():
        raise ValueError(f"address {addr!r} is not tcp://host:port")
    return WILDCARD_IPS.get(host, host), int(port_text)


def open_tunnel(
    addr: str,
    server: str,
    keyfile: str | None = None,
    password: str | None = None,
    paramiko: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> tuple[str, Any]:
    """Tunnel a zmq ``tcp://host:port`` address through `server`.

    Returns
    -------
    (url, tunnel) : (str, object)
        ``tcp://127.0.0.1:<local port>`` to connect to, and the tunnel
        (a ForwardServer for paramiko, the ssh Popen for OpenSSH).
    """
    backend = _backend(options.pop("backend", None), paramiko)
    settings = SSHOptions.from_kwargs(
        keyfile=keyfile, password=password, timeout=timeout, **options
    )
    remote_host, remote_port = _split_zmq_url(addr)
    lport = select_random_ports(1)[0]
    tunnel, ports = _forward(backend, server, [(lport, remote_host, remote_port)], settings, True)
    handle = tunnel.process if isinstance(tunnel, OpenSSHTunnel) else tunnel
    return f"tcp://127.0.0.1:{ports[0]}", handle


def tunnel_connection(
    socket: Any,
    addr: str,
    server: str,
    keyfile: str | None = None,
    password: str | None = None,
    paramiko: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> Any:
    """Connect a zmq socket to `addr` through an SSH tunnel; returns the tunnel."""
    url, tunnel = open_tunnel(addr, server, keyfile, password, paramiko, timeout, **options)
    socket.connect(url)
    return tunnel


# -- the kernel ------------------------------------------------------------------------


def _load_info(connection_info: ConnectionInfoArg) -> Mapping[str, Any]:
    if isinstance(connection_info, Mapping):
        return connection_info
    from kernel_connect.connect import read_connection_file

    info: Mapping[str, Any] = read_connection_file(os.fspath(connection_info))
    return info


def _remote_ports(info: Mapping[str, Any]) -> list[int]:
    ports = []
    for channel in CHANNELS:
        value = info.get(f"{channel}_port")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise ValueError(f"connection info has no valid {channel}_port: {value!r}")
        ports.append(value)
    return ports


def _probe(ports: Sequence[int], deadline: float) -> list[int]:
    """Connect to each forwarded port and wait for the kernel's ZMTP greeting.

    Returns the indexes of ports whose far end closed (nothing listens there).
    A zmq socket greets at once; a port still silent at the deadline counts as open.
    """
    failed: list[int] = []
    sockets: dict[int, socket.socket] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for index, port in enumerate(ports):
                sock = socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT)
                sock.setblocking(False)
                sockets[index] = sock
                selector.register(sock, selectors.EVENT_READ, index)
            while sockets and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    sock = sockets.pop(key.data)
                    selector.unregister(sock)
                    try:
                        data = sock.recv(1)
                    except OSError:
                        data = b""
                    if not data:
                        failed.append(key.data)
                    sock.close()
    finally:
        for sock in sockets.values():
            sock.close()
    return sorted(failed)


def tunnel_to_kernel(
    connection_info: ConnectionInfoArg,
    sshserver: str,
    sshkey: str | None = None,
    *,
    backend: str | None = None,
    password: str | None = None,
    known_hosts: str | None = None,
    allow_new_host: bool = False,
    ssh_config: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    local_ports: Sequence[int] | None = None,
    check_ports: bool = True,
) -> TunnelPorts:
    """Tunnel the five kernel ports over ONE SSH connection.

    Parameters
    ----------
    connection_info : dict or str
        Connection info, or the path of a connection file.
    sshserver : str
        ``[user@]host[:port]``, ``[ipv6]:port`` or an ssh-config alias.
    sshkey : str, optional
        Private key to offer (ssh_config IdentityFile and the agent still apply).
    backend : {"paramiko", "openssh"}, optional
        paramiko (in-process) where installed, else OpenSSH.
    password : str, optional
        Password / key passphrase; without one a prompt appears only on a TTY.
    known_hosts : str, optional
        known_hosts file to check the server's key against (default: the user's).
    allow_new_host : bool
        Accept and record the key of a server known_hosts does not list.
    ssh_config : str, optional
        ssh_config file for aliases (default: the user's).
    timeout : float
        Seconds allowed for logging in and opening the forwards.
    local_ports : sequence of 5 ints, optional
        Local ports to use; by default reserved from the port table.
    check_ports : bool
        Check, before returning, that every forwarded port reaches a listener.

    Returns
    -------
    TunnelPorts
        ``(shell, iopub, stdin, hb, control)`` local ports on 127.0.0.1, a tuple
        that also has ``close()``.  The tunnels close at exit and on SIGTERM.

    Raises
    ------
    SSHConnectError, SSHAuthenticationError, HostKeyError, LocalPortInUseError, ForwardError
    """
    info = _load_info(connection_info)
    transport = info.get("transport", "tcp")
    if transport != "tcp":
        raise ValueError(f"only tcp kernels can be tunneled, not transport={transport!r}")
    remote_ip = str(info.get("ip", ""))
    remote_ip = WILDCARD_IPS.get(remote_ip, remote_ip)
    remote_ports = _remote_ports(info)
    settings = SSHOptions(
        keyfile=sshkey,
        password=password or None,
        known_hosts=known_hosts,
        allow_new_host=allow_new_host,
        ssh_config=ssh_config,
        timeout=timeout,
    )
    chosen = _backend(backend)
    start = time.monotonic()
    if local_ports is None:
        reserved = _hold_ports(len(CHANNELS))
        ports = reserved
    else:
        if len(local_ports) != len(CHANNELS):
            raise ValueError(f"local_ports needs {len(CHANNELS)} ports, got {len(local_ports)}")
        reserved, ports = [], list(local_ports)
    forwards = [(lp, remote_ip, rp) for lp, rp in zip(ports, remote_ports, strict=True)]
    try:
        tunnel, bound = _forward(chosen, sshserver, forwards, settings, local_ports is None)
    except BaseException:
        _return_ports(reserved)
        raise
    # every port we reserved goes back to the table when the tunnels close
    ours = sorted(set(reserved) | set(bound)) if local_ports is None else []
    result = TunnelPorts(bound, tunnel, ours)
    if check_ports:
        deadline = min(start + timeout, time.monotonic() + PROBE_TIMEOUT)
        failed = _probe(bound, deadline)
        if failed:
            details = _forward_errors(tunnel)
            result.close()
            names = ", ".join(f"{CHANNELS[i]} ({remote_ip}:{remote_ports[i]})" for i in failed)
            raise ForwardError(
                f"SSH server {sshserver} could not connect to the kernel's {names}: "
                f"nothing listens there (is the kernel running?){details}"
            )
    return result


def _forward_errors(tunnel: Any) -> str:
    if isinstance(tunnel, OpenSSHTunnel):
        text = tunnel.error_output().strip()
    else:
        text = "; ".join(getattr(tunnel, "errors", []))
    return f" [{text[-400:]}]" if text else ""
