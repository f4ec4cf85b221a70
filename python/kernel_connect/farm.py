"""A small kernel farm: start N kernels in parallel, run code on each, report, clean up.

``python -m kernel_connect.farm -n 4 [--code CODE] [--kernel NAME]`` starts the
kernels through KernelManager on threads, runs one line of code on each, prints
a table (kernel, pid, ports, time to ready, result), shuts them all down in
parallel and checks that no process and no connection file is left behind.

``--launcher fork`` starts them with KernelManager's fork launcher (where it
exists); ``--pool SIZE`` takes them from a warm :class:`~kernel_connect.pool.KernelPool`
of SIZE kernels instead, warmed before the clock starts (its warm-up time is
reported apart), so that the times to ready are those of a farm whose pool was
ready when the requests came. With more kernels than SIZE, the later takes wait
for the pool's refills (at most two start at once).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_connect.client import BlockingKernelClient
from kernel_connect.errors import KernelTimeoutError
from kernel_connect.manager import KernelManager
from kernel_connect.mixin import PORT_NAMES

if TYPE_CHECKING:
    from kernel_connect.pool import KernelPool

DEFAULT_CODE = "import os; os.getpid()"

#: Called as progress(kernel, state) when a kernel moves on: "starting" (or
#: "taking", from a pool), "ready", "running", "done", "failed", "stopping",
#: "stopped". From worker threads.
Progress = Callable[["FarmKernel", str], None]

# While waiting for a kernel to be ready, look at the cancel flag this often.
_CANCEL_POLL_S = 0.25


@dataclass
class FarmKernel:
    """One kernel of the farm and what happened to it."""

    index: int
    #: None until taken, when the kernel comes from a pool.
    manager: KernelManager | None
    client: BlockingKernelClient | None = None
    pid: int | None = None
    ports: list[int] = field(default_factory=list)
    ready_s: float | None = None
    result: str = ""
    error: str | None = None


@dataclass
class FarmReport:
    """Outcome of one farm run."""

    kernels: list[FarmKernel]
    all_ready_s: float
    shutdown_s: float
    leftover_pids: list[int]
    leftover_files: list[str]
    launcher: str = "exec"
    #: Size of the pool the kernels were taken from (0: started, no pool).
    pool_size: int = 0
    #: Seconds the pool took to be full before the clock started.
    pool_warm_s: float | None = None

    @property
    def ok(self) -> bool:
        """Every kernel ran the code and nothing was left behind."""
        return (
            all(k.error is None for k in self.kernels)
            and not self.leftover_pids
            and not self.leftover_files
        )


def _start_threads(target: Any, items: Sequence[Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(item,), daemon=True) for item in items]
    for t in threads:
        t.start()
    return threads


def _join(threads: Sequence[threading.Thread], timeout: float | None = None) -> None:
    """Join every thread; with a timeout, a bounded wait for all of them together."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _notify(progress: Progress | None, fk: FarmKernel, state: str) -> None:
    if progress is not None:
        progress(fk, state)


def _start_one(
    fk: FarmKernel,
    ready_timeout: float,
    t0: float,
    progress: Progress | None,
    cancel: threading.Event,
    pool: KernelPool | None = None,
) -> None:
    if cancel.is_set():
        fk.error = "cancelled"
        return
    _notify(progress, fk, "starting" if pool is None else "taking")
    try:
        if pool is not None:
            fk.manager = pool.take(timeout=ready_timeout)
            if cancel.is_set():
                fk.error = "cancelled"
                _notify(progress, fk, "failed")
                return
        else:
            assert fk.manager is not None
            fk.manager.start_kernel()
        km = fk.manager
        fk.pid = getattr(km.kernel, "pid", None)
        fk.ports = km.ports
        fk.client = km.client()
        fk.client.start_channels()
        deadline = time.monotonic() + ready_timeout
        # Short waits, so that a cancel (Ctrl-C) is noticed within a moment.
        while True:
            if cancel.is_set():
                fk.error = "cancelled"
                _notify(progress, fk, "failed")
                return
            step = min(_CANCEL_POLL_S, deadline - time.monotonic())
            try:
                fk.client.wait_for_ready(timeout=max(step, 0.01))
                break
            except KernelTimeoutError:
                if time.monotonic() >= deadline:
                    raise
        fk.ready_s = time.monotonic() - t0
        fk.ports = km.ports
        _notify(progress, fk, "ready")
    except Exception as e:
        fk.error = f"start failed: {type(e).__name__}: {e}"
        _notify(progress, fk, "failed")


def _execute_one(fk: FarmKernel, code: str, timeout: float, progress: Progress | None) -> None:
    if fk.client is None or fk.error is not None:
        return
    _notify(progress, fk, "running")
    outputs: list[dict[str, Any]] = []
    try:
        reply = fk.client.execute_interactive(
            code, timeout=timeout, output_hook=outputs.append, allow_stdin=False
        )
    except Exception as e:
        fk.error = f"execute failed: {type(e).__name__}: {e}"
        _notify(progress, fk, "failed")
        return
    content = reply["content"]
    if content.get("status") != "ok":
        fk.error = f"{content.get('ename', 'error')}: {content.get('evalue', '')}"
        _notify(progress, fk, "failed")
        return
    fk.result = _result_of(outputs)
    _notify(progress, fk, "done")


def _result_of(outputs: list[dict[str, Any]]) -> str:
    """The execute_result text, else what was printed to stdout."""
    for msg in outputs:
        if msg["msg_type"] == "execute_result":
            return str(msg["content"]["data"].get("text/plain", ""))
    return "".join(
        m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"
    ).strip()


def _stop_one(fk: FarmKernel, progress: Progress | None, pool: KernelPool | None = None) -> None:
    km = fk.manager
    if km is None or km.kernel is None:
        return
    _notify(progress, fk, "stopping")
    if fk.client is not None:
        fk.client.stop_channels()
    try:
        if pool is not None:
            pool.release(km)  # shut down: a kernel that ran code is never pooled again
        else:
            km.shutdown_kernel()
    except Exception as e:
        fk.error = fk.error or f"shutdown failed: {type(e).__name__}: {e}"
    _notify(progress, fk, "stopped")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_farm(
    n: int = 4,
    code: str = DEFAULT_CODE,
    kernel_name: str = "python3",
    ready_timeout: float = 120.0,
    exec_timeout: float = 60.0,
    kernel_binds_ports: bool = False,
    progress: Progress | None = None,
    launcher: str = "exec",
    pool_size: int = 0,
) -> FarmReport:
    """Start ``n`` kernels in parallel, run ``code`` on each, shut all down.

    Interrupted (KeyboardInterrupt in the calling thread), it stops waiting for
    kernels within a moment, shuts every started kernel down, removes their
    files, and re-raises.

    Parameters
    ----------
    n : int
        Number of kernels.
    code : str
        One piece of code to run on every kernel.
    kernel_name : str
        Kernel spec to start.
    ready_timeout, exec_timeout : float
        Seconds allowed for start-up and for the code.
    kernel_binds_ports : bool
        Use the zero-race start-up (kernels bind their own ports).
    progress : callable, optional
        ``progress(kernel, state)`` on every state change (from worker threads).
    launcher : str
        How kernels are launched: ``"exec"`` or ``"fork"`` (where KernelManager has it).
    pool_size : int
        Take the kernels from a :class:`~kernel_connect.pool.KernelPool` of this
        many kernels, full before the clock starts (0: start each kernel).

    Returns
    -------
    FarmReport
        Per-kernel rows, timings, and anything left behind.

    Raises
    ------
    PoolError
        If ``launcher`` is not available.
    """
    from kernel_connect.pool import KernelPool, launcher_traits

    traits: dict[str, Any] = {"kernel_binds_ports": kernel_binds_ports}
    chosen = launcher_traits(launcher)  # an unavailable launcher fails here, before any start
    kernels = [
        FarmKernel(
            i, None if pool_size else KernelManager(kernel_name=kernel_name, **traits, **chosen)
        )
        for i in range(n)
    ]
    report = FarmReport(kernels, 0.0, 0.0, [], [], launcher=launcher, pool_size=pool_size)
    pool: KernelPool | None = None
    if pool_size:
        try:
            pool = KernelPool(
                pool_size,
                kernel_name,
                launcher=launcher,
                start_timeout=ready_timeout,
                manager_kwargs=traits,
            )
        except Exception as e:
            for fk in kernels:  # as every start would have failed (no such spec, ...)
                fk.error = f"start failed: {type(e).__name__}: {e}"
                _notify(progress, fk, "failed")
            return report
    cancel = threading.Event()
    t0 = time.monotonic()
    workers: list[threading.Thread] = []
    try:
        if pool is not None:
            pool.wait_until_full(ready_timeout)
            report.pool_warm_s = time.monotonic() - t0
            t0 = time.monotonic()
        workers = _start_threads(
            lambda fk: _start_one(fk, ready_timeout, t0, progress, cancel, pool), kernels
        )
        _join(workers)
        report.all_ready_s = time.monotonic() - t0
        workers = _start_threads(lambda fk: _execute_one(fk, code, exec_timeout, progress), kernels)
        _join(workers)
    except BaseException:
        cancel.set()
        if pool is not None:
            pool.close()  # takes still waiting end now
        # Code still running on a kernel is interrupted, so its thread returns now.
        for fk in kernels:
            if fk.manager is not None and fk.manager.kernel is not None and fk.ready_s is not None:
                with contextlib.suppress(Exception):
                    fk.manager.interrupt_kernel()
        raise
    finally:
        # Interrupted: workers see the cancel within a moment; let them finish
        # before stopping what they started, so no kernel starts after its stop.
        _join(workers, timeout=30.0)
        t1 = time.monotonic()
        files = [fk.manager.connection_file for fk in kernels if fk.manager is not None]
        pids = [fk.pid for fk in kernels if fk.pid is not None]
        _join(_start_threads(lambda fk: _stop_one(fk, progress, pool), kernels))
        if pool is not None:
            # The pool's own kernels (its refills) must be gone after close() too.
            for km in pool.pooled_managers():
                pid = getattr(km.kernel, "pid", None)
                pids.extend([pid] if isinstance(pid, int) else [])
                files.append(km.connection_file)
            pool.close()
        report.shutdown_s = time.monotonic() - t1
    report.leftover_pids = [p for p in pids if _pid_exists(p)]
    report.leftover_files = [f for f in files if f and os.path.exists(f)]
    return report


def format_table(report: FarmReport) -> str:
    """Render the farm report as a plain-text table plus a summary."""
    order = ",".join(name.removesuffix("_port") for name in PORT_NAMES)
    headers = ["kernel", "pid", f"ports ({order})", "ready (s)", "result"]
    rows = []
    for fk in report.kernels:
        rows.append(
            [
                str(fk.index),
                str(fk.pid or "-"),
                ",".join(str(p) for p in fk.ports) or "-",
                f"{fk.ready_s:.2f}" if fk.ready_s is not None else "-",
                fk.error if fk.error is not None else fk.result,
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    failed = sum(fk.error is not None for fk in report.kernels)
    lines.append("")
    lines.append(
        f"{len(report.kernels)} kernels, {failed} failed; all ready in "
        f"{report.all_ready_s:.2f} s; shut down in {report.shutdown_s:.2f} s"
    )
    if report.pool_size and report.pool_warm_s is None:
        lines.append(f"a pool of {report.pool_size} ({report.launcher} launcher) could not be made")
    elif report.pool_size:
        lines.append(
            f"taken from a pool of {report.pool_size} ({report.launcher} launcher), "
            f"full in {report.pool_warm_s:.2f} s before the clock started"
        )
    elif report.launcher != "exec":
        lines.append(f"launcher: {report.launcher}")
    lines.append(
        f"left behind: {len(report.leftover_pids)} processes, "
        f"{len(report.leftover_files)} connection files"
    )
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 when all went well)."""
    parser = argparse.ArgumentParser(
        prog="kernel-connect farm",
        description="Start N kernels in parallel, run code on each, print a table, "
        "shut them all down and check nothing is left behind.",
    )
    parser.add_argument("-n", "--kernels", type=int, default=4, help="number of kernels (4)")
    parser.add_argument("--code", default=DEFAULT_CODE, help=f"code to run ({DEFAULT_CODE!r})")
    parser.add_argument("--kernel", default="python3", help="kernel spec name (python3)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed for start-up (120)"
    )
    parser.add_argument(
        "--zero-race",
        action="store_true",
        help="let each kernel bind its own ports (port 0 in the connection file)",
    )
    parser.add_argument(
        "--launcher", choices=("exec", "fork"), default="exec", help="how kernels are launched"
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=0,
        metavar="SIZE",
        help="take the kernels from a warm pool of SIZE kernels (0: start each)",
    )
    args = parser.parse_args(argv)
    if args.kernels < 1:
        parser.error("-n must be at least 1")
    if args.pool < 0:
        parser.error("--pool must be at least 0")
    from kernel_connect.pool import PoolError

    try:
        report = run_farm(
            n=args.kernels,
            code=args.code,
            kernel_name=args.kernel,
            ready_timeout=args.timeout,
            kernel_binds_ports=args.zero_race,
            launcher=args.launcher,
            pool_size=args.pool,
        )
    except PoolError as e:
        parser.error(str(e))
    print(format_table(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
