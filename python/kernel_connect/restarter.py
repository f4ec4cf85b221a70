"""KernelRestarter: watch a kernel and restart it when it dies, as jupyter_client's.

The policy is jupyter_client's: a kernel found dead is restarted (``restart``
callbacks fire first); dying again before it has run ``stable_start_time``
seconds counts towards ``restart_limit`` consecutive restarts, past which the
kernel is left dead and the ``dead`` callbacks fire. Until the kernel's first
stable start, restarts take new random ports (``random_ports_until_alive``).
One addition: during that initial start-up, a kernel that still runs but has
reported that it cannot bind one of its ports (a process outside the port
table took it) counts as dead, since it will never answer.

The policy is written once (:meth:`KernelRestarter._decide`); the variants
only differ in how they are woken and how they restart:

- :class:`ThreadedKernelRestarter` (here): for a blocking KernelManager with
  no event loop; a thread of its own, asleep on the kernel's pidfd, woken the
  instant the kernel exits (and every ``time_to_dead`` seconds);
- ``IOLoopKernelRestarter`` and ``AsyncIOLoopKernelRestarter``
  (:mod:`kernel_connect.ioloop`): in an asyncio loop, the pidfd watched with
  ``loop.add_reader``, as jupyter_client's IOLoop restarters.

A restarter is made and started by its manager (``restarter_class``,
``autorestart``, ``start_restarter``); callbacks go through
``KernelManager.add_restart_callback``.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from inspect import isawaitable
from typing import Any

from traitlets import Bool, Dict, Float, Instance, Integer, default
from traitlets.config import LoggingConfigurable

from kernel_connect.errors import KernelStartCancelledError

#: What the policy decided: nothing to do, restart (on new ports or not), or give up.
_NOTHING = "nothing"
_RESTART = "restart"
_RESTART_NEW_PORTS = "restart on new ports"
_GIVE_UP = "give up"


class KernelRestarter(LoggingConfigurable):
    """Monitor a kernel and restart it when it dies (the policy; subclasses watch).

    Subclasses implement :meth:`start` and :meth:`stop` and call :meth:`poll`
    when the kernel may have died.
    """

    kernel_manager = Instance("kernel_connect.manager.KernelManager")

    debug = Bool(
        False,
        config=True,
        help="Whether to log every poll (there will be a lot of them).",
    )
    time_to_dead = Float(
        3.0,
        config=True,
        help="Seconds between polls of the kernel (a death is noticed at once where pidfds exist).",
    )
    stable_start_time = Float(
        10.0,
        config=True,
        help="Seconds a kernel must stay alive after a (re)start to count as started.",
    )
    restart_limit = Integer(
        5,
        config=True,
        help="Restarts in a row (each dying before stable_start_time) before the kernel "
        "is left dead.",
    )
    random_ports_until_alive = Bool(
        True,
        config=True,
        help="Whether to restart on new random ports until the kernel first starts stably.",
    )
    _restarting = Bool(False)
    _restart_count = Integer(0)
    _initial_startup = Bool(True)
    _last_dead = Float()

    @default("_last_dead")
    def _default_last_dead(self) -> float:
        return time.time()

    callbacks = Dict()

    @default("callbacks")
    def _callbacks_default(self) -> dict[str, list[Callable[..., Any]]]:
        return {"restart": [], "dead": []}

    def start(self) -> None:
        """Start watching the kernel."""
        raise NotImplementedError("Must be implemented in a subclass")

    def stop(self) -> None:
        """Stop watching the kernel."""
        raise NotImplementedError("Must be implemented in a subclass")

    def add_callback(self, f: Callable[..., Any], event: str = "restart") -> None:
        """Call ``f()`` on ``event``: 'restart' (the kernel died and is being
        restarted) or 'dead' (restarts failed; it is left dead)."""
        self.callbacks[event].append(f)

    def remove_callback(self, f: Callable[..., Any], event: str = "restart") -> None:
        """Stop calling ``f`` on ``event``."""
        with suppress(ValueError):
            self.callbacks[event].remove(f)

    def _fire_callbacks(self, event: str) -> None:
        for callback in list(self.callbacks[event]):
            try:
                callback()
            except Exception:
                self.log.error(
                    "KernelRestarter: %s callback %r failed", event, callback, exc_info=True
                )

    def _kernel_alive(self) -> bool:
        """Whether the kernel runs and may still answer."""
        km = self.kernel_manager
        if not km._poll_alive():
            return False
        # A kernel that lost one of its ports at start-up hangs or dies; either
        # way it never answers, so it is restarted (on new ports) like a dead one.
        return not (self._initial_startup and km.port_clash())

    def _decide(self, alive: bool) -> str:
        """Update the restart counts with one observation; what to do now."""
        now = time.time()
        if not alive:
            self._last_dead = now
            if self._restarting:
                self._restart_count += 1
            else:
                self._restart_count = 1
            if self._restart_count > self.restart_limit:
                self.log.warning("KernelRestarter: restart failed")
                self._restarting = False
                self._restart_count = 0
                return _GIVE_UP
            newports = self.random_ports_until_alive and self._initial_startup
            self.log.info(
                "KernelRestarter: restarting kernel (%i/%i), %s random ports",
                self._restart_count,
                self.restart_limit,
                "new" if newports else "keep",
            )
            return _RESTART_NEW_PORTS if newports else _RESTART
        # Alive is not started: only "alive for stable_start_time" says it is.
        if self._initial_startup and now - self._last_dead >= self.stable_start_time:
            self._initial_startup = False
        if self._restarting and now - self._last_dead >= self.stable_start_time:
            self.log.debug("KernelRestarter: restart apparently succeeded")
            self._restarting = False
        return _NOTHING

    def _step(self) -> tuple[bool, Any]:
        """Look at the kernel once and act by the policy: give up (``dead``
        callbacks, stop) or begin a restart (``restart`` callbacks first).

        Returns whether a restart began and what ``restart_kernel`` returned
        (an awaitable for an async manager): the variants finish the restart
        their own way, then set ``_restarting``.
        """
        if self.debug:
            self.log.debug("Polling kernel...")
        km = self.kernel_manager
        if km.shutting_down:
            self.log.debug("Kernel shutdown in progress...")
            return False, None
        decision = self._decide(self._kernel_alive())
        if decision == _GIVE_UP:
            self._fire_callbacks("dead")
            self.stop()
        if decision in (_GIVE_UP, _NOTHING):
            return False, None
        self._fire_callbacks("restart")
        return True, km.restart_kernel(now=True, newports=decision == _RESTART_NEW_PORTS)

    def poll(self) -> None:
        """Look at the kernel once; restart it (blocking) or give up, by the policy."""
        began, restarted = self._step()
        if not began:
            return
        if isawaitable(restarted):
            close = getattr(restarted, "close", None)
            if close is not None:
                close()
            raise TypeError(
                "this restarter restarts blocking; an AsyncKernelManager needs "
                "kernel_connect.ioloop.AsyncIOLoopKernelRestarter"
            )
        self._restarting = True


class ThreadedKernelRestarter(KernelRestarter):
    """A restarter with a thread of its own, for a blocking KernelManager.

    The thread sleeps on the kernel's pidfd (and a wake-up pipe), so a death
    is noticed the instant it happens, and polls every ``time_to_dead``
    seconds for the stable-start bookkeeping. Restarts run in that thread,
    blocking; ``shutdown_kernel`` in another thread stops the restarter first
    (and cancels a restart under way).

    Use: ``KernelManager(restarter_class=ThreadedKernelRestarter)`` (or
    ``c.KernelManager.restarter_class`` in a Jupyter config file).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._stopped = True
        self._thread: threading.Thread | None = None
        self._wake_w: int | None = None

    def start(self) -> None:
        """Start (or keep) the watching thread."""
        with self._lock:
            self._stopped = False
            if self._thread is None:
                rfd, wfd = os.pipe()
                os.set_blocking(wfd, False)
                self._wake_w = wfd
                self._thread = threading.Thread(
                    target=self._run, args=(rfd, wfd), name="kernel-restarter", daemon=True
                )
                self._thread.start()
            else:
                self._wake()

    def stop(self) -> None:
        """Stop watching; the thread ends (without waiting for it here)."""
        with self._lock:
            self._stopped = True
            self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with suppress(BlockingIOError):  # full: it is awake already
                os.write(self._wake_w, b"x")

    def _run(self, wake_r: int, wake_w: int) -> None:
        watched: tuple[int, int] | None = None  # (pid, pidfd)
        exited_pid: int | None = None  # seen dead and left so by the last poll
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        self._thread = None
                        self._wake_w = None
                        return
                proc = self.kernel_manager.kernel
                pid = proc.pid if proc is not None else None
                if watched is not None and watched[0] != pid:
                    os.close(watched[1])
                    watched = None
                if watched is None and pid is not None and pid != exited_pid:
                    watched = _pidfd_for(pid)
                poller = select.poll()
                poller.register(wake_r, select.POLLIN)
                if watched is not None:
                    poller.register(watched[1], select.POLLIN)
                events = dict(poller.poll(max(1, int(self.time_to_dead * 1000))))
                if wake_r in events:
                    with suppress(OSError):
                        os.read(wake_r, 4096)
                with self._lock:
                    if self._stopped:
                        continue
                km = self.kernel_manager
                with km._recovery_lock:
                    try:
                        self.poll()
                    except KernelStartCancelledError:
                        self.log.debug("KernelRestarter: restart cancelled by a shutdown")
                    except Exception:
                        self.log.warning("KernelRestarter: restart failed", exc_info=True)
                same_process = km.kernel is not None and km.kernel.pid == pid
                if watched is not None and same_process and watched[1] in events:
                    # Still the same dead process (left dead): stop waking on it.
                    exited_pid = pid
                    os.close(watched[1])
                    watched = None
        finally:
            if watched is not None:
                os.close(watched[1])
            with self._lock:
                # Gone for good (even on an unexpected error): a start() makes a new one.
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._wake_w == wake_w:
                    self._wake_w = None
            os.close(wake_r)
            os.close(wake_w)


def _pidfd_for(pid: int) -> tuple[int, int] | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pid, pidfd_open(pid)
    except OSError:
        return None


__all__ = ["KernelRestarter", "ThreadedKernelRestarter"]
