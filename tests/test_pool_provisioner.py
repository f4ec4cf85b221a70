"""The pool provisioner plug-in: jupyter_client's own KernelManager, kernels from a warm pool."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.provisioning import KernelProvisionerFactory
from traitlets.config import Config

from kernel_connect import pool_provisioner
from kernel_connect.connect import PORT_NAMES
from kernel_connect.pool import launcher_available
from kernel_connect.pool_provisioner import KernelConnectPoolProvisioner
from kernel_fixtures import READY_TIMEOUT, pid_alive, ports_held, wait_until

pytestmark = pytest.mark.kernel

NAME = "kernel-connect-pool-provisioner"
CONFIG = Config({"KernelConnectPoolProvisioner": {"pool_size": 1}})


@pytest.fixture(scope="module")
def plugin_default() -> Iterator[None]:
    """Make the plug-in the default provisioner, as the README's one line does;
    close the process-wide pools it made at the end."""
    factory = KernelProvisionerFactory.instance()
    before = factory.default_provisioner_name
    factory.default_provisioner_name = NAME
    yield
    factory.default_provisioner_name = before
    for pool in list(pool_provisioner._pools.values()):
        pool.close()
    pool_provisioner._pools.clear()


def _ports(km: KernelManager | AsyncKernelManager) -> list[int]:
    return [getattr(km, name) for name in PORT_NAMES]


def _run(kc: Any, code: str) -> tuple[dict[str, Any], str]:
    """Run ``code`` through a jupyter_client blocking client; (reply, stdout)."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=30, output_hook=hook)
    return reply, "".join(out)


def _pooled(km: KernelManager | AsyncKernelManager) -> Any:
    provisioner = km.provisioner
    assert isinstance(provisioner, KernelConnectPoolProvisioner)
    return provisioner._km


def test_plugin_is_registered() -> None:
    assert NAME in KernelProvisionerFactory.instance().get_provisioner_entries()


def test_through_jupyter_clients_kernel_manager(plugin_default: None, tmp_path: Path) -> None:
    km = KernelManager(kernel_name="python3", config=CONFIG)
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "KC_FROM_SERVER": "yes"})
    ours = _pooled(km)
    try:
        pool = next(iter(pool_provisioner._pools.values()))
        assert pool.stats().taken >= 1, "taken from the pool"
        pid = km.provisioner.pid
        # The kernel's connection info is the KernelManager's; both files agree.
        with open(km.connection_file) as f:
            theirs = json.load(f)
        with open(ours.connection_file) as f:
            pooled = json.load(f)
        assert km.connection_file != ours.connection_file
        for field in (*PORT_NAMES, "ip", "transport", "signature_scheme", "key"):
            assert theirs[field] == pooled[field], field
        assert km.session.key == ours.session.key
        assert all(ports_held(_ports(km)))

        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        reply, out = _run(kc, "import os; print(os.getcwd(), os.environ['KC_FROM_SERVER'])")
        assert reply["content"]["status"] == "ok"
        assert out == f"{tmp_path} yes\n"
        _run(kc, "survivor = 1")
        # Interrupt through jupyter_client: KeyboardInterrupt reaches the cell.
        msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id:
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        # A restart: a fresh kernel on the same ports, with the same key, same cwd.
        ports, key = _ports(km), km.session.key
        km.restart_kernel(now=False)
        assert km.provisioner.pid != pid and not pid_alive(pid)
        assert _ports(km) == ports and km.session.key == key
        kc.wait_for_ready(timeout=READY_TIMEOUT)  # the old client still reaches it
        reply, out = _run(kc, "import os; print('survivor' in globals(), os.getcwd())")
        assert out == f"False {tmp_path}\n"
        kc.stop_channels()
    finally:
        pid = km.provisioner.pid if km.provisioner is not None else None
        files = [km.connection_file, ours.connection_file]
        ports = _ports(km)
        km.shutdown_kernel()
    assert pid is not None and not pid_alive(pid)
    assert not any(os.path.exists(f) for f in files)
    assert not any(ports_held(ports))
    assert not km.has_kernel


def test_async_kernel_manager_and_a_restart_on_new_ports(plugin_default: None) -> None:
    async def run() -> tuple[list[int], list[int], list[str], int | None]:
        km = AsyncKernelManager(kernel_name="python3", config=CONFIG)
        await km.start_kernel()
        ours = _pooled(km)
        try:
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            reply = await kc.execute("x = 6 * 7", reply=True, timeout=30)
            assert reply["content"]["status"] == "ok"
            kc.stop_channels()
            before = _ports(km)
            await km.restart_kernel(now=True, newports=True)
            after = _ports(km)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            kc.stop_channels()
        finally:
            files = [km.connection_file, ours.connection_file]
            pid = km.provisioner.pid if km.provisioner is not None else None
            await km.shutdown_kernel(now=True)
        return before, after, files, pid

    before, after, files, pid = asyncio.run(run())
    assert set(before).isdisjoint(after), "newports=True gave new ports"
    assert pid is not None and not pid_alive(pid)
    assert not any(os.path.exists(f) for f in files)
    assert not any(ports_held(before + after))


def test_a_start_the_pool_cannot_serve_is_a_cold_one(plugin_default: None) -> None:
    """extra_arguments were not given to pooled kernels: that kernel starts cold."""
    km = KernelManager(kernel_name="python3", config=CONFIG)
    pool = None
    try:
        km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
        pool = next(iter(pool_provisioner._pools.values()))
        taken = pool.stats().taken
        assert _pooled(km) not in pool.pooled_managers()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        _, out = _run(kc, "print(get_ipython().history_manager.enabled)")
        assert out == "False\n"
        kc.stop_channels()
        assert pool.stats().taken == taken
    finally:
        pid = km.provisioner.pid if km.provisioner is not None else None
        km.shutdown_kernel(now=True)
    assert pid is not None and not pid_alive(pid)


def test_a_kernel_killed_under_jupyter_client_is_seen_dead(plugin_default: None) -> None:
    km = KernelManager(kernel_name="python3", config=CONFIG)
    km.start_kernel()
    try:
        pid = km.provisioner.pid
        assert km.is_alive()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not km.is_alive(), 10)
    finally:
        files = [km.connection_file, _pooled(km).connection_file]
        km.shutdown_kernel(now=True)
    assert not any(os.path.exists(f) for f in files)


@pytest.mark.skipif(not launcher_available("fork"), reason="no fork launcher in this build")
def test_fork_launched_pool_through_jupyter_client(plugin_default: None) -> None:
    config = Config({"KernelConnectPoolProvisioner": {"pool_size": 1, "launcher": "fork"}})
    km = KernelManager(kernel_name="python3", config=config)
    km.start_kernel()
    ours = _pooled(km)
    try:
        assert ours.launcher == "fork"
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert _run(kc, "print(6 * 7)")[1] == "42\n"
        pid = km.provisioner.pid
        km.restart_kernel(now=True)
        assert km.provisioner.pid != pid and not pid_alive(pid)
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert _run(kc, "print('again')")[1] == "again\n"
        kc.stop_channels()
    finally:
        pid = km.provisioner.pid
        files = [km.connection_file, ours.connection_file]
        km.shutdown_kernel()
    assert pid is not None and not pid_alive(pid)
    assert not any(os.path.exists(f) for f in files)
