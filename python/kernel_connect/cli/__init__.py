"""The ``kernel-connect`` command: what a farm operator uses every day.

Only argparse is imported up front; each subcommand imports what it needs when
it runs, so ``--help`` answers at once. Exit codes: 0 success, 1 a failure the
command reports, 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module in kernel_connect.cli, one-line help)
_COMMANDS = {
    "farm": ("farm", "start N kernels in parallel, run code on each, shut down cleanly"),
    "ls": ("files", "list connection files with their kernels' liveness"),
    "prune": ("files", "remove the connection files of dead kernels"),
    "new": ("files", "write a new connection file with reserved ports and a fresh key"),
    "tunnel": ("tunnel", "tunnel to a remote kernel and write a local connection file"),
    "ports": ("ports", "show the port reservation table"),
}


class CommandError(Exception):
    """A failure the command reports in one line and exits 1 for."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernel-connect",
        description="Jupyter kernel connections for kernel farms: connection files, "
        "reserved ports, heartbeats, SSH tunnels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    farm = sub.add_parser("farm", help=_COMMANDS["farm"][1], description=_COMMANDS["farm"][1])
    farm.add_argument("-n", type=int, default=4, metavar="N", help="kernels to start (default 4)")
    farm.add_argument("--kernel", default="python3", metavar="NAME", help="kernel spec name")
    farm.add_argument("--code", default=None, metavar="CODE", help="code to run on each kernel")
    farm.add_argument("--timeout", type=float, default=60.0, help="seconds per kernel to be ready")
    farm.add_argument("--json", action="store_true", help="print a JSON report")
    farm.add_argument(
        "--launcher",
        choices=("exec", "fork"),
        default="exec",
        help="how kernels are launched: exec a new interpreter (default), or fork one "
        "from a template process that has ipykernel imported already",
    )
    farm.add_argument(
        "--pool",
        type=int,
        default=0,
        metavar="SIZE",
        help="take the kernels from a warm pool of SIZE ready kernels, filled before "
        "the clock starts (default 0: start each kernel)",
    )

    for name in ("ls", "prune"):
        p = sub.add_parser(name, help=_COMMANDS[name][1], description=_COMMANDS[name][1])
        p.add_argument("--dir", metavar="DIR", help="directory to scan (default: runtime dir)")
        p.add_argument(
            "--pattern",
            default="kernel-*.json",
            metavar="GLOB",
            help="file names to consider (default kernel-*.json, jupyter's own naming)",
        )
        p.add_argument("--timeout", type=float, default=1.0, help="heartbeat timeout, seconds")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "prune":
            p.add_argument("--dry-run", action="store_true", help="only say what would go")
            p.add_argument(
                "--min-age",
                type=float,
                default=30.0,
                metavar="SECONDS",
                help="never remove files younger than this: their kernel may be starting "
                "(default 30)",
            )

    new = sub.add_parser("new", help=_COMMANDS["new"][1], description=_COMMANDS["new"][1])
    new.add_argument("-f", "--file", metavar="FILE", help="path (default: runtime dir)")
    new.add_argument("--ip", default="", help="address the kernel binds (default localhost)")
    new.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    new.add_argument("--kernel-name", default="", metavar="NAME")
    new.add_argument("--show-key", action="store_true", help="also print the HMAC key")
    new.add_argument("--json", action="store_true", help="print JSON")

    tunnel = sub.add_parser(
        "tunnel", help=_COMMANDS["tunnel"][1], description=_COMMANDS["tunnel"][1]
    )
    tunnel.add_argument("file", metavar="FILE", help="the remote kernel's connection file")
    tunnel.add_argument("server", metavar="SERVER", help="[user@]host[:port] or an ssh alias")
    tunnel.add_argument("-i", dest="key", metavar="KEY", help="SSH private key file")
    tunnel.add_argument("--backend", choices=("paramiko", "openssh"), default=None)
    tunnel.add_argument("--known-hosts", metavar="FILE", help="known_hosts file to check")
    tunnel.add_argument("--json", action="store_true", help="print JSON when ready")

    ports = sub.add_parser("ports", help=_COMMANDS["ports"][1], description=_COMMANDS["ports"][1])
    ports.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"kernel_connect.cli.{_COMMANDS[args.command][0]}")
    handler = getattr(module, f"run_{args.command}")
    try:
        code: int = handler(args)
    except CommandError as err:
        print(f"kernel-connect {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
