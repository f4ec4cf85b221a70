"""Where kernel-connect keeps its files: the Jupyter runtime directory.

jupyter_core is imported on first use only, so importing kernel_connect stays cheap.
"""

from __future__ import annotations

import os

PORT_TABLE_NAME = "kernel-connect-ports.v1"


def runtime_dir() -> str:
    """The Jupyter runtime directory (``$JUPYTER_RUNTIME_DIR`` or jupyter_core's
    default), created owner-only (0700) if it does not exist yet."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = jupyter_runtime_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def port_table_path() -> str:
    """The shared port reservation table: ``$KERNEL_CONNECT_PORT_TABLE`` or a file
    in the runtime directory (one table per user per host)."""
    explicit = os.environ.get("KERNEL_CONNECT_PORT_TABLE")
    if explicit:
        return explicit
    return os.path.join(runtime_dir(), PORT_TABLE_NAME)
