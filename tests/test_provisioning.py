"""The jupyter_client plug-in: jupyter_client's own KernelManager, ports from our table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.provisioning import KernelProvisionerFactory

from kernel_connect.connect import PORT_NAMES, LocalPortCache
from kernel_connect.provisioning import KernelConnectProvisioner

pytestmark = pytest.mark.kernel


@pytest.fixture
def plugin_default() -> Iterator[None]:
    """Make the plug-in the default provisioner, as the README's one line does."""
    factory = KernelProvisionerFactory.instance()
    before = factory.default_provisioner_name
    factory.default_provisioner_name = "kernel-connect-provisioner"
    yield
    factory.default_provisioner_name = before


def _ports(km: KernelManager | AsyncKernelManager) -> list[int]:
    return [getattr(km, name) for name in PORT_NAMES]


def test_plugin_is_registered_and_selected(plugin_default: None) -> None:
    factory = KernelProvisionerFactory.instance()
    assert "kernel-connect-provisioner" in factory.get_provisioner_entries()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        assert isinstance(km.provisioner, KernelConnectProvisioner)
        table = LocalPortCache.instance().table
        ports = _ports(km)
        assert len(set(ports)) == 5
        assert all(table.holds(p) for p in ports), "ports come from our table"
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("21 * 2", timeout=30)
        assert reply["content"]["status"] == "ok"
        kc.stop_channels()
        km.restart_kernel(now=True)
        assert _ports(km) == ports, "a restart keeps the ports"
        assert all(table.holds(p) for p in ports)
    finally:
        km.shutdown_kernel(now=True)
    assert not any(table.holds(p) for p in ports), "ports released after shutdown"


def test_sixteen_kernels_at_once_have_no_collision(plugin_default: None) -> None:
    async def farm() -> list[list[int]]:
        managers = [AsyncKernelManager(kernel_name="python3") for _ in range(16)]
        try:
            await asyncio.gather(*(km.start_kernel() for km in managers))
            clients = [km.client() for km in managers]
            for kc in clients:
                kc.start_channels()
            await asyncio.gather(*(kc.wait_for_ready(timeout=120) for kc in clients))
            for kc in clients:
                kc.stop_channels()
            assert all(isinstance(km.provisioner, KernelConnectProvisioner) for km in managers)
            return [_ports(km) for km in managers]
        finally:
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))

    ports = asyncio.run(farm())
    flat = [p for kernel in ports for p in kernel]
    assert len(flat) == 80 and len(set(flat)) == 80
    table = LocalPortCache.instance().table
    assert not any(table.holds(p) for p in flat)
