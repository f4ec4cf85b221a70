"""SSH tunnels to remote kernels: one SSH connection per kernel, checked host keys.

The public functions live in `kernel_connect.ssh.tunnel` (tunnel_to_kernel,
ssh_tunnel, ...) and `kernel_connect.ssh.forward` (forward_tunnel,
ForwardServer); the exceptions in `kernel_connect.ssh.errors`.  Nothing here
imports paramiko until a paramiko tunnel is actually made.
"""

from __future__ import annotations

from kernel_connect.ssh.errors import (
    ChangedHostKeyError,
    ForwardError,
    HostKeyError,
    LocalPortInUseError,
    SSHAuthenticationError,
    SSHConnectError,
    SSHException,
    SSHTunnelError,
    UnknownHostKeyError,
)

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
