"""A jupyter_client kernel provisioner that takes ports from kernel-connect's table.

It launches local kernels exactly as jupyter_client's ``LocalProvisioner`` does
(it is one, by inheritance); the only change is where the five ports come from:
kernel-connect's host-wide reservation table instead of jupyter_client's
per-process ``LocalPortCache``, so kernels started by different servers,
notebook runners and farm processes on one host never collide. The ports are
returned when the kernel ends.

Use it for a whole server with one line of configuration::

    c.KernelProvisionerFactory.default_provisioner_name = "kernel-connect-provisioner"

(or ``JUPYTER_DEFAULT_PROVISIONER_NAME=kernel-connect-provisioner`` in the
environment), or per kernel spec with
``"metadata": {"kernel_provisioner": {"provisioner_name": "kernel-connect-provisioner"}}``.

This module imports jupyter_client, which kernel-connect itself never needs;
it is loaded only through the entry point, where jupyter_client is installed.
"""

from __future__ import annotations

from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from kernel_connect.connect import PORT_NAMES
from kernel_connect.ports import LocalPortCache


class KernelConnectProvisioner(LocalProvisioner):
    """jupyter_client's LocalProvisioner with ports from the reservation table."""

    _reserved: list[int]

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is not None and km.transport == "tcp" and km.cache_ports and not self.ports_cached:
            ports = LocalPortCache.instance().reserve(km.ip, len(PORT_NAMES))
            for name, port in zip(PORT_NAMES, ports, strict=True):
                setattr(km, name, port)
            self._reserved = ports
            # LocalProvisioner allocates only when it has no cached ports yet.
            self.ports_cached = True
        result: dict[str, Any] = await super().pre_launch(**kwargs)
        return result

    async def cleanup(self, restart: bool = False) -> None:
        if not restart:
            LocalPortCache.instance().return_ports(getattr(self, "_reserved", []))
            self._reserved = []
        await super().cleanup(restart=restart)
