"""Kernel managers with a restarter in an event loop, as jupyter_client.ioloop's.

``IOLoopKernelManager`` (blocking) and ``AsyncIOLoopKernelManager`` (coroutines)
are KernelManager and AsyncKernelManager whose restarter runs in an asyncio
event loop: jupyter_server's kernels are of this kind, and so are a
MultiKernelManager's by default. The loop is ``loop`` when given (an asyncio
loop, or a tornado IOLoop, whose asyncio loop is used); otherwise the
AsyncIOLoopKernelManager's is the loop running when its restarter starts, and
the blocking IOLoopKernelManager's is a background event-loop thread shared by
the process (see :class:`IOLoopKernelManager` for why). As jupyter_client's,
their ``connect_shell``/``connect_iopub``/``connect_stdin``/``connect_hb``/
``connect_control`` return ``zmq.eventloop.zmqstream.ZMQStream`` objects on
that loop (tornado is imported only then).

The restarters watch the kernel's process through a pidfd with
``loop.add_reader`` (so a death is noticed the instant it happens) and poll
every ``time_to_dead`` seconds for the stable-start bookkeeping;
``IOLoopKernelRestarter`` restarts blocking in the loop (as jupyter_client's),
``AsyncIOLoopKernelRestarter`` awaits the restart in a task.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import zmq
from traitlets import Any as AnyTrait
from traitlets import Type

from kernel_connect.errors import KernelStartCancelledError
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_connect.restarter import KernelRestarter

if TYPE_CHECKING:
    from tornado.ioloop import IOLoop
    from zmq.eventloop.zmqstream import ZMQStream

# How long the exit clean-up waits for the background loop to finish what it runs.
_STOP_JOIN_S = 5.0


# -- the background event loop of the blocking IOLoopKernelManager -------------

_lock = threading.Lock()
# (pid that started it, its loop, its thread), made on first use.
_background: tuple[int, asyncio.AbstractEventLoop, threading.Thread] | None = None
# The tornado IOLoops made here for asyncio loops (tornado allows one per loop).
_ioloops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IOLoop] = weakref.WeakKeyDictionary()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's shared background event loop, running in a daemon thread of its own.

    Started on first use; the blocking IOLoopKernelManager's restarters and
    streams run in it when no ``loop`` is given. A forked child gets a new
    one (the parent's thread does not exist in it).
    """
    global _background
    with _lock:
        bg = _background
        if bg is not None and bg[0] == os.getpid() and bg[2].is_alive():
            return bg[1]
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="kernel-connect-ioloop", daemon=True
        )
        thread.start()
        _background = (os.getpid(), loop, thread)
        return loop


def _stop_background_loop() -> None:
    """At exit, in the process that started it: stop the background loop and close it."""
    global _background
    with _lock:
        bg, _background = _background, None
    if bg is None or bg[0] != os.getpid():
        return
    _, loop, thread = bg
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(_STOP_JOIN_S)
    if not thread.is_alive():
        loop.close()


def _forget_background_in_child() -> None:
    # The parent's loop thread does not exist here, and its lock may have been
    # held at the fork: a child starts afresh (and never stops the parent's loop).
    global _background, _lock
    _lock = threading.Lock()
    _background = None


atexit.register(_stop_background_loop)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_background_in_child)


# -- ZMQStreams ------------------------------------------------------------------


def _tornado_ioloop(loop: Any) -> IOLoop:
    """A tornado IOLoop on ``loop`` (a tornado IOLoop already, or an asyncio loop)."""
    from tornado.ioloop import IOLoop

    if isinstance(loop, IOLoop):
        return loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return IOLoop.current()  # tornado's own wrapper of the running loop
    from tornado.platform.asyncio import AsyncIOLoop

    with _lock:
        ioloop = _ioloops.get(loop)
        if ioloop is None:
            try:
                # Never made current nor closed here: closing it would close ``loop``.
                ioloop = AsyncIOLoop(asyncio_loop=loop, make_current=False)
            except RuntimeError:
                # tornado wraps this loop already (an application's IOLoop): that one.
                ioloop = IOLoop._ioloop_for_asyncio[loop]
            _ioloops[loop] = ioloop
        return ioloop


def _stream(km: KernelManager, channel: str, identity: bytes | None, loop: Any) -> ZMQStream:
    """A ZMQStream on ``loop`` of a new socket connected to ``channel`` of ``km``'s kernel."""
    from zmq.eventloop.zmqstream import ZMQStream

    # A plain zmq.Socket whatever the context's kind: ZMQStream takes no asyncio socket.
    sock = km._connected_socket(channel, identity, socket_class=zmq.Socket)
    return ZMQStream(sock, _tornado_ioloop(loop))


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
        began, restarted = self._step()
        if not began:
            return
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


class _StreamConnections(KernelManager):
    """The ``connect_*`` methods of the IOLoop managers: ZMQStreams, as jupyter_client's,
    on the loop ``_stream_loop`` names (``loop``, else the background loop;
    AsyncIOLoopKernelManager prefers the running loop to the background one)."""

    loop = AnyTrait(
        None,
        allow_none=True,
        help="The event loop of the restarter and streams (default: a background one).",
    )

    def _stream_loop(self) -> Any:
        return self.loop if self.loop is not None else background_loop()

    def connect_shell(self, identity: bytes | None = None) -> ZMQStream:  # type: ignore[override]
        """Return a ZMQStream of a DEALER socket connected to shell."""
        return _stream(self, "shell", identity, self._stream_loop())

    def connect_iopub(self, identity: bytes | None = None) -> ZMQStream:  # type: ignore[override]
        """Return a ZMQStream of a SUB socket connected to IOPub, subscribed to every topic."""
        return _stream(self, "iopub", identity, self._stream_loop())

    def connect_stdin(self, identity: bytes | None = None) -> ZMQStream:  # type: ignore[override]
        """Return a ZMQStream of a DEALER socket connected to stdin."""
        return _stream(self, "stdin", identity, self._stream_loop())

    def connect_hb(self, identity: bytes | None = None) -> ZMQStream:  # type: ignore[override]
        """Return a ZMQStream of a REQ socket connected to the heartbeat."""
        return _stream(self, "hb", identity, self._stream_loop())

    def connect_control(self, identity: bytes | None = None) -> ZMQStream:  # type: ignore[override]
        """Return a ZMQStream of a DEALER socket connected to control."""
        return _stream(self, "control", identity, self._stream_loop())


class IOLoopKernelManager(_StreamConnections):
    """A blocking KernelManager whose restarter (and streams) run in an event loop.

    The loop is ``loop`` when given. Otherwise it is a background event-loop
    thread shared by the process (:func:`background_loop`), even when an event
    loop runs in the thread that starts the kernel: this manager's methods
    block, so its caller may block that loop (a test waiting on a
    ``concurrent.futures.Future``, an application calling ``start_kernel`` from
    a coroutine), and a restarter in that loop would then never see the
    kernel die; a restart (which blocks too) would also freeze the caller's
    loop. jupyter_client gets the same effect from the background loop its
    blocking calls run in (jupyter_core's ``run_sync``). So, without ``loop``,
    restart callbacks run in that background thread, and so do the callbacks
    of the ZMQStreams the ``connect_*`` methods return. Pass ``loop`` to have
    them in a loop of your own, which must then keep running.
    """

    restarter_class = Type(
        default_value=IOLoopKernelRestarter,
        klass=IOLoopKernelRestarter,
        config=True,
        help="The restarter; a subclass of IOLoopKernelRestarter.",
    )

    def _make_restarter(self) -> KernelRestarter:
        restarter: KernelRestarter = self.restarter_class(
            kernel_manager=self, loop=self._stream_loop(), parent=self, log=self.log
        )
        return restarter


class AsyncIOLoopKernelManager(_StreamConnections, AsyncKernelManager):
    """An AsyncKernelManager whose restarter runs (and awaits restarts) in its event loop.

    The loop is ``loop`` when given, else the one running when the restarter
    starts (the caller's: this manager's methods are coroutines, so it never
    blocks that loop). The ``connect_*`` methods return ZMQStreams on ``loop``,
    else on the loop running in the calling thread (else on the background
    loop of :func:`background_loop`, the only one sure to run).
    """

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

    def _stream_loop(self) -> Any:
        if self.loop is not None:
            return self.loop
        return _asyncio_loop(None) or background_loop()


__all__ = [
    "AsyncIOLoopKernelManager",
    "AsyncIOLoopKernelRestarter",
    "IOLoopKernelManager",
    "IOLoopKernelRestarter",
    "background_loop",
]
