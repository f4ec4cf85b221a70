"""Where kernel-connect keeps its files.

Connection files go to the Jupyter runtime directory, as jupyter_client's do.
The port reservation table does not: ports are a resource of the host's network
namespace, not of a user or a runtime directory, so one table serves every
process that shares the namespace (see :func:`port_table_locations`).

jupyter_core is imported on first use only, so importing kernel_connect stays cheap.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass

#: The table file's name; the suffix names the network namespace it serves.
PORT_TABLE_PREFIX = "kernel-connect-ports.v2"
#: The host-wide table's directory: memory-backed, world-writable and sticky on
#: every Linux (another user can use the table but not delete it).
SHARED_TABLE_DIR = "/dev/shm"  # noqa: S108 - a documented shared place; opened O_NOFOLLOW, checked


def runtime_dir() -> str:
    """The Jupyter runtime directory (``$JUPYTER_RUNTIME_DIR`` or jupyter_core's
    default), created owner-only (0700) if it does not exist yet."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = jupyter_runtime_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def network_namespace() -> str:
    """A name for this process's network namespace: ``net<inode>``, or
    ``host`` where the system does not expose namespaces."""
    try:
        return f"net{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return "host"


@dataclass(frozen=True)
class TableLocation:
    """One place the port table can live.

    ``shared``: every user of the host uses it (mode 0666); otherwise it is
    this user's own (0600, and a file of another user's there is refused).
    """

    path: str
    shared: bool
    #: A directory to create owner-only (0700) before use, if any.
    private_dir: str | None = None

    def prepare(self) -> None:
        """Create the private directory, refusing one that is not ours alone."""
        if self.private_dir is None:
            return
        os.makedirs(self.private_dir, mode=0o700, exist_ok=True)
        st = os.lstat(self.private_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(f"{self.private_dir} is not a directory of ours")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.private_dir, 0o700)


def port_table_locations() -> list[TableLocation]:
    """Where to look for the port table, in order of preference.

    - ``$KERNEL_CONNECT_PORT_TABLE`` when set: that file only, this user's own.
    - Otherwise the host-wide table ``/dev/shm/kernel-connect-ports.v2.net<N>``,
      shared by every user and every runtime directory in network namespace N;
    - then, where that cannot be used, this user's own table in
      ``$XDG_RUNTIME_DIR`` or a 0700 directory in the system's temp directory.

    Nothing lives in the Jupyter runtime directory.
    """
    explicit = os.environ.get("KERNEL_CONNECT_PORT_TABLE")
    if explicit:
        return [TableLocation(explicit, shared=False)]
    name = f"{PORT_TABLE_PREFIX}.{network_namespace()}"
    locations = [TableLocation(os.path.join(SHARED_TABLE_DIR, name), shared=True)]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        locations.append(TableLocation(os.path.join(xdg, name), shared=False))
    private = os.path.join(tempfile.gettempdir(), f"kernel-connect-{os.geteuid()}")
    locations.append(TableLocation(os.path.join(private, name), shared=False, private_dir=private))
    return locations


def port_table_path() -> str:
    """The path of the preferred port table location (see :func:`port_table_locations`)."""
    return port_table_locations()[0].path
