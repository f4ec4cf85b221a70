"""KernelManager and AsyncKernelManager: one kernel process's lifecycle, two faces.

Same names and behaviour as jupyter_client's managers, with:

- ports from the cross-process reservation table, returned on shutdown;
- an opt-in zero-race start-up (``kernel_binds_ports``): the connection file
  carries port 0 and the kernel binds its own ports and writes them back, so no
  port can collide whatever other processes on the host do;
- a fast shutdown: shutdown_request on control, then a wait woken the instant
  the process exits (pidfd), then SIGTERM, then SIGKILL, and in every path the
  file removed, the ports returned and the manager's own zmq context closed;
- start-up failures reported with the kernel's exit code and stderr tail;
- a start that lost a port to a process outside the table restarted on new
  ports, by the manager's policy (``port_clash_retries``), when a client asks;
- jupyter_client's ``provisioner`` (:mod:`kernel_connect.provisioner`): a view
  of the kernel process that acts through the manager's own steps.

One lifecycle, two faces (a sans-IO design). Each operation that waits
(start with its wait for the kernel's ports, shutdown, restart, recovery from
a port clash) is written once, as a generator that does its steps in plain
synchronous code and yields a :class:`_WaitExit` request wherever it must wait
for the kernel process to exit (a short bounded one doubles as the pause
between two looks at the connection file in zero-race mode). KernelManager
drives these operations blocking, on a pidfd; AsyncKernelManager drives the
very same ones in the running asyncio loop, the pidfd watched with
``loop.add_reader`` (see :mod:`kernel_connect._sansio`). Steps that never wait
(spec, connection file, launch, signals, clean-up) are plain methods both
faces call. Chosen over an async core with a sync face because a sync call
that must run a coroutine breaks when an event loop already runs in the
calling thread (as under jupyter_server, nbclient and IPython) and then needs
a helper thread or a nested loop, with zmq sockets that must stay in one
thread; the sans-IO core needs neither, and the blocking face never loads
asyncio.

Restarts of a kernel that dies are the job of a restarter
(:mod:`kernel_connect.restarter`, :mod:`kernel_connect.ioloop`), started by
``start_restarter`` when ``autorestart`` is on and ``restarter_class`` is set.
As in jupyter_client, the plain managers have none by default: a kernel that
dies stays dead and is reported so.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

import zmq
from traitlets import (
    Bool,
    CaselessStrEnum,
    DottedObjectName,
    Float,
    Instance,
    Integer,
    TraitError,
    Type,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.utils.importstring import import_item

from kernel_connect._sansio import Operation, drive, drive_async
from kernel_connect.client import AsyncKernelClient, BlockingKernelClient, KernelOwner
from kernel_connect.errors import (
    KernelDeath,
    KernelDiedError,
    KernelStartCancelledError,
    KernelTimeoutError,
)
from kernel_connect.kernelspec import (
    NATIVE_KERNEL_NAME,
    KernelSpec,
    KernelSpecManager,
    substitute_argv,
)
from kernel_connect.launcher import launch_kernel
from kernel_connect.mixin import PORT_NAMES, ConnectionFileMixin
from kernel_connect.provisioner import LocalProvisioner

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future as ConcurrentFuture

    from kernel_connect.restarter import KernelRestarter

# How much of the kernel's stderr to keep for error reports.
_STDERR_TAIL_BYTES = 4096
# Pause between two looks at the connection file while the kernel binds its ports.
_PORT_POLL_S = 0.005
# How long to wait for a SIGKILLed kernel to be gone.
_KILL_WAIT_S = 5.0
# The slices of an unbounded wait for the kernel's exit (provisioner.wait()).
_REAP_SLICE_S = 60.0

# Managers whose kernel this process started. A forked child starts with none:
# Popen.poll() there reports 0 for the parent's kernel, so an exit clean-up in
# the child would "reap" it and remove the parent's live connection file.
_live_managers: weakref.WeakSet[KernelManager] = weakref.WeakSet()


def _shutdown_all_at_exit() -> None:
    # Kernels notice our death by themselves (JPY_PARENT_PID), but their
    # connection files would be left behind. Independent kernels were asked
    # to outlive us: they and their files stay. Blocking, whatever the
    # manager's face: no event loop runs any more.
    for km in list(_live_managers):
        if (km._launch_args or {}).get("independent"):
            continue  # asked to outlive us
        try:
            drive(km._shutdown_op(now=True, restart=False), _serve_blocking)
        except Exception:  # noqa: S112 - best effort at interpreter exit
            continue


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_live_managers.clear)

# Stderr capture files of managers that a forked child dropped: the parent's,
# so the child keeps its copies open rather than close anything of the parent's.
_inherited_captures: list[IO[bytes]] = []


def _close_capture(f: IO[bytes], owner_pid: int) -> None:
    """Close a dropped manager's stderr capture file, in the process that opened it only."""
    if os.getpid() == owner_pid:
        f.close()
    else:
        _inherited_captures.append(f)


# -- waiting for the kernel process: the one wait request of the lifecycle ------


@dataclass(frozen=True)
class _WaitExit:
    """Wait up to ``timeout`` s for ``proc`` to exit; -> whether it did (and was reaped)."""

    proc: subprocess.Popen[bytes]
    timeout: float


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or None where pidfds are unavailable.

    Raises ProcessLookupError if the process is gone (reaped) already.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:
        return None
    return fd


def _wait_pidfd(pid: int, timeout: float) -> bool | None:
    """Wait for ``pid`` to exit through a pidfd: woken the instant it exits.

    Returns True (exited), False (still running after ``timeout``), or None
    when pidfds are unavailable and the caller must poll instead.
    """
    try:
        fd = _open_pidfd(pid)
    except ProcessLookupError:
        return True
    if fd is None:
        return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _serve_blocking(request: Any) -> bool:
    """Serve a lifecycle wait request by blocking this thread."""
    if not isinstance(request, _WaitExit):
        raise TypeError(f"unknown wait request {request!r}")
    proc, timeout = request.proc, request.timeout
    if proc.poll() is not None:
        return True
    if _wait_pidfd(proc.pid, timeout) is False:
        return False
    try:
        # Reaps at once after a pidfd wakeup; otherwise polls with back-off.
        proc.wait(max(0.0, timeout))
    except subprocess.TimeoutExpired:
        return False
    return True


async def _serve_async(request: Any) -> bool:
    """Serve a lifecycle wait request by awaiting in the running loop (no thread)."""
    import asyncio

    if not isinstance(request, _WaitExit):
        raise TypeError(f"unknown wait request {request!r}")
    proc, timeout = request.proc, request.timeout
    if proc.poll() is not None:
        return True
    loop = asyncio.get_running_loop()
    try:
        fd = _open_pidfd(proc.pid)
    except ProcessLookupError:
        return proc.poll() is not None
    if fd is None:
        # No pidfd: poll with back-off.
        deadline = loop.time() + timeout
        delay = 0.001
        while proc.poll() is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return True
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            await asyncio.wait_for(exited, max(0.0, timeout))
        except asyncio.TimeoutError:
            return proc.poll() is not None
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    # It has exited: reaping it cannot block.
    with suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)
    return proc.poll() is not None


# -- the ``ready`` future --------------------------------------------------------


def _new_future() -> asyncio.Future[None] | ConcurrentFuture[None]:
    """An asyncio future when an event loop runs in this thread, else a concurrent one."""
    aio = sys.modules.get("asyncio")  # not imported: no loop can be running
    if aio is not None:
        try:
            fut: asyncio.Future[None] = aio.get_running_loop().create_future()
        except RuntimeError:
            pass
        else:
            return fut
    from concurrent.futures import Future

    return Future()


def _settle(fut: Any, error: BaseException | None) -> None:
    """Resolve ``fut`` (with ``error``, if any), unless it is resolved already.

    An asyncio future is resolved in its own loop's thread (an operation may
    run in another thread: a restarter's, a shutdown's).
    """
    get_loop = getattr(fut, "get_loop", None)  # an asyncio future
    if get_loop is not None:
        loop = get_loop()
        if loop.is_closed():
            return
        aio = sys.modules["asyncio"]
        try:
            running = aio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            loop.call_soon_threadsafe(_settle_now, fut, error)
            return
    _settle_now(fut, error)


def _settle_now(fut: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
        return
    aio = sys.modules.get("asyncio")
    if isinstance(error, GeneratorExit) or (
        aio is not None and isinstance(error, aio.CancelledError)
    ):
        fut.cancel()
        return
    fut.set_exception(error)
    # The caller of the operation gets the error; the future must not also log
    # it as "never retrieved" when nobody awaits ``ready``.
    fut.exception()


class KernelManager(ConnectionFileMixin):
    """Manages one kernel process: its connection file, ports, lifecycle and clients.

    Parameters
    ----------
    kernel_name : str
        Kernel spec to start (default ``python3``).
    **kwargs
        Any trait, e.g. ``connection_file``, ``ip``, ``transport``,
        ``transport_encryption``, ``kernel_binds_ports``, ``context``.
    """

    kernel_name = Unicode(NATIVE_KERNEL_NAME, config=True, help="Name of the kernel spec.")
    kernel_spec_manager = Instance(KernelSpecManager)
    _kernel_spec: KernelSpec | None

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        # As jupyter_client: its own manager, no parent, our data_dir.
        return KernelSpecManager(data_dir=self.data_dir)

    @observe("kernel_spec_manager")
    def _kernel_spec_manager_changed(self, change: Any) -> None:
        self._kernel_spec = None

    kernel_id = Unicode(None, allow_none=True, help="Id of the kernel (default: a new uuid).")

    shutdown_wait_time = Float(
        5.0,
        config=True,
        help="Seconds to wait for a polite shutdown; half of it after shutdown_request, "
        "half after SIGTERM, then SIGKILL.",
    )
    transport_encryption = CaselessStrEnum(
        ["disabled", "auto", "required"],
        default_value="disabled",
        config=True,
        help="CurveZMQ between us and the kernel: 'disabled'; 'auto' (on when the kernel "
        "spec declares 'curve' in metadata.supported_encryption); 'required' (start fails "
        "unless the spec declares it).",
    )
    kernel_binds_ports = Bool(
        False,
        config=True,
        help="Zero-race start-up: write port 0 for every channel and let the kernel bind "
        "its own ports and write them back to the connection file (ipykernel does).",
    )
    port_wait_timeout = Float(
        60.0, config=True, help="Seconds to wait for the kernel to write back its ports."
    )
    port_clash_retries = Integer(
        3,
        config=True,
        help="If the kernel cannot start because a process that does not use the "
        "reservation table took one of its ports, restart it on new ports up to this "
        "many times per start (when a client waiting for it to be ready asks). "
        "(kernel_binds_ports avoids clashes entirely.)",
    )
    capture_stderr = Bool(
        True,
        config=True,
        help="Keep the kernel's stderr in an anonymous temporary file (for start-up error "
        "reports) instead of sharing ours, unless stderr is passed to start_kernel.",
    )
    launcher = CaselessStrEnum(
        ["exec", "fork"],
        default_value="exec",
        config=True,
        help="How kernels are started: 'exec' (a new process runs the spec's command) or "
        "'fork' (ipykernel specs are forked from a warm template process that has imported "
        "ipykernel: ready several times sooner; other specs are exec'd). A kernel spec's "
        "metadata.kernel_connect.launcher and the KERNEL_CONNECT_LAUNCHER environment "
        "variable override it (see kernel_connect.forking).",
    )
    autorestart = Bool(
        True,
        config=True,
        help="Whether the restarter (see restarter_class) restarts the kernel when it dies.",
    )
    restarter_class = Type(
        None,
        klass="kernel_connect.restarter.KernelRestarter",
        allow_none=True,
        config=True,
        help="The restarter started by start_restarter: None (the default, as jupyter_client's "
        "KernelManager: a kernel that dies stays dead), "
        "kernel_connect.restarter.ThreadedKernelRestarter (watches from a thread), or the "
        "event-loop restarters of kernel_connect.ioloop.",
    )
    client_class = DottedObjectName(
        "kernel_connect.client.BlockingKernelClient",
        config=True,
        help="Import name of the class client() makes (sets client_factory).",
    )
    client_factory = Type(klass="kernel_connect.client.KernelClient", config=True)
    cache_ports = Bool(
        False,
        config=True,
        help="Whether a MultiKernelManager should keep this kernel's ports for it "
        "(default: True over tcp).",
    )
    _created_context = Bool(False)

    def __init__(self, **kwargs: Any) -> None:
        # Not a trait, as in jupyter_client: fixed for the manager's life.
        self._owns_kernel = bool(kwargs.pop("owns_kernel", True))
        super().__init__(**kwargs)
        self.kernel: subprocess.Popen[bytes] | None = None
        #: The kernel process as jupyter_client's provisioner API shows it: None
        #: until the first start, then kept (see kernel_connect.provisioner).
        self.provisioner: LocalProvisioner | None = None
        self._pgid: int | None = None
        self._last_pid: int | None = None
        self._launch_args: dict[str, Any] | None = None
        self._control_socket: zmq.Socket[Any] | None = None
        self._control_view: zmq.Socket[Any] | None = None
        self._stderr_capture: IO[bytes] | None = None
        self._stderr_finalizer: weakref.finalize[Any, Any] | None = None
        self._kernel_spec = None
        self.exit_code: int | None = None
        #: True from the start of a shutdown until the next start (the restarter looks).
        self.shutting_down = False
        # Zero-race mode: the ports on file were chosen by the kernel (bind to
        # port 0), so they lie in the ephemeral range, unprotected by the table.
        self._ports_from_kernel = False
        #: Restarts on new ports after a port clash (see ``port_clash_retries``).
        self.port_clash_restarts = 0
        self._clash_restarts_left = 0
        # Counts the kernels launched; tells a recovering client (or restarter)
        # whether the kernel it saw fail is still the current one.
        self._generation = 0
        # Counts the shutdowns that were not for a restart: a start that began
        # before one of them is cancelled (another thread, or coroutine, stopped us).
        self._stop_epoch = 0
        self._ready: asyncio.Future[None] | ConcurrentFuture[None] | None = None
        self._attempted_start = False
        self._restarter: KernelRestarter | None = None
        self._pending_restart_callbacks: list[tuple[Callable[..., Any], str]] = []
        # Serializes the automatic recoveries (a restarter, a client after a port
        # clash), so a dead kernel is restarted once, not once by each.
        self._recovery_lock = threading.RLock()
        self._async_recovery_lock: tuple[Any, Any] | None = None

    def __enter__(self) -> KernelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown_kernel()

    # -- configuration -----------------------------------------------------

    def _context_default(self) -> zmq.Context[Any]:
        # Our own, as jupyter_client's, closed when the kernel is shut down.
        # Made on first use (our control socket: a polite shutdown, a message
        # interrupt), not at the start: a farm's idle managers hold no context
        # (a descriptor each) and no zmq threads.
        self._created_context = True
        return zmq.Context()

    @default("client_factory")
    def _client_factory_default(self) -> Any:
        return import_item(str(self.client_class))

    @observe("client_class")
    def _client_class_changed(self, change: Any) -> None:
        self.client_factory = import_item(str(change["new"]))

    @default("cache_ports")
    def _cache_ports_default(self) -> bool:
        return bool(self.transport == "tcp")

    @observe("kernel_name")
    def _kernel_name_changed(self, change: Any) -> None:
        self._kernel_spec = None
        if change["new"] == "python":
            # As jupyter_client: "python" means the native Python 3 kernel
            # (notebooks written with that name exist in the wild).
            self.kernel_name = NATIVE_KERNEL_NAME

    @validate("transport_encryption")
    def _validate_encryption(self, proposal: Any) -> str:
        value = str(proposal["value"]).lower()
        if value != "disabled" and not zmq.has("curve"):
            raise TraitError(
                f"transport_encryption={value!r} needs CurveZMQ, but this libzmq has no "
                "CURVE support (zmq.has('curve') is False)"
            )
        return value

    @property
    def kernel_spec(self) -> KernelSpec:
        """The kernel spec of ``kernel_name`` (raises NoSuchKernel if there is none)."""
        if self._kernel_spec is None:
            self._kernel_spec = self.kernel_spec_manager.get_kernel_spec(self.kernel_name)
        return self._kernel_spec

    @property
    def ipykernel(self) -> bool:
        """Whether the kernel is (presumably) ipykernel."""
        return self.kernel_name in {"python", "python2", "python3"}

    @property
    def owns_kernel(self) -> bool:
        """Whether this manager started (or will start) its kernel and so may end it.

        ``KernelManager(owns_kernel=False)`` makes a manager of a kernel started
        elsewhere (a MultiKernelManager makes one for each connection file it
        finds in ``external_connection_dir``): its ``shutdown_kernel`` does
        nothing (the kernel keeps running, its connection file stays) and
        ``is_alive`` is always True, as in jupyter_client. Unlike
        jupyter_client, such a manager refuses to start or restart a kernel
        (RuntimeError): jupyter_client's would start one that its shutdown
        then never stops.
        """
        return self._owns_kernel

    @property
    def has_kernel(self) -> bool:
        """Whether a kernel process was started and not yet shut down."""
        return self.kernel is not None

    @property
    def ready(self) -> asyncio.Future[None] | ConcurrentFuture[None]:
        """A future resolved when the last start (or shutdown) is done, failed with its error.

        An asyncio future when made while an event loop runs in this thread
        (always, for AsyncKernelManager), else a ``concurrent.futures.Future``.
        """
        if self._ready is None:
            self._ready = _new_future()
        return self._ready

    def resolve_path(self, path: str) -> str | None:
        """``path`` resolved against the kernel's working directory, if the file exists.

        None when it does not, or when no kernel was ever started.
        """
        if self.provisioner is None:
            return None
        return self.provisioner.resolve_path(path)

    def update_env(self, *, env: dict[str, str]) -> None:
        """Add ``env`` to the kernel's environment from its next (re)start on.

        The variables go to the ``extra_env`` merged over the kernel's
        environment at every start (and into the ``env`` given to
        ``start_kernel``, when there was one), so they take effect whether or
        not an environment was given (jupyter_client updates only an explicit
        ``env``, silently doing nothing otherwise).

        Parameters
        ----------
        env : dict
            Variables to set in the restarted kernel.
        """
        if self._launch_args is None:
            self._launch_args = {}
        args = self._launch_args
        if isinstance(args.get("env"), dict):
            args["env"] = {**args["env"], **env}
        args["extra_env"] = {**(args.get("extra_env") or {}), **env}

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """Return the spec's argv with ``{connection_file}`` etc. substituted.

        A leading ``python``/``python3``/``python3.X`` becomes this interpreter.
        """
        cmd = list(self.kernel_spec.argv) + list(extra_arguments or [])
        major, minor = sys.version_info[:2]
        if cmd and cmd[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
            cmd[0] = sys.executable
        values: dict[str, Any] = {
            "connection_file": os.path.realpath(self.connection_file),
            "prefix": sys.prefix,
            "resource_dir": self.kernel_spec.resource_dir,
        }
        values.update(self._launch_args or {})
        return substitute_argv(cmd, values)

    def _kernel_env(
        self, env: dict[str, str] | None, extra_env: dict[str, str] | None
    ) -> dict[str, str]:
        """The kernel's environment: ``env`` (default ours) + spec env + ``extra_env``."""
        result = dict(os.environ if env is None else env)
        for name, value in self.kernel_spec.env.items():
            result[name] = string.Template(value).safe_substitute(result)
        if extra_env:
            result.update(extra_env)
        if self.kernel_spec.language.lower().startswith("python"):
            # Would make a Python kernel re-exec as our interpreter (macOS framework builds).
            result.pop("PYTHONEXECUTABLE", None)
        return result

    # -- restarter ---------------------------------------------------------

    def start_restarter(self) -> None:
        """Start watching the kernel to restart it if it dies.

        Only with ``autorestart`` on, a ``restarter_class`` set and a kernel
        running (called at the end of every start).
        """
        if not (self.autorestart and self.has_kernel):
            return
        restarter = self._ensure_restarter()
        if restarter is not None:
            restarter.start()

    def stop_restarter(self) -> None:
        """Stop watching the kernel (called at the start of every shutdown)."""
        if self._restarter is not None:
            self._restarter.stop()

    def _ensure_restarter(self) -> KernelRestarter | None:
        if self._restarter is None and self.restarter_class is not None:
            self._restarter = self._make_restarter()
            for callback, event in self._pending_restart_callbacks:
                self._restarter.add_callback(callback, event)
            self._pending_restart_callbacks.clear()
        return self._restarter

    def _make_restarter(self) -> KernelRestarter:
        cls: Any = self.restarter_class
        restarter: KernelRestarter = cls(kernel_manager=self, parent=self, log=self.log)
        return restarter

    def add_restart_callback(self, callback: Callable[..., Any], event: str = "restart") -> None:
        """Call ``callback()`` on a restarter event.

        Parameters
        ----------
        callback : callable
            Called without arguments.
        event : str
            ``'restart'``: the kernel died and is being restarted; ``'dead'``:
            it died too often (``restart_limit``) and is left dead.

        Callbacks added before the restarter exists are kept for it (unlike
        jupyter_client, where they are dropped).
        """
        restarter = self._ensure_restarter()
        if restarter is None:
            self._pending_restart_callbacks.append((callback, event))
        else:
            restarter.add_callback(callback, event)

    def remove_restart_callback(self, callback: Callable[..., Any], event: str = "restart") -> None:
        """Stop calling ``callback`` on ``event`` (see :meth:`add_restart_callback`)."""
        with suppress(ValueError):
            self._pending_restart_callbacks.remove((callback, event))
        if self._restarter is not None:
            self._restarter.remove_callback(callback, event)

    def _async_recovery_lock_for_loop(self) -> Any:
        """An asyncio.Lock of the running loop, serializing automatic recoveries."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._async_recovery_lock is None or self._async_recovery_lock[0] is not loop:
            self._async_recovery_lock = (loop, asyncio.Lock())
        return self._async_recovery_lock[1]

    # -- start: the steps that never wait ----------------------------------

    def _pre_start(self, kw: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """Prepare a start: spec, keys, connection file, command and launch arguments.

        Leaves nothing behind if it fails after writing the connection file.
        """
        if not self.owns_kernel:
            raise RuntimeError(
                "this manager does not own its kernel (owns_kernel=False): it cannot "
                "start or restart one"
            )
        if self.kernel is not None:
            if self.kernel.poll() is None:
                raise RuntimeError("a kernel is already running; shut it down or restart it")
            self._reap()  # died on its own: forget it before starting anew
        self.shutting_down = False
        kw = dict(kw)
        encryption = kw.pop("transport_encryption", None)
        if encryption is not None:
            self.transport_encryption = encryption
        self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
        kw.pop("kernel_id", None)
        self._launch_args = dict(kw)
        spec = self.kernel_spec
        cwd = kw.get("cwd")
        cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
        if self.provisioner is None:  # as jupyter_client: made once, kept across restarts
            self.provisioner = LocalProvisioner(self, cwd)
        else:
            self.provisioner.cwd = cwd
        self._check_local_ip()
        self._provision_curve(spec)
        self._renew_context()
        if not self.connection_file:
            from kernel_connect.paths import runtime_dir

            self.connection_file = os.path.join(runtime_dir(), f"kernel-{self.kernel_id}.json")
        if self.kernel_binds_ports and (
            not self._connection_file_written or self._ports_from_kernel
        ):
            # Also on a restart: the last kernel's ports are ephemeral ones that
            # anything on the host may have taken since it let them go, and the
            # table cannot protect them, so the new kernel binds its own again.
            self._write_port0_connection_file()
        else:
            self.write_connection_file()
        try:
            extra_arguments = kw.pop("extra_arguments", None) or []
            kw["env"] = self._kernel_env(kw.pop("env", None), kw.pop("extra_env", None))
            cmd = self.format_kernel_cmd(extra_arguments)
        except BaseException:
            self._cleanup(restart=False)
            raise
        return cmd, kw

    def _renew_context(self) -> None:
        """Replace the zmq context we made if a shutdown closed it (created lazily otherwise)."""
        if self._created_context and self.context.closed:
            self.context = self._context_default()

    def _check_local_ip(self) -> None:
        from kernel_connect.localinterfaces import is_local_ip, local_ips

        if self.transport == "tcp" and not is_local_ip(self.ip):
            raise RuntimeError(
                f"can only launch a kernel on a local interface; {self.ip!r} is not one "
                f"(local addresses: {', '.join(local_ips())})"
            )

    def _provision_curve(self, spec: KernelSpec) -> None:
        policy = self.transport_encryption
        if policy == "disabled":
            return
        if not spec.supports_curve:
            if policy == "required":
                raise RuntimeError(
                    f"transport_encryption='required' but kernel spec {spec.name!r} does not "
                    "declare 'curve' in metadata.supported_encryption"
                )
            return
        if self.curve_publickey is None or self.curve_secretkey is None:
            # Kept across restarts, like the HMAC key: the file keeps them too.
            public, secret = zmq.curve_keypair()
            self.curve_publickey, self.curve_secretkey = public, secret

    def _launch(self, cmd: list[str], kw: dict[str, Any]) -> None:
        """Start the kernel process (and register it for clean-up at exit)."""
        kw = dict(kw)
        if "stderr" not in kw and self.capture_stderr:
            self._close_stderr_file()
            # Lives as long as the kernel; closed by _close_stderr_file.
            self._stderr_file = tempfile.TemporaryFile(prefix="kernel-stderr-")  # noqa: SIM115
            kw["stderr"] = self._stderr_file
        self.log.debug("Starting kernel: %s", cmd)
        self.exit_code = None
        from kernel_connect.forking import chosen_launcher

        proc: subprocess.Popen[bytes] | None = None
        if chosen_launcher(self.launcher, self.kernel_spec.metadata) == "fork":
            from kernel_connect.forking.launcher import launch_forked

            # None (after a debug line saying why): this kernel is started by exec.
            proc = launch_forked(cmd, kw, self.log)
        self.kernel = proc if proc is not None else launch_kernel(cmd, **kw)
        self._generation += 1
        # Registered at once, so that a shutdown in another thread, before
        # or after any step below, always leaves the set as it found it.
        _live_managers.add(self)
        try:
            self._pgid = os.getpgid(self.kernel.pid)
        except OSError:
            self._pgid = None

    def _write_port0_connection_file(self) -> None:
        """Write the connection file with port 0 everywhere (zero-race mode), atomically."""
        from kernel_connect import _native

        pub, sec = self.curve_publickey, self.curve_secretkey
        _native.write_connection_file(
            os.path.abspath(self.connection_file),
            [0, 0, 0, 0, 0],
            self.ip,
            self.session.key.decode(),
            self.transport,
            self.session.signature_scheme,
            self.kernel_name,
            pub.decode() if pub is not None and sec is not None else None,
            sec.decode() if pub is not None and sec is not None else None,
            None,
        )
        self._connection_file_written = True
        self._ports_from_kernel = True
        self._random_port_names = list(PORT_NAMES)
        for name in PORT_NAMES:
            setattr(self, name, 0)

    def _raise_if_start_cancelled(self, epoch: int) -> None:
        """Raise KernelStartCancelledError if shutdown_kernel ran since the start began."""
        if self._stop_epoch != epoch:
            raise KernelStartCancelledError(
                "kernel start cancelled: shutdown_kernel() was called before the kernel "
                "had started; it was stopped and its connection file removed"
            )

    def _read_bound_ports_once(self) -> bool:
        """Load the kernel's ports if it has written them all back yet."""
        ports = _read_bound_ports(self.connection_file)
        if ports is None:
            return False
        for name, port in ports.items():
            setattr(self, name, port)
        return True

    # -- lifecycle operations (sans-IO: driven by either face) --------------

    def _pending_op(self, op: Operation[Any]) -> Operation[Any]:
        """Run ``op`` with :attr:`ready` pending, then resolved (or failed) with it."""
        if self._attempted_start or self._ready is None:
            self._ready = _new_future()
        fut = self._ready
        try:
            result = yield from op
        except BaseException as e:
            _settle(fut, e)
            raise
        _settle(fut, None)
        return result

    def _start_op(self, kw: dict[str, Any], epoch: int | None = None) -> Operation[None]:
        """Start a kernel: prepare, launch, wait for its ports (zero-race mode)."""
        if epoch is None:
            epoch = self._stop_epoch
        self._attempted_start = True
        cmd, launch_kw = self._pre_start(kw)
        try:
            self._launch(cmd, launch_kw)
            yield from self._post_start_op(epoch)
        except BaseException as e:
            # A failed start leaves nothing behind: process, file or ports.
            yield from self._kill_op()
            self._cleanup(restart=False)
            if isinstance(e, Exception) and not isinstance(e, KernelStartCancelledError):
                self._raise_if_start_cancelled(epoch)  # whatever failed, a shutdown caused it
            raise

    def _post_start_op(self, epoch: int) -> Operation[None]:
        """After the launch: wait for the kernel's own ports (zero-race), start the restarter."""
        if self.kernel_binds_ports and self.kernel is not None:
            yield from self._wait_for_bound_ports_op(epoch)
        self._raise_if_start_cancelled(epoch)
        self.start_restarter()

    def _wait_for_bound_ports_op(self, epoch: int) -> Operation[None]:
        """Wait until the kernel has written its real ports into the file, then load them.

        ipykernel rewrites the file in place, so a read can see it half-written:
        a read counts only when it parses and every port is nonzero.

        ``shutdown_kernel`` from another thread (or coroutine) may stop (and
        forget) the kernel meanwhile: the wait then ends in KernelStartCancelledError.
        """
        proc = self.kernel
        self._raise_if_start_cancelled(epoch)
        assert proc is not None
        deadline = time.monotonic() + self.port_wait_timeout
        last_stamp: tuple[int, int] | None = None
        while True:
            self._raise_if_start_cancelled(epoch)
            try:
                st = os.stat(self.connection_file)
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp != last_stamp:
                last_stamp = stamp
                if self._read_bound_ports_once():
                    return
                # Half-written: read again even if the stamp does not change.
                last_stamp = None
            exited = yield _WaitExit(proc, _PORT_POLL_S)
            if exited:
                self._raise_if_start_cancelled(epoch)  # it was stopped, it did not die
                raise KernelDiedError(
                    "kernel exited before binding its ports: " + self.death_report(),
                    exit_code=proc.returncode,
                    stderr_tail=self.stderr_tail(),
                )
            if time.monotonic() > deadline:
                raise KernelTimeoutError(
                    f"kernel did not write its ports to {self.connection_file} within "
                    f"{self.port_wait_timeout} s"
                )

    def _wait_exit_op(self, timeout: float) -> Operation[bool]:
        """Wait up to ``timeout`` s for the kernel to exit; True if it did (or there is none)."""
        # One look at self.kernel: another thread (a shutdown during a start)
        # may reap and forget the process meanwhile.
        proc = self.kernel
        if proc is None or proc.poll() is not None:
            return True
        exited: bool = yield _WaitExit(proc, timeout)
        return exited

    def _kill_op(self) -> Operation[None]:
        """SIGKILL the kernel's process group, wait for the kernel and forget it."""
        proc = self.kernel
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            if not (yield _WaitExit(proc, _KILL_WAIT_S)):
                self.log.warning("kernel %d did not die after SIGKILL", proc.pid)
                return
        self._reap()

    def _finish_shutdown_op(self, waittime: float | None, restart: bool) -> Operation[None]:
        if waittime is None:
            waittime = max(self.shutdown_wait_time, 0.0)
        if (yield from self._wait_exit_op(waittime / 2)):
            return
        self.log.debug("Kernel is taking too long to finish, terminating")
        proc = self.kernel
        if proc is not None:
            self._signal(proc, signal.SIGTERM)
        if (yield from self._wait_exit_op(waittime / 2)):
            return
        self.log.debug("Kernel is taking too long to finish, killing")
        yield from self._kill_op()

    def _terminate_op(self) -> Operation[None]:
        """SIGTERM at once, then SIGKILL after half the shutdown wait."""
        proc = self.kernel
        if proc is not None:
            self._signal(proc, signal.SIGTERM)
        if (yield from self._wait_exit_op(max(self.shutdown_wait_time, 0.0) / 2)):
            return
        yield from self._kill_op()

    def _request_shutdown_quietly(self, restart: bool) -> bool:
        """Ask the kernel on control to shut down. False when the request could
        not even be sent (the control socket cannot connect): then only signals
        can end the kernel, and a shutdown must still end it."""
        try:
            self._request_shutdown(restart)
        except (OSError, RuntimeError, zmq.ZMQError) as e:
            self.log.warning("cannot send the shutdown request (%s): terminating the kernel", e)
            return False
        return True

    def _shutdown_op(self, now: bool, restart: bool) -> Operation[None]:
        """Stop the kernel: politely (or at once with ``now``), then clean up.

        Nothing at all for a kernel this manager does not own (``owns_kernel``).
        """
        if not self.owns_kernel:
            return
        self.shutting_down = True
        if not restart:
            self._stop_epoch += 1  # cancels a start under way in another thread or task
        self.stop_restarter()
        proc = self.kernel
        if proc is not None:
            if proc.poll() is None:
                if now or not self._kernel_ports_known():
                    # A kernel still binding its own ports (a zero-race start
                    # under way) cannot be asked on control, and has nothing to save.
                    yield from self._kill_op()
                else:
                    # As jupyter_client: an interrupt first, so a kernel busy
                    # running code gets back to its loop and can obey the request.
                    self._interrupt_quietly()
                    if self._request_shutdown_quietly(restart):
                        yield from self._finish_shutdown_op(None, restart)
                    else:
                        yield from self._terminate_op()
            proc = self.kernel
            if proc is not None and proc.poll() is not None:
                self._reap()
        self._cleanup(restart)

    def _restart_op(self, now: bool, newports: bool, kw: dict[str, Any]) -> Operation[None]:
        if self._launch_args is None:
            raise RuntimeError("cannot restart the kernel: start_kernel was never called")
        epoch = self._stop_epoch
        yield from self._pending_op(self._shutdown_op(now=now, restart=True))
        if newports:
            self.cleanup_random_ports()
        self._launch_args.update(kw)
        yield from self._pending_op(self._start_op(dict(self._launch_args), epoch))

    def _recover_op(self, generation: int) -> Operation[dict[str, int] | None]:
        """Recover from a failed start of kernel number ``generation``, by our policy.

        A kernel that lost one of its ports to a process outside the table
        (and died of it, or hangs) is restarted on new ports, up to
        ``port_clash_retries`` times per start. Returns the ports to connect
        to, or None to give up. A kernel restarted meanwhile (by a restarter,
        another client) is not restarted again: its current ports are returned.
        """
        if self._generation != generation:
            return self._port_map() if self.has_kernel and self._kernel_ports_known() else None
        if self.kernel is None or not self.port_clash():
            return None
        if self._clash_restarts_left <= 0:
            return None
        self._clash_restarts_left -= 1
        self.log.warning(
            "a port of the kernel was taken by another process; restarting it on new ports"
        )
        yield from self._restart_op(now=True, newports=True, kw={})
        self.port_clash_restarts += 1
        return self._port_map()

    def _port_map(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in PORT_NAMES}

    # -- steps that never wait, shared by both faces ------------------------

    def _is_alive(self) -> bool:
        return self._poll_alive() if self.owns_kernel else True

    def _poll_alive(self) -> bool:
        if self.kernel is None:
            return False
        code = self.kernel.poll()
        if code is not None:
            self.exit_code = code
            return False
        return True

    def _send_signal(self, signum: int) -> None:
        proc = self.kernel
        if proc is None:
            raise RuntimeError("cannot signal the kernel: no kernel is running")
        self._signal(proc, signum)

    def _signal(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to ``proc``'s process group, or to ``proc`` alone."""
        pgid = self._pgid
        if pgid is not None and proc.poll() is None:
            try:
                os.killpg(pgid, signum)
                return
            except OSError:
                pass
        with suppress(ProcessLookupError):
            proc.send_signal(signum)

    def _interrupt(self) -> None:
        if self.kernel is None:
            raise RuntimeError("cannot interrupt the kernel: no kernel is running")
        if self.kernel_spec.interrupt_mode == "message":
            self._send_control("interrupt_request", {})
        else:
            self._send_signal(signal.SIGINT)

    def _interrupt_quietly(self) -> None:
        try:
            self._interrupt()
        except (OSError, RuntimeError, zmq.ZMQError) as e:
            self.log.debug("interrupt before shutdown failed: %s", e)

    def _connect_control_socket(self) -> zmq.Socket[Any]:
        """Our control socket, for sends that never wait (whatever our context's kind)."""
        from kernel_connect.channels import blocking_view

        if self._control_view is None:
            # Not connect_control(): the IOLoop managers' returns a ZMQStream.
            sock = self._create_connected_socket("control")
            sock.linger = 100
            self._control_socket = sock
            self._control_view = blocking_view(sock)
        return self._control_view

    def _close_control_socket(self) -> None:
        sock, self._control_socket, self._control_view = self._control_socket, None, None
        if sock is not None:
            sock.close(linger=0)

    def _send_control(self, msg_type: str, content: dict[str, Any]) -> None:
        self.session.send(self._connect_control_socket(), msg_type, content=content)

    def _request_shutdown(self, restart: bool) -> None:
        # The kernel is about to exit on request: that exit is no crash, and a
        # restarter (which sees an exit at once, through a pidfd) must not
        # restart it (MultiKernelManager's request_shutdown/finish_shutdown steps).
        self.shutting_down = True
        self._send_control("shutdown_request", {"restart": restart})

    def _reap(self) -> None:
        """Forget an exited kernel process (and close our end of its pipes)."""
        proc = self.kernel
        if proc is None:
            return
        self.exit_code = proc.returncode
        self._last_pid = proc.pid
        self.kernel = None
        self._pgid = None
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def _reap_op(self) -> Operation[int | None]:
        """Wait, however long it takes, for the kernel to exit, then forget it; -> exit code.

        (``provisioner.wait()``: the caller bounds the wait, as jupyter_client's.)
        """
        proc = self.kernel
        if proc is None:
            return 0
        while not (yield _WaitExit(proc, _REAP_SLICE_S)):
            pass
        if self.kernel is proc:
            self._reap()
        return proc.returncode

    @property
    def _stderr_file(self) -> IO[bytes] | None:
        """The kernel's stderr capture file (see ``capture_stderr``), or None.

        Whoever opens it (the launch) hands it over by setting this; from then
        on its life is tied to the manager's: closed by a shutdown, or, when
        the manager is dropped with its kernel still running, by the garbage
        collector (no ResourceWarning for an unclosed file), and in either case
        only in the process that opened it: a forked child leaves it alone.
        """
        return self._stderr_capture

    @_stderr_file.setter
    def _stderr_file(self, f: IO[bytes] | None) -> None:
        finalizer, self._stderr_finalizer = self._stderr_finalizer, None
        if finalizer is not None:
            finalizer.detach()  # the file it held is closed, or replaced, by the caller
        self._stderr_capture = f
        if f is not None:
            self._stderr_finalizer = weakref.finalize(self, _close_capture, f, os.getpid())

    def _close_stderr_file(self) -> None:
        f, self._stderr_file = self._stderr_file, None
        if f is not None:
            f.close()

    def _cleanup(self, restart: bool) -> None:
        """Close our control socket; unless restarting, remove the file, return the
        ports and close the zmq context we created."""
        self._close_control_socket()
        self.cleanup_ipc_files()
        if not restart:
            self.cleanup_random_ports()
            self.cleanup_connection_file()
            self.return_reserved_ports()
            self._close_stderr_file()
            self._ports_from_kernel = False
            _live_managers.discard(self)
            # Made now if it never was (no control socket was needed): after a
            # shutdown our context is always there, and closed, as in jupyter_client.
            context = self.context
            if self._created_context and not context.closed:
                context.destroy(linger=100)

    def _kernel_ports_known(self) -> bool:
        """Whether every port of the kernel is known (not 0, as while it binds its own)."""
        return self.transport != "tcp" or 0 not in self.ports

    # -- state ---------------------------------------------------------------

    def stderr_tail(self, max_lines: int = 20) -> str:
        """The last lines the kernel wrote to stderr ('' when not captured)."""
        f = self._stderr_file
        if f is None or f.closed:
            return ""
        fd = f.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - _STDERR_TAIL_BYTES)
        # pread leaves the file offset, which the kernel shares, alone.
        data = os.pread(fd, size - start, start).decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-max_lines:])

    def port_clash(self) -> bool:
        """Whether the kernel reported that one of its ports was already in use.

        ipykernel may die of it or hang after the error; either way it will
        never answer, so it can be restarted on new ports at once.
        """
        if self.kernel is None:
            return False
        return "Address already in use" in self.stderr_tail(max_lines=200)

    def death_report(self) -> str:
        """Describe how the kernel ended: exit code or signal, and its stderr tail."""
        code = self.kernel.poll() if self.kernel is not None else self.exit_code
        if code is None:
            what = "still running"
        elif code < 0:
            try:
                what = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                what = f"killed by signal {-code}"
        else:
            what = f"exit code {code}"
        tail = self.stderr_tail()
        return f"{what}; stderr tail:\n{tail}" if tail else what

    # -- the blocking face -----------------------------------------------------

    def start_kernel(self, **kw: Any) -> None:
        """Start a kernel process.

        Ports left at 0 are reserved from the port reservation table (or, with
        ``kernel_binds_ports``, chosen by the kernel itself); the connection
        file is written atomically before the launch.

        Parameters
        ----------
        **kw
            ``extra_arguments`` (list, appended to the spec's argv), ``env``
            (the whole environment, default ours), ``extra_env`` (merged on top),
            ``cwd``, ``independent``, ``transport_encryption``, ``kernel_id``,
            and any :class:`subprocess.Popen` argument.

        Raises
        ------
        NoSuchKernel
            If the kernel spec does not exist.
        RuntimeError
            If the ip is not local, or encryption is required but unsupported.
        KernelDiedError
            If, in zero-race mode, the kernel exits before writing its ports.
        KernelStartCancelledError
            If ``shutdown_kernel`` was called (from another thread) before the
            kernel had started; nothing is left behind.
        """
        self._clash_restarts_left = self.port_clash_retries
        drive(self._pending_op(self._start_op(kw)), _serve_blocking)

    def pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        """Prepare a start without launching: write the connection file, build the command.

        Returns
        -------
        (list of str, dict)
            The kernel's command line and the keyword arguments for
            :func:`~kernel_connect.launch_kernel` (``env`` included).
        """
        return self._pre_start(kw)

    def post_start_kernel(self, **kw: Any) -> None:
        """Finish a start after the launch: in zero-race mode wait for the kernel's
        ports, then start the restarter. ``kw`` (the launch arguments) is unused."""
        drive(self._post_start_op(self._stop_epoch), _serve_blocking)

    def is_alive(self) -> bool:
        """Whether the kernel process is running (always True for a kernel this
        manager does not own: it cannot tell)."""
        return self._is_alive()

    def signal_kernel(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group (kernel and its children).

        Raises
        ------
        RuntimeError
            If no kernel is running.
        """
        self._send_signal(signum)

    def interrupt_kernel(self) -> None:
        """Interrupt the kernel: SIGINT, or an interrupt_request if its spec asks for that.

        Raises
        ------
        RuntimeError
            If no kernel is running.
        """
        self._interrupt()

    def request_shutdown(self, restart: bool = False) -> None:
        """Send a shutdown_request on the control channel."""
        self._request_shutdown(restart)

    def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit; SIGTERM after half ``waittime``, SIGKILL after all.

        ``pollinterval`` is accepted for jupyter_client compatibility; the wait
        itself is woken the instant the process exits.
        """
        drive(self._finish_shutdown_op(waittime, restart), _serve_blocking)

    def cleanup_resources(self, restart: bool = False) -> None:
        """Close our control socket; unless restarting, remove the file, return the
        ports and close the zmq context this manager created."""
        self._cleanup(restart)

    def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Stop the kernel and clean up.

        Politely (shutdown_request on control, wait half of
        ``shutdown_wait_time``), then SIGTERM, then SIGKILL. Whatever happened
        to the kernel (even if it died on its own), the connection file is
        removed, the ports returned and the zmq context this manager created
        closed, unless ``restart``. A start under way in another thread ends
        in KernelStartCancelledError.

        Parameters
        ----------
        now : bool
            Kill at once, without asking.
        restart : bool
            Keep the connection file, ports and keys for a restart.
        """
        drive(self._pending_op(self._shutdown_op(now, restart)), _serve_blocking)

    def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel with the same arguments (and, by default, the same ports).

        In zero-race mode (``kernel_binds_ports``) a kernel that bound its own
        ports always binds new ones: the old ones lie in the OS's ephemeral
        range, where anything on the host may take them once the old kernel has
        let them go. The new ports are published as at a start (this manager's
        port traits and the connection file); clients made before the restart
        must be made again (or reload the file).

        Parameters
        ----------
        now : bool
            Kill the old kernel at once instead of asking it to shut down.
        newports : bool
            Pick new random ports instead of keeping the old ones.
        **kw
            Launch arguments that replace those of the first start.

        Raises
        ------
        RuntimeError
            If the kernel was never started.
        """
        self._clash_restarts_left = self.port_clash_retries
        drive(self._restart_op(now, newports, kw), _serve_blocking)

    # -- clients -----------------------------------------------------------

    def client(self, **kwargs: Any) -> BlockingKernelClient:
        """Return a client of ``client_factory`` for our kernel (sharing a clone of our Session).

        Its ``liveness`` is this manager's view of the kernel process (a
        :class:`~kernel_connect.client.KernelOwner`): deaths are noticed at
        once, and a start that failed on a port clash is recovered by our policy.

        Made while no automatic restart (a restarter's, in another thread) is
        under way, so the ports it connects to and the kernel its liveness
        watches are the same kernel's.
        """
        with self._recovery_lock:
            info = self.get_connection_info(session=True)
            pub, sec = info.pop("curve_publickey", None), info.pop("curve_secretkey", None)
            kw: dict[str, Any] = dict(info, connection_file=self.connection_file, parent=self)
            if pub is not None and sec is not None:
                kw.update(curve_publickey=pub.encode(), curve_secretkey=sec.encode())
            kw.update(kwargs)
            client = self.client_factory(**kw)
            client.liveness = _ManagedKernel(self)
        return cast(BlockingKernelClient, client)

    def blocking_client(self) -> BlockingKernelClient:
        """Return a :class:`BlockingKernelClient` loaded with our connection info
        (made as :meth:`client`'s, outside any automatic restart)."""
        with self._recovery_lock:
            client = super().blocking_client()
            client.liveness = _ManagedKernel(self)
        return client


class AsyncKernelManager(KernelManager):
    """KernelManager whose waiting methods are coroutines, as jupyter_client's.

    The same lifecycle operations as :class:`KernelManager` (not a copy),
    driven in the running asyncio loop: ``start_kernel``, ``restart_kernel``,
    ``shutdown_kernel``, ``finish_shutdown``, ``post_start_kernel`` wait
    without blocking the loop (the kernel's exit is watched through a pidfd
    with ``loop.add_reader``), and ``pre_start_kernel``, ``request_shutdown``,
    ``cleanup_resources``, ``interrupt_kernel``, ``signal_kernel`` and
    ``is_alive`` are coroutines for jupyter_client's signatures. ``ready`` is
    an asyncio future. Fit to be managed by a MultiKernelManager.
    """

    client_class = DottedObjectName(
        "kernel_connect.client.AsyncKernelClient",
        config=True,
        help="Import name of the class client() makes (sets client_factory).",
    )

    def _context_default(self) -> zmq.Context[Any]:
        import zmq.asyncio

        self._created_context = True
        return zmq.asyncio.Context()

    def __exit__(self, *exc: object) -> None:
        # A plain ``with``: shut down blocking (the same operation, driven blocking).
        drive(self._pending_op(self._shutdown_op(now=False, restart=False)), _serve_blocking)

    async def __aenter__(self) -> AsyncKernelManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown_kernel()

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Start a kernel process (see ``KernelManager.start_kernel``)."""
        self._clash_restarts_left = self.port_clash_retries
        await drive_async(self._pending_op(self._start_op(kw)), _serve_async)

    async def pre_start_kernel(  # type: ignore[override]
        self, **kw: Any
    ) -> tuple[list[str], dict[str, Any]]:
        """Prepare a start without launching (see ``KernelManager.pre_start_kernel``)."""
        return self._pre_start(kw)

    async def post_start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Finish a start after the launch (see ``KernelManager.post_start_kernel``)."""
        await drive_async(self._post_start_op(self._stop_epoch), _serve_async)

    async def is_alive(self) -> bool:  # type: ignore[override]
        """Whether the kernel process is running (see ``KernelManager.is_alive``)."""
        return self._is_alive()

    async def signal_kernel(self, signum: int) -> None:  # type: ignore[override]
        """Send ``signum`` to the kernel's process group (RuntimeError if none runs)."""
        self._send_signal(signum)

    async def interrupt_kernel(self) -> None:  # type: ignore[override]
        """Interrupt the kernel (RuntimeError if none runs)."""
        self._interrupt()

    async def request_shutdown(self, restart: bool = False) -> None:  # type: ignore[override]
        """Send a shutdown_request on the control channel."""
        self._request_shutdown(restart)

    async def finish_shutdown(  # type: ignore[override]
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit; SIGTERM after half ``waittime``, SIGKILL after all."""
        await drive_async(self._finish_shutdown_op(waittime, restart), _serve_async)

    async def cleanup_resources(self, restart: bool = False) -> None:  # type: ignore[override]
        """Close our control socket; unless restarting, remove the file, return the
        ports and close the zmq context this manager created."""
        self._cleanup(restart)

    async def shutdown_kernel(  # type: ignore[override]
        self, now: bool = False, restart: bool = False
    ) -> None:
        """Stop the kernel and clean up (see ``KernelManager.shutdown_kernel``).

        A start under way in another task ends in KernelStartCancelledError.
        """
        await drive_async(self._pending_op(self._shutdown_op(now, restart)), _serve_async)

    async def restart_kernel(  # type: ignore[override]
        self, now: bool = False, newports: bool = False, **kw: Any
    ) -> None:
        """Restart the kernel (see ``KernelManager.restart_kernel``)."""
        self._clash_restarts_left = self.port_clash_retries
        await drive_async(self._restart_op(now, newports, kw), _serve_async)

    def client(self, **kwargs: Any) -> AsyncKernelClient:  # type: ignore[override]
        """Return a client of ``client_factory`` (an AsyncKernelClient by default)."""
        return cast(AsyncKernelClient, super().client(**kwargs))


class _ManagedKernel(KernelOwner):
    """A client's view of a kernel its manager started: the process, not the heartbeat.

    The manager's side of ``kernel_connect.client.KernelOwner`` (declared, so
    mypy checks it against the protocol): the only way a client reaches its
    manager. The restart policy after a failed start (``port_clash_retries``,
    counted in ``port_clash_restarts``) is applied here, by the manager.
    """

    def __init__(self, km: KernelManager) -> None:
        self._km = km
        self._generation = km._generation

    def is_alive(self) -> bool:
        proc = self._km.kernel
        if proc is None:
            # Never started (nothing to say yet), or ended and reaped.
            return self._km.exit_code is None
        return proc.poll() is None

    def death(self) -> KernelDeath:
        km = self._km
        proc = km.kernel
        code = proc.poll() if proc is not None else km.exit_code
        return KernelDeath(km.death_report(), exit_code=code, stderr_tail=km.stderr_tail())

    def start_failure(self) -> KernelDeath | None:
        km = self._km
        if not km.port_clash():
            return None
        return KernelDeath(
            "it could not bind its ports (still running, but it will never answer): "
            + km.death_report(),
            exit_code=None,
            stderr_tail=km.stderr_tail(),
        )

    def recover(self) -> dict[str, int] | None:
        km = self._km
        with km._recovery_lock:
            ports = drive(km._recover_op(self._generation), _serve_blocking)
            self._generation = km._generation
        return ports

    async def recover_async(self) -> dict[str, int] | None:
        km = self._km
        async with km._async_recovery_lock_for_loop():
            ports = await drive_async(km._recover_op(self._generation), _serve_async)
            self._generation = km._generation
        return ports


def _read_bound_ports(path: str) -> dict[str, int] | None:
    """The five ports from ``path`` if it parses and all are nonzero, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    ports: dict[str, int] = {}
    for name in PORT_NAMES:
        port = info.get(name)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            return None
        ports[name] = port
    return ports


def start_new_kernel(
    startup_timeout: float = 60, kernel_name: str = NATIVE_KERNEL_NAME, **kwargs: Any
) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a kernel and return ``(manager, ready client)``.

    Raises
    ------
    KernelDiedError, KernelTimeoutError
        If the kernel does not become ready (it is shut down first).
    """
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(**kwargs)
    kc: BlockingKernelClient = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


async def start_new_async_kernel(
    startup_timeout: float = 60, kernel_name: str = NATIVE_KERNEL_NAME, **kwargs: Any
) -> tuple[AsyncKernelManager, AsyncKernelClient]:
    """Start a kernel and return ``(manager, ready client)``, both asyncio.

    Raises
    ------
    KernelDiedError, KernelTimeoutError
        If the kernel does not become ready (it is shut down first).
    """
    km = AsyncKernelManager(kernel_name=kernel_name)
    await km.start_kernel(**kwargs)
    kc: AsyncKernelClient = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        raise
    return km, kc


@contextmanager
def run_kernel(**kwargs: Any) -> Iterator[BlockingKernelClient]:
    """Context manager: a ready client of a new kernel, shut down on exit."""
    km, kc = start_new_kernel(**kwargs)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


__all__ = [
    "AsyncKernelManager",
    "KernelManager",
    "run_kernel",
    "start_new_async_kernel",
    "start_new_kernel",
]
