"""kernel-connect: the Jupyter kernel connection layer, rebuilt for kernel farms.

The public names mirror jupyter_client's, so moving over is an import change.
They are loaded on first use (PEP 562) so that `import kernel_connect` and the
command line stay fast: zmq, traitlets and paramiko load only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _version_tuple(version: str) -> tuple[int | str, ...]:
    """``'1.2.3rc1'`` -> ``(1, 2, 3, 'rc1')``, as jupyter_client builds ``version_info``."""
    parts = version.split(".", 2)
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return ()
    digits = len(parts[2]) - len(parts[2].lstrip("0123456789"))
    if not digits:
        return ()
    rest = parts[2][digits:]
    numbers: tuple[int | str, ...] = (int(parts[0]), int(parts[1]), int(parts[2][:digits]))
    return (*numbers, rest) if rest else numbers


#: This package's version as a tuple, e.g. ``(0, 1, 0)``.
version_info = _version_tuple(__version__)
#: The Jupyter messaging protocol version kernel-connect speaks (as jupyter_client 8.10).
protocol_version_info = (5, 4)
protocol_version = f"{protocol_version_info[0]}.{protocol_version_info[1]}"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "KernelConnectionInfo": "kernel_connect.connect",
    "LocalPortCache": "kernel_connect.ports",
    "write_connection_file": "kernel_connect.connect",
    "find_connection_file": "kernel_connect.connect",
    "read_connection_file": "kernel_connect.connect",
    "tunnel_to_kernel": "kernel_connect.connect",
    "ConnectionFileError": "kernel_connect.connect",
    "ConnectionFileMixin": "kernel_connect.mixin",
    "launch_kernel": "kernel_connect.launcher",
    "Session": "kernel_connect.session",
    "KernelManager": "kernel_connect.manager",
    "start_new_kernel": "kernel_connect.manager",
    "run_kernel": "kernel_connect.manager",
    "AsyncKernelManager": "kernel_connect.manager",
    "start_new_async_kernel": "kernel_connect.manager",
    "MultiKernelManager": "kernel_connect.multikernelmanager",
    "AsyncMultiKernelManager": "kernel_connect.multikernelmanager",
    "KernelRestarter": "kernel_connect.restarter",
    "KernelSpec": "kernel_connect.kernelspec",
    "NoSuchKernel": "kernel_connect.kernelspec",
    "find_kernel_specs": "kernel_connect.kernelspec",
    "get_kernel_spec": "kernel_connect.kernelspec",
    "KernelSpecManager": "kernel_connect.kernelspec",
    "install_kernel_spec": "kernel_connect.kernelspec",
    "install_native_kernel_spec": "kernel_connect.kernelspec",
    "KernelDiedError": "kernel_connect.errors",
    "KernelStartCancelledError": "kernel_connect.errors",
    "KernelTimeoutError": "kernel_connect.errors",
    "BlockingKernelClient": "kernel_connect.client",
    "AsyncKernelClient": "kernel_connect.client",
    "KernelClient": "kernel_connect.client",
    "ThreadedKernelClient": "kernel_connect.threaded",
    "ssh_tunnel": "kernel_connect.ssh.tunnel",
    "forward_tunnel": "kernel_connect.ssh.forward",
}

__all__ = [
    "AsyncKernelClient",
    "AsyncKernelManager",
    "AsyncMultiKernelManager",
    "BlockingKernelClient",
    "ConnectionFileError",
    "ConnectionFileMixin",
    "KernelClient",
    "KernelConnectionInfo",
    "KernelDiedError",
    "KernelManager",
    "KernelRestarter",
    "KernelSpec",
    "KernelSpecManager",
    "KernelStartCancelledError",
    "KernelTimeoutError",
    "LocalPortCache",
    "MultiKernelManager",
    "NoSuchKernel",
    "Session",
    "ThreadedKernelClient",
    "__version__",
    "find_connection_file",
    "find_kernel_specs",
    "forward_tunnel",
    "get_kernel_spec",
    "install_kernel_spec",
    "install_native_kernel_spec",
    "launch_kernel",
    "protocol_version",
    "protocol_version_info",
    "read_connection_file",
    "run_kernel",
    "ssh_tunnel",
    "start_new_async_kernel",
    "start_new_kernel",
    "tunnel_to_kernel",
    "version_info",
    "write_connection_file",
]

if TYPE_CHECKING:
    from kernel_connect.client import AsyncKernelClient, BlockingKernelClient, KernelClient
    from kernel_connect.connect import (
        ConnectionFileError,
        KernelConnectionInfo,
        LocalPortCache,
        find_connection_file,
        read_connection_file,
        tunnel_to_kernel,
        write_connection_file,
    )
    from kernel_connect.errors import (
        KernelDiedError,
        KernelStartCancelledError,
        KernelTimeoutError,
    )
    from kernel_connect.kernelspec import (
        KernelSpec,
        KernelSpecManager,
        NoSuchKernel,
        find_kernel_specs,
        get_kernel_spec,
        install_kernel_spec,
        install_native_kernel_spec,
    )
    from kernel_connect.launcher import launch_kernel
    from kernel_connect.manager import (
        AsyncKernelManager,
        KernelManager,
        run_kernel,
        start_new_async_kernel,
        start_new_kernel,
    )
    from kernel_connect.mixin import ConnectionFileMixin
    from kernel_connect.multikernelmanager import AsyncMultiKernelManager, MultiKernelManager
    from kernel_connect.restarter import KernelRestarter
    from kernel_connect.session import Session
    from kernel_connect.ssh.forward import forward_tunnel
    from kernel_connect.ssh.tunnel import ssh_tunnel
    from kernel_connect.threaded import ThreadedKernelClient


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_connect' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
