"""KernelManager's jupyter_client parity: names, traits, ready, context, env, pre/post start,
and the client's one way to its manager (the KernelOwner protocol)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

import pytest
import zmq
from traitlets.config import Config

import kernel_connect
from kernel_connect.client import AsyncKernelClient, BlockingKernelClient, KernelClient, KernelOwner
from kernel_connect.connect import LocalPortCache
from kernel_connect.errors import KernelDeath
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_fixtures import (
    READY_TIMEOUT,
    file_mode,
    pid_alive,
    ports_held,
    result_text,
    run_code,
    start_ready_kernel,
    stop_kernel,
    stream_text,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel


def test_jupyter_client_names_are_exported() -> None:
    from kernel_connect import asynchronous, blocking, ioloop, restarter, threaded

    for name in (
        "AsyncKernelManager",
        "AsyncKernelClient",
        "KernelClient",
        "KernelRestarter",
        "ThreadedKernelClient",
        "start_new_async_kernel",
    ):
        assert name in kernel_connect.__all__
        assert getattr(kernel_connect, name) is not None
    assert kernel_connect.KernelClient is KernelClient
    assert kernel_connect.KernelRestarter is restarter.KernelRestarter
    assert kernel_connect.ThreadedKernelClient is threaded.ThreadedKernelClient
    assert blocking.BlockingKernelClient is BlockingKernelClient
    assert asynchronous.AsyncKernelClient is AsyncKernelClient
    for cls in (BlockingKernelClient, AsyncKernelClient, threaded.ThreadedKernelClient):
        assert issubclass(cls, KernelClient)
    assert issubclass(ioloop.IOLoopKernelManager, KernelManager)
    assert issubclass(ioloop.AsyncIOLoopKernelManager, AsyncKernelManager)
    for cls in (ioloop.IOLoopKernelRestarter, ioloop.AsyncIOLoopKernelRestarter):
        assert issubclass(cls, restarter.KernelRestarter)
    assert issubclass(restarter.ThreadedKernelRestarter, restarter.KernelRestarter)


def test_import_stays_lean() -> None:
    """`import kernel_connect` loads no zmq, traitlets or asyncio; the blocking manager
    and clients load no asyncio either (only the asyncio face does)."""
    code = (
        "import sys, kernel_connect\n"
        "heavy = ('zmq', 'traitlets', 'asyncio', 'zmq.asyncio', 'concurrent.futures')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from kernel_connect import KernelManager, BlockingKernelClient, KernelClient\n"
        "km = KernelManager(); km.client_factory; km.ready\n"
        "print(sorted(m for m in ('asyncio', 'zmq.asyncio') if m in sys.modules))\n"
        "kernel_connect.AsyncKernelManager\n"
        "print(sorted(m for m in ('asyncio',) if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["[]", "[]", "[]"]


def test_manager_traits_of_jupyter_client(tmp_path: Path) -> None:
    km = KernelManager()
    assert km.autorestart is True
    assert km.restarter_class is None  # as jupyter_client's KernelManager: none
    assert km.cache_ports is True
    assert (
        KernelManager(transport="ipc", connection_file=str(tmp_path / "k.json")).cache_ports
        is False
    )
    assert km.shutting_down is False
    assert km.client_class == "kernel_connect.client.BlockingKernelClient"
    assert km.client_factory is BlockingKernelClient
    akm = AsyncKernelManager()
    assert akm.client_class == "kernel_connect.client.AsyncKernelClient"
    assert akm.client_factory is AsyncKernelClient
    km.client_class = "kernel_connect.client.AsyncKernelClient"
    assert km.client_factory is AsyncKernelClient
    configured = KernelManager(
        config=Config(KernelManager={"client_class": "kernel_connect.client.AsyncKernelClient"})
    )
    assert configured.client_factory is AsyncKernelClient
    assert isinstance(configured.client(), AsyncKernelClient)
    # A subclass of KernelClient as the factory.
    km.client_factory = BlockingKernelClient
    assert isinstance(km.client(), BlockingKernelClient)


@pytest.fixture
def missing_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    write_kernel_spec(tmp_path, "missing", ["no-such-kernel-binary-kc", "{connection_file}"])
    return "missing"


def test_ready_is_a_future_of_the_last_start(missing_spec: str) -> None:
    km = KernelManager()
    ready = km.ready
    assert isinstance(ready, Future)
    assert not ready.done()
    km.start_kernel()
    try:
        assert km.ready is ready  # the future handed out before the start
        assert ready.result(timeout=0) is None
    finally:
        km.shutdown_kernel(now=True)
    assert km.ready.done()
    failing = KernelManager(kernel_name=missing_spec)
    with pytest.raises(FileNotFoundError):
        failing.start_kernel()
    assert isinstance(failing.ready.exception(timeout=0), FileNotFoundError)


def test_context_closed_after_shutdown_and_live_after_restart() -> None:
    km, kc = start_ready_kernel()
    try:
        context = km.context
        assert not context.closed
        assert context is not zmq.Context.instance()  # the manager's own
        kc.stop_channels()
        km.restart_kernel()
        assert km.context is context and not context.closed  # a restart keeps it
        km.shutdown_kernel()  # polite: the control socket was in use
        assert km.context.closed
        assert km.shutting_down is True
        # Started again after the shutdown: a new context, live.
        km.restart_kernel()
        assert km.shutting_down is False
        assert not km.context.closed and km.context is not context
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert result_text(run_code(kc, "'again'")[1]) == "'again'"
    finally:
        stop_kernel(km, kc)
    assert km.context.closed  # shutdown_kernel(now=True) closes it too


def test_a_context_given_to_the_manager_is_left_open() -> None:
    context = zmq.Context()
    try:
        km = KernelManager(context=context)
        km.start_kernel()
        km.shutdown_kernel()
        assert not context.closed
    finally:
        context.destroy(linger=0)


def test_update_env_reaches_the_restarted_kernel() -> None:
    km, kc = start_ready_kernel()
    code = "import os; print(os.environ.get('KC_ONE'), os.environ.get('KC_TWO'))"
    try:
        assert stream_text(run_code(kc, code)[1]) == "None None\n"
        km.update_env(env={"KC_ONE": "1"})
        km.restart_kernel()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert stream_text(run_code(kc, code)[1]) == "1 None\n"
        # With an explicit environment, that is what gets updated.
        km.restart_kernel(env={"PATH": os.environ["PATH"], "KC_TWO": "2"})
        km.update_env(env={"KC_ONE": "one"})
        km.restart_kernel()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert stream_text(run_code(kc, code)[1]) == "one 2\n"
    finally:
        stop_kernel(km, kc)


def test_pre_and_post_start_kernel() -> None:
    km = KernelManager()
    held_before = LocalPortCache.instance().table.held()
    cmd, kw = km.pre_start_kernel(extra_arguments=["--no-such-flag-kc"], extra_env={"KC": "x"})
    try:
        assert os.path.exists(km.connection_file)
        assert file_mode(km.connection_file) == 0o600
        assert os.path.realpath(km.connection_file) in cmd
        assert cmd[-1] == "--no-such-flag-kc"
        assert kw["env"]["KC"] == "x"
        assert "extra_env" not in kw and "extra_arguments" not in kw
        assert all(ports_held(km.ports))
        with open(km.connection_file) as f:
            assert json.load(f)["shell_port"] == km.shell_port
        km.post_start_kernel(**kw)  # nothing launched: nothing to wait for or watch
        assert not km.has_kernel
    finally:
        km.cleanup_resources()
    assert not os.path.exists(km.connection_file)
    assert LocalPortCache.instance().table.held() == held_before


def test_async_pre_and_post_start_kernel_are_coroutines() -> None:
    import asyncio

    km = AsyncKernelManager()

    async def go() -> None:
        cmd, kw = await km.pre_start_kernel()
        assert os.path.exists(km.connection_file)
        assert os.path.realpath(km.connection_file) in cmd
        await km.post_start_kernel(**kw)
        await km.cleanup_resources()
        assert not os.path.exists(km.connection_file)

    asyncio.run(asyncio.wait_for(go(), READY_TIMEOUT))


class RecordingOwner:
    """A KernelOwner in front of the manager's own: the client's only way to it."""

    def __init__(self, inner: KernelOwner) -> None:
        self.inner = inner
        self.recovered = 0

    def is_alive(self) -> bool:
        return self.inner.is_alive()

    def death(self) -> KernelDeath:
        return self.inner.death()

    def start_failure(self) -> KernelDeath | None:
        return self.inner.start_failure()

    def recover(self) -> Mapping[str, int] | None:
        self.recovered += 1
        return self.inner.recover()

    async def recover_async(self) -> Mapping[str, int] | None:
        self.recovered += 1
        return await self.inner.recover_async()


def test_client_recovers_a_port_clash_only_through_its_owner() -> None:
    """The client reaches no manager attribute: a port clash goes to its KernelOwner,
    whose policy (the manager's) restarts the kernel on new ports."""
    km = KernelManager()
    km.write_connection_file()  # ports reserved now; the kernel binds them later
    taken = km.iopub_port
    outsider = socket.socket()
    try:
        outsider.bind((km.ip, taken))
        outsider.listen()
        km.start_kernel()
        kc = km.client()
        assert isinstance(kc.liveness, KernelOwner)
        owner = RecordingOwner(kc.liveness)
        kc.liveness = owner
        kc.parent = None  # not even the parent to reach the manager by
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=READY_TIMEOUT)
            assert owner.recovered == 1
            assert km.port_clash_restarts == 1
            assert km.iopub_port != taken
            assert kc.iopub_port == km.iopub_port
            assert result_text(run_code(kc, "'recovered'")[1]) == "'recovered'"
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
    finally:
        outsider.close()
    assert not os.path.exists(km.connection_file)


def test_the_kernels_death_is_reported_by_its_owner() -> None:
    km, kc = start_ready_kernel()
    owner = kc.liveness
    assert isinstance(owner, KernelOwner)
    assert owner.is_alive() and owner.start_failure() is None
    assert km.kernel is not None
    pid = km.kernel.pid
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    assert not pid_alive(pid)
    assert not owner.is_alive()
    assert "SIGKILL" in owner.death().description
    assert owner.recover() is None  # not a port clash: nothing to recover


def _params(fn: object) -> list[str]:
    import inspect

    sig = inspect.signature(fn)  # type: ignore[arg-type]
    out = []
    for p in list(sig.parameters.values())[1:]:
        prefix = "**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else ""
        default = "" if p.default is p.empty else f"={p.default!r}"
        out.append(f"{prefix}{p.name}{default}")
    return out


@pytest.mark.parametrize(
    "name",
    [
        "start_kernel",
        "shutdown_kernel",
        "restart_kernel",
        "interrupt_kernel",
        "signal_kernel",
        "is_alive",
        "request_shutdown",
        "finish_shutdown",
        "cleanup_resources",
        "post_start_kernel",
        "start_restarter",
        "stop_restarter",
        "add_restart_callback",
        "remove_restart_callback",
        "update_env",
        "client",
    ],
)
def test_manager_signatures_are_jupyter_clients(name: str) -> None:
    import jupyter_client

    jc = jupyter_client.KernelManager
    # Its blocking methods wrap coroutines (run_sync): the coroutine has the signature.
    theirs = getattr(jc, f"_async_{name}", getattr(jc, name))
    assert _params(getattr(KernelManager, name)) == _params(theirs)


@pytest.mark.parametrize(
    "name",
    ["execute", "complete", "inspect", "history", "kernel_info", "comm_info", "is_complete"],
)
def test_request_signatures_are_jupyter_clients_plus_reply_and_timeout(name: str) -> None:
    """jupyter_client's KernelClient method, with reply= and timeout= (which its
    blocking and async clients take through **kwargs) as keyword-only parameters."""
    import jupyter_client

    theirs = _params(getattr(jupyter_client.KernelClient, name))
    ours = [
        p
        for p in _params(getattr(KernelClient, name))
        if p.split("=")[0] not in ("reply", "timeout")
    ]
    assert ours == theirs
    assert "reply=False" in _params(getattr(KernelClient, name))
    assert "timeout=None" in _params(getattr(KernelClient, name))
