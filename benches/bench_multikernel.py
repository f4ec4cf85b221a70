"""Benchmark: AsyncMultiKernelManager farms, kernel-connect vs jupyter_client.

For each library, in the same run, alternating which goes first: N real
ipykernel kernels started concurrently through one AsyncMultiKernelManager
(the library's defaults) in one event loop, until every kernel answers a
kernel_info request (``wait_for_ready``); then, after the kernels settled for
the same second, ``shutdown_all``. Prints, for N = 16 and 64, the medians of
time-to-all-ready and shutdown time, the failures (a start or a wait that
raised), what each left behind (processes, connection files, and for
kernel-connect port reservations), and the ratios jupyter_client /
kernel-connect (above 1: kernel-connect is faster).

    .venv/bin/python benches/bench_multikernel.py [--quick] [--sizes 16 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

LIBS = ("kernel-connect", "jupyter_client")
SETTLE_S = 1.0


@dataclass
class Round:
    """One library's farm of one size."""

    all_ready: float = 0.0
    shutdown: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    left_processes: int = 0
    left_files: int = 0
    left_reservations: int = 0


def _manager_class(lib: str) -> type:
    if lib == "kernel-connect":
        from kernel_connect.multikernelmanager import AsyncMultiKernelManager

        return AsyncMultiKernelManager
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager as JCAsync

    return JCAsync


def _pid(km: Any) -> int | None:
    """The kernel's process id, through either library's manager."""
    provisioner = getattr(km, "provisioner", None)
    if provisioner is not None:
        return getattr(provisioner, "pid", None)
    proc = getattr(km, "kernel", None)
    return proc.pid if proc is not None else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _our_reservations() -> set[int]:
    from kernel_connect.connect import LocalPortCache

    me = os.getpid()
    return {row[0] for row in LocalPortCache.instance().table.held() if row[1] == me}


async def _farm(lib: str, n: int, timeout: float, connection_dir: str) -> Round:
    """Start ``n`` kernels at once, wait until all answer, then shut all down."""
    mkm = _manager_class(lib)(connection_dir=connection_dir)
    result = Round()
    reserved_before = _our_reservations() if lib == "kernel-connect" else set()

    async def start_and_wait() -> None:
        kid = await mkm.start_kernel()
        kc = mkm.get_kernel(kid).client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=timeout)
        finally:
            kc.stop_channels()

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(start_and_wait() for _ in range(n)), return_exceptions=True)
    result.all_ready = time.perf_counter() - t0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.failures += 1
            result.errors.append(f"{type(outcome).__name__}: {str(outcome)[:200]}")
    pids = [p for p in (_pid(mkm.get_kernel(k)) for k in mkm.list_kernel_ids()) if p]

    await asyncio.sleep(SETTLE_S)
    t1 = time.perf_counter()
    try:
        await mkm.shutdown_all()
    except Exception as e:
        result.failures += 1
        result.errors.append(f"shutdown_all: {type(e).__name__}: {str(e)[:200]}")
    result.shutdown = time.perf_counter() - t1

    result.left_processes = sum(1 for p in pids if _alive(p))
    result.left_files = len(os.listdir(connection_dir))
    if lib == "kernel-connect":
        result.left_reservations = len(_our_reservations() - reserved_before)
    return result


def run_farm(lib: str, n: int, timeout: float) -> Round:
    """One farm in an event loop of its own, its files in a directory of its own."""
    connection_dir = tempfile.mkdtemp(prefix=f"bench-mkm-{lib}-")
    try:
        return asyncio.run(_farm(lib, n, timeout, connection_dir))
    finally:
        shutil.rmtree(connection_dir, ignore_errors=True)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="(16 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per library and size (3)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--timeout", type=float, default=300.0, help="per kernel (300 s)")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    # Quiet: jupyter_client logs every start and shutdown at INFO through traitlets.
    logging.basicConfig(level=logging.WARNING)

    for lib in LIBS:  # imports are not start-up time
        _manager_class(lib)
    print(
        f"AsyncMultiKernelManager farms: sizes {args.sizes}, {rounds} round(s), "
        f"{os.cpu_count()} CPUs"
    )

    results: dict[tuple[str, int], list[Round]] = {(lib, n): [] for lib in LIBS for n in args.sizes}
    for r in range(rounds):
        for n in args.sizes:
            order = LIBS if r % 2 == 0 else tuple(reversed(LIBS))
            for lib in order:
                rnd = run_farm(lib, n, args.timeout)
                results[(lib, n)].append(rnd)
                print(
                    f"  round {r + 1} n={n:<3} {lib:<15} all ready {rnd.all_ready:6.2f} s  "
                    f"shutdown_all {rnd.shutdown:5.2f} s  failures {rnd.failures}  left: "
                    f"{rnd.left_processes} processes, {rnd.left_files} files"
                    + (f", {rnd.left_reservations} reservations" if lib == "kernel-connect" else "")
                )
                for error in rnd.errors[:5]:
                    print(f"      {error}")

    print()
    header = f"{'n':>4}  {'library':<16}{'all ready':>10}{'shutdown':>10}{'failed':>8}{'left':>6}"
    print(header)
    print("-" * len(header))
    summary: dict[tuple[str, int], tuple[float, float]] = {}
    for n in args.sizes:
        for lib in LIBS:
            rs = results[(lib, n)]
            ready, down = _median([r.all_ready for r in rs]), _median([r.shutdown for r in rs])
            failed = sum(r.failures for r in rs)
            left = sum(r.left_processes + r.left_files + r.left_reservations for r in rs)
            summary[(lib, n)] = (ready, down)
            print(f"{n:>4}  {lib:<16}{ready:9.2f}s{down:9.2f}s{failed:8d}{left:6d}")
    print()
    for n in args.sizes:
        ours, theirs = summary[("kernel-connect", n)], summary[("jupyter_client", n)]
        print(
            f"ratio jupyter_client / kernel-connect, n={n}: all ready {theirs[0] / ours[0]:.2f}x, "
            f"shutdown_all {theirs[1] / ours[1]:.2f}x (above 1: kernel-connect faster)"
        )
    # The exit status reflects kernel-connect only; jupyter_client's failures are reported.
    bad = sum(
        r.failures + r.left_processes + r.left_files + r.left_reservations
        for (lib, _), rs in results.items()
        if lib == "kernel-connect"
        for r in rs
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
