"""The asyncio client, under jupyter_client's module name (``jupyter_client.asynchronous``)."""

from __future__ import annotations

from kernel_connect.client import AsyncKernelClient

__all__ = ["AsyncKernelClient"]
