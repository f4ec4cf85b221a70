"""Port table cost against occupancy: does allocation stay flat as the table fills?

Run: .venv/bin/python benches/bench_ports.py [--quick]   (or `make bench`)

For K = 0, 1,000, 5,000 and 20,000 ports held by 1 and by 8 other live
processes, times (medians, in this process) find_available_port + return_port
and a module-level write_connection_file with five automatic ports, and prints
each as a ratio to K = 0 measured in the same run (target: at most 1.5x).
Then one process calls write_connection_file 100,000 times (each file removed,
as a server does) and the cost of the last thousand calls is compared with the
first thousand: leases must not pile up.

The machine is shared and noisy, so every figure is a ratio within one run,
and each configuration is measured in several interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# A private table file, so the benchmark neither disturbs nor is disturbed by
# anything else on the host.
_TABLE_DIR = tempfile.mkdtemp(prefix="kc-bench-ports-")
os.environ["KERNEL_CONNECT_PORT_TABLE"] = os.path.join(_TABLE_DIR, "ports")
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kc-bench-runtime-")

from _timing import median_us  # noqa: E402
from kernel_connect.connect import write_connection_file  # noqa: E402
from kernel_connect.ports import LocalPortCache  # noqa: E402

HOLDER = textwrap.dedent("""
    import sys
    from kernel_connect.ports import LocalPortCache
    cache = LocalPortCache.instance()
    n = int(sys.argv[1])
    while n:
        got = cache.reserve("127.0.0.1", min(n, 1000))
        n -= len(got)
    print("ready", flush=True)
    sys.stdin.read()
""")

TARGET = 1.5


class Holders:
    """`processes` live processes holding `total` ports between them."""

    def __init__(self, total: int, processes: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        if total == 0:
            return
        share = total // processes
        for i in range(processes):
            n = share + (total - share * processes if i == 0 else 0)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOLDER, str(n)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(timeout=60)


def measure(work: Path, runs: int) -> tuple[float, float]:
    """(find+return µs, write µs) medians in the current table state."""
    cache = LocalPortCache.instance()

    def find_return() -> None:
        cache.return_port(cache.find_available_port("127.0.0.1"))

    path = str(work / "kernel-bench.json")

    def write() -> None:
        write_connection_file(path, ip="127.0.0.1", key=b"k")

    def remove() -> None:
        os.remove(path)

    find_return()  # warm
    return median_us(find_return, runs), median_us(write, max(runs // 3, 50), remove)


def bench_occupancy(work: Path, runs: int, rounds: int, levels: list[int]) -> bool:
    print("\n== cost against occupancy (ratio to K = 0 in the same run; target <= 1.5x) ==")
    print(f"{'held by':<12} {'K':>7} {'find+return':>12} {'ratio':>7} {'write':>10} {'ratio':>7}")
    ok = True
    for processes in (1, 8):
        # Interleave: each round measures every K, so drift hits all alike.
        found: dict[int, list[tuple[float, float]]] = {k: [] for k in levels}
        for _ in range(rounds):
            for k in levels:
                holders = Holders(k, processes)
                try:
                    found[k].append(measure(work, runs))
                finally:
                    holders.close()
        base_find = statistics.median(f for f, _ in found[0])
        base_write = statistics.median(w for _, w in found[0])
        for k in levels:
            find = statistics.median(f for f, _ in found[k])
            write = statistics.median(w for _, w in found[k])
            rf, rw = find / base_find, write / base_write
            ok &= rf <= TARGET and rw <= TARGET
            label = f"{processes} process{'es' if processes > 1 else ''}"
            print(
                f"{label:<12} {k:>7,} {find:>9.1f} µs {rf:>6.2f}x {write:>7.1f} µs {rw:>6.2f}x"
                f"  {'met' if rf <= TARGET and rw <= TARGET else 'MISSED'}"
            )
    return ok


def bench_many_writes(work: Path, calls: int) -> bool:
    print(f"\n== {calls:,} module-level write_connection_file calls, each file removed ==")
    path = str(work / "kernel-churn.json")
    samples = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fname, _ = write_connection_file(path, ip="127.0.0.1", key=b"k")
        samples.append(time.perf_counter_ns() - t0)
        os.remove(fname)
    total = time.perf_counter() - start
    window = min(1000, calls // 4)
    first = statistics.median(samples[:window]) / 1000
    last = statistics.median(samples[-window:]) / 1000
    held = len(LocalPortCache.instance().table.held())
    ratio = last / first
    ok = ratio <= TARGET and held <= 10
    print(
        f"all {calls:,} succeeded in {total:.1f} s; median of the first {window:,}: "
        f"{first:.1f} µs, of the last {window:,}: {last:.1f} µs "
        f"({ratio:.2f}x; target <= {TARGET}x: {'met' if ratio <= TARGET else 'MISSED'}); "
        f"ports still reserved at the end: {held}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and rounds")
    args = parser.parse_args()
    runs, rounds, calls = (300, 1, 20_000) if args.quick else (3000, 3, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ok = bench_occupancy(work, runs, rounds, [0, 1000, 5000, 20000])
        ok &= bench_many_writes(work, calls)
    print("\nall targets met" if ok else "\nsome targets MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
