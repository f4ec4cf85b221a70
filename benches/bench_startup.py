"""Benchmark: from the start call to a ready kernel, four ways, side by side in one run.

Sides (each a real ipykernel ``python3`` kernel per start):

- ``jupyter_client``: jupyter_client's KernelManager (``start_kernel``);
- ``kc-exec``: kernel-connect's KernelManager, exec launcher;
- ``kc-fork``: kernel-connect's KernelManager, fork launcher (skipped, with the
  reason, where KernelManager has none);
- ``pool-take``: ``KernelPool.take()`` from a pool that is full (its filling is
  timed apart and not counted: that is the point of a pool);
- ``pool-take-cwd-env``: the same with a cwd and one environment variable to
  apply at take time (one silent execute in the kernel: a round trip to an
  idle kernel).

"Ready" is the first kernel_info reply, asked by the same probe for every
side (a kernel-connect client; jupyter_client's own ``wait_for_ready`` adds a
fixed 0.2 s IOPub flush, which would measure the client, not the start); for
the pool a take returns a kernel that has answered kernel_info already. For
N = 1, 16 and 100 kernels started at once (threads released together; a
size is repeated until it gives ``--samples`` starts) it prints the median and
p95 time to ready per kernel, the wall time until all N are ready, the failed
starts, the kernel CPU seconds per start (utime + stime from /proc/<pid>/stat
of every kernel before it is shut down, so a forked kernel, not our child,
counts the same way; the fork template's own imports are paid once and not
counted), the ratios to jupyter_client, and the issue's targets beside them.
Sides alternate their order from one size to the next.

    .venv/bin/python benches/bench_startup.py                 # 1, 16, 100 kernels
    .venv/bin/python benches/bench_startup.py --quick         # 1 and 16, fewer samples
    .venv/bin/python benches/bench_startup.py --sizes 16 --sides kc-exec pool-take
    .venv/bin/python benches/bench_startup.py --starts 1000   # failed starts in 1000 forks

``--starts N`` runs only that check: N fork-launched kernels (``--launcher``
to choose another), ``--concurrency`` at a time, each started, asked for
kernel_info and shut down, counting the failures.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

SIDES = ("jupyter_client", "kc-exec", "kc-fork", "pool-take", "pool-take-cwd-env")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets on a 2-core machine.
TARGET_TAKE_MEDIAN_S = 0.005
TARGET_FORK_100_RATIO = 0.4


@dataclass
class Started:
    """One kernel, ready: how long it took, and how to read and end it."""

    ready_s: float
    pid: int | None
    stop: Callable[[], None]
    forked: bool = False


@dataclass
class Result:
    """One side at one size: every sample."""

    per_kernel: list[float] = field(default_factory=list)
    all_ready: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    left_processes: int = 0
    forked: int = 0
    pool_fill: list[float] = field(default_factory=list)


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` in seconds (None if it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")": state is field 3 of the whole line, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def parent_of(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def probe_ready(info: dict[str, Any], timeout: float) -> None:
    """Wait for the kernel's first kernel_info reply, through a kernel-connect client."""
    from kernel_connect.client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kc.start_channels(stdin=False, hb=False, control=False)
    try:
        kc.wait_for_ready(timeout=timeout)
    finally:
        kc.stop_channels()


# -- the sides ----------------------------------------------------------------------


def start_jupyter_client(timeout: float) -> Started:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    t0 = time.perf_counter()
    km.start_kernel()
    try:
        probe_ready(km.get_connection_info(), timeout)
    except BaseException:
        km.shutdown_kernel(now=True)
        raise
    ready = time.perf_counter() - t0
    pid = km.provisioner.pid if km.provisioner is not None else None
    return Started(ready, pid, lambda: km.shutdown_kernel(now=True))


def start_kernel_connect(launcher: str, timeout: float) -> Started:
    from kernel_connect.manager import KernelManager
    from kernel_connect.pool import launcher_traits

    km = KernelManager(kernel_name="python3", **launcher_traits(launcher))
    t0 = time.perf_counter()
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels(stdin=False, hb=False, control=False)
        try:
            kc.wait_for_ready(timeout=timeout)
        finally:
            kc.stop_channels()
    except BaseException:
        km.shutdown_kernel(now=True)
        raise
    ready = time.perf_counter() - t0
    pid = getattr(km.kernel, "pid", None)
    forked = parent_of(pid) not in (None, os.getpid())
    return Started(ready, pid, lambda: km.shutdown_kernel(now=True), forked)


def fork_unavailable() -> str | None:
    """Why the fork side cannot run here, or None."""
    from kernel_connect.pool import launcher_available

    if not launcher_available("fork"):
        return "KernelManager has no fork launcher in this build (no 'launcher' trait)"
    return None


# -- one batch ---------------------------------------------------------------------


def run_batch(side: str, n: int, timeout: float, pool_launcher: str, result: Result) -> None:
    """Start ``n`` kernels at once on ``side``; record their times, CPU, failures."""
    pool = None
    if side.startswith("pool-take"):
        from kernel_connect.pool import KernelPool

        t_fill = time.perf_counter()
        pool = KernelPool(n, "python3", launcher=pool_launcher, start_timeout=timeout)
        if not pool.wait_until_full(timeout * max(1, n)):
            result.errors.append(f"pool not full: {pool.stats()}")
        result.pool_fill.append(time.perf_counter() - t_fill)

    def one() -> Started:
        if side == "jupyter_client":
            return start_jupyter_client(timeout)
        if side == "kc-exec":
            return start_kernel_connect("exec", timeout)
        if side == "kc-fork":
            return start_kernel_connect("fork", timeout)
        assert pool is not None
        where: dict[str, Any] = {}
        if side == "pool-take-cwd-env":
            where = {"cwd": tempfile.gettempdir(), "env": {"BENCH_TAKE": "1"}}
        t0 = time.perf_counter()
        km = pool.take(timeout=timeout, **where)
        ready = time.perf_counter() - t0
        pid = getattr(km.kernel, "pid", None)
        forked = parent_of(pid) not in (None, os.getpid())
        return Started(ready, pid, lambda: pool.release(km, now=True), forked)

    gate = threading.Barrier(n + 1)
    started: list[Started] = []
    ends: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        gate.wait()
        try:
            s = one()
        except Exception as e:
            with lock:
                result.failures += 1
                result.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            return
        with lock:
            started.append(s)
            ends.append(time.perf_counter())

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    t_begin = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join()
    if ends:
        result.all_ready.append(max(ends) - t_begin)
    for s in started:
        result.per_kernel.append(s.ready_s)
        result.forked += s.forked
        cpu = cpu_seconds(s.pid)
        if cpu is not None:
            result.cpu.append(cpu)
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(started)))) as ex:
        list(ex.map(lambda s: s.stop(), started))
    if pool is not None:
        pool.close()
    result.left_processes += sum(1 for s in started if s.pid is not None and alive(s.pid))


def warm_up(side: str, timeout: float) -> None:
    """One untimed start per side: disk caches, imports, the fork template."""
    if side.startswith("pool-take"):
        return
    s = (
        start_jupyter_client(timeout)
        if side == "jupyter_client"
        else start_kernel_connect("fork" if side == "kc-fork" else "exec", timeout)
    )
    s.stop()


# -- report ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:9.1f}"


def run_sizes(args: argparse.Namespace) -> int:
    sides = [s for s in args.sides if s in SIDES]
    skipped: dict[str, str] = {}
    if "kc-fork" in sides or args.pool_launcher == "fork":
        why = fork_unavailable()
        if why is not None:
            if "kc-fork" in sides:
                sides.remove("kc-fork")
                skipped["kc-fork"] = why
            if args.pool_launcher == "fork":
                args.pool_launcher = "exec"
                print(f"pool launcher: exec ({why})")
    print(
        f"start to ready: sizes {args.sizes}, sides {sides}, at least {args.samples} "
        f"starts per side and size, {os.cpu_count()} CPUs; pool launcher {args.pool_launcher}"
    )
    for side, why in skipped.items():
        print(f"  {side}: skipped: {why}")
    for side in sides:
        warm_up(side, args.timeout)

    results: dict[tuple[str, int], Result] = {}
    for i, n in enumerate(args.sizes):
        repeats = max(1, math.ceil(args.samples / n)) if n < args.samples else 1
        order = sides if i % 2 == 0 else list(reversed(sides))
        for side in order:
            result = results.setdefault((side, n), Result())
            for _ in range(repeats):
                run_batch(side, n, args.timeout, args.pool_launcher, result)
            fill = (
                f"  (pool filled in {med(result.pool_fill):.2f} s, not counted)"
                if result.pool_fill
                else ""
            )
            print(
                f"  n={n:<3} {side:<15} all ready {med(result.all_ready):7.3f} s  "
                f"median {med(result.per_kernel) * 1000:8.1f} ms  failures {result.failures}"
                f"{fill}",
                flush=True,
            )
            for error in result.errors[:3]:
                print(f"      {error}")

    print()
    header = (
        f"{'n':>4}  {'side':<15}{'median ms':>10}{'p95 ms':>10}{'all ready s':>12}"
        f"{'CPU s/start':>12}{'failed':>7}{'left':>5}{'forked':>7}  vs jupyter_client"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        base = results.get(("jupyter_client", n))
        for side in sides:
            r = results[(side, n)]
            ratio = ""
            if base is not None and side != "jupyter_client" and r.all_ready and base.all_ready:
                ratio = (
                    f"  all ready {med(r.all_ready) / med(base.all_ready):.2f}x, "
                    f"median {med(r.per_kernel) / med(base.per_kernel):.3f}x"
                )
            print(
                f"{n:>4}  {side:<15}{ms(med(r.per_kernel))}{ms(pct(r.per_kernel, 0.95)):>10}"
                f"{med(r.all_ready):12.3f}{med(r.cpu):12.3f}{r.failures:7d}"
                f"{r.left_processes:5d}{r.forked:7d}{ratio}"
            )
    print()
    print("targets (2-core machine):")
    # Judged on one take at a time (n = 1, else the smallest size run): with N
    # takers at once on 2 cores the median also measures their queueing.
    for which in ("pool-take", "pool-take-cwd-env"):
        sizes = sorted(n for (side, n) in results if side == which)
        if sizes:
            take = results[(which, sizes[0])].per_kernel
            verdict = "met" if med(take) <= TARGET_TAKE_MEDIAN_S else "MISSED"
            print(
                f"  warm-pool take median <= {TARGET_TAKE_MEDIAN_S * 1000:.0f} ms ({which}, "
                f"n={sizes[0]}): {med(take) * 1000:.2f} ms over {len(take)} takes -> {verdict}"
            )
    fork100, jc100 = results.get(("kc-fork", 100)), results.get(("jupyter_client", 100))
    if fork100 is not None and jc100 is not None and fork100.all_ready and jc100.all_ready:
        ratio = med(fork100.all_ready) / med(jc100.all_ready)
        verdict = "met" if ratio <= TARGET_FORK_100_RATIO else "MISSED"
        print(
            f"  100 fork-launched kernels all ready <= {TARGET_FORK_100_RATIO}x jupyter_client: "
            f"{med(fork100.all_ready):.2f} s vs {med(jc100.all_ready):.2f} s = {ratio:.2f}x "
            f"-> {verdict}"
        )
    else:
        why = skipped.get("kc-fork", "needs size 100 and both sides")
        print(f"  100 fork-launched kernels <= {TARGET_FORK_100_RATIO}x jupyter_client: ({why})")
    print("  zero failed starts in 1,000 fork-launched kernels: run with --starts 1000")
    bad = sum(
        r.failures + r.left_processes
        for (side, _), r in results.items()
        if side != "jupyter_client"
    )
    return 1 if bad else 0


def run_starts(args: argparse.Namespace) -> int:
    """Start, ask, shut down ``args.starts`` kernels; count the failures."""
    if args.launcher == "fork":
        why = fork_unavailable()
        if why is not None:
            print(f"--starts with the fork launcher: skipped: {why}")
            return 0
    print(
        f"{args.starts} {args.launcher}-launched kernels, {args.concurrency} at a time: "
        "start, first kernel_info reply, shut down"
    )
    warm_up("kc-fork" if args.launcher == "fork" else "kc-exec", args.timeout)
    failures: list[str] = []
    ready: list[float] = []
    left = 0
    forked = 0
    lock = threading.Lock()
    done = 0

    def one(_: int) -> None:
        nonlocal left, forked, done
        try:
            s = start_kernel_connect(args.launcher, args.timeout)
        except Exception as e:
            with lock:
                failures.append(f"{type(e).__name__}: {str(e)[:300]}")
                done += 1
            return
        try:
            s.stop()
        except Exception as e:
            with lock:
                failures.append(f"shutdown: {type(e).__name__}: {str(e)[:300]}")
        with lock:
            ready.append(s.ready_s)
            forked += s.forked
            left += s.pid is not None and alive(s.pid)
            done += 1
            if done % 100 == 0:
                print(f"  {done} done, {len(failures)} failed", flush=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as ex:
        list(ex.map(one, range(args.starts)))
    wall = time.perf_counter() - t0
    print(
        f"{args.starts} starts in {wall:.1f} s: {len(failures)} failed, {left} left running, "
        f"{forked} forked; ready median {med(ready) * 1000:.1f} ms, "
        f"p95 {pct(ready, 0.95) * 1000:.1f} ms"
    )
    for error in failures[:10]:
        print(f"  {error}")
    verdict = "met" if not failures and not left else "MISSED"
    print(
        f"target: zero failed starts in {args.starts} {args.launcher}-launched kernels -> {verdict}"
    )
    return 1 if failures or left else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 100], help="(1 16 100)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument(
        "--samples", type=int, default=10, help="starts per side and size, at least (10)"
    )
    parser.add_argument("--quick", action="store_true", help="sizes 1 and 16, 5 samples")
    parser.add_argument("--timeout", type=float, default=300.0, help="per kernel (300 s)")
    parser.add_argument(
        "--pool-launcher", choices=("exec", "fork"), default="exec", help="pool's launcher"
    )
    parser.add_argument("--starts", type=int, default=0, help="only the failed-starts check")
    parser.add_argument("--launcher", choices=("exec", "fork"), default="fork")
    parser.add_argument("--concurrency", type=int, default=4, help="with --starts (4)")
    args = parser.parse_args(argv)
    # Quiet: jupyter_client logs every start and shutdown through traitlets.
    logging.basicConfig(level=logging.WARNING)
    if args.starts:
        return run_starts(args)
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 16] or [1, 16]
        args.samples = min(args.samples, 5)
    return run_sizes(args)


if __name__ == "__main__":
    sys.exit(main())
