"""One authenticated paramiko SSH connection, with host keys checked and Nagle off.

`open_connection` resolves the server through ssh_config (ProxyJump and
ProxyCommand included), connects within a deadline, checks the host key with
`HostKeyChecker`, logs in (key file, agent, default keys, password), and keeps
one session channel open: sshd switches its socket to TCP_NODELAY only once a
session runs a command, and without that every small kernel message waits on
Nagle's algorithm (about 40 ms per round trip).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import logging
import socket
import sys
import time
from typing import Any, cast

from kernel_connect.ssh.config import ResolvedHost, resolve_host
from kernel_connect.ssh.errors import (
    HostKeyError,
    SSHAuthenticationError,
    SSHConnectError,
    SSHTunnelError,
)
from kernel_connect.ssh.hostkeys import HostKeyChecker
from kernel_connect.ssh.options import SSHOptions
from kernel_connect.ssh.server import parse_server

__all__ = ["SSHConnection", "open_connection", "set_nodelay"]

KEEPALIVE_SECONDS = 15
# Our transports' paramiko log channel (a child of paramiko's own, so logging
# set up for "paramiko" still applies); see _log_channel.
PARAMIKO_LOG_CHANNEL = "paramiko.transport.kernel_connect"
# Runs on the server for the life of the connection and ends when we close it
# (stdin EOF); it exists so that sshd turns on TCP_NODELAY.
SESSION_COMMAND = "cat"


def set_nodelay(sock: Any) -> None:
    """Turn off Nagle's algorithm on a TCP socket (quietly skip anything else)."""
    with contextlib.suppress(OSError, AttributeError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SSHConnection:
    """An authenticated SSH connection (and the jump hosts it runs through).

    Attributes
    ----------
    host : ResolvedHost
        The server, after ssh_config.
    transport : paramiko.Transport
        The connection's transport; open channels on it.
    """

    def __init__(self, host: ResolvedHost, client: Any, hops: list[SSHConnection]):
        self.host = host
        self.client = client
        self.transport = client.get_transport()
        self._hops = hops
        self._session: Any = None

    def __repr__(self) -> str:
        state = "open" if self.is_active() else "closed"
        return f"<SSHConnection {self.host.user}@{self.host.hostname}:{self.host.port} {state}>"

    def is_active(self) -> bool:
        """True while the transport is connected."""
        return bool(self.transport is not None and self.transport.is_active())

    def open_session(self, timeout: float) -> None:
        """Start the placeholder session command (best effort: some servers refuse)."""
        try:
            channel = self.transport.open_session(timeout=timeout)
            channel.exec_command(SESSION_COMMAND)
        except Exception:  # forwarding works without it, only slower
            return
        self._session = channel

    def abandon(self) -> None:
        """Give up this process's copy of the connection without a word to the server.

        For a forked child: the connection is the parent's, and any packet the
        child sent on it (a channel close, a disconnect) would break the parent's
        encrypted stream.  Each transport (jump hosts' too) is marked inactive,
        so paramiko drops whatever would still be sent from here (a channel
        closed by garbage collection, say), and is taken out of paramiko's exit
        hook, which would close its socket: with a ProxyCommand, that ends the
        parent's proxy process.
        """
        from paramiko import transport as paramiko_transport

        lingering = getattr(paramiko_transport, "_active_threads", [])
        for connection in (self, *self._hops):
            transport = connection.transport
            if transport is None:
                continue
            transport.active = False
            with contextlib.suppress(ValueError):
                lingering.remove(transport)

    def close(self) -> None:
        """Close the session, the connection and any jump-host connections."""
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
            self._session = None
        with contextlib.suppress(Exception):
            self.client.close()
        for hop in reversed(self._hops):
            hop.close()
        self._hops = []


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SSHConnectError(f"timed out {what}")
    return left


def _tcp_connect(host: ResolvedHost, deadline: float) -> socket.socket:
    where = f"{host.hostname}:{host.port}"
    timeout = _remaining(deadline, f"before connecting to {where}")
    if host.connect_timeout:
        timeout = min(timeout, host.connect_timeout)
    try:
        sock = socket.create_connection((host.hostname, host.port), timeout=timeout)
    except socket.gaierror as exc:
        raise SSHConnectError(f"cannot resolve SSH server {host.hostname!r}: {exc}") from None
    except TimeoutError:
        raise SSHConnectError(
            f"timed out after {timeout:.1f} s connecting to SSH server {where}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SSHConnectError(f"cannot connect to SSH server {where}: {reason}") from None
    set_nodelay(sock)
    return sock


def _proxy_socket(
    host: ResolvedHost, options: SSHOptions, deadline: float
) -> tuple[Any, list[SSHConnection]]:
    """The socket to speak SSH over: direct, through ProxyCommand, or through jump hosts."""
    import paramiko

    if host.proxy_command:
        return paramiko.ProxyCommand(host.proxy_command), []
    if not host.proxy_jump:
        return _tcp_connect(host, deadline), []
    hops: list[SSHConnection] = []
    try:
        for hop_text in host.proxy_jump.split(","):
            previous = hops[-1] if hops else None
            hop_host = resolve_host(parse_server(hop_text.strip()), options.ssh_config)
            # the jump host's own ProxyJump would loop back here: the chain is explicit
            hop_host = dataclasses.replace(hop_host, proxy_jump=None, proxy_command=None)
            sock = _channel_to(previous, hop_host, deadline) if previous else None
            hop_options = SSHOptions(
                known_hosts=options.known_hosts,
                allow_new_host=options.allow_new_host,
                ssh_config=options.ssh_config,
                timeout=_remaining(deadline, f"reaching jump host {hop_host.name}"),
            )
            hops.append(_login(hop_host, hop_options, deadline, sock, []))
        return _channel_to(hops[-1], host, deadline), hops
    except BaseException:
        for hop in reversed(hops):
            hop.close()
        raise


def _channel_to(via: SSHConnection, host: ResolvedHost, deadline: float) -> Any:
    try:
        return via.transport.open_channel(
            "direct-tcpip",
            (host.hostname, host.port),
            ("127.0.0.1", 0),
            timeout=_remaining(deadline, f"opening a channel to {host.hostname}"),
        )
    except Exception as exc:  # paramiko raises bare SSHException here
        raise SSHConnectError(
            f"jump host {via.host.name} could not connect to {host.hostname}:{host.port}: {exc}"
        ) from None


# AEAD ciphers encrypt and authenticate in one call into `cryptography`; the
# CTR+HMAC default spends a Python-level HMAC on every packet.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# OpenSSH's sshd sends this right after login; see TunnelTransport.
HOSTKEYS_REQUEST = "hostkeys-00@openssh.com"


@functools.cache
def _transport_class() -> Any:
    import paramiko

    # typed as Any: the hook below overrides a private method the stubs omit
    base: Any = paramiko.Transport

    class TunnelTransport(base):  # type: ignore[misc]
        """A paramiko Transport that answers sshd's post-login packet at once.

        sshd sends ``hostkeys-00@openssh.com`` (no reply wanted) right after
        login, before its socket has TCP_NODELAY, so its next packet (our
        session's open confirmation) waits for our kernel's delayed ACK: 40 ms.
        An SSH_MSG_IGNORE sent on arrival carries that ACK immediately.
        """

        def _parse_global_request(self, m: Any) -> None:
            kind = m.get_text()
            m.rewind()
            super()._parse_global_request(m)
            if kind == HOSTKEYS_REQUEST and not self.server_mode:
                with contextlib.suppress(Exception):
                    self.send_ignore(1)

    return TunnelTransport


@functools.cache
def _log_channel() -> str:
    """The log channel of our paramiko transports, given a handler that prints nothing.

    paramiko's transport thread logs its failures at ERROR with tracebacks (a
    server that accepts but never speaks SSH: two of them), and with logging
    not configured Python prints such records to stderr (``logging.lastResort``).
    Each failure already reaches our caller as an SSHConnectError, so the
    records are only for whoever configures logging: a NullHandler on this
    channel keeps stderr clean and lets them propagate to those handlers.
    """
    logging.getLogger(PARAMIKO_LOG_CHANNEL).addHandler(logging.NullHandler())
    return PARAMIKO_LOG_CHANNEL


def _transport_factory(checker: HostKeyChecker) -> Any:
    transport_class = _transport_class()

    def factory(sock: Any, **kwargs: Any) -> Any:
        transport = transport_class(sock, **kwargs)
        options = transport.get_security_options()
        offered = list(options.ciphers)
        preferred = [c for c in PREFERRED_CIPHERS if c in offered]
        options.ciphers = preferred + [c for c in offered if c not in preferred]
        checker.prefer_known_types(transport)
        return transport

    return factory


def _login(
    host: ResolvedHost,
    options: SSHOptions,
    deadline: float,
    sock: Any,
    hops: list[SSHConnection],
) -> SSHConnection:
    import paramiko

    checker = HostKeyChecker(host, options.known_hosts, options.allow_new_host)
    client = paramiko.SSHClient()
    client.set_log_channel(_log_channel())
    client.set_missing_host_key_policy(checker.as_policy())
    if sock is None:
        sock, hops = _proxy_socket(host, options, deadline)
    keyfiles = [options.keyfile] if options.keyfile else []
    keyfiles += [p for p in host.identity_files if p not in keyfiles]
    where = f"{host.user}@{host.hostname}:{host.port}"
    left = _remaining(deadline, f"before logging in to {where}")
    try:
        client.connect(
            host.hostname,
            host.port,
            username=host.user,
            password=options.password,
            key_filename=cast(Any, keyfiles or None),  # paramiko takes a list too
            # IdentitiesOnly: only the named keys (paramiko cannot filter the
            # agent's keys by file the way OpenSSH does, so the agent is skipped)
            look_for_keys=not host.identities_only,
            allow_agent=not host.identities_only,
            timeout=left,
            banner_timeout=left,
            auth_timeout=left,
            channel_timeout=left,
            sock=sock,
            transport_factory=_transport_factory(checker),
        )
    except BaseException as exc:
        transport = client.get_transport()
        # "" until the server's first line, its SSH banner, has been read
        silent = transport is not None and not transport.remote_version
        client.close()
        for hop in reversed(hops):
            hop.close()
        raise _login_error(exc, where, options, silent=silent) from None
    connection = SSHConnection(host, client, hops)
    connection.transport.set_keepalive(KEEPALIVE_SECONDS)
    return connection


def _login_error(
    exc: BaseException, where: str, options: SSHOptions, *, silent: bool = False
) -> BaseException:
    import paramiko

    if isinstance(exc, SSHTunnelError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(f"host key for {where} does not match known_hosts")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return SSHAuthenticationError(
            f"the private key for {where} is encrypted and no passphrase was given "
            "(pass password=, load the key into ssh-agent, or run on a terminal to be asked)"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        tried = "the key file given" if options.keyfile else "the available keys"
        if options.password:
            tried += " and the password"
        return SSHAuthenticationError(f"SSH server {where} refused {tried}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return SSHConnectError(f"timed out logging in to SSH server {where}")
    if (
        silent
        and isinstance(exc, (paramiko.SSHException, OSError, EOFError))
        and not isinstance(exc, paramiko.ProxyCommandFailure)
    ):
        # paramiko's own words here ("No existing session") would mislead
        return SSHConnectError(
            f"{where} sent no SSH banner: it is not an SSH server, or it hung up first"
        )
    if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
        return SSHConnectError(f"SSH connection to {where} failed: {exc}")
    return exc


def _can_prompt() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def open_connection(
    server: str, options: SSHOptions, *, session: bool = True, prompt: bool = True
) -> SSHConnection:
    """Log in to `server` with paramiko.

    Parameters
    ----------
    server : str
        ``[user@]host[:port]`` or an ssh-config alias.
    options : SSHOptions
        Key, password, known_hosts, ssh_config and timeout.
    session : bool
        Keep a session open so the server turns Nagle off (see module docs).
    prompt : bool
        When the login is refused and no password was given, ask for one on
        the terminal (only if this process has one).

    Returns
    -------
    SSHConnection

    Raises
    ------
    SSHConnectError, SSHAuthenticationError, HostKeyError
        With the server named; passwords never appear in messages.
    """
    spec = parse_server(server)
    host = resolve_host(spec, options.ssh_config)
    deadline = time.monotonic() + options.timeout
    try:
        connection = _login(host, options, deadline, None, [])
    except SSHAuthenticationError:
        # a password or passphrase is asked for only where a person can answer
        if not prompt or options.password is not None or not _can_prompt():
            raise
        question = f"{host.user}@{host.hostname} password or key passphrase: "
        typed = getpass.getpass(question)
        options = options.with_password(typed)
        deadline = time.monotonic() + options.timeout
        connection = _login(host, options, deadline, None, [])
    if session:
        connection.open_session(max(deadline - time.monotonic(), 1.0))
    return connection
