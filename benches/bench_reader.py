"""The connection-file reader beside Python's json, in one run.

Run: .venv/bin/python benches/bench_reader.py [--quick]

jupyter_client reads a connection file with ``json.load(open(fname))``; ours is
``read_connection_file`` (read, parse, validate, convert to a dict). Each case
is timed both ways from a file, and from text already in memory
(``_native.parse_connection_info`` against ``json.loads``), as medians; the
ratio is json / ours, so above 1 means ours is faster. Reading is linear in the
file's size, so the large cases stay within a small factor of json's; anything
beyond ``_native.MAX_CONNECTION_FILE_BYTES`` (1 MiB) is refused unparsed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kc-bench-runtime-")
os.environ["KERNEL_CONNECT_PORT_TABLE"] = os.path.join(
    tempfile.mkdtemp(prefix="kc-bench-table-"), "ports"
)

from kernel_connect import _native, read_connection_file, write_connection_file


def median_us(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def row(name: str, theirs: float, ours: float) -> None:
    unit, scale = ("ms", 1000.0) if max(theirs, ours) > 1000 else ("µs", 1.0)
    print(
        f"{name:<46} {theirs / scale:>10.2f} {ours / scale:>10.2f} {unit:<3} {theirs / ours:>6.2f}x"
    )


def json_load(path: Path) -> object:
    with open(path) as f:
        return json.load(f)


def cases(work: Path) -> list[tuple[str, Path]]:
    normal, _ = write_connection_file(
        str(work / "kernel.json"), key=b"a-key", kernel_name="python3"
    )
    keys = work / "keys.json"
    keys.write_text(json.dumps(dict.fromkeys(map(str, range(100_000)), 0), separators=(",", ":")))
    ints = work / "ints.json"
    items: list[str] = []
    size = len('{"extra": []}')
    i = 0
    while size + len(str(i % 1000)) + 2 <= _native.MAX_CONNECTION_FILE_BYTES:
        items.append(str(i % 1000))
        size += len(items[-1]) + 2
        i += 1
    ints.write_text('{"extra": [' + ", ".join(items) + "]}")
    return [
        (f"connection file ({Path(normal).stat().st_size} B)", Path(normal)),
        (f"100,000 keys ({keys.stat().st_size / 1e6:.2f} MB)", keys),
        (f"array of {len(items):,} ints ({ints.stat().st_size / 2**20:.2f} MiB)", ints),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    small_runs, large_runs = (500, 5) if args.quick else (5000, 25)
    work = Path(tempfile.mkdtemp(prefix="kc-bench-reader-"))
    print(f"python {sys.version.split()[0]}; ratio = json / kernel-connect")
    print(f"{'':<46} {'json':>10} {'k-connect':>10}")
    for label, path in cases(work):
        runs = small_runs if path.stat().st_size < 10_000 else large_runs
        text = path.read_text()
        assert read_connection_file(path) == json_load(path)
        assert _native.parse_connection_info(text) == json.loads(text)
        for _ in range(min(runs, 50)):  # warm-up
            json_load(path)
            read_connection_file(path)
        row(
            f"{label}, from the file",
            median_us(lambda p=path: json_load(p), runs),
            median_us(lambda p=path: read_connection_file(p), runs),
        )
        row(
            f"{label}, from text",
            median_us(lambda t=text: json.loads(t), runs),
            median_us(lambda t=text: _native.parse_connection_info(t), runs),
        )
    too_big = work / "too-big.json"
    with too_big.open("wb") as f:
        f.truncate(100 << 20)
    start = time.perf_counter()
    try:
        read_connection_file(too_big)
    except ValueError as err:
        elapsed = (time.perf_counter() - start) * 1e6
        print(f"100 MiB file refused unread in {elapsed:.0f} µs: {str(err)[:90]}…")


if __name__ == "__main__":
    main()
