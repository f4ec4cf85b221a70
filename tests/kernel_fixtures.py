"""Shared helpers and fixtures for tests that run real ipykernel processes.

Import what you need in a test module (``from kernel_fixtures import ...``);
a module-scoped kernel costs one kernel start for the whole module.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.manager import KernelManager

READY_TIMEOUT = 60.0


def start_ready_kernel(**kwargs: Any) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a kernel through KernelManager and return it with a ready client."""
    start_kw = kwargs.pop("start", {})
    km = KernelManager(**kwargs)
    km.start_kernel(**start_kw)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient | None = None) -> None:
    """Stop a kernel started by :func:`start_ready_kernel` (idempotent)."""
    if kc is not None:
        kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """One ready kernel for a whole test module (import this fixture to use it)."""
    km, kc = start_ready_kernel()
    yield km, kc
    stop_kernel(km, kc)


def run_code(
    kc: BlockingKernelClient, code: str, timeout: float = 30.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; return the execute_reply and the IOPub messages of the request."""
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=outputs.append)
    return reply, outputs


def result_text(outputs: list[dict[str, Any]]) -> str:
    """The text/plain of the execute_result among ``outputs`` ('' if none)."""
    for msg in outputs:
        if msg["msg_type"] == "execute_result":
            return str(msg["content"]["data"]["text/plain"])
    return ""


def stream_text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    """Everything written to stream ``name`` among ``outputs``."""
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def ports_held(ports: list[int]) -> list[bool]:
    """For each port, whether this process holds it in the reservation table."""
    table = LocalPortCache.instance().table
    return [table.holds(p) for p in ports]


def file_mode(path: str | Path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def write_kernel_spec(root: Path, name: str, argv: list[str], **fields: Any) -> Path:
    """Write ``root/kernels/<name>/kernel.json`` and return the spec directory."""
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": name, "language": "python", **fields}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir


def ipykernel_argv(connection_file: str) -> list[str]:
    """The command line of an ipykernel reading ``connection_file``."""
    return [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]
