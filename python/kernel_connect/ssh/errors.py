"""Exceptions raised by kernel_connect's SSH tunnels.

Every failure the caller can act on has its own class, so code can tell an
unknown host key from a refused login from a closed remote port.  Messages
name the server and the port involved and never carry a password or passphrase.
"""

from __future__ import annotations

import errno

__all__ = [
    "ChangedHostKeyError",
    "ForwardError",
    "HostKeyError",
    "LocalPortInUseError",
    "SSHAuthenticationError",
    "SSHConnectError",
    "SSHException",
    "SSHTunnelError",
    "UnknownHostKeyError",
]


class SSHTunnelError(RuntimeError):
    """Base class: an SSH tunnel could not be set up or stopped working."""


# jupyter_client exposes `SSHException`; keep the name for code that catches it.
SSHException = SSHTunnelError


class SSHConnectError(SSHTunnelError):
    """The SSH server could not be reached (refused, unreachable, timed out)."""


class SSHAuthenticationError(SSHTunnelError):
    """The SSH server refused every credential we offered."""


class HostKeyError(SSHTunnelError):
    """The server's host key could not be verified against known_hosts."""


class UnknownHostKeyError(HostKeyError):
    """known_hosts has no key for the server and new hosts are not allowed."""


class ChangedHostKeyError(HostKeyError):
    """known_hosts lists a different key for the server (possible attack)."""


class ForwardError(SSHTunnelError):
    """The server could not open the forwarded connection (closed remote port)."""


class LocalPortInUseError(SSHTunnelError):
    """A local port asked for is already taken by another socket.

    Carries the `port` and ``errno.EADDRINUSE`` as `errno`, like the OSError it replaces.
    """

    errno = errno.EADDRINUSE

    def __init__(self, message: str, port: int):
        super().__init__(message)
        self.port = port
