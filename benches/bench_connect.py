"""Side-by-side benchmarks of the connection layer: kernel-connect vs jupyter_client.

Run: .venv/bin/python benches/bench_connect.py [--quick]   (or `make bench`)

Times the hot paths in the same process and prints medians and the ratio
(jupyter_client / kernel-connect: above 1 means kernel-connect is faster), then
runs the farm simulation: P processes each allocating a kernel's five ports,
waiting a random start-up gap, binding them with zmq ROUTER sockets as a kernel
would, holding, releasing; EADDRINUSE failures are counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

# Benchmarks get their own runtime dir and port table, like the tests.
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kc-bench-runtime-")
os.environ["KERNEL_CONNECT_PORT_TABLE"] = os.path.join(
    tempfile.mkdtemp(prefix="kc-bench-table-"), "ports"
)

import jupyter_client.connect as jc

import kernel_connect.connect as kc
from _timing import median_us


def row(name: str, theirs: float, ours: float, target: float, unit: str = "µs") -> bool:
    ratio = theirs / ours if ours else float("inf")
    ok = ratio >= target
    print(
        f"{name:<44} {theirs:>10.1f} {ours:>10.1f} {unit:<3} {ratio:>6.2f}x  "
        f"(target >= {target}x: {'met' if ok else 'MISSED'})"
    )
    return ok


def bench_write(work: Path, runs: int) -> list[bool]:
    """Each call writes a new kernel-N.json, as a farm does (one file per kernel);
    the file is removed (and auto ports returned) outside the timed region."""
    names = (str(work / f"kernel-{i}.json") for i in itertools.count())
    current: list[str] = [""]
    last_ports: list[int] = []

    def clean_up() -> None:
        os.unlink(current[0])
        kc.LocalPortCache.instance().return_ports(last_ports)
        last_ports.clear()

    def ours(**kw: object) -> Callable[[], None]:
        def call() -> None:
            current[0] = next(names)
            _, info = kc.write_connection_file(
                current[0], key=b"a-key", kernel_name="python3", **kw
            )
            if not kw:
                last_ports.extend(info[n] for n in kc.PORT_NAMES)

        return call

    def theirs(**kw: object) -> Callable[[], None]:
        def call() -> None:
            current[0] = next(names)
            jc.write_connection_file(current[0], key=b"a-key", kernel_name="python3", **kw)

        return call

    explicit = dict(
        shell_port=50001, iopub_port=50002, stdin_port=50003, hb_port=50004, control_port=50005
    )
    for fn in (ours(), theirs(), ours(**explicit), theirs(**explicit)):  # warm-up
        for _ in range(50):
            fn()
            clean_up()
    results = []
    print(f"{'':<44} {'jupyter_c':>10} {'k-connect':>10}")
    for label, kw in (("5 auto ports", {}), ("explicit ports", explicit)):
        t = median_us(theirs(**kw), runs, after=clean_up)
        o = median_us(ours(**kw), runs, after=clean_up)
        results.append(row(f"write_connection_file, {label}", t, o, 2.5))
    same_ours, same_theirs = str(work / "same-ours.json"), str(work / "same-theirs.json")
    t = median_us(lambda: jc.write_connection_file(same_theirs, key=b"k", **explicit), runs)
    o = median_us(lambda: kc.write_connection_file(same_ours, key=b"k", **explicit), runs)
    ratio = t / o
    print(
        f"{'  (rewriting one existing file, no target)':<44} "
        f"{t:>10.1f} {o:>10.1f} µs  {ratio:>6.2f}x"
    )
    return results


def bench_port_cache(runs: int) -> list[bool]:
    theirs = jc.LocalPortCache.instance()
    ours = kc.LocalPortCache.instance()

    def t() -> None:
        theirs.return_port(theirs.find_available_port("127.0.0.1"))

    def o() -> None:
        ours.return_port(ours.find_available_port("127.0.0.1"))

    for _ in range(200):
        t()
        o()
    return [row("find_available_port + return_port", median_us(t, runs), median_us(o, runs), 2.0)]


def bench_find(work: Path, files: int, runs: int) -> list[bool]:
    runtime = work / "runtime"
    runtime.mkdir()
    for i in range(files):
        (runtime / f"kernel-{i:08x}-aaaa-bbbb-cccc-{i:012x}.json").write_text("{}")
    for name in ("nbserver-1.json", "jpserver-2.json", "other.txt", "notebook_secret"):
        (runtime / name).write_text("{}")
    target = f"{files // 2:012x}"
    path = [str(runtime)]
    assert kc.find_connection_file(path=path) == jc.find_connection_file(path=path)
    assert kc.find_connection_file(target, path=path) == jc.find_connection_file(target, path=path)
    print(f"(find_connection_file over {files + 4} files)")
    return [
        row(
            "find_connection_file, newest (kernel-*.json)",
            median_us(lambda: jc.find_connection_file(path=path), runs) / 1000,
            median_us(lambda: kc.find_connection_file(path=path), runs) / 1000,
            5.0,
            "ms",
        ),
        row(
            "find_connection_file, substring",
            median_us(lambda: jc.find_connection_file(target, path=path), runs) / 1000,
            median_us(lambda: kc.find_connection_file(target, path=path), runs) / 1000,
            5.0,
            "ms",
        ),
    ]


FARM_WORKER = textwrap.dedent("""
    import errno, json, random, sys, time
    import zmq
    impl, kernels, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start_at = float(sys.argv[4])
    if impl == "kernel_connect":
        from kernel_connect.connect import LocalPortCache
        cache = LocalPortCache.instance()
        allocate = lambda: cache.reserve("127.0.0.1", 5)
    else:
        from jupyter_client.connect import LocalPortCache
        cache = LocalPortCache.instance()
        allocate = lambda: [cache.find_available_port("127.0.0.1") for _ in range(5)]
    rng = random.Random(seed)
    ctx = zmq.Context()
    failed = 0
    while time.time() < start_at:
        time.sleep(0.001)
    for _ in range(kernels):
        ports = allocate()
        time.sleep(rng.uniform(0, 0.004))      # the kernel's start-up gap
        socks, ok = [], True
        for p in ports:
            s = ctx.socket(zmq.ROUTER)
            s.linger = 0
            try:
                s.bind(f"tcp://127.0.0.1:{p}")
            except zmq.ZMQError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                ok = False
            socks.append(s)
        failed += not ok
        time.sleep(rng.uniform(0, 0.002))      # the kernel runs
        for s in socks:
            s.close()
        for p in ports:
            cache.return_port(p)
    ctx.term()
    print(json.dumps({"failed": failed, "kernels": kernels}))
""")


def farm(impl: str, processes: int, kernels: int) -> tuple[int, int, float]:
    per = kernels // processes
    start_at = time.time() + 1.0
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FARM_WORKER, impl, str(per), str(i), str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    failed = total = 0
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        report = json.loads(out)
        failed += report["failed"]
        total += report["kernels"]
    return failed, total, time.perf_counter() - began - 1.0


def bench_farm(plan: list[tuple[int, int]]) -> list[bool]:
    print("\nfarm simulation (P processes, 5 ports per kernel, zmq ROUTER binds)")
    print(
        f"{'P':>3} {'kernels':>8} {'jupyter_client EADDRINUSE':>28} "
        f"{'kernel-connect EADDRINUSE':>27}"
    )
    results = []
    for processes, kernels in plan:
        t_fail, t_total, t_secs = farm("jupyter_client", processes, kernels)
        o_fail, o_total, o_secs = farm("kernel_connect", processes, kernels)
        print(
            f"{processes:>3} {o_total:>8} "
            f"{t_fail:>8} ({100 * t_fail / t_total:5.2f} %, {t_secs:5.1f} s)"
            f" {o_fail:>8} ({100 * o_fail / o_total:5.2f} %, {o_secs:5.1f} s)"
        )
        results.append(o_fail == 0)
    print(f"target: zero EADDRINUSE for kernel-connect: {'met' if all(results) else 'MISSED'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and a small farm")
    parser.add_argument(
        "--farm-kernels",
        type=int,
        default=None,
        help="kernels in the 16-process farm (default 20000; 2000 with --quick)",
    )
    args = parser.parse_args(argv)
    runs = 300 if args.quick else 2000
    farm_kernels = args.farm_kernels or (2000 if args.quick else 20000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ok = bench_write(work, runs)
        ok += bench_port_cache(runs * 2)
        ok += bench_find(work, 10_000, 10 if args.quick else 30)
    ok += bench_farm([(4, max(400, farm_kernels // 5)), (16, farm_kernels)])
    print(f"\n{sum(ok)} of {len(ok)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
