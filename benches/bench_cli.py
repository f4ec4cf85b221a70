"""Benchmarks of the kernel-connect command.

Run: .venv/bin/python benches/bench_cli.py [--quick]   (part of `make bench`)

1. `kernel-connect ls` and `prune --dry-run` on a runtime dir of 10,000
   connection files, 9,990 of dead kernels and 10 live heartbeats (zmq REP echo
   sockets, as a kernel's heartbeat is): the target is about one heartbeat
   timeout plus the scan, not one timeout per file.
2. `python -m kernel_connect --help` against `jupyter kernel --help`, the same
   number of runs each, in the same run: the target is at most half the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kc-bench-runtime-")

import zmq

from kernel_connect import write_connection_file


def heartbeats(ctx: zmq.Context[zmq.Socket[bytes]], n: int, stop: threading.Event) -> list[int]:
    """n heartbeat echo sockets served by one thread; returns their ports."""
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.REP)
        s.linger = 0
        socks.append(s)
    ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in socks]

    def serve() -> None:
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while not stop.is_set():
            for s, _ in poller.poll(100):
                s.send(s.recv())
        for s in socks:
            s.close()

    threading.Thread(target=serve, daemon=True).start()
    return ports


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, out.stdout


def bench_ls(files: int, live: int, timeout: float) -> bool:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stop = threading.Event()
    directory = Path(tempfile.mkdtemp(prefix="kc-bench-ls-"))
    try:
        live_ports = heartbeats(ctx, live, stop)
        for i, hb in enumerate(live_ports):
            write_connection_file(str(directory / f"kernel-live-{i}.json"), 1, 2, 3, hb_port=hb)
        for i in range(files - live):
            write_connection_file(str(directory / f"kernel-dead-{i:05d}.json"), 1, 2, 3, 4, 5)
        old = time.time() - 3600
        for path in directory.iterdir():
            os.utime(path, (old, old))
        cmd = [sys.executable, "-m", "kernel_connect"]
        ls_s, out = timed([*cmd, "ls", "--dir", str(directory), "--timeout", str(timeout)])
        summary = out.strip().splitlines()[-1]
        prune_s, prune_out = timed(
            [*cmd, "prune", "--dry-run", "--dir", str(directory), "--timeout", str(timeout)]
        )
        print(f"ls over {files} files ({live} live):   {ls_s:6.2f} s   [{summary}]")
        print(
            f"prune --dry-run:                 {prune_s:6.2f} s   "
            f"[{prune_out.strip().splitlines()[-1]}]"
        )
        # Live heartbeats answer at once, so the run costs the scan, not a timeout;
        # the bound is one heartbeat timeout plus 2 s of scanning.
        bound = timeout + 2.0
        ok = ls_s <= bound and prune_s <= bound and f"{live} alive" in summary
        print(
            f"target: about one heartbeat timeout ({timeout:g} s) plus the scan "
            f"(<= {bound:g} s), vs {files - live} x {timeout:g} s one at a time: "
            f"{'met' if ok else 'MISSED'}"
        )
        return ok
    finally:
        stop.set()
        shutil.rmtree(directory, ignore_errors=True)
        ctx.term()


def bench_help(runs: int) -> bool:
    jupyter = shutil.which("jupyter-kernel", path=os.path.dirname(sys.executable))
    ours_cmd = [sys.executable, "-m", "kernel_connect", "--help"]
    theirs_cmd = (
        [jupyter, "--help"]
        if jupyter
        else [sys.executable, "-m", "jupyter_client.kernelapp", "--help"]
    )
    ours, theirs = [], []
    for _ in range(runs):
        theirs.append(timed(theirs_cmd)[0])
        ours.append(timed(ours_cmd)[0])
    o, t = statistics.median(ours), statistics.median(theirs)
    ok = o <= t / 2
    print(
        f"\n`python -m kernel_connect --help`: {o * 1000:6.1f} ms   "
        f"`jupyter kernel --help`: {t * 1000:6.1f} ms   ratio {t / o:4.1f}x "
        f"(target: at most half: {'met' if ok else 'MISSED'})"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer files and runs")
    args = parser.parse_args(argv)
    files = 2_000 if args.quick else 10_000
    ok = [bench_ls(files, 10, timeout=1.0), bench_help(5 if args.quick else 15)]
    print(f"\n{sum(ok)} of {len(ok)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
