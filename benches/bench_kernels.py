"""Benchmark: real ipykernel start-up and shutdown, kernel-connect vs jupyter_client.

For each library, in the same run and alternating rounds: N kernels started
through KernelManager until a client's ``wait_for_ready`` returns, then all N
shut down (after both libraries' kernels settled idle for the same second) --
in parallel mode both on N threads, in sequential mode both one after the other. Prints medians of
time-to-all-ready, per-kernel ready time and shutdown time, and the ratios
kernel-connect / jupyter_client (lower is better).

    .venv/bin/python benches/bench_kernels.py [--quick] [-n 8] [--rounds 3] [--starts 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LIBS = ("kernel-connect", "jupyter_client")
SETTLE_S = 1.0


@dataclass
class Round:
    """Timings of one library for one batch of kernels."""

    all_ready: float = 0.0
    per_kernel: list[float] = field(default_factory=list)
    shutdown: float = 0.0
    failures: int = 0
    clash_restarts: int = 0


def _factories(lib: str) -> tuple[Callable[[], Any], bool]:
    """(manager factory, whether the library is ours)."""
    if lib == "kernel-connect":
        from kernel_connect.manager import KernelManager

        return KernelManager, True
    from jupyter_client import KernelManager as JCKernelManager

    return JCKernelManager, False


def _start_one(factory: Callable[[], Any], timeout: float) -> tuple[Any, Any]:
    km = factory()
    kc = None
    try:
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=timeout)
    except BaseException:
        # A failed start must not leave its process or file behind either.
        if kc is not None:
            kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def _shutdown_all(pairs: list[tuple[Any, Any]], parallel: bool) -> float:
    def stop(pair: tuple[Any, Any]) -> None:
        km, kc = pair
        kc.stop_channels()
        km.shutdown_kernel()

    t0 = time.perf_counter()
    if parallel:
        threads = [threading.Thread(target=stop, args=(p,)) for p in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for pair in pairs:
            stop(pair)
    return time.perf_counter() - t0


def run_batch(lib: str, n: int, parallel: bool, timeout: float) -> Round:
    """Start ``n`` kernels of ``lib``, then shut them down, both in parallel or one by one."""
    factory, _ = _factories(lib)
    result = Round()
    pairs: list[tuple[Any, Any]] = []
    lock = threading.Lock()

    def start(t_origin: float) -> None:
        try:
            pair = _start_one(factory, timeout)
        except Exception as e:
            print(f"  {lib}: start failed: {type(e).__name__}: {e}", file=sys.stderr)
            with lock:
                result.failures += 1
            return
        elapsed = time.perf_counter() - t_origin
        with lock:
            pairs.append(pair)
            result.per_kernel.append(elapsed)

    t0 = time.perf_counter()
    if parallel:
        threads = [threading.Thread(target=start, args=(t0,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for _ in range(n):
            start(time.perf_counter())
    result.all_ready = time.perf_counter() - t0
    # Kernels keep booting for a moment after their first reply; let both
    # libraries' kernels settle to the same idle state before timing shutdown.
    time.sleep(SETTLE_S)
    result.shutdown = _shutdown_all(pairs, parallel)
    result.clash_restarts = sum(getattr(km, "port_clash_restarts", 0) for km, _ in pairs)
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def stress(n_total: int, batch: int, timeout: float) -> tuple[int, int, float]:
    """Start ``n_total`` kernel-connect kernels in parallel batches.

    Returns (failed starts, port clashes recovered by a restart, seconds).
    """
    failures = clashes = 0
    t0 = time.perf_counter()
    done = 0
    while done < n_total:
        size = min(batch, n_total - done)
        rnd = run_batch("kernel-connect", size, parallel=True, timeout=timeout)
        failures += rnd.failures
        clashes += rnd.clash_restarts
        done += size
    return failures, clashes, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=8, help="kernels per batch (8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per library (3)")
    parser.add_argument("--quick", action="store_true", help="one round, parallel only")
    parser.add_argument(
        "--starts",
        type=int,
        default=0,
        help="also start this many kernels (ours) and count failures",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    modes = ["parallel"] if args.quick else ["parallel", "sequential"]

    # Import both libraries up front: import time is not start-up time.
    for lib in LIBS:
        _factories(lib)
    print(f"{args.n} kernels per batch, {rounds} round(s), {os.cpu_count()} CPUs")

    results: dict[tuple[str, str], list[Round]] = {(lib, m): [] for lib in LIBS for m in modes}
    for r in range(rounds):
        for mode in modes:
            # Alternate which library goes first, so neither always runs on a warm cache.
            order = LIBS if r % 2 == 0 else tuple(reversed(LIBS))
            for lib in order:
                rnd = run_batch(lib, args.n, parallel=(mode == "parallel"), timeout=args.timeout)
                results[(lib, mode)].append(rnd)
                print(
                    f"  round {r + 1} {mode:<10} {lib:<15} all ready {rnd.all_ready:6.2f} s  "
                    f"shutdown {rnd.shutdown:5.2f} s  failures {rnd.failures}"
                    + (
                        f"  (port clashes recovered: {rnd.clash_restarts})"
                        if rnd.clash_restarts
                        else ""
                    )
                )

    print()
    header = (
        f"{'mode':<11}{'library':<16}{'all ready':>10}{'per kernel':>12}"
        f"{'shutdown':>10}{'failed':>8}"
    )
    print(header)
    print("-" * len(header))
    summary: dict[tuple[str, str], tuple[float, float, float]] = {}
    for mode in modes:
        for lib in LIBS:
            rs = results[(lib, mode)]
            all_ready = _median([r.all_ready for r in rs])
            per_kernel = _median([k for r in rs for k in r.per_kernel])
            shutdown = _median([r.shutdown for r in rs])
            failed = sum(r.failures for r in rs)
            summary[(lib, mode)] = (all_ready, per_kernel, shutdown)
            print(
                f"{mode:<11}{lib:<16}{all_ready:9.2f}s{per_kernel:11.2f}s{shutdown:9.2f}s{failed:8d}"
            )
    print()
    for mode in modes:
        ours, theirs = summary[("kernel-connect", mode)], summary[("jupyter_client", mode)]
        print(
            f"ratio kernel-connect/jupyter_client ({mode}): "
            f"all ready {ours[0] / theirs[0]:.2f}x, per kernel {ours[1] / theirs[1]:.2f}x, "
            f"shutdown of {args.n} {ours[2] / theirs[2]:.2f}x"
        )
    if "sequential" in modes:
        ours = summary[("kernel-connect", "parallel")][2]
        theirs = summary[("jupyter_client", "sequential")][2]
        print(
            f"ratio shutdown of {args.n}, kernel-connect in parallel / jupyter_client one by one "
            f"(a plain loop over its synchronous KernelManager): {ours / theirs:.2f}x"
        )
    # The exit status reflects kernel-connect only; jupyter_client's failures are reported.
    total_failures = sum(
        r.failures for (lib, _), rs in results.items() if lib == "kernel-connect" for r in rs
    )
    if args.starts:
        failures, clashes, seconds = stress(args.starts, args.n, args.timeout)
        total_failures += failures
        print(
            f"stress: {args.starts} kernel-connect kernels in batches of {args.n}: "
            f"{failures} failed starts, {clashes} port clashes with outside processes "
            f"recovered by a restart ({seconds:.1f} s)"
        )
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
