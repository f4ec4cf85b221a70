"""Autorestart on real ipykernel kernels: the threaded, IOLoop and async IOLoop restarters.

Each test kills its own kernel. The restarters are instrumented through their
public ``poll`` (overridden to report each restart it did), so every wait is on
an event, bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from traitlets.config import Config

from kernel_connect.ioloop import (
    AsyncIOLoopKernelManager,
    AsyncIOLoopKernelRestarter,
    IOLoopKernelManager,
    IOLoopKernelRestarter,
)
from kernel_connect.manager import KernelManager
from kernel_connect.restarter import ThreadedKernelRestarter
from kernel_fixtures import READY_TIMEOUT, pid_alive, result_text, run_code, write_kernel_spec

pytestmark = pytest.mark.kernel

T = TypeVar("T")


class Seen:
    """What a manager's restarter did: callbacks fired, restarts completed.

    Its events are threading events, or asyncio events for a restarter that
    runs in the test's event loop (``in_loop``).
    """

    def __init__(self, in_loop: bool = False) -> None:
        make: Any = asyncio.Event if in_loop else threading.Event
        self.restart = make()
        self.dead = make()
        self.restarted = make()
        self.restarts = 0

    def on_restart(self) -> None:
        self.restarts += 1
        self.restart.set()

    def on_dead(self) -> None:
        self.dead.set()


SEEN: dict[int, Seen] = {}


def restart_done(restarter: Any) -> None:
    """Called by the recording restarters after each poll."""
    if restarter._restarting:  # the poll restarted the kernel (or one before it did)
        SEEN[id(restarter.kernel_manager)].restarted.set()


class RecordingThreadedRestarter(ThreadedKernelRestarter):
    def poll(self) -> None:
        super().poll()
        restart_done(self)


class RecordingIOLoopRestarter(IOLoopKernelRestarter):
    def poll(self) -> None:
        super().poll()
        restart_done(self)


class RecordingAsyncRestarter(AsyncIOLoopKernelRestarter):
    async def poll(self) -> None:
        await super().poll()
        restart_done(self)


def watch(km: KernelManager, in_loop: bool = False) -> Seen:
    seen = SEEN[id(km)] = Seen(in_loop)
    km.add_restart_callback(seen.on_restart)
    km.add_restart_callback(seen.on_dead, "dead")
    return seen


def sigkill(km: KernelManager) -> int:
    assert km.kernel is not None
    pid = km.kernel.pid
    os.kill(pid, signal.SIGKILL)
    return pid


def run(aw: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(aw, READY_TIMEOUT * 2))


def assert_answers(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert result_text(run_code(kc, "'back'")[1]) == "'back'"
    finally:
        kc.stop_channels()


def test_threaded_restarter_restarts_a_sigkilled_kernel() -> None:
    km = KernelManager(restarter_class=RecordingThreadedRestarter)
    seen = watch(km)  # before the start: kept for the restarter
    km.start_kernel()
    try:
        old = sigkill(km)
        assert seen.restart.wait(READY_TIMEOUT)
        assert seen.restarted.wait(READY_TIMEOUT)
        assert km.kernel is not None and km.kernel.pid != old
        assert not pid_alive(old)
        assert seen.restarts == 1 and not seen.dead.is_set()
        assert_answers(km)
    finally:
        km.shutdown_kernel(now=True)
    assert not any(t.name == "kernel-restarter" and t.is_alive() for t in _joined_restarters())


def _joined_restarters() -> list[threading.Thread]:
    threads = [t for t in threading.enumerate() if t.name == "kernel-restarter"]
    for t in threads:
        t.join(READY_TIMEOUT)
    return threads


def test_ioloop_restarter_restarts_a_sigkilled_kernel() -> None:
    # With an explicit loop (without one, the blocking manager's restarter runs
    # in the background loop: tests/test_manager_compat.py).
    async def go() -> None:
        km = IOLoopKernelManager(
            restarter_class=RecordingIOLoopRestarter, loop=asyncio.get_running_loop()
        )
        seen = watch(km, in_loop=True)
        km.start_kernel()
        try:
            old = sigkill(km)
            await seen.restarted.wait()  # the restart runs in this loop
            assert seen.restart.is_set() and seen.restarts == 1
            assert km.kernel is not None and km.kernel.pid != old
        finally:
            km.stop_restarter()
        try:
            assert_answers(km)
        finally:
            km.shutdown_kernel(now=True)

    run(go())


def test_async_ioloop_restarter_restarts_a_sigkilled_kernel() -> None:
    async def go() -> None:
        km = AsyncIOLoopKernelManager(restarter_class=RecordingAsyncRestarter)
        seen = watch(km, in_loop=True)
        await km.start_kernel()
        try:
            old = sigkill(km)
            await seen.restarted.wait()  # the restart runs in this loop
            assert seen.restart.is_set() and seen.restarts == 1
            assert km.kernel is not None and km.kernel.pid != old
            assert await km.is_alive()
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=READY_TIMEOUT)
                reply = await kc.execute("1", reply=True, timeout=30)
                assert reply["content"]["status"] == "ok"
            finally:
                kc.stop_channels()
        finally:
            await km.shutdown_kernel(now=True)

    run(go())


def test_restart_limit_exhausted_fires_dead() -> None:
    config = Config({"KernelRestarter": {"restart_limit": 0}})
    km = KernelManager(restarter_class=RecordingThreadedRestarter, config=config)
    seen = watch(km)
    dropped = threading.Event()
    km.add_restart_callback(dropped.set, "dead")
    km.remove_restart_callback(dropped.set, "dead")
    km.start_kernel()
    try:
        old = sigkill(km)
        assert seen.dead.wait(READY_TIMEOUT)
        assert not seen.restart.is_set()
        assert not dropped.is_set()  # removed before it could fire
        assert km.kernel is not None and km.kernel.pid == old  # left dead
        assert not km.is_alive()
    finally:
        km.shutdown_kernel(now=True)


@pytest.fixture
def dying_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel that dies at once, every time it is started."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    code = "import sys; sys.exit(3)"
    write_kernel_spec(tmp_path, "dying", [sys.executable, "-c", code, "{connection_file}"])
    return "dying"


def test_restarts_in_a_row_count_towards_the_limit(dying_spec: str) -> None:
    """Each restart dies before stable_start_time: restart_limit restarts, then 'dead'."""

    async def go() -> None:
        config = Config({"KernelRestarter": {"restart_limit": 2}})
        km = AsyncIOLoopKernelManager(kernel_name=dying_spec, config=config)
        seen = watch(km, in_loop=True)
        await km.start_kernel()
        try:
            await seen.dead.wait()
            assert seen.restarts == 2
        finally:
            await km.shutdown_kernel(now=True)

    run(go())


def test_autorestart_off_or_restarter_stopped_leaves_the_kernel_dead() -> None:
    km = KernelManager(restarter_class=ThreadedKernelRestarter, autorestart=False)
    km.start_kernel()
    try:
        assert km._restarter is None  # not even made
        assert not [t for t in threading.enumerate() if t.name == "kernel-restarter"]
    finally:
        km.shutdown_kernel(now=True)
    km = KernelManager(restarter_class=ThreadedKernelRestarter)
    km.start_kernel()
    try:
        assert [t for t in threading.enumerate() if t.name == "kernel-restarter"]
        km.stop_restarter()
        assert all(not t.is_alive() for t in _joined_restarters())
        km.start_restarter()
        assert [t for t in threading.enumerate() if t.name == "kernel-restarter"]
    finally:
        km.shutdown_kernel(now=True)
    assert all(not t.is_alive() for t in _joined_restarters())


def test_plain_managers_have_no_restarter() -> None:
    """As jupyter_client's KernelManager: autorestart is on, yet a dead kernel stays dead."""
    km = KernelManager()
    km.start_kernel()
    try:
        assert km.autorestart and km._restarter is None
        sigkill(km)
    finally:
        km.shutdown_kernel(now=True)
    assert km.exit_code == -signal.SIGKILL


def test_restarter_restarts_a_kernel_that_lost_a_port_on_new_ports() -> None:
    """A process outside the port table took one of the kernel's ports: the kernel
    dies of it or hangs, and never answers; the restarter restarts it on new ports."""
    import socket

    config = Config({"KernelRestarter": {"time_to_dead": 0.1}})
    km = KernelManager(restarter_class=RecordingThreadedRestarter, config=config)
    seen = watch(km)
    km.write_connection_file()  # ports reserved now; the kernel binds them later
    taken = km.iopub_port
    outsider = socket.socket()
    try:
        outsider.bind((km.ip, taken))
        outsider.listen()
        km.start_kernel()
        try:
            assert seen.restarted.wait(READY_TIMEOUT)
            assert seen.restarts >= 1
            assert km.iopub_port != taken
            assert_answers(km)
        finally:
            km.shutdown_kernel(now=True)
    finally:
        outsider.close()
