"""``tunnel``: reach a remote kernel through SSH and hand any Jupyter client a
local connection file for it."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

from kernel_connect.cli import CommandError
from kernel_connect.cli.output import emit_json

#: Fields rewritten for the local end; the ports are added where used.
_STANDARD = {"ip", "key", "transport", "signature_scheme", "kernel_name"}


def local_file_for(remote_file: str) -> str:
    """``<dir>/<name>-ssh.json`` beside the remote kernel's file."""
    directory, name = os.path.split(os.path.abspath(remote_file))
    stem = name[:-5] if name.endswith(".json") else name
    return os.path.join(directory, f"{stem}-ssh.json")


def run_tunnel(args: argparse.Namespace) -> int:
    from kernel_connect.connect import (
        PORT_NAMES,
        TUNNEL_PORT_NAMES,
        read_connection_file,
        write_connection_file,
    )
    from kernel_connect.ssh.errors import SSHTunnelError
    from kernel_connect.ssh.tunnel import tunnel_to_kernel

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Ours first, so the tunnel registry leaves SIGTERM to us and we clean up.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        info: dict[str, Any] = read_connection_file(args.file)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from err
    if info.get("transport", "tcp") != "tcp":
        raise CommandError("only tcp kernels can be tunnelled over SSH")
    try:
        ports = tunnel_to_kernel(
            info, args.server, args.key, backend=args.backend, known_hosts=args.known_hosts
        )
    except (SSHTunnelError, OSError, ValueError) as err:
        raise CommandError(str(err)) from err
    local = local_file_for(args.file)
    try:
        extra = {k: v for k, v in info.items() if k not in _STANDARD and k not in PORT_NAMES}
        local_ports: dict[str, Any] = dict(zip(TUNNEL_PORT_NAMES, ports, strict=True))
        write_connection_file(
            local,
            **local_ports,
            ip="127.0.0.1",
            key=str(info.get("key", "")).encode(),
            transport="tcp",
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            kernel_name=str(info.get("kernel_name", "")),
            **extra,
        )
        if args.json:
            emit_json({"connection_file": local, "ports": list(ports), "server": args.server})
        else:
            print(f"tunnels up: {args.server} -> 127.0.0.1 ports {','.join(map(str, ports))}")
            print(local, flush=True)
        # Hold until told to stop, or until the tunnels die under us.
        while not stop.wait(0.5):
            if not ports.is_alive():
                raise CommandError("the SSH connection was lost")
    finally:
        ports.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
    return 0
