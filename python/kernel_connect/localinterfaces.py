"""Local and public IP addresses of this host.

Same names and lists as jupyter_client.localinterfaces, but the addresses come
from getifaddrs(3) in the Rust core instead of running and parsing
``ip``/``ifconfig``. They are read on first use and cached; pass
``refresh=True`` to read them again.

``LOCALHOST``, ``LOCAL_IPS`` and ``PUBLIC_IPS`` are module attributes as in
jupyter_client, read on first access. ``LOCAL_IPS`` and ``PUBLIC_IPS`` are
lists kept up to date in place: an address appended to ``LOCAL_IPS`` counts as
local for :func:`is_local_ip`. The functions return copies.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

from kernel_connect import _native

# The live lists behind LOCAL_IPS and PUBLIC_IPS (filled in place) and LOCALHOST.
_LOCAL_IPS: list[str] = []
_PUBLIC_IPS: list[str] = []
_localhost = ""
_loaded = False
_lock = threading.Lock()

#: The address jupyter_client falls back to when no interface gives one.
_DEFAULT_LOCALHOST = "127.0.0.1"


class NoIPAddresses(Exception):
    """No IPv4 address could be read from this host's interfaces."""


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _populate(addresses: list[str]) -> None:
    """Fill the lists from this host's IPv4 addresses, in interface order.

    jupyter_client's rules: localhost is the first loopback address, or
    127.0.0.1 (then listed first); public addresses are neither loopback nor
    link-local (169.254/16); ``0.0.0.0`` and ``''`` (every interface) are local.

    Raises
    ------
    NoIPAddresses
        If ``addresses`` is empty.
    """
    global _localhost
    if not addresses:
        raise NoIPAddresses()
    parsed = [(a, ipaddress.ip_address(a)) for a in addresses]
    localhost = next((a for a, ip in parsed if ip.is_loopback), "") or _DEFAULT_LOCALHOST
    local = [a for a, _ in parsed]
    if localhost == _DEFAULT_LOCALHOST:
        local.insert(0, localhost)
    public = [a for a, ip in parsed if not (ip.is_loopback or ip.is_link_local)]
    _LOCAL_IPS[:] = _unique([*local, "0.0.0.0", ""])  # noqa: S104 - listed, not bound
    _PUBLIC_IPS[:] = _unique(public)
    _localhost = localhost


def _resolve_localhost() -> str:
    try:
        return socket.gethostbyname("localhost")
    except OSError:
        return _DEFAULT_LOCALHOST


def _load(refresh: bool = False) -> None:
    """Read the addresses once (again with ``refresh``)."""
    global _loaded, _localhost
    if _loaded and not refresh:
        return
    with _lock:
        if _loaded and not refresh:
            return
        try:
            found = _native.interface_addresses()
        except OSError:
            found = []
        try:
            _populate([a for a in found if ":" not in a])
        except NoIPAddresses:
            # No interface to read: ask the resolver, as jupyter_client's last resort does.
            _localhost = _resolve_localhost()
            _LOCAL_IPS[:] = _unique([_localhost, "0.0.0.0", ""])  # noqa: S104 - listed, not bound
            _PUBLIC_IPS[:] = []
        _loaded = True


def localhost(refresh: bool = False) -> str:
    """The loopback address kernels bind by default (normally ``127.0.0.1``)."""
    _load(refresh)
    return _localhost


def local_ips(refresh: bool = False) -> list[str]:
    """The addresses that point to this machine.

    Every IPv4 address of this host (localhost first), then ``'0.0.0.0'`` and
    ``''``, which mean every interface.
    """
    _load(refresh)
    return list(_LOCAL_IPS)


def public_ips(refresh: bool = False) -> list[str]:
    """This host's IPv4 addresses that other machines may reach (not loopback
    nor link-local)."""
    _load(refresh)
    return list(_PUBLIC_IPS)


def is_local_ip(ip: str) -> bool:
    """True if ``ip`` points to this machine.

    What :func:`local_ips` lists, and also ``'*'``, ``'localhost'``, any
    loopback address (all of 127/8, ``::1``) and this host's IPv6 addresses.
    """
    _load()
    if ip in _LOCAL_IPS or ip in ("*", "localhost"):
        return True
    try:
        if ipaddress.ip_address(ip.strip("[]")).is_loopback:
            return True
    except ValueError:
        return False
    return ip.strip("[]") in _native.interface_addresses()


def is_public_ip(ip: str) -> bool:
    """True if ``ip`` is one of :func:`public_ips`."""
    _load()
    return ip in _PUBLIC_IPS


def __getattr__(name: str) -> Any:
    # jupyter_client's module globals, read (from the interfaces) on first access.
    if name == "LOCAL_IPS":
        _load()
        return _LOCAL_IPS
    if name == "PUBLIC_IPS":
        _load()
        return _PUBLIC_IPS
    if name == "LOCALHOST":
        _load()
        return _localhost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # Provided by __getattr__ (read on first access).
    "LOCALHOST",  # noqa: F822
    "LOCAL_IPS",  # noqa: F822
    "PUBLIC_IPS",  # noqa: F822
    "NoIPAddresses",
    "is_local_ip",
    "is_public_ip",
    "local_ips",
    "localhost",
    "public_ips",
]
