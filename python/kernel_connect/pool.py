"""A warm pool of started, ready kernels: ``take()`` one in milliseconds.

For a farm, a kernel's own start-up (an interpreter importing ipykernel,
IPython, zmq and tornado) dwarfs everything else a request costs. A
:class:`KernelPool` pays it ahead of time: it keeps ``size`` kernels of one
kernel spec started and answering ``kernel_info``, and :meth:`KernelPool.take`
hands one out at once::

    from kernel_connect.pool import KernelPool

    with KernelPool(size=4, kernel_name="python3") as pool:
        km = pool.take(cwd="/srv/work/alice", env={"RUN_ID": "42"})
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=10)
        kc.execute_interactive("import os; print(os.getcwd())")
        kc.stop_channels()
        pool.release(km)          # shuts the kernel down; it is never pooled again

The rules it keeps, and why:

- **A kernel is handed out once.** It may have run user code (and hold that
  user's data and state), so :meth:`~KernelPool.release` shuts it down; the
  pool refills with a fresh kernel instead.
- **cwd and env are applied at take time** to a Python kernel (language
  ``python``: ipykernel and other Python kernels run the same code): one silent
  execute (``store_history=False``) of ``os.chdir`` and ``os.environ`` updates,
  its reply checked, the request passed as one JSON text in a ``repr()``-quoted
  literal so that no value is ever read as code. The manager's own record
  (its launch arguments) is updated too, so a restart of the taken kernel starts
  in that cwd with that env. Variables read only when the interpreter starts
  (``PYTHONPATH``, ``PYTHONHASHSEED``, ...) cannot take effect that way: give
  them to the pool (``start_kwargs={"extra_env": ...}``) instead. A kernel in
  any other language cannot be changed once started, so its pool refuses a
  take whose cwd or env its kernels do not already have (:class:`PoolError`):
  make one pool per (cwd, env) for such kernels. Refusing was chosen over keying
  one pool on every (cwd, env) asked for: such a pool would start cold kernels
  for each new key while keeping warm ones nobody takes.
- **A kernel that dies in the pool is replaced.** A watcher thread sleeps in
  ``poll()`` on a pidfd of every pooled kernel, so a death wakes it the
  instant it happens; it then asks the manager (``is_alive``), which decides.
  Where no pidfd can be had (no ``pidfd_open``, a launcher whose kernel has no
  pid of ours), a check of every pooled kernel every ``check_interval``
  seconds (default 2) catches it: one ``waitpid`` per kernel, cheap at any
  pool size, and bounded.
- **Refills never starve kernels in use:** at most ``max_concurrent_starts``
  kernels start at once (default 2, for the 2-core machines this was measured
  on), in the background, and a taken kernel's replacement starts only once
  the take has handed it out (on a busy machine the take would otherwise
  compete for CPU with the start of its own replacement); a take that finds
  the pool empty starts one more (within the same bound) and waits for the
  first ready kernel, up to its timeout, then fails with
  :class:`PoolTimeoutError` saying why (the last start failure, if any).
- **A take costs no kernel round trip** unless it applies cwd/env: the pool's
  client of each kernel (shell and IOPub, on one zmq context shared by the
  pool) waited for kernel_info and ran one silent no-op (a kernel's first
  execute costs a few ms more than the next) when the kernel was pooled; take
  checks the process is alive and closes that client. With cwd/env it costs
  one execute round trip to an idle kernel (a few ms, more on a busy machine).
- **A failed start leaks nothing and is retried with back-off** (0.5 s doubling
  to 30 s, shared by all starters, reset by a success), each failure logged;
  never a hot loop, even for a kernel spec that can never start.
- **Thread-safe:** takes pop under one lock, so two threads never get the same
  kernel.
- **Nothing is left behind:** :meth:`~KernelPool.close` (also at interpreter
  exit, in the process that made the pool only: a forked child forgets the
  pools it inherited, whose kernels belong to its parent) cancels starts under
  way and shuts every pooled kernel down: no process, connection file or port
  reservation remains. Kernels already taken belong to their taker.

Metrics for an operator: :meth:`~KernelPool.stats` (size, ready, starting,
waiting takers, and counts of kernels started, taken, replaced and failed
starts, with the last failure), and :meth:`~KernelPool.wait_for` to wait on
any of them without polling.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from kernel_connect.errors import KernelDiedError
from kernel_connect.manager import KernelManager

if TYPE_CHECKING:
    from kernel_connect.client import BlockingKernelClient

log = logging.getLogger(__name__)

#: The launcher every KernelManager has; others need a ``launcher`` trait.
DEFAULT_LAUNCHER = "exec"

# Back-off after a failed start: first delay, and the cap it doubles up to.
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
# How long close() waits for a starter thread that is finishing a cancelled start.
_JOIN_TIMEOUT_S = 30.0
# Seconds allowed for the silent execute that applies cwd/env at take time.
_APPLY_TIMEOUT_S = 30.0


class PoolError(RuntimeError):
    """A kernel pool could not do what was asked; the message says why."""


class PoolClosedError(PoolError):
    """The pool is closed (or belongs to another process): it hands out no kernels."""


class PoolTimeoutError(PoolError, TimeoutError):
    """No kernel became ready within the take's timeout."""


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's state and counters.

    Attributes
    ----------
    size : int
        Kernels the pool keeps ready.
    ready : int
        Started kernels waiting in the pool.
    starting : int
        Starts under way.
    waiting : int
        ``take`` calls blocked until a kernel is ready.
    started : int
        Kernels that became ready in the pool, since it was made.
    taken : int
        Kernels handed out.
    released : int
        Taken kernels given back (and shut down).
    replaced : int
        Pooled kernels found dead (and replaced).
    failed_starts : int
        Starts that failed (each logged and retried after a back-off).
    consecutive_failures : int
        Failed starts since the last success (0: starts are succeeding).
    last_error : str or None
        The last start failure, for people.
    closed : bool
        Whether :meth:`KernelPool.close` was called.
    """

    size: int
    ready: int
    starting: int
    waiting: int
    started: int
    taken: int
    released: int
    replaced: int
    failed_starts: int
    consecutive_failures: int
    last_error: str | None
    closed: bool


def launcher_available(launcher: str) -> bool:
    """Whether KernelManager can start kernels with ``launcher`` in this installation.

    ``"exec"`` always; any other only when KernelManager has a ``launcher``
    trait that accepts it (the fork launcher adds one).
    """
    if launcher == DEFAULT_LAUNCHER:
        return True
    trait = KernelManager.class_traits().get("launcher")
    if trait is None:
        return False
    values = getattr(trait, "values", None)
    return values is None or launcher.lower() in {str(v).lower() for v in values}


def launcher_traits(launcher: str) -> dict[str, str]:
    """The KernelManager keyword arguments that select ``launcher``.

    Empty for ``"exec"`` (so this works before KernelManager has a
    ``launcher`` trait at all).

    Raises
    ------
    PoolError
        If this KernelManager cannot use ``launcher``.
    """
    if launcher == DEFAULT_LAUNCHER:
        return {}
    if not launcher_available(launcher):
        raise PoolError(
            f"launcher {launcher!r} is not available: this KernelManager "
            + (
                "has no 'launcher' trait"
                if "launcher" not in KernelManager.class_trait_names()
                else "does not accept it"
            )
            + f" (use {DEFAULT_LAUNCHER!r})"
        )
    return {"launcher": launcher}


# Pools made by this process, closed at exit. A forked child starts with none.
_live_pools: weakref.WeakSet[KernelPool] = weakref.WeakSet()


def _close_pools_at_exit() -> None:
    for pool in list(_live_pools):
        try:
            pool.close()
        except Exception:  # noqa: S112 - best effort at interpreter exit
            continue


atexit.register(_close_pools_at_exit)
if hasattr(os, "register_at_fork"):  # POSIX
    # The child has none of the pool's threads, and its kernels are the
    # parent's: it must neither use nor shut down what it inherited.
    os.register_at_fork(after_in_child=_live_pools.clear)


class _Slot:
    """One kernel of the pool, from its start until it is taken or shut down."""

    def __init__(self, manager: KernelManager) -> None:
        self.manager = manager
        self.client: BlockingKernelClient | None = None
        # Serializes shutdowns: a starter's clean-up and close()'s cancellation.
        self.lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The kernel's process id, when the launcher gives one."""
        pid = getattr(self.manager.kernel, "pid", None)
        return pid if isinstance(pid, int) else None

    def shutdown(self) -> None:
        """Kill the kernel and clean up after it (idempotent; never raises).

        Safe from any thread, even while the starter thread waits on the
        client: that wait then ends at once, as the kernel is dead.
        """
        with self.lock:
            try:
                self.manager.shutdown_kernel(now=True)
            except Exception as e:
                log.warning("shutting down a pooled kernel failed: %s: %s", type(e).__name__, e)

    def discard(self) -> None:
        """Close our client, then :meth:`shutdown`. Only by the slot's owner: the
        thread that started it, or took it out of the ready queue (zmq sockets
        must never be closed under a thread that uses them)."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop_channels()
        self.shutdown()


class _Cancelled(Exception):
    """A start abandoned because the pool was closed."""


class KernelPool:
    """Keeps ``size`` started, ready kernels of one kernel spec; ``take()`` hands one out.

    Parameters
    ----------
    size : int
        Kernels to keep ready (0: none; every take starts one).
    kernel_name : str
        Kernel spec of every kernel.
    launcher : str
        ``"exec"`` (default) or another launcher of KernelManager (``"fork"``
        where available, see :func:`launcher_available`).
    max_concurrent_starts : int
        Kernels started at once, at most (refills and takes together).
    start_timeout : float
        Seconds a kernel may take to start and answer kernel_info.
    manager_kwargs : mapping, optional
        More KernelManager traits for every kernel (``transport``, ``ip``,
        ``kernel_binds_ports``, ``config``, ...).
    start_kwargs : mapping, optional
        Arguments of ``start_kernel`` for every kernel: ``cwd`` (default:
        ours when the pool is made), ``env`` (default: a copy of ours when the
        pool is made, so that every kernel starts with the same one),
        ``extra_env``, ``extra_arguments``.
    check_interval : float
        Seconds between two liveness checks of every pooled kernel, for
        deaths no pidfd reports.

    Raises
    ------
    NoSuchKernel
        If there is no kernel spec ``kernel_name``.
    PoolError
        If ``launcher`` is not available.
    ValueError
        If a number is out of range.
    """

    def __init__(
        self,
        size: int = 2,
        kernel_name: str = "python3",
        *,
        launcher: str = DEFAULT_LAUNCHER,
        max_concurrent_starts: int = 2,
        start_timeout: float = 60.0,
        manager_kwargs: Mapping[str, Any] | None = None,
        start_kwargs: Mapping[str, Any] | None = None,
        check_interval: float = 2.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be at least 0, not {size}")
        if max_concurrent_starts < 1:
            raise ValueError(
                f"max_concurrent_starts must be at least 1, not {max_concurrent_starts}"
            )
        if not start_timeout > 0 or not check_interval > 0:
            raise ValueError("start_timeout and check_interval must be positive")
        mkw = dict(manager_kwargs or {})
        if "launcher" in mkw and mkw.pop("launcher") != launcher:
            raise ValueError("give the launcher as launcher=, not in manager_kwargs")
        mkw.update(launcher_traits(launcher))
        self._manager_kwargs = mkw
        self.kernel_name = kernel_name
        self.launcher = launcher
        self.max_concurrent_starts = max_concurrent_starts
        self.start_timeout = float(start_timeout)
        self.check_interval = float(check_interval)

        # A manager that never starts: resolves the spec now (a typo fails
        # here, not in a background thread) and says how kernels are started.
        probe = KernelManager(kernel_name=kernel_name, **mkw)
        spec = probe.kernel_spec
        self.kernel_language = spec.language
        skw = dict(start_kwargs or {})
        skw["cwd"] = os.path.abspath(os.fspath(skw.get("cwd") or os.getcwd()))
        skw["env"] = dict(os.environ if skw.get("env") is None else skw["env"])
        self._start_kwargs = skw
        self._kernel_cwd: str = skw["cwd"]
        # What every kernel's environment is, computed as its manager will.
        self._kernel_env = probe._kernel_env(dict(skw["env"]), skw.get("extra_env"))

        self._size = size
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: deque[_Slot] = deque()
        self._starting: set[_Slot] = set()
        # Starts decided on whose manager is being made (outside the lock).
        self._launching = 0
        # Takes that popped a kernel and are still handing it out: its refill
        # waits until they are done, so that on a busy machine the take does
        # not compete for CPU with the start of its own replacement.
        self._handing_out = 0
        self._taken: weakref.WeakSet[KernelManager] = weakref.WeakSet()
        self._waiting = 0
        self._closed = False
        self._n_started = self._n_taken = self._n_released = 0
        self._n_replaced = self._n_failed = self._consecutive_failures = 0
        self._last_error: str | None = None
        self._next_start_at = 0.0
        self._owner_pid = os.getpid()

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # One zmq context for the clients of all pooled kernels: a client with a
        # context of its own would end it (a thread, waiting out the sockets'
        # linger: a whole second for a kernel that died) at every take.
        self._context: zmq.Context[Any] = zmq.Context()
        self._threads = [
            threading.Thread(target=self._starter, name=f"kernel-pool-start-{i}", daemon=True)
            for i in range(max_concurrent_starts)
        ]
        self._watcher = threading.Thread(target=self._watch, name="kernel-pool-watch", daemon=True)
        _live_pools.add(self)
        for t in self._threads:
            t.start()
        self._watcher.start()

    # -- public API --------------------------------------------------------

    @property
    def size(self) -> int:
        """Kernels the pool keeps ready."""
        return self._size

    @property
    def python(self) -> bool:
        """Whether the kernels are Python kernels (cwd and env can be applied at take)."""
        return self.kernel_language.lower().startswith("python")

    def kernel_env(self) -> dict[str, str]:
        """The environment every pooled kernel starts with (before any take applies env).

        Without the variables the launcher adds (``JPY_PARENT_PID``).
        """
        return dict(self._kernel_env)

    @property
    def kernel_cwd(self) -> str:
        """The working directory every pooled kernel starts in."""
        return self._kernel_cwd

    def stats(self) -> PoolStats:
        """A snapshot of the pool's state and counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, predicate: Callable[[PoolStats], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats)`` holds; whether it did within ``timeout`` seconds.

        Woken by every change of the pool's state, never by polling.
        """
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._stats_locked()), timeout)

    def wait_until_full(self, timeout: float) -> bool:
        """Wait until ``size`` kernels are ready; whether they were within ``timeout`` seconds."""
        return self.wait_for(lambda s: s.ready >= s.size or s.closed, timeout) and not self._closed

    def take(
        self,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        unset_env: Iterable[str] = (),
        timeout: float = 60.0,
    ) -> KernelManager:
        """Hand out a started kernel that answers kernel_info; it is never pooled again.

        Parameters
        ----------
        cwd : path, optional
            Working directory for the kernel (relative: to ours).
        env : mapping, optional
            Environment variables to set in the kernel.
        unset_env : iterable of str
            Environment variables to remove from the kernel.
        timeout : float
            Seconds to wait for a ready kernel when none is (one is started
            on demand meanwhile).

        Returns
        -------
        KernelManager
            The kernel's manager; make a client with ``km.client()``. Give it
            back with :meth:`release` (or shut it down yourself).

        Raises
        ------
        PoolTimeoutError
            No kernel was ready within ``timeout`` (the message has the last
            start failure, if any).
        PoolClosedError
            The pool was closed, or belongs to the process this one was forked from.
        PoolError
            cwd/env asked of a kernel that is not a Python kernel and does not
            already have them, or the kernel refused them (nothing is handed out).
        FileNotFoundError, NotADirectoryError
            If ``cwd`` is not a directory.
        ValueError, TypeError
            If ``env`` is not a mapping of valid names to strings.
        """
        if os.getpid() != self._owner_pid:
            raise PoolClosedError(
                f"this pool belongs to process {self._owner_pid}; a forked child cannot use it"
            )
        want_cwd, want_env, want_unset = self._changes(cwd, env, unset_env)
        deadline = time.monotonic() + timeout
        while True:
            slot = self._pop(deadline, timeout)
            try:
                if self._hand_out(slot, want_cwd, want_env, want_unset, deadline):
                    return slot.manager
            finally:
                self._handed_out()

    def _hand_out(
        self,
        slot: _Slot,
        cwd: str | None,
        env: dict[str, str],
        unset: list[str],
        deadline: float,
    ) -> bool:
        """Make a popped kernel the taker's; False if it turned out dead (and was discarded)."""
        km = slot.manager
        if not km.is_alive():
            self._note_dead(slot, already_removed=True)
            return False
        if cwd is not None or env or unset:
            try:
                self._apply(slot, cwd, env, unset, deadline)
            except KernelDiedError:
                self._note_dead(slot, already_removed=True)
                return False
            except BaseException:
                slot.discard()
                raise
        client, slot.client = slot.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # the kernel is the taker's now, whatever
                client.stop_channels()
        with self._lock:
            self._n_taken += 1
            self._taken.add(km)
        return True

    def release(self, km: KernelManager, now: bool = False) -> None:
        """Give back a taken kernel: it is shut down (never pooled again: it may have
        run user code), its connection file removed and its ports returned.

        Parameters
        ----------
        km : KernelManager
            A manager :meth:`take` returned.
        now : bool
            Kill at once instead of asking the kernel to shut down.

        Raises
        ------
        ValueError
            If ``km`` was not taken from this pool, or was released already.
        """
        with self._lock:
            if km not in self._taken:
                raise ValueError("this kernel was not taken from this pool (or was released)")
            self._taken.discard(km)
            self._n_released += 1
            self._cond.notify_all()
        km.shutdown_kernel(now=now)

    def pooled_managers(self) -> list[KernelManager]:
        """The managers of the kernels in the pool and starting (a snapshot, to check on them)."""
        with self._lock:
            return [s.manager for s in (*self._ready, *self._starting)]

    def close(self) -> None:
        """Shut every pooled kernel down and cancel starts under way; idempotent.

        When it returns no pooled kernel's process, connection file or port
        reservation is left. Kernels already taken are not touched. In a process
        forked from the pool's creator it only marks the pool closed: the
        kernels are the parent's.
        """
        if os.getpid() != self._owner_pid:
            self._closed = True  # the lock may have been held by a thread at fork time
            return
        with self._cond:
            already = self._closed
            self._closed = True
            ready, self._ready = list(self._ready), deque()
            starting = list(self._starting)
            self._cond.notify_all()
            self._wake_locked()
        if not already:
            # Cancel starts under way: a start shut down from another thread
            # ends at once (KernelStartCancelledError, or its wait finds the
            # kernel dead); its starter then discards it, client included.
            for slot in starting:
                slot.shutdown()
            for slot in ready:
                slot.discard()
        me = threading.current_thread()
        joined = True
        for t in (*self._threads, self._watcher):
            if t is not me:
                t.join(_JOIN_TIMEOUT_S)
                if t.is_alive():
                    joined = False
                    log.warning(
                        "kernel pool thread %s did not end in %s s", t.name, _JOIN_TIMEOUT_S
                    )
        with self._lock:
            # Closed only once no thread can use them (a stuck one keeps them open).
            if joined and self._wake_w >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
                self._context.destroy(linger=0)
        _live_pools.discard(self)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<KernelPool {self.kernel_name!r} launcher={self.launcher!r} size={s.size} "
            f"ready={s.ready} starting={s.starting}{' closed' if s.closed else ''}>"
        )

    # -- taking ------------------------------------------------------------

    def _changes(
        self,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        unset_env: Iterable[str],
    ) -> tuple[str | None, dict[str, str], list[str]]:
        """The cwd/env/unset a take must apply (what the kernels lack), checked.

        Checked here, before any kernel is taken, so a bad request costs no kernel.
        """
        want_cwd: str | None = None
        if cwd is not None:
            path = os.fspath(cwd)
            if not isinstance(path, str):
                raise TypeError("cwd must be a str path")
            path = os.path.abspath(path)
            if not os.path.isdir(path):
                code = errno.ENOTDIR if os.path.exists(path) else errno.ENOENT
                raise (NotADirectoryError if code == errno.ENOTDIR else FileNotFoundError)(
                    code, f"cwd for the kernel is not a directory: {os.strerror(code)}", path
                )
            if path != self._kernel_cwd:
                want_cwd = path
        want_env: dict[str, str] = {}
        if env is not None:
            if not isinstance(env, Mapping):
                raise TypeError("env must be a mapping of str to str")
            for name, value in env.items():
                _check_env_name(name)
                if not isinstance(value, str):
                    raise TypeError(f"env[{name!r}] must be a str, not {type(value).__name__}")
                if "\0" in value:
                    raise ValueError(f"env[{name!r}] contains a NUL character")
                if self._kernel_env.get(name) != value:
                    want_env[name] = value
        if isinstance(unset_env, str):
            raise TypeError("unset_env must be an iterable of names, not one str")
        want_unset = []
        for name in unset_env:
            _check_env_name(name)
            if name in self._kernel_env and name not in want_env:
                want_unset.append(name)
        if (want_cwd is not None or want_env or want_unset) and not self.python:
            lacking = ", ".join(
                [*(["cwd"] if want_cwd is not None else []), *sorted(want_env), *want_unset]
            )
            raise PoolError(
                f"kernel spec {self.kernel_name!r} ({self.kernel_language or 'unknown'} "
                f"language) is not a Python kernel: its started kernels cannot change their "
                f"cwd or env, and they lack what was asked ({lacking}); make a KernelPool with "
                "start_kwargs={'cwd': ..., 'extra_env': ...} for that cwd and env"
            )
        return want_cwd, want_env, want_unset

    def _pop(self, deadline: float, timeout: float) -> _Slot:
        """The oldest ready kernel, waiting (and asking for a start) while there is none."""
        with self._cond:
            self._waiting += 1
            try:
                while not self._ready:
                    if self._closed:
                        raise PoolClosedError("the kernel pool is closed")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolTimeoutError(self._timeout_message_locked(timeout))
                    self._cond.notify_all()  # this take may need a start of its own
                    self._cond.wait(remaining)
                slot = self._ready.popleft()
                self._handing_out += 1
            finally:
                self._waiting -= 1
        return slot

    def _handed_out(self) -> None:
        """A take popped a kernel and is done with it (handed out, or dead): refill."""
        with self._cond:
            self._handing_out -= 1
            self._cond.notify_all()

    def _timeout_message_locked(self, timeout: float) -> str:
        s = self._stats_locked()
        why = (
            f"; {s.consecutive_failures} start(s) in a row failed, the last with: {s.last_error}"
            if s.consecutive_failures
            else ""
        )
        return (
            f"no {self.kernel_name!r} kernel was ready within {timeout} s (pool of {s.size}: "
            f"{s.ready} ready, {s.starting} starting, {s.waiting} takes waiting, at most "
            f"{self.max_concurrent_starts} starts at once){why}"
        )

    def _apply(
        self,
        slot: _Slot,
        cwd: str | None,
        env: dict[str, str],
        unset: list[str],
        deadline: float,
    ) -> None:
        """Apply cwd/env in the kernel (one silent execute) and in its manager's record."""
        client = slot.client
        assert client is not None
        timeout = max(0.001, min(_APPLY_TIMEOUT_S, deadline - time.monotonic()))
        try:
            reply = client.execute(
                _apply_code(cwd, env, unset),
                silent=True,
                store_history=False,
                allow_stdin=False,
                reply=True,
                timeout=timeout,
            )
        except TimeoutError:
            raise PoolError(
                f"the kernel did not apply cwd/env within {timeout:.1f} s; it was shut down"
            ) from None
        content = reply["content"]
        if content.get("status") != "ok":
            raise PoolError(
                "the kernel could not apply cwd/env and was shut down: "
                f"{content.get('ename', 'error')}: {content.get('evalue', '')}"
            )
        _record_launch(slot.manager, cwd, env, unset)

    # -- starting ------------------------------------------------------------

    def _deficit_locked(self) -> int:
        under_way = len(self._starting) + self._launching + self._handing_out
        return self._size + self._waiting - len(self._ready) - under_way

    def _starter(self) -> None:
        """One of ``max_concurrent_starts`` threads: start a kernel whenever one is lacking."""
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    wait: float | None = None
                    if self._deficit_locked() > 0:
                        wait = self._next_start_at - time.monotonic()
                        if wait <= 0:
                            break
                    self._cond.wait(wait)
                self._launching += 1
            # Made outside the lock (traitlets set-up costs): takes never wait on it.
            try:
                manager = KernelManager(kernel_name=self.kernel_name, **self._manager_kwargs)
            except Exception as e:
                with self._cond:
                    self._launching -= 1
                self._note_failure(e)
                continue
            slot = _Slot(manager)
            with self._cond:
                self._launching -= 1
                if self._closed:
                    return
                self._starting.add(slot)
                self._cond.notify_all()
            try:
                self._start(slot)
            except Exception as e:
                slot.discard()
                self._note_failure(None if isinstance(e, _Cancelled) else e, slot)
            else:
                self._note_ready(slot)

    def _start(self, slot: _Slot) -> None:
        """Start the slot's kernel and wait until it answers kernel_info."""
        km = slot.manager
        kw = dict(self._start_kwargs)
        kw["env"] = dict(kw["env"])  # each manager keeps its own (take may change it)
        km.start_kernel(**kw)
        if self._closed:
            raise _Cancelled
        # Shell and IOPub only: all that readiness and the take-time execute need.
        client = km.client(context=self._context)
        slot.client = client
        client.start_channels(stdin=False, hb=False, control=False)
        client.wait_for_ready(timeout=self.start_timeout)
        if self.python:
            # A kernel's first execute costs a few ms more than the next ones:
            # pay it here (silently: no history, no execution count), not in take.
            client.execute(
                "None", silent=True, store_history=False, reply=True, timeout=self.start_timeout
            )

    def _note_ready(self, slot: _Slot) -> None:
        # From starting to ready in one step: close() must never see it in both
        # (it would shut down a kernel a take may have handed out meanwhile).
        with self._cond:
            self._starting.discard(slot)
            self._cond.notify_all()
            if self._closed:
                closed = True
            else:
                closed = False
                self._ready.append(slot)
                self._n_started += 1
                self._consecutive_failures = 0
                self._next_start_at = 0.0
                self._cond.notify_all()
                self._wake_locked()  # the watcher adds the new kernel
        if closed:
            slot.discard()

    def _note_failure(self, error: Exception | None, slot: _Slot | None = None) -> None:
        """A start failed (``error``; None: cancelled); its kernel is shut down already."""
        with self._cond:
            if slot is not None:
                self._starting.discard(slot)
            self._cond.notify_all()
            if self._closed or error is None:
                return  # cancelled by close(), not a failure
            self._n_failed += 1
            self._consecutive_failures += 1
            delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (self._consecutive_failures - 1))
            self._next_start_at = time.monotonic() + delay
            self._last_error = f"{type(error).__name__}: {error}"
            n = self._consecutive_failures
            self._cond.notify_all()
        log.warning(
            "starting a %r kernel for the pool failed (%d in a row; next try in %.1f s): %s: %s",
            self.kernel_name,
            n,
            delay,
            type(error).__name__,
            error,
        )

    # -- watching --------------------------------------------------------------

    def _note_dead(self, slot: _Slot, already_removed: bool = False) -> None:
        """A pooled kernel died: forget it, clean up after it, let a starter replace it."""
        with self._cond:
            if not already_removed:
                try:
                    self._ready.remove(slot)
                except ValueError:
                    return  # taken (or closed) meanwhile: not ours to handle
            self._n_replaced += 1
            self._cond.notify_all()
        km = slot.manager
        km.is_alive()  # records the exit code
        log.warning(
            "a pooled %r kernel (pid %s) died and is replaced: %s",
            self.kernel_name,
            slot.pid,
            km.death_report(),
        )
        slot.discard()

    def _wake_locked(self) -> None:
        """Wake the watcher (under the lock: close() closes the pipe under it too)."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: it is awake anyway
                os.write(self._wake_w, b"x")

    def _watch(self) -> None:
        """Notice pooled kernels that die: at once through their pidfds, and by a check
        of every pooled kernel every ``check_interval`` seconds (for those without a
        pidfd); the manager's ``is_alive`` decides."""
        pidfds: dict[_Slot, int] = {}
        no_pidfd: set[_Slot] = set()
        next_check = time.monotonic() + self.check_interval
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    pooled = list(self._ready)
                    wake_r = self._wake_r
                current = set(pooled)
                for slot in [s for s in pidfds if s not in current]:
                    os.close(pidfds.pop(slot))
                no_pidfd &= current
                for slot in pooled:
                    if slot not in pidfds and slot not in no_pidfd:
                        fd = _pidfd(slot.pid)
                        if fd is None:
                            no_pidfd.add(slot)
                        else:
                            pidfds[slot] = fd
                poller = select.poll()
                poller.register(wake_r, select.POLLIN)
                by_fd = {fd: slot for slot, fd in pidfds.items()}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                wait_ms = max(0.0, next_check - time.monotonic()) * 1000
                events = poller.poll(wait_ms)
                woken = {by_fd[fd] for fd, _ in events if fd in by_fd}
                if any(fd == wake_r for fd, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 512):
                            pass
                suspects = list(woken)
                if time.monotonic() >= next_check:
                    suspects = pooled
                    next_check = time.monotonic() + self.check_interval
                for slot in suspects:
                    if slot.manager.is_alive():
                        if slot in woken:
                            # Woken, yet alive (not the process we watched): checked
                            # periodically from now on, or it would wake us forever.
                            os.close(pidfds.pop(slot))
                            no_pidfd.add(slot)
                        continue
                    self._note_dead(slot)
        except Exception:
            log.exception("the kernel pool's watcher failed; dead pooled kernels are found at take")
        finally:
            for fd in pidfds.values():
                os.close(fd)

    def _stats_locked(self) -> PoolStats:
        return PoolStats(
            size=self._size,
            ready=len(self._ready),
            starting=len(self._starting) + self._launching,
            waiting=self._waiting,
            started=self._n_started,
            taken=self._n_taken,
            released=self._n_released,
            replaced=self._n_replaced,
            failed_starts=self._n_failed,
            consecutive_failures=self._consecutive_failures,
            last_error=self._last_error,
            closed=self._closed,
        )


def _pidfd(pid: int | None) -> int | None:
    """A pidfd for ``pid`` (woken when it exits), or None where there is none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pid is None or pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None  # gone already (the next check finds it dead), or no pidfds here
    return fd


def _check_env_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"environment variable names must be str, not {type(name).__name__}")
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"invalid environment variable name {name!r}")


def _apply_code(cwd: str | None, env: Mapping[str, str], unset: Iterable[str]) -> str:
    """Python that applies cwd/env in a kernel: one expression, binding no name in the
    user's namespace. The request is one JSON text inside a ``repr()``-quoted
    literal: whatever the values, they are data, never code."""
    request = json.dumps({"cwd": cwd, "env": dict(env), "unset": list(unset)})
    return (
        "(lambda os, r: (r['cwd'] is None or os.chdir(r['cwd']), "
        "[os.environ.pop(k, None) for k in r['unset']], os.environ.update(r['env'])))"
        f"(__import__('os'), __import__('json').loads({request!r}))"
    )


def _record_launch(
    km: KernelManager, cwd: str | None, env: dict[str, str], unset: list[str]
) -> None:
    """Make the manager's launch arguments say what the kernel now has, so that a
    restart of the taken kernel starts in that cwd with that env."""
    args: dict[str, Any] | None = km._launch_args
    if args is None:
        return
    if cwd is not None:
        args["cwd"] = cwd
    if env:
        km.update_env(env=env)
    if unset:
        for key in ("env", "extra_env"):
            if isinstance(args.get(key), dict):
                args[key] = {k: v for k, v in args[key].items() if k not in unset}


__all__ = [
    "DEFAULT_LAUNCHER",
    "KernelPool",
    "PoolClosedError",
    "PoolError",
    "PoolStats",
    "PoolTimeoutError",
    "launcher_available",
    "launcher_traits",
]
