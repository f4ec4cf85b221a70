"""Local and public IP addresses of this host.

Same functions as jupyter_client.localinterfaces, but the addresses come from
getifaddrs(3) in the Rust core instead of running and parsing ``ip``/``ifconfig``.
The list is read once and cached; pass ``refresh=True`` to read it again.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

from kernel_connect import _native


@lru_cache(maxsize=1)
def _addresses() -> tuple[list[str], list[str], str]:
    """(local, public, localhost): every interface address, the non-loopback ones,
    and the loopback address to use, as jupyter_client orders them."""
    found: list[str] = []
    try:
        found = _native.interface_addresses()
    except OSError:
        found = []
    v4 = [a for a in found if ":" not in a]
    loopback_v4 = [a for a in v4 if ipaddress.ip_address(a).is_loopback]
    localhost = loopback_v4[0] if loopback_v4 else _fallback_localhost()
    public = [a for a in v4 if not ipaddress.ip_address(a).is_loopback]
    local = _unique([localhost, *loopback_v4, *public, "0.0.0.0"])  # noqa: S104 - listed, not bound
    return local, public, localhost


def _fallback_localhost() -> str:
    """Without a configured IPv4 loopback, fall back to what the resolver says."""
    try:
        return socket.gethostbyname("localhost")
    except OSError:
        return "127.0.0.1"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _refresh(refresh: bool) -> None:
    if refresh:
        _addresses.cache_clear()


def localhost(refresh: bool = False) -> str:
    """The loopback address kernels bind by default (normally ``127.0.0.1``)."""
    _refresh(refresh)
    return _addresses()[2]


def local_ips(refresh: bool = False) -> list[str]:
    """Every IPv4 address of this host, loopback first, plus ``0.0.0.0``."""
    _refresh(refresh)
    return list(_addresses()[0])


def public_ips(refresh: bool = False) -> list[str]:
    """This host's non-loopback IPv4 addresses."""
    _refresh(refresh)
    return list(_addresses()[1])


def is_local_ip(ip: str) -> bool:
    """True if ``ip`` is an address of this host (any loopback address counts)."""
    if ip in ("", "*", "localhost"):
        return True
    try:
        if ipaddress.ip_address(ip.strip("[]")).is_loopback:
            return True
    except ValueError:
        return False
    return ip in _addresses()[0] or ip.strip("[]") in _native.interface_addresses()


def is_public_ip(ip: str) -> bool:
    """True if ``ip`` is one of this host's non-loopback addresses."""
    return ip in _addresses()[1]


__all__ = ["is_local_ip", "is_public_ip", "local_ips", "localhost", "public_ips"]
