"""``farm``: the README's main job, with live progress.

On a terminal each kernel gets one line that is rewritten in place as it moves
from starting to ready to done; when output is not a terminal each change is a
plain line. Ctrl-C (or SIGTERM) shuts every kernel down and removes its files.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import TextIO

from kernel_connect.cli import CommandError
from kernel_connect.cli.output import emit_json


class LiveLines:
    """One status line per kernel, redrawn in place on a terminal."""

    def __init__(self, n: int, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lines = [f"kernel {i}: waiting" for i in range(n)]
        self.lock = threading.Lock()
        if self.tty:
            stream.write("\n".join(self.lines) + "\n")
            stream.flush()

    def update(self, index: int, text: str) -> None:
        with self.lock:
            self.lines[index] = f"kernel {index}: {text}"
            if not self.tty:
                self.stream.write(self.lines[index] + "\n")
            else:
                up = len(self.lines) - index
                # Up to the kernel's line, clear it, write, and back down.
                self.stream.write(f"\x1b[{up}F\x1b[2K{self.lines[index]}\x1b[{up}E")
            self.stream.flush()


def _describe(kernel: object, state: str) -> str:
    pid = getattr(kernel, "pid", None)
    ready = getattr(kernel, "ready_s", None)
    if state == "ready" and ready is not None:
        return f"ready in {ready:.2f} s (pid {pid})"
    if state == "failed":
        return f"failed: {getattr(kernel, 'error', '')}"
    if state == "starting":
        return "starting"
    return state


def run_farm(args: argparse.Namespace) -> int:
    from kernel_connect.farm import DEFAULT_CODE, format_table
    from kernel_connect.farm import run_farm as farm

    if args.n < 1:
        raise CommandError("-n must be at least 1")
    # SIGTERM stops the farm the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    live = LiveLines(args.n, sys.stderr if args.json else sys.stdout)
    try:
        report = farm(
            n=args.n,
            code=args.code if args.code is not None else DEFAULT_CODE,
            kernel_name=args.kernel,
            ready_timeout=args.timeout,
            progress=lambda k, state: live.update(k.index, _describe(k, state)),
        )
    except KeyboardInterrupt:
        print("interrupted: every kernel was shut down and its file removed", file=sys.stderr)
        return 130
    if args.json:
        emit_json(
            {
                "kernels": [
                    {
                        "kernel": k.index,
                        "pid": k.pid,
                        "ports": k.ports,
                        "ready_s": k.ready_s,
                        "result": k.result,
                        "error": k.error,
                    }
                    for k in report.kernels
                ],
                "all_ready_s": report.all_ready_s,
                "shutdown_s": report.shutdown_s,
                "leftover_pids": report.leftover_pids,
                "leftover_files": report.leftover_files,
                "ok": report.ok,
            }
        )
    else:
        print()
        print(format_table(report))
    return 0 if report.ok else 1


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
