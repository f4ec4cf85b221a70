"""The blocking client, under jupyter_client's module name (``jupyter_client.blocking``)."""

from __future__ import annotations

from kernel_connect.client import BlockingKernelClient

__all__ = ["BlockingKernelClient"]
