"""Kernel managers with a restarter in an event loop, as jupyter_client.ioloop's.

``IOLoopKernelManager`` (blocking) and ``AsyncIOLoopKernelManager`` (coroutines)
are KernelManager and AsyncKernelManager whose restarter runs in an asyncio
event loop: jupyter_server's kernels are of this kind. The loop is the one
running when the restarter starts, or ``loop`` (an asyncio loop; a tornado
IOLoop is accepted and its asyncio loop used). No tornado is needed, and the
managers' sockets stay plain (jupyter_client's wrap them in ZMQStreams).

The restarters watch the kernel's process through a pidfd with
``loop.add_reader`` (so a death is noticed the instant it happens) and poll
every ``time_to_dead`` seconds for the stable-start bookkeeping;
``IOLoopKernelRestarter`` restarts blocking in the loop (as jupyter_client's),
``AsyncIOLoopKernelRestarter`` awaits the restart in a task.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Type

from kernel_connect.errors import KernelStartCancelledError
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_connect.restarter import _GIVE_UP, _NOTHING, _RESTART_NEW_PORTS, KernelRestarter


def _asyncio_loop(loop: Any) -> asyncio.AbstractEventLoop | None:
    """``loop`` as an asyncio loop (a tornado IOLoop gives its own); else the running one."""
    if loop is not None:
        inner = getattr(loop, "asyncio_loop", None)  # tornado's IOLoop
        return inner if inner is not None else loop  # type: ignore[no-any-return]
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class IOLoopKernelRestarter(KernelRestarter):
    """Watches the kernel in an asyncio event loop; restarts blocking, in the loop."""

    loop = AnyTrait(None, allow_none=True, help="The event loop (default: the running one).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._watched: tuple[int, int] | None = None  # (pid, pidfd) given to add_reader
        self._exited_pid: int | None = None  # seen dead and left dead: not watched again

    def start(self) -> None:
        """Start watching (from the loop's thread, or any other)."""
        loop = self._event_loop or _asyncio_loop(self.loop)
        if loop is None:
            self.log.warning("KernelRestarter: no event loop runs; the kernel is not watched")
            return
        self._event_loop = loop
        self._in_loop(self._start_in_loop)

    def stop(self) -> None:
        """Stop watching (a restart under way in the loop finishes)."""
        if self._event_loop is not None:
            self._in_loop(self._stop_in_loop)

    def _in_loop(self, fn: Any) -> None:
        loop = self._event_loop
        assert loop is not None
        if loop.is_closed():
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def _start_in_loop(self) -> None:
        self._running = True
        self._watch_kernel()
        if self._timer is None:
            assert self._event_loop is not None
            self._timer = self._event_loop.call_later(self.time_to_dead, self._on_timer)

    def _stop_in_loop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatch()

    def _watch_kernel(self) -> None:
        """Watch the current kernel process's pidfd (once per process)."""
        proc = self.kernel_manager.kernel
        pid = proc.pid if proc is not None else None
        if self._watched is not None and self._watched[0] == pid:
            return
        self._unwatch()
        if pid is None or pid == self._exited_pid:
            return
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return  # no pidfds: the timer alone
        try:
            fd = pidfd_open(pid)
        except OSError:
            return
        assert self._event_loop is not None
        self._event_loop.add_reader(fd, self._on_exit, pid)
        self._watched = (pid, fd)

    def _unwatch(self) -> None:
        watched, self._watched = self._watched, None
        if watched is not None:
            loop = self._event_loop
            if loop is not None and not loop.is_closed():
                loop.remove_reader(watched[1])
            os.close(watched[1])

    def _on_timer(self) -> None:
        self._timer = None
        if not self._running:
            return
        self._poll_now()
        if self._running and self._timer is None:
            assert self._event_loop is not None
            self._timer = self._event_loop.call_later(self.time_to_dead, self._on_timer)

    def _on_exit(self, pid: int) -> None:
        # Once per process: a pidfd stays readable after the exit.
        self._unwatch()
        self._exited_pid = pid
        if self._running:
            self._poll_now()

    def _poll_now(self) -> None:
        km = self.kernel_manager
        with km._recovery_lock:
            try:
                self.poll()
            except KernelStartCancelledError:
                self.log.debug("KernelRestarter: restart cancelled by a shutdown")
            except Exception:
                self.log.warning("KernelRestarter: restart failed", exc_info=True)
        if self._running:
            self._watch_kernel()


class AsyncIOLoopKernelRestarter(IOLoopKernelRestarter):
    """Watches the kernel in an asyncio event loop; awaits restarts in a task."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:  # type: ignore[override]
        """Look at the kernel once; restart it (awaited) or give up, by the policy."""
        if self.debug:
            self.log.debug("Polling kernel...")
        km = self.kernel_manager
        if km.shutting_down:
            self.log.debug("Kernel shutdown in progress...")
            return
        decision = self._decide(self._kernel_alive())
        if decision == _GIVE_UP:
            self._fire_callbacks("dead")
            self.stop()
        elif decision != _NOTHING:
            self._fire_callbacks("restart")
            restarted = km.restart_kernel(now=True, newports=decision == _RESTART_NEW_PORTS)
            if asyncio.iscoroutine(restarted) or isinstance(restarted, asyncio.Future):
                await restarted
            self._restarting = True

    def _poll_now(self) -> None:
        if self._task is not None and not self._task.done():
            return  # a poll (a restart) is under way
        assert self._event_loop is not None
        self._task = self._event_loop.create_task(self._poll_task())

    async def _poll_task(self) -> None:
        # Never cancelled by stop(): a restart under way (which itself stops and
        # starts the restarter) finishes.
        km = self.kernel_manager
        async with km._async_recovery_lock_for_loop():
            try:
                await self.poll()
            except KernelStartCancelledError:
                self.log.debug("KernelRestarter: restart cancelled by a shutdown")
            except Exception:
                self.log.warning("KernelRestarter: restart failed", exc_info=True)
        if self._running:
            self._watch_kernel()


class IOLoopKernelManager(KernelManager):
    """A blocking KernelManager whose restarter runs in an asyncio event loop."""

    loop = AnyTrait(None, allow_none=True, help="The event loop (default: the running one).")
    restarter_class = Type(
        default_value=IOLoopKernelRestarter,
        klass=IOLoopKernelRestarter,
        config=True,
        help="The restarter; a subclass of IOLoopKernelRestarter.",
    )

    def _make_restarter(self) -> KernelRestarter:
        restarter: KernelRestarter = self.restarter_class(
            kernel_manager=self, loop=self.loop, parent=self, log=self.log
        )
        return restarter


class AsyncIOLoopKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose restarter runs (and awaits restarts) in its event loop."""

    loop = AnyTrait(None, allow_none=True, help="The event loop (default: the running one).")
    restarter_class = Type(
        default_value=AsyncIOLoopKernelRestarter,
        klass=AsyncIOLoopKernelRestarter,
        config=True,
        help="The restarter; a subclass of AsyncIOLoopKernelRestarter.",
    )

    def _make_restarter(self) -> KernelRestarter:
        restarter: KernelRestarter = self.restarter_class(
            kernel_manager=self, loop=self.loop, parent=self, log=self.log
        )
        return restarter


__all__ = [
    "AsyncIOLoopKernelManager",
    "AsyncIOLoopKernelRestarter",
    "IOLoopKernelManager",
    "IOLoopKernelRestarter",
]
