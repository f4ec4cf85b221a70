"""Blocking client calls end with KernelDiedError when the kernel dies under them.

Each test that kills a kernel starts its own. The blocking call runs in a
thread that the test joins with a generous bound, so a regression fails the
test instead of hanging it; the kernel sleeps, the test does not.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import kernel_connect
from kernel_connect.channels import HeartbeatWatch
from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.errors import KernelDiedError  # the class behind kernel_connect's name
from kernel_connect.manager import KernelManager
from kernel_fixtures import READY_TIMEOUT, start_ready_kernel, wait_until

pytestmark = pytest.mark.kernel

# A death is noticed within a slice (process) or a few heartbeats (about 4 s
# by default); this bound only keeps a regression from hanging the run.
NOTICED_WITHIN_S = 60.0
LONG_CELL = "print('sleeping', flush=True); import time; time.sleep(600)"


class BlockedCall:
    """A blocking call running in a daemon thread; what it returned or raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as e:
            self.error = e

    def finished(self, within: float = NOTICED_WITHIN_S) -> bool:
        self._thread.join(within)
        return not self._thread.is_alive()

    def died_error(self) -> KernelDiedError:
        # The public name, a RuntimeError as jupyter_client's "Kernel died" errors.
        assert isinstance(self.error, kernel_connect.KernelDiedError), (
            f"got {self.error!r} / {self.result!r}"
        )
        assert isinstance(self.error, RuntimeError)
        return self.error


def release(km: KernelManager, kc: BlockingKernelClient, *calls: BlockedCall) -> None:
    """Stop the kernel; close the client's sockets only if no call still blocks on them."""
    if all(c.finished(within=0) for c in calls):
        kc.stop_channels()
    km.shutdown_kernel(now=True)


def sigkill(km: KernelManager) -> None:
    assert km.kernel is not None
    os.kill(km.kernel.pid, signal.SIGKILL)


def saw_sleeping(started: threading.Event) -> Callable[[dict[str, Any]], None]:
    """An output hook that sets ``started`` once the long cell is running."""

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
            started.set()

    return hook


def assert_killed_by_sigkill(err: KernelDiedError, km: KernelManager) -> None:
    assert err.exit_code == -signal.SIGKILL
    assert "SIGKILL" in str(err)
    assert isinstance(err.stderr_tail, str)
    key = km.session.key.decode()
    assert key not in str(err) and key not in err.stderr_tail


@pytest.fixture
def dead_kernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A kernel that was ready, then SIGKILLed, and its (still connected) client."""
    km, kc = start_ready_kernel()
    sigkill(km)
    assert wait_until(lambda: not km.is_alive(), READY_TIMEOUT)
    yield km, kc
    km.shutdown_kernel(now=True)


@pytest.mark.parametrize("timeout", [None, 600.0], ids=["no-timeout", "long-timeout"])
def test_execute_interactive_raises_when_the_kernel_is_sigkilled(timeout: float | None) -> None:
    km, kc = start_ready_kernel()
    started = threading.Event()
    call = BlockedCall(
        lambda: kc.execute_interactive(
            LONG_CELL, timeout=timeout, output_hook=saw_sleeping(started)
        )
    )
    try:
        assert started.wait(READY_TIMEOUT)
        sigkill(km)
        assert call.finished(), "execute_interactive still waits on a dead kernel"
        err = call.died_error()
        assert_killed_by_sigkill(err, km)
        assert "during the execution of" in str(err)
    finally:
        release(km, kc, call)


def test_get_shell_msg_without_timeout_raises_when_the_kernel_is_sigkilled() -> None:
    km, kc = start_ready_kernel()
    msg_id = kc.execute(LONG_CELL)
    while True:  # until the cell runs (so no execute_reply can come)
        msg = kc.get_iopub_msg(timeout=READY_TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    call = BlockedCall(lambda: kc.get_shell_msg(timeout=None))
    try:
        sigkill(km)
        assert call.finished(), "get_shell_msg still waits on a dead kernel"
        err = call.died_error()
        assert_killed_by_sigkill(err, km)
        assert "shell message" in str(err)
    finally:
        release(km, kc, call)


def test_kernel_info_reply_from_a_dead_kernel_raises(
    dead_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = dead_kernel
    call = BlockedCall(lambda: kc.kernel_info(reply=True, timeout=None))
    try:
        assert call.finished(), "kernel_info(reply=True) still waits on a dead kernel"
        assert_killed_by_sigkill(call.died_error(), km)
    finally:
        release(km, kc, call)


def test_wait_for_ready_on_a_dead_kernel_raises(
    dead_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, first = dead_kernel
    first.stop_channels()
    kc = km.client()
    call = BlockedCall(lambda: kc.wait_for_ready(timeout=None))
    try:
        assert call.finished(), "wait_for_ready still waits on a dead kernel"
        err = call.died_error()
        assert_killed_by_sigkill(err, km)
        assert "before replying to kernel_info" in str(err)
    finally:
        release(km, kc, call)


def test_client_without_a_manager_notices_the_death_by_heartbeat() -> None:
    km, kc = start_ready_kernel()
    kc.stop_channels()
    orphan = BlockingKernelClient()
    orphan.load_connection_file(km.connection_file)
    orphan.start_channels()
    assert orphan.liveness is None  # nothing but the heartbeat to go by
    orphan.wait_for_ready(timeout=READY_TIMEOUT)
    started = threading.Event()
    call = BlockedCall(
        lambda: orphan.execute_interactive(
            LONG_CELL, timeout=None, output_hook=saw_sleeping(started)
        )
    )
    try:
        assert started.wait(READY_TIMEOUT)
        sigkill(km)
        assert call.finished(), "execute_interactive still waits on a dead kernel"
        err = call.died_error()
        assert err.exit_code is None  # no process to ask
        assert "heartbeat" in str(err)
        assert f":{km.hb_port}" in str(err)
        assert km.session.key.decode() not in str(err)
    finally:
        release(km, orphan, call)


def test_client_without_a_manager_waiting_for_a_dead_kernel_raises() -> None:
    km, kc = start_ready_kernel()
    kc.stop_channels()
    sigkill(km)
    assert wait_until(lambda: not km.is_alive(), READY_TIMEOUT)
    # It never heard from this kernel, so it first allows it time to start.
    orphan = BlockingKernelClient(hb_first_echo_grace=2.0)
    orphan.load_connection_file(km.connection_file)
    orphan.start_channels()
    call = BlockedCall(lambda: orphan.wait_for_ready(timeout=None))
    try:
        assert call.finished(), "wait_for_ready still waits on a dead kernel"
        err = call.died_error()
        assert err.exit_code is None
        assert "before replying to kernel_info" in str(err)
        assert "never echoed" in str(err)
    finally:
        release(km, orphan, call)


def test_heartbeat_watch_gives_a_kernel_that_never_answered_time_to_start() -> None:
    # A heartbeat port nothing listens on: a kernel that is dead, or not up yet.
    cache = LocalPortCache.instance()
    port = cache.find_available_port("127.0.0.1")
    where = f"tcp://127.0.0.1:{port}"
    ctx = zmq.Context.instance()

    def connect() -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(zmq.REQ)
        sock.connect(where)
        return sock

    def watch(grace: float) -> HeartbeatWatch:
        return HeartbeatWatch(
            connect, time_to_dead=0.05, missed_beats=2, first_echo_grace=grace, where=where
        )

    patient, prompt, answered = watch(3600), watch(0), watch(3600)
    answered.kernel_answered()  # it replied on another channel: it is up, no grace
    try:
        # Many beats missed, yet within the grace it may still be starting.
        assert wait_until(lambda: patient.is_alive() and patient.missed >= 4, 30)
        assert wait_until(lambda: not prompt.is_alive(), 30)
        assert wait_until(lambda: not answered.is_alive(), 30)
        death = prompt.death()
        assert death.exit_code is None
        assert "never echoed" in death.description
        assert where in death.description
    finally:
        for w in (patient, prompt, answered):
            w.close()
        cache.return_port(port)
