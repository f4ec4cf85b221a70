"""MultiKernelManager and AsyncMultiKernelManager: many kernels, each known by an id.

Same names, signatures, traits and defaults as jupyter_client 8.10's
``jupyter_client.multikernelmanager``: ``start_kernel`` returns a kernel id,
every per-kernel method takes one, the kernels' managers are made by
``kernel_manager_factory`` (``kernel_manager_class`` imported) and share one
zmq context (``shared_context``). Each kernel is a kernel-connect
:class:`~kernel_connect.manager.KernelManager` (or
:class:`~kernel_connect.manager.AsyncKernelManager`) by default, so its ports
come from the host-wide reservation table and ``shutdown_all`` leaves no
process, connection file or reservation behind.

One bookkeeping, two faces (as :mod:`kernel_connect.manager`). The operations
that wait (start, shut down, restart a kernel) are written once, as
generators that keep the books in plain code and yield a small request
wherever they must wait: for a call on a kernel's manager (:class:`_Call`),
or for a start or shutdown of the same kernel under way elsewhere
(:class:`_WaitFor`). MultiKernelManager serves the requests by blocking the
calling thread; AsyncMultiKernelManager awaits them in the running loop
(awaiting a manager's result when it is awaitable, as jupyter_client's
``ensure_async``). Only the fan-out differs: ``shutdown_all`` stops the
kernels on a few threads in the blocking face, in one ``gather`` in the
asyncio one.

Where this differs from jupyter_client, it is on the safe side:

- with ``connection_dir`` left empty the connection files go to the Jupyter
  runtime directory, as a lone KernelManager's do (jupyter_client writes
  ``kernel-<id>.json`` in the current working directory);
- ``shutdown_all`` returns once every kernel is shut down, pending kernels
  included (jupyter_client's may return with pending shutdowns still under
  way), and shuts all of them down even if one fails (then raises its error);
- a kernel id still starting is refused by ``start_kernel`` as a duplicate;
- the blocking face is safe to call from several threads, and a shutdown
  waits for a start of the same kernel under way in another thread.

As in jupyter_client, a shutdown of a kernel still starting waits for the
start to end first; a kernel found in ``external_connection_dir`` is managed
by a manager made with ``owns_kernel=False``, so it is only forgotten by
``shutdown_kernel``, never stopped. As in jupyter_client, the kernels'
managers are IOLoop managers by default
(:class:`~kernel_connect.ioloop.IOLoopKernelManager`,
:class:`~kernel_connect.ioloop.AsyncIOLoopKernelManager`): a kernel that dies
is restarted (``autorestart``), and ``connect_iopub`` and the other
``connect_*`` methods return ZMQStreams. Name ``kernel_connect.manager.KernelManager``
(or ``AsyncKernelManager``) in ``kernel_manager_class`` for plain managers:
no restarter, plain zmq sockets.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from traitlets import Any as AnyTrait
from traitlets import Bool, DottedObjectName, Instance, Unicode, default, observe
from traitlets.config import LoggingConfigurable
from traitlets.utils.importstring import import_item

from kernel_connect._sansio import Operation, drive, drive_async
from kernel_connect.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from kernel_connect.manager import KernelManager

if TYPE_CHECKING:
    import asyncio

    import zmq.asyncio
    from zmq.eventloop.zmqstream import ZMQStream

#: Most threads the blocking face's shutdown_all stops kernels on at once.
_SHUTDOWN_THREADS = 32

#: A start or shutdown of one kernel under way: resolved (never failed) when it ends.
_Marker = concurrent.futures.Future[None]


class DuplicateKernelError(Exception):
    """A kernel with this id is already managed (or starting)."""


# -- wait requests, and how each face serves them ----------------------------------


@dataclass(frozen=True)
class _Call:
    """Call ``method(**kwargs)`` of a kernel's manager; -> its result (awaited if awaitable)."""

    method: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _WaitFor:
    """Wait until a start or shutdown under way (``marker``) has ended."""

    marker: _Marker


def _serve_blocking(request: Any) -> Any:
    """Serve a request by blocking this thread."""
    if isinstance(request, _Call):
        result = request.method(**request.kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: no "was never awaited" warning
            owner = getattr(request.method, "__self__", None)
            raise TypeError(
                f"{type(owner).__name__}.{request.method.__name__} is a coroutine; "
                "a blocking MultiKernelManager needs a blocking kernel manager class "
                "(use AsyncMultiKernelManager for asyncio kernel managers)"
            )
        return result
    if isinstance(request, _WaitFor):
        request.marker.result()
        return None
    raise TypeError(f"unknown wait request {request!r}")


async def _serve_async(request: Any) -> Any:
    """Serve a request by awaiting in the running loop."""
    import asyncio

    if isinstance(request, _Call):
        result = request.method(**request.kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    if isinstance(request, _WaitFor):
        await asyncio.wrap_future(request.marker)
        return None
    raise TypeError(f"unknown wait request {request!r}")


def _new_marker() -> _Marker:
    marker: _Marker = concurrent.futures.Future()
    # Running: nobody can cancel it (asyncio.wrap_future would, when its waiter
    # is cancelled), so it always ends with its operation.
    marker.set_running_or_notify_cancel()
    return marker


def _nothing_to_stop(km: Any) -> bool:
    """Whether ``km``'s last start failed and left no process (nothing to shut down)."""
    ready = km.ready
    failed = ready.done() and not ready.cancelled() and ready.exception() is not None
    return bool(failed and not km.has_kernel)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class MultiKernelManager(LoggingConfigurable):
    """Manages many kernels, each by its own kernel manager, under a kernel id.

    The blocking face: every method returns when its work is done. Safe to
    use from several threads at once.
    """

    default_kernel_name = Unicode(
        NATIVE_KERNEL_NAME, help="The name of the default kernel to start"
    ).tag(config=True)

    kernel_spec_manager = Instance(KernelSpecManager, allow_none=True)

    kernel_manager_class = DottedObjectName(
        "kernel_connect.ioloop.IOLoopKernelManager",
        help="""The kernel manager class.  This is configurable to allow
        subclassing of the KernelManager for customized behavior.
        """,
    ).tag(config=True)

    kernel_manager_factory = AnyTrait(help="this is kernel_manager_class after import")

    shared_context = Bool(
        True,
        help="Share a single zmq.Context to talk to all my kernels",
    ).tag(config=True)

    context = Instance("zmq.Context")

    _created_context = Bool(False)
    # The process that made our context (a forked child must not destroy it).
    _context_pid: int | None = None

    connection_dir = Unicode("")
    external_connection_dir = Unicode(None, allow_none=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: kernel id -> the manager of a kernel (started, or pending with use_pending_kernels).
        self._kernels: dict[str, Any] = {}
        #: kernel id -> a start or shutdown of that kernel under way.
        self._pending_kernels: dict[str, _Marker] = {}
        #: kernel id -> connection file, for the kernels found in external_connection_dir.
        self.kernel_id_to_connection_file: dict[str, Path] = {}
        # Guards the two maps above where a step reads and then writes them
        # (never held while waiting).
        self._books = threading.RLock()
        self._syncing_external = False

    def __del__(self) -> None:
        # The zmq context we made dies with us; never a parent's from a forked child.
        try:
            context = self._trait_values.get("context")
            if (
                self._created_context
                and context is not None
                and not context.closed
                and self._context_pid == os.getpid()
            ):
                context.destroy(linger=1000)
        except Exception:  # noqa: S110 - best effort, maybe at interpreter exit
            pass

    # -- configuration ---------------------------------------------------------

    @default("context")
    def _context_default(self) -> zmq.Context[Any]:
        self._created_context = True
        self._context_pid = os.getpid()
        return zmq.Context()

    @default("kernel_manager_factory")
    def _kernel_manager_factory_default(self) -> Callable[..., Any]:
        return self._create_kernel_manager_factory()

    @observe("kernel_manager_class")
    def _kernel_manager_class_changed(self, change: Any) -> None:
        self.kernel_manager_factory = self._create_kernel_manager_factory()

    def _create_kernel_manager_factory(self) -> Callable[..., Any]:
        cls = import_item(str(self.kernel_manager_class))

        def create_kernel_manager(*args: Any, **kwargs: Any) -> Any:
            if self.shared_context:
                if self.context.closed:
                    self.context = self._context_default()  # closed by someone: anew
                kwargs.setdefault("context", self.context)
            return cls(*args, **kwargs)

        return create_kernel_manager

    @property
    def _starting_kernels(self) -> dict[str, _Marker]:
        """jupyter_client's old name for ``_pending_kernels``."""
        return self._pending_kernels

    def _using_pending_kernels(self) -> bool:
        """Whether start_kernel returns before the kernel is ready (``use_pending_kernels``)."""
        return bool(getattr(self, "use_pending_kernels", False))

    # -- the books ---------------------------------------------------------------

    def list_kernel_ids(self) -> list[str]:
        """Return a list of the kernel ids of the active kernels."""
        if self.external_connection_dir is not None:
            with self._books:
                # Not again from within (a new manager's configuration asks
                # whether its parent, this object, is truthy: our __len__).
                if not self._syncing_external:
                    self._syncing_external = True
                    try:
                        self._sync_external_kernels(Path(self.external_connection_dir))
                    finally:
                        self._syncing_external = False
        return list(self._kernels)

    def __len__(self) -> int:
        """Return the number of running kernels."""
        return len(self.list_kernel_ids())

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    def new_kernel_id(self, **kwargs: Any) -> str:
        """Return the id of a new kernel: a version 4 uuid (subclasses may choose otherwise).

        Parameters
        ----------
        **kwargs
            The arguments of the ``start_kernel`` call the id is for.
        """
        return str(uuid.uuid4())

    def _check_kernel_id(self, kernel_id: str) -> None:
        """Raise KeyError unless ``kernel_id`` is one of ours."""
        if kernel_id not in self:
            raise KeyError(f"Kernel with id not found: {kernel_id}")

    def get_kernel(self, kernel_id: str) -> KernelManager:
        """Return the kernel manager of ``kernel_id``.

        Raises
        ------
        KeyError
            If there is no such kernel.
        """
        self._check_kernel_id(kernel_id)
        km: KernelManager = self._kernels[kernel_id]
        return km

    def remove_kernel(self, kernel_id: str) -> KernelManager:
        """Forget a kernel without shutting it down (say, one that died); return its manager.

        Returns None when there is no such kernel.
        """
        km: KernelManager = self._kernels.pop(kernel_id, None)
        return km

    def pre_start_kernel(
        self, kernel_name: str | None, kwargs: Any
    ) -> tuple[KernelManager, str, str]:
        """Make the kernel manager for a start: ``(manager, kernel name, kernel id)``.

        ``kwargs`` (the start's arguments) loses its ``kernel_id``, if any.

        Raises
        ------
        DuplicateKernelError
            If a kernel with that id is managed or starting already.
        """
        kernel_id = kwargs.pop("kernel_id", self.new_kernel_id(**kwargs))
        if kernel_id in self or kernel_id in self._pending_kernels:
            raise DuplicateKernelError(f"Kernel already exists: {kernel_id}")
        if kernel_name is None:
            kernel_name = self.default_kernel_name
        extra: dict[str, Any] = {}
        if self.kernel_spec_manager:
            extra["kernel_spec_manager"] = self.kernel_spec_manager
        km = self.kernel_manager_factory(
            connection_file=self._connection_file_for(kernel_id),
            parent=self,
            log=self.log,
            kernel_name=kernel_name,
            **extra,
        )
        if not isinstance(km, KernelManager):
            self.log.warning(
                "kernel manager class %s is not a kernel_connect KernelManager",
                type(km).__name__,
            )
        return km, kernel_name, kernel_id

    def _connection_file_for(self, kernel_id: str) -> str:
        """Where our kernel ``kernel_id``'s connection file goes."""
        if self.connection_dir:
            directory = self.connection_dir
        else:
            from kernel_connect.paths import runtime_dir

            directory = runtime_dir()
        return os.path.join(directory, f"kernel-{kernel_id}.json")

    def _begin_start(
        self, kernel_name: str | None, kwargs: dict[str, Any]
    ) -> tuple[Any, str, _Marker]:
        """Make the manager and mark its kernel id as starting (atomically)."""
        with self._books:
            km, _, kernel_id = self.pre_start_kernel(kernel_name, kwargs)
            kwargs["kernel_id"] = kernel_id  # for the manager (and its kernel's file name)
            marker = _new_marker()
            self._pending_kernels[kernel_id] = marker
        return km, kernel_id, marker

    def _end_pending(self, kernel_id: str, marker: _Marker) -> None:
        """A start or shutdown has ended: wake whoever waits for it (idempotent)."""
        with self._books:
            if self._pending_kernels.get(kernel_id) is marker:
                del self._pending_kernels[kernel_id]
        if not marker.done():
            marker.set_result(None)

    def _all_kernel_ids(self) -> list[str]:
        """The kernels to shut down: managed, starting, or shutting down already."""
        with self._books:
            return list(dict.fromkeys([*self.list_kernel_ids(), *self._pending_kernels]))

    def update_env(self, *, kernel_id: str, env: dict[str, str]) -> None:
        """Add ``env`` to the environment of kernel ``kernel_id`` from its next restart on.

        Nothing happens when there is no such kernel.
        """
        if kernel_id in self:
            self._kernels[kernel_id].update_env(env=env)

    def _sync_external_kernels(self, directory: Path) -> None:
        """Take in the kernels whose connection files appeared in ``directory``; forget
        those whose files went away. Our own kernels' files are not taken for others'."""
        if not directory.is_dir():
            return
        files = {p for p in directory.iterdir() if p.is_file()}
        with self._books:
            for kernel_id, path in list(self.kernel_id_to_connection_file.items()):
                if path not in files:
                    del self.kernel_id_to_connection_file[kernel_id]
                    self._kernels.pop(kernel_id, None)
            known = set(self.kernel_id_to_connection_file.values())
            known.update(
                Path(km.connection_file)
                for kid, km in self._kernels.items()
                if kid not in self.kernel_id_to_connection_file and km.connection_file
            )
            # Kernels of ours still starting (not in _kernels yet) have their file already.
            known.update(Path(self._connection_file_for(kid)) for kid in self._pending_kernels)
            for path in sorted(files - known):
                self._add_external_kernel(path)

    def _add_external_kernel(self, path: Path) -> None:
        from kernel_connect.connect import read_connection_file

        try:
            info = read_connection_file(path)
        except (OSError, ValueError):
            return  # not a connection file (the error may be about anything in it)
        if not ("kernel_name" in info and "key" in info):
            return
        self.log.debug("Loading connection file %s", path)
        # Not ours: its shutdown_kernel leaves it running, is_alive says True.
        km = self.kernel_manager_factory(parent=self, log=self.log, owns_kernel=False)
        try:
            km.load_connection_info(info)
        except ValueError:
            return
        kernel_id = self.new_kernel_id()
        km.kernel_id = kernel_id
        km.kernel_name = info["kernel_name"]
        # What jupyter_client records of a kernel found this way.
        km.last_activity = _utcnow()
        km.execution_state = "idle"
        km.connections = 1
        km.ready.set_result(None)
        self.kernel_id_to_connection_file[kernel_id] = path
        self._kernels[kernel_id] = km

    # -- the operations (sans-IO: driven by either face) -------------------------

    def _start_op(
        self, kernel_id: str, km: Any, kwargs: dict[str, Any], marker: _Marker
    ) -> Operation[str]:
        """Start the kernel of ``km``; then it is ours under ``kernel_id``.

        A start that fails leaves nothing behind (kernel-connect's managers see
        to it); a pending kernel stays listed, its ``ready`` failed, until it is
        shut down (as jupyter_client's).
        """
        try:
            yield _Call(km.start_kernel, kwargs)
            with self._books:
                self._kernels[kernel_id] = km
        finally:
            self._end_pending(kernel_id, marker)
        return kernel_id

    def _claim_op(
        self, kernel_id: str, missing_ok: bool = False
    ) -> Operation[tuple[Any, _Marker] | None]:
        """Wait out a start or shutdown of ``kernel_id`` under way, then mark it as
        shutting down: ``(manager, marker)``, or None when nothing is left to stop.

        Raises
        ------
        KeyError
            If there is no such kernel (unless ``missing_ok``).
        """
        waited = False
        while True:
            with self._books:
                marker = self._pending_kernels.get(kernel_id)
                if marker is None:
                    if (waited or missing_ok) and kernel_id not in self._kernels:
                        return None  # its start failed, or another shutdown ended it
                    km = self.get_kernel(kernel_id)
                    if kernel_id in self.kernel_id_to_connection_file or _nothing_to_stop(km):
                        # Not ours to stop (an external kernel), or nothing to stop.
                        self.remove_kernel(kernel_id)
                        return None
                    mine = _new_marker()
                    self._pending_kernels[kernel_id] = mine
                    return km, mine
            yield _WaitFor(marker)
            waited = True

    def _stop_op(
        self, kernel_id: str, km: Any, marker: _Marker, now: bool, restart: bool
    ) -> Operation[None]:
        """Shut down a claimed kernel, then forget it (kept if the shutdown fails)."""
        try:
            yield _Call(km.shutdown_kernel, {"now": now, "restart": restart})
            self.remove_kernel(kernel_id)
        finally:
            self._end_pending(kernel_id, marker)

    def _shutdown_op(
        self, kernel_id: str, now: bool, restart: bool, missing_ok: bool = False
    ) -> Operation[None]:
        """The whole shutdown of one kernel: claim it, stop it."""
        claim = yield from self._claim_op(kernel_id, missing_ok)
        if claim is not None:
            yield from self._stop_op(kernel_id, *claim, now, restart)

    def _restart_op(self, kernel_id: str, now: bool) -> Operation[None]:
        kernel = self.get_kernel(kernel_id)
        if self._using_pending_kernels() and not kernel.ready.done():
            raise RuntimeError("Kernel is in a pending state. Cannot restart.")
        yield _Call(kernel.restart_kernel, {"now": now})
        self.log.info("Kernel restarted: %s", kernel_id)

    # -- the blocking face ---------------------------------------------------------

    def start_kernel(self, *, kernel_name: str | None = None, **kwargs: Any) -> str:
        """Start a new kernel and return its id.

        Parameters
        ----------
        kernel_name : str, optional
            The kernel spec to start (default: ``default_kernel_name``).
        **kwargs
            ``kernel_id`` (default: ``new_kernel_id()``), and the arguments of
            the manager's ``start_kernel``.

        Raises
        ------
        DuplicateKernelError
            If ``kernel_id`` is taken.
        """
        km, kernel_id, marker = self._begin_start(kernel_name, kwargs)
        return drive(self._start_op(kernel_id, km, kwargs, marker), _serve_blocking)

    def shutdown_kernel(
        self, kernel_id: str, now: bool | None = False, restart: bool | None = False
    ) -> None:
        """Shut a kernel down and forget it (waiting first for a start of it under way).

        Parameters
        ----------
        kernel_id : str
            The kernel's id.
        now : bool
            Kill it at once, without asking it to shut down.
        restart : bool
            Passed to the manager's ``shutdown_kernel``.

        Raises
        ------
        KeyError
            If there is no such kernel.
        """
        self.log.info("Kernel shutdown: %s", kernel_id)
        drive(self._shutdown_op(kernel_id, bool(now), bool(restart)), _serve_blocking)

    def shutdown_all(self, now: bool = False) -> None:
        """Shut down every kernel (starting ones included, once started), on a few threads.

        Every kernel is shut down even if one fails; then the first error is raised.
        """
        kernel_ids = self._all_kernel_ids()
        errors: list[BaseException] = []

        def stop(kernel_id: str) -> None:
            self.log.info("Kernel shutdown: %s", kernel_id)
            try:
                drive(self._shutdown_op(kernel_id, now, False, missing_ok=True), _serve_blocking)
            except Exception as e:
                errors.append(e)

        if len(kernel_ids) <= 1:
            for kernel_id in kernel_ids:
                stop(kernel_id)
        else:
            workers = min(len(kernel_ids), _SHUTDOWN_THREADS)
            with concurrent.futures.ThreadPoolExecutor(workers, "shutdown_all") as pool:
                list(pool.map(stop, kernel_ids))
        if errors:
            raise errors[0]

    def restart_kernel(self, kernel_id: str, now: bool = False) -> None:
        """Restart a kernel, keeping its ports.

        Parameters
        ----------
        kernel_id : str
            The kernel's id.
        now : bool
            Kill the old kernel at once instead of asking it to shut down.

        Raises
        ------
        RuntimeError
            If the kernel is still starting (``use_pending_kernels``).
        """
        drive(self._restart_op(kernel_id, now), _serve_blocking)

    # -- calls on one kernel's manager (a coroutine's result where that is one) -----

    def interrupt_kernel(self, kernel_id: str) -> Any:
        """Interrupt a kernel (SIGINT, or an interrupt_request if its spec says so).

        Raises
        ------
        RuntimeError
            If the kernel is still starting.
        """
        kernel: Any = self.get_kernel(kernel_id)
        if not kernel.ready.done():
            raise RuntimeError("Kernel is in a pending state. Cannot interrupt.")
        out = kernel.interrupt_kernel()
        self.log.info("Kernel interrupted: %s", kernel_id)
        return out

    def signal_kernel(self, kernel_id: str, signum: int) -> Any:
        """Send signal ``signum`` to a kernel (its process group)."""
        kernel: Any = self.get_kernel(kernel_id)
        out = kernel.signal_kernel(signum)
        self.log.info("Signaled Kernel %s with %s", kernel_id, signum)
        return out

    def is_alive(self, kernel_id: str) -> bool:
        """Whether a kernel's process is running."""
        return self.get_kernel(kernel_id).is_alive()

    def request_shutdown(self, kernel_id: str, restart: bool | None = False) -> Any:
        """Ask a kernel to shut down (a shutdown_request on its control channel)."""
        kernel: Any = self.get_kernel(kernel_id)
        return kernel.request_shutdown(restart)

    def finish_shutdown(
        self, kernel_id: str, waittime: float | None = None, pollinterval: float | None = 0.1
    ) -> Any:
        """Wait for a kernel to exit after a shutdown request; kill it if it does not."""
        kernel: Any = self.get_kernel(kernel_id)
        out = kernel.finish_shutdown(waittime, pollinterval)
        self.log.info("Kernel shutdown: %s", kernel_id)
        return out

    def cleanup_resources(self, kernel_id: str, restart: bool = False) -> Any:
        """Clean up a kernel's resources (its connection file and ports, unless ``restart``)."""
        kernel: Any = self.get_kernel(kernel_id)
        return kernel.cleanup_resources(restart)

    def add_restart_callback(
        self, kernel_id: str, callback: Callable[..., Any], event: str = "restart"
    ) -> None:
        """Call ``callback()`` on a restarter event of a kernel (see KernelManager)."""
        self.get_kernel(kernel_id).add_restart_callback(callback, event)

    def remove_restart_callback(
        self, kernel_id: str, callback: Callable[..., Any], event: str = "restart"
    ) -> None:
        """Stop calling ``callback`` on a restarter event of a kernel."""
        self.get_kernel(kernel_id).remove_restart_callback(callback, event)

    def get_connection_info(self, kernel_id: str) -> dict[str, Any]:
        """Return a kernel's connection info: transport, ip, ports, key and scheme."""
        return self.get_kernel(kernel_id).get_connection_info()

    def connect_iopub(
        self, kernel_id: str, identity: bytes | None = None
    ) -> zmq.Socket[Any] | ZMQStream:
        """Return a zmq socket connected to a kernel's iopub channel (a ZMQStream for
        the default, IOLoop, kernel managers)."""
        return self.get_kernel(kernel_id).connect_iopub(identity)

    def connect_shell(
        self, kernel_id: str, identity: bytes | None = None
    ) -> zmq.Socket[Any] | ZMQStream:
        """Return a zmq socket connected to a kernel's shell channel (a ZMQStream for
        the default, IOLoop, kernel managers)."""
        return self.get_kernel(kernel_id).connect_shell(identity)

    def connect_control(
        self, kernel_id: str, identity: bytes | None = None
    ) -> zmq.Socket[Any] | ZMQStream:
        """Return a zmq socket connected to a kernel's control channel (a ZMQStream for
        the default, IOLoop, kernel managers)."""
        return self.get_kernel(kernel_id).connect_control(identity)

    def connect_stdin(
        self, kernel_id: str, identity: bytes | None = None
    ) -> zmq.Socket[Any] | ZMQStream:
        """Return a zmq socket connected to a kernel's stdin channel (a ZMQStream for
        the default, IOLoop, kernel managers)."""
        return self.get_kernel(kernel_id).connect_stdin(identity)

    def connect_hb(
        self, kernel_id: str, identity: bytes | None = None
    ) -> zmq.Socket[Any] | ZMQStream:
        """Return a zmq socket connected to a kernel's heartbeat channel (a ZMQStream for
        the default, IOLoop, kernel managers)."""
        return self.get_kernel(kernel_id).connect_hb(identity)


class AsyncMultiKernelManager(MultiKernelManager):
    """MultiKernelManager whose waiting methods are coroutines, as jupyter_client's.

    The same operations, awaited in the running asyncio loop: ``start_kernel``,
    ``shutdown_kernel``, ``restart_kernel`` and ``shutdown_all``. The
    per-kernel calls (``is_alive``, ``interrupt_kernel``, ``signal_kernel``,
    ...) return the kernel manager's coroutine, to be awaited.

    With ``use_pending_kernels``, ``start_kernel`` returns the id at once and
    the kernel starts in the background (await its manager's ``ready``), and
    ``shutdown_kernel`` returns once the shutdown is under way.
    """

    kernel_manager_class = DottedObjectName(
        "kernel_connect.ioloop.AsyncIOLoopKernelManager",
        config=True,
        help="""The kernel manager class.  This is configurable to allow
        subclassing of the AsyncKernelManager for customized behavior.
        """,
    )

    use_pending_kernels = Bool(
        False,
        help="""Whether to make kernels available before the process has started.  The
        kernel has a `.ready` future which can be awaited before connecting""",
    ).tag(config=True)

    context = Instance("zmq.asyncio.Context")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The background starts and shutdowns (asyncio keeps only weak references).
        self._background: set[asyncio.Task[None]] = set()

    @default("context")
    def _context_default(self) -> zmq.asyncio.Context:
        import zmq.asyncio

        self._created_context = True
        self._context_pid = os.getpid()
        return zmq.asyncio.Context()

    def _in_background(
        self, op: Operation[Any], what: str, kernel_id: str, marker: _Marker
    ) -> None:
        """Run ``op`` in a task of its own; its failure is logged (and seen on ``ready``)."""
        import asyncio

        async def run() -> None:
            try:
                if what == "start":
                    # The caller of start_kernel sees the kernel pending, even
                    # when it called through a task of its own.
                    await asyncio.sleep(0)
                await drive_async(op, _serve_async)
            except Exception as e:
                self.log.error("Kernel %s failed to %s: %s", kernel_id, what, e)
            finally:
                op.close()
                self._end_pending(kernel_id, marker)  # also if op never ran

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_name: str | None = None, **kwargs: Any
    ) -> str:
        """Start a new kernel and return its id (see ``MultiKernelManager.start_kernel``).

        With ``use_pending_kernels``, returns before the kernel has started:
        await ``get_kernel(id).ready``.
        """
        km, kernel_id, marker = self._begin_start(kernel_name, kwargs)
        op = self._start_op(kernel_id, km, kwargs, marker)
        if not self._using_pending_kernels():
            return await drive_async(op, _serve_async)
        with self._books:
            self._kernels[kernel_id] = km
        self._in_background(op, "start", kernel_id, marker)
        return kernel_id

    async def shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool | None = False, restart: bool | None = False
    ) -> None:
        """Shut a kernel down and forget it (see ``MultiKernelManager.shutdown_kernel``).

        With ``use_pending_kernels``, returns once a start under way has ended
        and the shutdown has begun: await the manager's ``ready`` for its end.
        """
        import asyncio

        self.log.info("Kernel shutdown: %s", kernel_id)
        if not self._using_pending_kernels():
            await drive_async(self._shutdown_op(kernel_id, bool(now), bool(restart)), _serve_async)
            return
        claim = await drive_async(self._claim_op(kernel_id), _serve_async)
        if claim is None:
            return
        km, marker = claim
        op = self._stop_op(kernel_id, km, marker, bool(now), bool(restart))
        self._in_background(op, "shut down", kernel_id, marker)
        # One turn of the loop: the shutdown's first step runs before we return,
        # so the manager's ``ready`` is already the shutdown's when the caller looks.
        await asyncio.sleep(0)

    async def shutdown_all(self, now: bool = False) -> None:  # type: ignore[override]
        """Shut down every kernel concurrently, pending ones included; return when all are.

        Every kernel is shut down even if one fails; then the first error is raised.
        """
        import asyncio

        async def stop(kernel_id: str) -> None:
            self.log.info("Kernel shutdown: %s", kernel_id)
            await drive_async(
                self._shutdown_op(kernel_id, now, False, missing_ok=True), _serve_async
            )

        results = await asyncio.gather(
            *(stop(kernel_id) for kernel_id in self._all_kernel_ids()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def restart_kernel(self, kernel_id: str, now: bool = False) -> None:  # type: ignore[override]
        """Restart a kernel, keeping its ports (see ``MultiKernelManager.restart_kernel``)."""
        await drive_async(self._restart_op(kernel_id, now), _serve_async)

    if TYPE_CHECKING:
        # What the per-kernel calls return here: the kernel manager's coroutines.
        def interrupt_kernel(self, kernel_id: str) -> Awaitable[None]: ...
        def signal_kernel(self, kernel_id: str, signum: int) -> Awaitable[None]: ...
        def is_alive(self, kernel_id: str) -> Awaitable[bool]: ...  # type: ignore[override]
        def request_shutdown(
            self, kernel_id: str, restart: bool | None = False
        ) -> Awaitable[None]: ...
        def finish_shutdown(
            self, kernel_id: str, waittime: float | None = None, pollinterval: float | None = 0.1
        ) -> Awaitable[None]: ...
        def cleanup_resources(self, kernel_id: str, restart: bool = False) -> Awaitable[None]: ...


__all__ = ["AsyncMultiKernelManager", "DuplicateKernelError", "MultiKernelManager"]
