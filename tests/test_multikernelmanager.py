"""MultiKernelManager and AsyncMultiKernelManager on real ipykernel kernels.

jupyter_client 8.10's multikernelmanager surface (names, signatures, traits),
each public method on live kernels through both faces, pending kernels, 64
kernels started at once through one AsyncMultiKernelManager, and what is left
afterwards: no process, no connection file, no port reservation.

The coroutines run on one event loop per module (no pytest plug-in needed),
each bounded by a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
from traitlets import DottedObjectName
from traitlets.config import Config
from zmq.eventloop.zmqstream import ZMQStream

import kernel_connect
from kernel_connect.connect import LocalPortCache, write_connection_file
from kernel_connect.ioloop import AsyncIOLoopKernelManager, IOLoopKernelManager
from kernel_connect.kernelspec import KernelSpecManager
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_connect.multikernelmanager import (
    AsyncMultiKernelManager,
    DuplicateKernelError,
    MultiKernelManager,
)
from kernel_fixtures import (
    READY_TIMEOUT,
    file_mode,
    pid_alive,
    result_text,
    wait_until,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel

T = TypeVar("T")

#: Kernels started at once in the farm test, and how long it may take on 2 busy cores.
FARM_SIZE = 64
FARM_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module's coroutines."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T], timeout: float = READY_TIMEOUT) -> T:
    """Run ``aw`` on ``loop``, failing after ``timeout`` seconds instead of hanging."""
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


# -- what is left behind -----------------------------------------------------------------


class Traces:
    """A set of kernels' processes, connection files and ports, to check they are gone."""

    def __init__(self, managers: Iterable[Any]) -> None:
        self.pids: list[int] = []
        self.files: list[str] = []
        self.ports: set[int] = set()
        for km in managers:
            self.add(km)

    def add(self, km: Any) -> None:
        assert km.kernel is not None
        self.pids.append(km.kernel.pid)
        self.files.append(km.connection_file)
        self.ports.update(p for p in km.ports if p)

    def left(self, runtime_dir: Path) -> dict[str, Any]:
        """What is left: live processes, files, reservations (empty lists: nothing)."""
        reserved = {row[0] for row in LocalPortCache.instance().table.held()}
        return {
            "processes": [p for p in self.pids if pid_alive(p)],
            "files": [f for f in self.files if os.path.exists(f)],
            "runtime dir": sorted(
                name
                for name in os.listdir(runtime_dir)
                if any(name == os.path.basename(f) for f in self.files)
            ),
            "reservations": sorted(self.ports & reserved),
        }


NOTHING = {"processes": [], "files": [], "runtime dir": [], "reservations": []}


def wait_ready(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        kc.stop_channels()


async def wait_ready_async(km: AsyncKernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        kc.stop_channels()


# -- names, signatures and traits, side by side with jupyter_client -------------------------


def test_exported_from_the_package_and_the_module() -> None:
    assert kernel_connect.MultiKernelManager is MultiKernelManager
    assert kernel_connect.AsyncMultiKernelManager is AsyncMultiKernelManager
    assert "MultiKernelManager" in kernel_connect.__all__
    assert "AsyncMultiKernelManager" in kernel_connect.__all__
    assert issubclass(AsyncMultiKernelManager, MultiKernelManager)
    assert issubclass(DuplicateKernelError, Exception)


def _params(fn: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def _jupyter_client_classes() -> dict[str, type]:
    from jupyter_client.multikernelmanager import (
        AsyncMultiKernelManager as JCAsync,
    )
    from jupyter_client.multikernelmanager import (
        MultiKernelManager as JCSync,
    )

    return {"MultiKernelManager": JCSync, "AsyncMultiKernelManager": JCAsync}


#: The parameters of jupyter_core's run_sync wrapper (jupyter_client's blocking methods).
RUN_SYNC_WRAPPER = [
    ("args", "VAR_POSITIONAL", inspect.Parameter.empty),
    ("kwargs", "VAR_KEYWORD", inspect.Parameter.empty),
]

OURS = {
    "MultiKernelManager": MultiKernelManager,
    "AsyncMultiKernelManager": AsyncMultiKernelManager,
}


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_public_method_has_jupyter_clients_signature(name: str) -> None:
    theirs, ours = _jupyter_client_classes()[name], OURS[name]
    methods = {
        attr
        for cls in theirs.__mro__
        if cls.__module__ == "jupyter_client.multikernelmanager"
        for attr, value in vars(cls).items()
        if callable(value)
        and not hasattr(value, "default_value")  # a trait
        and (not attr.startswith("_") or attr in ("__len__", "__contains__", "__init__"))
    }
    assert {"start_kernel", "shutdown_all", "connect_hb", "update_env"} <= methods
    mismatches = []
    for attr in sorted(methods):
        their_fn = getattr(theirs, attr)
        # jupyter_client's blocking methods are run_sync wrappers of _async_<name>.
        if _params(their_fn) == RUN_SYNC_WRAPPER:
            their_fn = getattr(theirs, f"_async_{attr}", their_fn)
        our_fn = getattr(ours, attr, None)
        if our_fn is None:
            mismatches.append((attr, "missing"))
            continue
        if _params(our_fn) != _params(their_fn):
            mismatches.append((attr, _params(our_fn), _params(their_fn)))
        if inspect.iscoroutinefunction(our_fn) != inspect.iscoroutinefunction(
            getattr(theirs, attr)
        ):
            mismatches.append((attr, "coroutine or not"))
    assert mismatches == []


@pytest.mark.parametrize("name", sorted(OURS))
def test_traits_as_jupyter_clients(name: str) -> None:
    theirs, ours = _jupyter_client_classes()[name], OURS[name]
    public = {t for t in theirs.class_trait_names() if not t.startswith("_")}
    assert public <= set(ours.class_trait_names())
    for trait in sorted(public):
        mine, their = ours.class_traits()[trait], theirs.class_traits()[trait]
        assert type(mine) is type(their), trait
        assert mine.metadata.get("config") == their.metadata.get("config"), trait
        if trait != "kernel_manager_class":
            assert mine.default_value == their.default_value, trait
    assert ours().default_kernel_name == "python3"
    assert ours().connection_dir == ""
    assert ours().external_connection_dir is None
    assert ours().shared_context is True
    assert ("use_pending_kernels" in public) == (ours is AsyncMultiKernelManager)


def test_kernel_manager_class_defaults_to_kernel_connects_ioloop_managers() -> None:
    """As jupyter_client's: IOLoop managers (a restarter, ZMQStreams from connect_*)."""
    from kernel_connect.ioloop import AsyncIOLoopKernelManager, IOLoopKernelManager

    sync, aio = MultiKernelManager(), AsyncMultiKernelManager()
    assert isinstance(MultiKernelManager.class_traits()["kernel_manager_class"], DottedObjectName)
    assert sync.kernel_manager_class == "kernel_connect.ioloop.IOLoopKernelManager"
    assert aio.kernel_manager_class == "kernel_connect.ioloop.AsyncIOLoopKernelManager"
    assert type(sync.kernel_manager_factory()) is IOLoopKernelManager
    assert type(aio.kernel_manager_factory()) is AsyncIOLoopKernelManager
    # Changing the class changes the factory; configurable like jupyter_client's.
    sync.kernel_manager_class = "kernel_connect.manager.KernelManager"
    assert type(sync.kernel_manager_factory()) is KernelManager
    configured = MultiKernelManager(
        config=Config(
            {"MultiKernelManager": {"kernel_manager_class": "kernel_connect.manager.KernelManager"}}
        )
    )
    assert type(configured.kernel_manager_factory()) is KernelManager


def test_unknown_kernel_ids_raise_jupyter_clients_key_error() -> None:
    mkm = MultiKernelManager()
    for call in (
        lambda: mkm.get_kernel("nope"),
        lambda: mkm.shutdown_kernel("nope"),
        lambda: mkm.restart_kernel("nope"),
        lambda: mkm.interrupt_kernel("nope"),
        lambda: mkm.is_alive("nope"),
        lambda: mkm.connect_shell("nope"),
    ):
        with pytest.raises(KeyError, match="Kernel with id not found: nope"):
            call()
    assert mkm.remove_kernel("nope") is None
    mkm.update_env(kernel_id="nope", env={"A": "1"})  # no such kernel: nothing happens
    assert mkm.list_kernel_ids() == [] and len(mkm) == 0 and "nope" not in mkm


def test_new_kernel_id_is_a_uuid_and_overridable() -> None:
    assert str(uuid.UUID(MultiKernelManager().new_kernel_id())) != ""

    class Numbered(MultiKernelManager):
        def new_kernel_id(self, **kwargs: Any) -> str:
            return "kernel-one"

    km, name, kernel_id = Numbered().pre_start_kernel(None, {})
    assert (name, kernel_id) == ("python3", "kernel-one")
    assert os.path.basename(km.connection_file) == "kernel-kernel-one.json"


def test_pre_start_kernel_makes_a_manager_without_starting(
    runtime_dir: Path, tmp_path: Path
) -> None:
    mkm = MultiKernelManager(connection_dir=str(tmp_path))
    kwargs: dict[str, Any] = {"kernel_id": "abc", "env": {}}
    km, name, kernel_id = mkm.pre_start_kernel("python3", kwargs)
    assert (name, kernel_id, kwargs) == ("python3", "abc", {"env": {}})
    assert isinstance(km, KernelManager) and km.kernel is None and km.parent is mkm
    assert km.connection_file == str(tmp_path / "kernel-abc.json")
    assert km.context is mkm.context
    # connection_dir left empty: the runtime directory, not the working directory.
    km, _, _ = MultiKernelManager().pre_start_kernel(None, {"kernel_id": "def"})
    assert km.connection_file == str(runtime_dir / "kernel-def.json")


# -- the blocking face on live kernels ------------------------------------------------------


def test_blocking_lifecycle(runtime_dir: Path) -> None:
    mkm = MultiKernelManager()
    kid = mkm.start_kernel()
    other = mkm.start_kernel(kernel_id="chosen-id", env={**os.environ, "MKM_TEST": "before"})
    try:
        assert uuid.UUID(kid) and other == "chosen-id"
        assert set(mkm.list_kernel_ids()) == {kid, other} and len(mkm) == 2
        assert kid in mkm and "missing" not in mkm
        with pytest.raises(DuplicateKernelError, match="chosen-id"):
            mkm.start_kernel(kernel_id="chosen-id")
        km = mkm.get_kernel(kid)
        assert type(km) is IOLoopKernelManager and km.kernel_id == kid and km.ready.done()
        assert km.context is mkm.context and not mkm.context.closed
        assert km.connection_file == str(runtime_dir / f"kernel-{kid}.json")
        assert file_mode(km.connection_file) == 0o600
        traces = Traces([km, mkm.get_kernel(other)])
        assert mkm.is_alive(kid) is True
        info = mkm.get_connection_info(kid)
        assert info["shell_port"] == km.shell_port and info["transport"] == "tcp"
        for connect in (
            mkm.connect_iopub,
            mkm.connect_shell,
            mkm.connect_stdin,
            mkm.connect_hb,
            mkm.connect_control,
        ):
            stream = connect(kid)  # as jupyter_client's: a ZMQStream (IOLoop managers)
            assert isinstance(stream, ZMQStream) and type(stream.socket) is zmq.Socket
            stream.close(linger=0)
        mkm.signal_kernel(kid, 0)  # checks the process is there

        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY_TIMEOUT)
            msg_id = kc.execute(
                "import time\nprint('looping', flush=True)\nwhile True: time.sleep(0.05)"
            )
            while True:
                msg = kc.get_iopub_msg(timeout=READY_TIMEOUT)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    break
            mkm.interrupt_kernel(kid)
            reply = kc._recv_reply(msg_id, timeout=READY_TIMEOUT)
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        finally:
            kc.stop_channels()

        # update_env reaches the kernel at its next restart; ports kept, process new.
        okm = mkm.get_kernel(other)
        assert okm.kernel is not None
        pid, ports = okm.kernel.pid, okm.ports
        mkm.update_env(kernel_id=other, env={"MKM_TEST": "after"})
        mkm.restart_kernel(other, now=True)
        assert okm.kernel is not None and okm.kernel.pid != pid and okm.ports == ports
        kc = okm.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=READY_TIMEOUT)
            outputs: list[dict[str, Any]] = []
            kc.execute_interactive(
                "import os; os.environ['MKM_TEST']", timeout=30, output_hook=outputs.append
            )
            assert result_text(outputs) == "'after'"
        finally:
            kc.stop_channels()
        traces.add(okm)

        mkm.shutdown_kernel(kid)  # politely
        assert kid not in mkm and km.kernel is None
        assert mkm.list_kernel_ids() == [other]
        with pytest.raises(KeyError):
            mkm.shutdown_kernel(kid)
    finally:
        mkm.shutdown_all()
    assert len(mkm) == 0
    assert traces.left(runtime_dir) == NOTHING
    mkm.shutdown_all()  # again: nothing to do


def test_blocking_shutdown_steps_and_remove_kernel(runtime_dir: Path) -> None:
    mkm = MultiKernelManager()
    kid = mkm.start_kernel()
    km = mkm.get_kernel(kid)
    traces = Traces([km])
    wait_ready(km)
    mkm.request_shutdown(kid)
    mkm.finish_shutdown(kid, waittime=10)
    assert mkm.is_alive(kid) is False
    mkm.cleanup_resources(kid)
    assert traces.left(runtime_dir) == NOTHING
    assert mkm.remove_kernel(kid) is km
    assert kid not in mkm and mkm.remove_kernel(kid) is None


def test_restart_callbacks_go_to_the_kernels_manager() -> None:
    mkm = MultiKernelManager()
    kid = mkm.start_kernel()
    try:
        km = mkm.get_kernel(kid)
        calls: list[str] = []

        def callback() -> None:
            calls.append("restart")

        mkm.add_restart_callback(kid, callback)
        assert km._restarter is not None  # the default (IOLoop) manager has one
        assert callback in km._restarter.callbacks["restart"]
        mkm.remove_restart_callback(kid, callback)
        assert callback not in km._restarter.callbacks["restart"]
    finally:
        mkm.shutdown_all(now=True)


def test_shared_context_or_not() -> None:
    shared = MultiKernelManager()
    a, b = (shared.kernel_manager_factory() for _ in range(2))
    assert a.context is b.context is shared.context
    assert isinstance(shared.context, zmq.Context)
    shared.context.term()
    c = shared.kernel_manager_factory()
    assert not c.context.closed and c.context is shared.context  # made anew
    own = MultiKernelManager(shared_context=False)
    d = own.kernel_manager_factory()
    assert "context" not in own._trait_values  # never made
    assert d.context is not a.context
    aio = AsyncMultiKernelManager()
    assert isinstance(aio.context, zmq.asyncio.Context)
    assert aio.kernel_manager_factory().context is aio.context


def test_default_kernel_name_and_kernel_spec_manager(tmp_path: Path, runtime_dir: Path) -> None:
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_kernel_spec(tmp_path, "mkm-spec", argv)
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    mkm = MultiKernelManager(default_kernel_name="mkm-spec", kernel_spec_manager=specs)
    kid = mkm.start_kernel()
    try:
        km = mkm.get_kernel(kid)
        assert km.kernel_name == "mkm-spec" and km.kernel_spec_manager is specs
        assert km.kernel_spec.resource_dir == str(tmp_path / "kernels" / "mkm-spec")
        traces = Traces([km])
        wait_ready(km)
    finally:
        mkm.shutdown_all()
    assert traces.left(runtime_dir) == NOTHING


def test_ipc_kernels_leave_no_socket_files() -> None:
    # A short directory: a unix socket's path has at most 107 bytes.
    directory = tempfile.mkdtemp(prefix="kc-ipc-", dir="/tmp")
    try:
        config = Config({"KernelManager": {"transport": "ipc"}})
        mkm = MultiKernelManager(config=config, connection_dir=directory)
        kid = mkm.start_kernel()
        try:
            km = mkm.get_kernel(kid)
            assert km.transport == "ipc" and mkm.get_connection_info(kid)["transport"] == "ipc"
            wait_ready(km)
            assert any(name.endswith(("-1", "-2")) for name in os.listdir(directory))
        finally:
            mkm.shutdown_all()
        assert os.listdir(directory) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_blocking_face_from_threads_and_a_shutdown_waits_for_a_start(runtime_dir: Path) -> None:
    """Kernels started on threads through one manager; a shutdown from another thread
    while a (zero-race) start is under way waits for it, then shuts the kernel down."""
    config = Config({"KernelManager": {"kernel_binds_ports": True}})
    mkm = MultiKernelManager(config=config)
    ids = [f"threaded-{i}" for i in range(4)]
    errors: list[BaseException] = []

    def start(kernel_id: str) -> None:
        try:
            assert mkm.start_kernel(kernel_id=kernel_id) == kernel_id
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    first = runtime_dir / f"kernel-{ids[0]}.json"
    assert wait_until(first.exists, READY_TIMEOUT)
    mkm.shutdown_kernel(ids[0])  # its start may still wait for the kernel's ports
    assert ids[0] not in mkm and not first.exists()
    for t in threads:
        t.join(READY_TIMEOUT)
    assert errors == []
    assert sorted(mkm.list_kernel_ids()) == ids[1:]
    traces = Traces(mkm.get_kernel(i) for i in ids[1:])
    assert 0 not in [p for i in ids[1:] for p in mkm.get_kernel(i).ports]
    mkm.shutdown_all()  # on threads of its own
    assert mkm.list_kernel_ids() == []
    assert traces.left(runtime_dir) == NOTHING


def test_blocking_face_refuses_an_asyncio_manager_class() -> None:
    mkm = MultiKernelManager(kernel_manager_class="kernel_connect.manager.AsyncKernelManager")
    with pytest.raises(TypeError, match="AsyncMultiKernelManager"):
        mkm.start_kernel(kernel_id="refused")
    assert "refused" not in mkm and mkm._pending_kernels == {}


# -- external connection files --------------------------------------------------------------


def test_external_connection_dir_lists_other_kernels(tmp_path: Path, runtime_dir: Path) -> None:
    """A kernel someone else started is listed from its connection file, with jupyter_client's
    metadata; shutting it down only forgets it; a deleted file drops it."""
    owner = KernelManager()
    owner.start_kernel()
    external = tmp_path / "external"
    external.mkdir()
    try:
        fname = str(external / "kernel-theirs.json")
        write_connection_file(
            fname,
            ip=owner.ip,
            key=owner.session.key,
            kernel_name="python3",
            **{
                name: getattr(owner, name)
                for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
            },
        )
        (external / "notes.txt").write_text("not a connection file")
        mkm = MultiKernelManager(
            external_connection_dir=str(external), connection_dir=str(external)
        )
        (kid,) = mkm.list_kernel_ids()
        assert mkm.kernel_id_to_connection_file == {kid: Path(fname)}
        km = mkm.get_kernel(kid)
        assert km.kernel_id == kid and km.kernel_name == "python3"
        assert km.shell_port == owner.shell_port and km.ready.done()
        assert km.execution_state == "idle" and km.connections == 1
        assert km.last_activity.tzinfo is not None
        wait_ready(km)  # reachable through its connection info
        # Our own kernels, in the same directory, are not taken for external ones.
        ours = mkm.start_kernel()
        assert sorted(mkm.list_kernel_ids()) == sorted([kid, ours])
        mkm.shutdown_kernel(ours)
        mkm.shutdown_kernel(kid)  # not ours: forgotten, left running, file kept
        assert kid not in mkm and os.path.exists(fname) and owner.is_alive()
        assert mkm.list_kernel_ids() == []  # not taken in again
        os.remove(fname)
        assert mkm.list_kernel_ids() == [] and mkm.kernel_id_to_connection_file == {}
    finally:
        owner.shutdown_kernel(now=True)


# -- the asyncio face ----------------------------------------------------------------------


def test_async_lifecycle(loop: asyncio.AbstractEventLoop, runtime_dir: Path) -> None:
    mkm = AsyncMultiKernelManager()

    async def go() -> Traces:
        kid = await mkm.start_kernel()
        km = mkm.get_kernel(kid)
        assert type(km) is AsyncIOLoopKernelManager and km.context is mkm.context
        assert isinstance(km.ready, asyncio.Future) and km.ready.done()
        traces = Traces([km])
        assert await mkm.is_alive(kid) is True
        await wait_ready_async(km)
        await mkm.signal_kernel(kid, 0)
        # jupyter_client's order: a restart under way, an interrupt meanwhile.
        restart = mkm.restart_kernel(kid, now=True)
        await mkm.interrupt_kernel(kid)
        await restart
        traces.add(km)
        assert await mkm.is_alive(kid)
        await wait_ready_async(km)
        await mkm.request_shutdown(kid)
        await mkm.finish_shutdown(kid, waittime=10)
        await mkm.cleanup_resources(kid)
        assert traces.left(runtime_dir) == NOTHING
        assert kid in mkm
        await mkm.shutdown_kernel(kid)
        assert kid not in mkm
        with pytest.raises(KeyError, match="Kernel with id not found"):
            await mkm.shutdown_kernel(kid)
        return traces

    traces = run(loop, go())
    assert traces.left(runtime_dir) == NOTHING


def test_async_shutdown_waits_for_a_start_under_way(
    loop: asyncio.AbstractEventLoop, runtime_dir: Path
) -> None:
    """shutdown_kernel and shutdown_all while a (zero-race) start waits for the kernel's
    ports: the start completes, then the kernel is shut down, once."""
    config = Config({"KernelManager": {"kernel_binds_ports": True}})
    mkm = AsyncMultiKernelManager(config=config)
    made: list[Any] = []
    factory = mkm.kernel_manager_factory

    def recording_factory(*args: Any, **kwargs: Any) -> Any:
        made.append(factory(*args, **kwargs))
        return made[-1]

    mkm.kernel_manager_factory = recording_factory

    async def go() -> Traces:
        start = asyncio.ensure_future(mkm.start_kernel(kernel_id="racing"))
        while not (made and made[0].kernel is not None):
            await asyncio.sleep(0.001)
        traces = Traces(made)
        assert 0 in made[0].ports  # still waiting for the kernel to bind them
        await asyncio.gather(mkm.shutdown_kernel("racing"), mkm.shutdown_all())
        assert start.done() and start.result() == "racing"
        assert "racing" not in mkm
        return traces

    traces = run(loop, go())
    assert traces.left(runtime_dir) == NOTHING
    assert mkm.list_kernel_ids() == [] and mkm._pending_kernels == {}


def test_async_failed_start_leaves_nothing(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, runtime_dir: Path
) -> None:
    write_kernel_spec(tmp_path, "missing-exe", ["/nonexistent/kernel", "{connection_file}"])
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    mkm = AsyncMultiKernelManager(kernel_spec_manager=specs)
    held = LocalPortCache.instance().table.held()

    with pytest.raises(FileNotFoundError):
        run(loop, mkm.start_kernel(kernel_name="missing-exe", kernel_id="bad"))
    assert "bad" not in mkm and mkm._pending_kernels == {}
    assert not (runtime_dir / "kernel-bad.json").exists()
    assert LocalPortCache.instance().table.held() == held


def test_use_pending_kernels(loop: asyncio.AbstractEventLoop, runtime_dir: Path) -> None:
    mkm = AsyncMultiKernelManager(use_pending_kernels=True)

    async def go() -> Traces:
        kid = await mkm.start_kernel()
        km = mkm.get_kernel(kid)
        # Returned before the kernel started: listed, but pending.
        assert not km.ready.done() and km.kernel is None
        assert kid in mkm and mkm.list_kernel_ids() == [kid] and len(mkm) == 1
        with pytest.raises(RuntimeError, match=r"pending state\. Cannot interrupt"):
            mkm.interrupt_kernel(kid)
        with pytest.raises(RuntimeError, match=r"pending state\. Cannot restart"):
            await mkm.restart_kernel(kid)
        await km.ready
        traces = Traces([km])
        assert await mkm.is_alive(kid)
        await wait_ready_async(km)
        await mkm.restart_kernel(kid, now=True)
        traces.add(km)
        await wait_ready_async(km)  # (a SIGINT while it boots would kill it)
        await mkm.interrupt_kernel(kid)
        # A pending shutdown: returns once it is under way; ``ready`` says when it is done.
        await mkm.shutdown_kernel(kid)
        assert not km.ready.done()
        await km.ready
        assert kid not in mkm

        # Through a task of the caller's own, the kernel is still pending on return.
        kid = await asyncio.ensure_future(mkm.start_kernel())
        km = mkm.get_kernel(kid)
        assert not km.ready.done()
        # Shut down while pending: the start ends first, then the shutdown.
        await mkm.shutdown_kernel(kid, now=True)
        await km.ready
        assert kid not in mkm

        # shutdown_all returns when every kernel, pending ones included, is down.
        kids = [await mkm.start_kernel() for _ in range(3)]
        kms = [mkm.get_kernel(k) for k in kids]
        await mkm.shutdown_kernel(kids[0])  # under way when shutdown_all begins
        await mkm.shutdown_all()
        assert mkm.list_kernel_ids() == [] and mkm._pending_kernels == {}
        for k in kms:
            assert k.ready.done() and k.kernel is None
        return traces

    traces = run(loop, go())
    assert traces.left(runtime_dir) == NOTHING


def test_pending_kernel_whose_start_fails(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, runtime_dir: Path
) -> None:
    """As jupyter_client: listed until shut down, its failure on ``ready``; nothing left."""
    write_kernel_spec(tmp_path, "missing-exe", ["/nonexistent/kernel", "{connection_file}"])
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    mkm = AsyncMultiKernelManager(use_pending_kernels=True, kernel_spec_manager=specs)
    held = LocalPortCache.instance().table.held()

    async def go() -> None:
        kid = await mkm.start_kernel(kernel_name="missing-exe")
        with pytest.raises(FileNotFoundError):
            await mkm.get_kernel(kid).ready
        assert kid in mkm.list_kernel_ids()
        assert not (runtime_dir / f"kernel-{kid}.json").exists()
        await mkm.shutdown_kernel(kid)
        assert kid not in mkm.list_kernel_ids()

    run(loop, go())
    assert LocalPortCache.instance().table.held() == held


@pytest.mark.timeout(FARM_TIMEOUT + 60)
def test_64_kernels_at_once_through_async_multikernelmanager(
    loop: asyncio.AbstractEventLoop, runtime_dir: Path
) -> None:
    """64 kernels started concurrently in one event loop, every one answering, then
    shutdown_all: zero failures, and no process, file or reservation left."""
    mkm = AsyncMultiKernelManager()
    held_before = {row[0] for row in LocalPortCache.instance().table.held()}
    files_before = set(os.listdir(runtime_dir))

    async def start_and_ask(index: int) -> str:
        kid = await mkm.start_kernel()
        km = mkm.get_kernel(kid)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=FARM_TIMEOUT)
            reply = await kc.execute(f"{index} * 2", reply=True, timeout=FARM_TIMEOUT)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
        return kid

    async def go() -> tuple[list[Any], Traces]:
        results = await asyncio.gather(
            *(start_and_ask(i) for i in range(FARM_SIZE)), return_exceptions=True
        )
        traces = Traces(mkm.get_kernel(k) for k in mkm.list_kernel_ids())
        await mkm.shutdown_all()
        return results, traces

    t0 = time.monotonic()
    results, traces = run(loop, go(), timeout=FARM_TIMEOUT)
    elapsed = time.monotonic() - t0
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert len(set(results)) == FARM_SIZE and len(traces.pids) == FARM_SIZE
    assert len(traces.ports) == 5 * FARM_SIZE  # no port handed out twice
    assert mkm.list_kernel_ids() == []
    assert traces.left(runtime_dir) == NOTHING
    assert set(os.listdir(runtime_dir)) <= files_before
    assert {row[0] for row in LocalPortCache.instance().table.held()} <= held_before
    print(f"{FARM_SIZE} kernels ready and shut down in {elapsed:.1f} s")


# -- fork safety ----------------------------------------------------------------------------

FORK_SCRIPT = r"""
import asyncio, gc, json, os, sys
from kernel_connect.connect import LocalPortCache
from kernel_connect.multikernelmanager import AsyncMultiKernelManager, MultiKernelManager

face = sys.argv[1]
if face == "async":
    mkm = AsyncMultiKernelManager()

    async def start_two():
        return await asyncio.gather(mkm.start_kernel(), mkm.start_kernel())

    kids = asyncio.run(asyncio.wait_for(start_two(), 60))
else:
    mkm = MultiKernelManager()
    kids = [mkm.start_kernel(), mkm.start_kernel()]
kms = [mkm.get_kernel(k) for k in kids]
for km in kms:
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.stop_channels()
pids = [km.kernel.pid for km in kms]
files = [km.connection_file for km in kms]
ports = [p for km in kms for p in km.ports]
before = [open(f, "rb").read() for f in files]

child = os.fork()
if child == 0:
    # A worker that drops everything and exits normally: atexit hooks and __del__ run.
    del kms, km, kc
    mkm = None
    gc.collect()
    sys.exit(0)
_, status = os.waitpid(child, 0)

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

table = LocalPortCache.instance().table
facts = {
    "child": os.waitstatus_to_exitcode(status),
    "alive": [alive(p) for p in pids],
    "files_kept": [open(f, "rb").read() == b for f, b in zip(files, before)],
    "ports_held": all(table.holds(p) for p in ports),
    "context_open": not mkm.context.closed,
}
for km in kms:
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.stop_channels()
if face == "async":
    asyncio.run(asyncio.wait_for(mkm.shutdown_all(), 60))
else:
    mkm.shutdown_all()
reserved = {row[0] for row in table.held()}
facts["left"] = {
    "processes": [p for p in pids if alive(p)],
    "files": [f for f in files if os.path.exists(f)],
    "reservations": sorted(set(ports) & reserved),
}
print(json.dumps(facts))
"""


@pytest.mark.timeout(4 * READY_TIMEOUT)
@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_forked_childs_exit_leaves_the_parents_kernels(face: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, face],
        capture_output=True,
        text=True,
        timeout=2 * READY_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {
        "child": 0,
        "alive": [True, True],
        "files_kept": [True, True],
        "ports_held": True,
        "context_open": True,
        "left": {"processes": [], "files": [], "reservations": []},
    }


def test_no_key_in_errors_or_logs(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    mkm = AsyncMultiKernelManager()

    async def go() -> tuple[str, bytes]:
        kid = await mkm.start_kernel()
        key = mkm.get_kernel(kid).session.key
        try:
            await mkm.start_kernel(kernel_id=kid)
        except DuplicateKernelError as e:
            message = str(e)
        await mkm.shutdown_all()
        return message, key

    with caplog.at_level("DEBUG"):
        message, key = run(loop, go())
    assert key and key.decode() not in message
    assert key.decode() not in caplog.text
