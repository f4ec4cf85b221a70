"""``farm``: the README's main job, with live progress.

On a terminal each kernel gets one line that is rewritten in place as it moves
from starting to ready to done; when output is not a terminal each change is a
plain line. Ctrl-C (or SIGTERM) shuts every kernel down and removes its files.

``--launcher fork`` launches kernels by fork where KernelManager can;
``--pool SIZE`` takes them from a warm pool: one line says when the pool is
full (before the kernel lines start, so the clock of each kernel line starts
with a warm pool), then the same per-kernel lines, "taking from the pool"
while a take waits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
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
    if state == "taking":
        return "taking from the pool"
    return state


def run_farm(args: argparse.Namespace) -> int:
    from kernel_connect.farm import DEFAULT_CODE, format_table
    from kernel_connect.farm import run_farm as farm
    from kernel_connect.pool import PoolError, launcher_available

    if args.n < 1:
        raise CommandError("-n must be at least 1")
    if args.pool < 0:
        raise CommandError("--pool must be at least 0")
    if not launcher_available(args.launcher):
        raise CommandError(
            f"--launcher {args.launcher}: not available in this kernel-connect "
            "(KernelManager has no such launcher); use --launcher exec"
        )
    # SIGTERM stops the farm the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stream = sys.stderr if args.json else sys.stdout
    live: LiveLines | None = None
    if args.pool:
        print(
            f"pool: filling {args.pool} {args.kernel} kernels ({args.launcher} launcher)",
            file=stream,
            flush=True,
        )
    else:
        live = LiveLines(args.n, stream)

    def progress(k: object, state: str) -> None:
        nonlocal live
        if live is None:
            # The first kernel line: the pool is full, the clock has started.
            with _first_line:
                if live is None:
                    waited = time.monotonic() - began
                    what = f"full in {waited:.2f} s" if state == "taking" else "not filled"
                    print(f"pool: {what}", file=stream, flush=True)
                    live = LiveLines(args.n, stream)
        live.update(getattr(k, "index", 0), _describe(k, state))

    began = time.monotonic()
    try:
        report = farm(
            n=args.n,
            code=args.code if args.code is not None else DEFAULT_CODE,
            kernel_name=args.kernel,
            ready_timeout=args.timeout,
            progress=progress,
            launcher=args.launcher,
            pool_size=args.pool,
        )
    except PoolError as e:
        raise CommandError(str(e)) from None
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
                "launcher": report.launcher,
                "pool": report.pool_size,
                "pool_warm_s": report.pool_warm_s,
                "ok": report.ok,
            }
        )
    else:
        print()
        print(format_table(report))
    return 0 if report.ok else 1


# Serializes the making of the kernel lines (progress comes from worker threads).
_first_line = threading.Lock()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
