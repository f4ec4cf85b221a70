"""Connection files and port allocation: jupyter_client's connection API.

Same names, signatures and file format as ``jupyter_client.connect``. The work is
done by the Rust core: ports come from a cross-process reservation table (no two
kernels on this host are ever handed the same port), files are written atomically
and privately, and directory scans do not stat what they do not need to.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kernel_connect import _native
from kernel_connect._native import ConnectionFileError
from kernel_connect.localinterfaces import localhost
from kernel_connect.paths import runtime_dir
from kernel_connect.ports import LocalPortCache

if TYPE_CHECKING:
    from kernel_connect.mixin import CHANNEL_SOCKET_TYPES as channel_socket_types
    from kernel_connect.mixin import ConnectionFileMixin

# Raised by the core; presented as part of the public package.
ConnectionFileError.__module__ = "kernel_connect"

#: Connection information as read from or written to a connection file.
KernelConnectionInfo = dict[str, Any]

# The five channels' ports in the three orders jupyter_client's API fixes.
# This is their one home; every other module derives from these.

#: jupyter_client's ``port_names``: ConnectionFileMixin.ports, and how
#: kernel-connect shows a kernel's ports (``ls``, ``farm``).
port_names = [f"{channel}_port" for channel in ("shell", "stdin", "iopub", "hb", "control")]
#: The order of the ports in a connection file, as jupyter_client writes it:
#: the core's writer's order, which is its home.
PORT_NAMES: tuple[str, ...] = tuple(_native.PORT_NAMES)
#: The order of the tuple ``tunnel_to_kernel`` returns.
TUNNEL_PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")


def _ipc_ports(ip: str, count: int) -> list[int]:
    """``count`` numbers N for which no ``{ip}-N`` path exists yet."""
    ports: list[int] = []
    n = 1
    while len(ports) < count:
        while os.path.exists(f"{ip}-{n}"):
            n += 1
        ports.append(n)
        n += 1
    return ports


def write_connection_file(
    fname: str | None = None,
    shell_port: int = 0,
    iopub_port: int = 0,
    stdin_port: int = 0,
    hb_port: int = 0,
    control_port: int = 0,
    ip: str = "",
    key: bytes | str = b"",
    transport: str = "tcp",
    signature_scheme: str = "hmac-sha256",
    kernel_name: str = "",
    curve_publickey: bytes | str | None = None,
    curve_secretkey: bytes | str | None = None,
    **kwargs: Any,
) -> tuple[str, KernelConnectionInfo]:
    """Write a kernel connection file, choosing ports for those given as 0.

    The bytes match jupyter_client's. The file is created 0600 and appears
    atomically: readers see either no file (or the previous one) or all of it.

    Parameters
    ----------
    fname : str, optional
        Path to write. A new temporary ``.json`` file when omitted.
    shell_port, iopub_port, stdin_port, hb_port, control_port : int
        Channel ports; 0 (or less) leases a free one from the port table. A
        lease protects the port for ``LocalPortCache.lease_seconds`` (120 s by
        default; ``KERNEL_CONNECT_LEASE_SECONDS``), long enough for the kernel
        to start and bind it, and ends sooner if this process sees the file
        deleted or replaced, or once this process has taken
        ``MAX_LEASED_PORTS`` (4,096) newer leased ports;
        ``LocalPortCache.instance().return_ports`` ends it at once. With
        ``transport='ipc'`` they are the N of ``{ip}-N`` socket paths that do
        not exist yet.
    ip : str
        Address the kernel binds; localhost when empty.
    key : bytes
        HMAC key for message signatures.
    transport : {'tcp', 'ipc'}
    signature_scheme : str
        ``hmac-<digest>`` for a digest hashlib offers.
    kernel_name : str
    curve_publickey, curve_secretkey : bytes, optional
        CurveZMQ keys (Z85), written when given.
    **kwargs
        Extra keys, written after the standard ones.

    Returns
    -------
    (fname, info) : tuple of str and dict
    """
    if not ip:
        ip = localhost()
    given = dict(
        shell_port=shell_port,
        iopub_port=iopub_port,
        stdin_port=stdin_port,
        control_port=control_port,
        hb_port=hb_port,
    )
    # Everything that can be refused is refused before a port is leased or a
    # file created, so a refusal leaves nothing behind: secrets decoded first,
    # then the whole info through the one validator (as a file is read).
    key_text = _text("key", key, "utf-8")
    public = _text("curve_publickey", curve_publickey, "ascii")
    secret = _text("curve_secretkey", curve_secretkey, "ascii")
    ports = [_port_or_zero(given[name]) for name in PORT_NAMES]
    checked: KernelConnectionInfo = dict(zip(PORT_NAMES, ports, strict=True))
    checked.update(
        ip=ip,
        key=key_text,
        transport=transport,
        signature_scheme=signature_scheme,
        kernel_name=kernel_name,
    )
    if public is not None:
        checked["curve_publickey"] = public
    if secret is not None:
        checked["curve_secretkey"] = secret
    _native.validate_connection_info({**checked, **kwargs})
    wanted = [i for i, port in enumerate(ports) if port <= 0]
    leased: list[int] = []
    created_temp = False
    cache = LocalPortCache.instance()
    try:
        if wanted:
            if transport == "tcp":
                leased = cache.lease(ip, len(wanted))
                fresh = leased
            else:
                fresh = _ipc_ports(ip, len(wanted))
            for i, port in zip(wanted, fresh, strict=True):
                ports[i] = port
        if not fname:
            fd, fname = tempfile.mkstemp(".json")
            os.close(fd)
            created_temp = True
        _native.write_connection_file(
            os.fspath(fname),
            ports,
            ip,
            key_text,
            transport,
            signature_scheme,
            kernel_name,
            public,
            secret,
            kwargs or None,
        )
    except BaseException:
        cache.return_ports(leased)
        if created_temp and fname:
            with contextlib.suppress(OSError):
                os.remove(fname)
        raise
    cache.leased_for(leased, fname)
    # The validated info, with the ports chosen since (same keys, same order).
    info: KernelConnectionInfo = {**checked, **dict(zip(PORT_NAMES, ports, strict=True))}
    info.update(kwargs)
    return fname, info


def _port_or_zero(port: Any) -> Any:
    """A negative int port means "choose one", as 0 does; anything else is
    left for the validator to judge."""
    if isinstance(port, int) and not isinstance(port, bool) and port < 0:
        return 0
    return port


def _field_error(field: str, reason: str) -> ConnectionFileError:
    """A ConnectionFileError shaped like the ones the core raises."""
    err = ConnectionFileError(f"connection info: field '{field}': {reason}")
    err.path = None
    err.field = field
    return err


def _text(field: str, value: bytes | str | None, encoding: str) -> Any:
    """A secret as text for the file. A value that does not decode (or, for an
    ASCII field, is not ASCII) is refused naming the field and the offset only:
    UnicodeDecodeError's own args would carry the whole secret."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode(encoding)
        except UnicodeDecodeError as err:
            bad = err.start
    elif encoding != "ascii" or value.isascii():
        return value
    else:
        bad = next(i for i, ch in enumerate(value) if not ch.isascii())
    raise _field_error(field, f"not valid {encoding.upper()} (at offset {bad})")


def read_connection_file(fname: str | os.PathLike[str]) -> KernelConnectionInfo:
    """Read and validate a connection file.

    Raises
    ------
    ConnectionFileError
        (a ValueError) naming the file and the field at fault; the key is never
        part of the message.
    OSError
        When the file cannot be read.
    """
    info: KernelConnectionInfo = _native.read_connection_file(os.fspath(fname))
    return info


def _filefind(filename: str, path_dirs: Sequence[str]) -> str:
    """The first ``dir/filename`` that is a file, as an absolute path."""
    filename = filename.strip('"').strip("'")
    if os.path.isabs(filename) and os.path.isfile(filename):
        return filename
    for directory in path_dirs:
        candidate = os.path.join(os.path.expandvars(os.path.expanduser(directory)), filename)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise OSError(f"File {filename!r} does not exist in any of the search paths: {path_dirs!r}")


def find_connection_file(
    filename: str = "kernel-*.json",
    path: str | Sequence[str] | None = None,
    profile: str | None = None,
) -> str:
    """Find a connection file and return its absolute path.

    ``filename`` is tried as a name in each directory of ``path`` (the current
    directory and the runtime directory by default), then as a glob if it
    contains ``*``, else as a substring. Among several matches the one accessed
    most recently wins.

    Raises
    ------
    OSError
        If nothing matches.
    """
    if profile is not None:
        warnings.warn(f"Jupyter has no profiles. profile={profile} has been ignored.", stacklevel=2)
    if path is None:
        path = [".", runtime_dir()]
    elif isinstance(path, str):
        path = [path]
    try:
        return _filefind(filename, path)
    except OSError:
        pass
    pattern = filename if "*" in filename else f"*{filename}*"
    joined = [os.path.join(p, pattern) for p in path]
    directories = [os.path.dirname(j) for j in joined]
    base = os.path.basename(pattern)
    if base and not any(glob.has_magic(d) for d in directories):
        found = _native.find_newest(directories, base)
    else:
        found = _glob_newest(joined)
    if found is None:
        raise OSError(f"Could not find {filename!r} in {list(path)!r}")
    return os.path.abspath(found)


def _glob_newest(patterns: Sequence[str]) -> str | None:
    """Patterns with magic in their directory part: glob as jupyter_client does."""
    matches = [m for pattern in patterns for m in glob.glob(pattern)]
    if len(matches) <= 1:
        return matches[0] if matches else None
    return sorted(matches, key=lambda f: os.stat(f).st_atime)[-1]


def tunnel_to_kernel(
    connection_info: str | KernelConnectionInfo,
    sshserver: str,
    sshkey: str | None = None,
    **options: Any,
) -> tuple[int, int, int, int, int]:
    """Tunnel to a remote kernel's five ports over one SSH connection.

    Returns the local ports as (shell, iopub, stdin, hb, control). See
    :func:`kernel_connect.ssh.tunnel.tunnel_to_kernel` for the options.
    """
    from kernel_connect.ssh.tunnel import tunnel_to_kernel as _tunnel_to_kernel

    return _tunnel_to_kernel(connection_info, sshserver, sshkey, **options)


def __getattr__(name: str) -> Any:
    # ConnectionFileMixin and the channels' zmq socket types live in the mixin's
    # module (they need zmq and traitlets); they are importable from here as in
    # jupyter_client, without this module importing zmq.
    if name == "ConnectionFileMixin":
        from kernel_connect.mixin import ConnectionFileMixin

        return ConnectionFileMixin
    if name == "channel_socket_types":
        from kernel_connect.mixin import CHANNEL_SOCKET_TYPES

        return CHANNEL_SOCKET_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PORT_NAMES",
    "TUNNEL_PORT_NAMES",
    "ConnectionFileError",
    "ConnectionFileMixin",
    "KernelConnectionInfo",
    "LocalPortCache",
    "channel_socket_types",
    "find_connection_file",
    "port_names",
    "read_connection_file",
    "tunnel_to_kernel",
    "write_connection_file",
]
