"""Port allocation: ``LocalPortCache`` over the host-wide reservation table.

Every port kernel-connect hands out is reserved in one table per port space
(see :mod:`kernel_connect.paths` for where it lives), so no two kernels on the
host are ever handed the same port, whichever process, user or Jupyter runtime
directory starts them. A reservation is one of two kinds:

*held*
    Lasts until it is returned (:meth:`LocalPortCache.return_port`), its owner
    exits, or its owner dies (SIGKILL included: the next allocation that meets
    it sees the owner gone). KernelManager, tunnels and
    :meth:`LocalPortCache.find_available_port` hold their ports.
*lease*
    Ends by itself after a start-up window (:data:`DEFAULT_LEASE_SECONDS`,
    setting ``KERNEL_CONNECT_LEASE_SECONDS``), whether or not its maker still
    runs: for ports that no object will ever return, such as those of the
    module-level ``write_connection_file``. Until it ends the port is protected
    exactly as a held one; a kernel that has bound it by then keeps it by the
    OS's own rule. A lease for a connection file also ends as soon as its maker
    sees that file deleted or replaced, and a process's oldest lease ends early
    once it has taken :data:`MAX_LEASED_PORTS` newer leased ports, so that no
    one process can fill the host's table with leases.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

from kernel_connect import _native
from kernel_connect.localinterfaces import localhost
from kernel_connect.paths import TableLocation, port_table_locations

#: How long a lease protects its ports when no setting says otherwise: long
#: enough for a slow kernel start (nbclient and jupyter_server give a kernel
#: 60 s to answer), twice over.
DEFAULT_LEASE_SECONDS = 120

#: How many leased ports one process (one LocalPortCache) keeps protected at
#: once: past it, its oldest lease ends as a new one is taken. An eighth of
#: the table's 32,768 default ports, so a runaway loop of select_random_ports
#: or write_connection_file in one process cannot starve the host's other
#: users (jupyter_client's own tests take 40,960 ports that way), while a
#: busy server still gets 819 five-port files protected at once.
MAX_LEASED_PORTS = 4096

#: How many remembered leases one new lease checks for deleted files: more
#: than one, so the list shrinks faster than a churning caller grows it.
_LEASES_CHECKED_PER_CALL = 2


class _Lease(NamedTuple):
    """Ports leased for one connection file, and that file's identity."""

    ports: tuple[int, ...]
    path: str
    device: int
    inode: int
    until: int


class LocalPortCache:
    """Process-wide access to the port reservation table.

    Ports from :meth:`find_available_port` and :meth:`reserve` are *held* by
    this process until :meth:`return_port`, until it exits, or until another
    allocation finds it dead. Ports from :meth:`lease` are protected for
    ``lease_seconds`` (default :data:`DEFAULT_LEASE_SECONDS`, or
    ``KERNEL_CONNECT_LEASE_SECONDS``), then end by themselves.

    Ports come from above the OS's ephemeral range, which the OS never hands
    out by itself (so no other process's bind to port 0, nor an outgoing
    connection, can take a port between its reservation and the kernel's bind),
    then from the ephemeral range's odd ports, then its even ones. Set
    ``KERNEL_CONNECT_PORT_RANGE=low-high`` (or pass ``port_range``) to take
    ports from a fixed range instead.
    """

    _instance: ClassVar[LocalPortCache | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        table: _native.PortTable | None = None,
        port_range: tuple[int, int] | None = None,
        lease_seconds: int | None = None,
        max_leased_ports: int = MAX_LEASED_PORTS,
    ) -> None:
        self._table = table
        self._table_lock = threading.Lock()
        self.port_range = port_range if port_range is not None else _range_from_env()
        self.lease_seconds = lease_seconds if lease_seconds is not None else _lease_from_env()
        if not isinstance(self.lease_seconds, int) or not 0 < self.lease_seconds < 2**31:
            raise ValueError(f"lease_seconds must be a positive int, not {self.lease_seconds!r}")
        if not isinstance(max_leased_ports, int) or max_leased_ports < 1:
            raise ValueError(f"max_leased_ports must be a positive int, not {max_leased_ports!r}")
        self.max_leased_ports = max_leased_ports
        self._leases: collections.deque[_Lease] = collections.deque()
        self._leases_lock = threading.Lock()
        # Every port this process leases, oldest first, with when its lease
        # ends: leases all last lease_seconds, so the order is the end order.
        self._leased: collections.OrderedDict[int, int] = collections.OrderedDict()

    @classmethod
    def instance(cls, *args: Any, **kwargs: Any) -> LocalPortCache:
        """The process-wide instance (created on first call)."""
        if cls._instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    cls._instance = cls(*args, **kwargs)
        return cls._instance

    @classmethod
    def initialized(cls) -> bool:
        """True once :meth:`instance` has created the instance."""
        return cls._instance is not None

    @classmethod
    def clear_instance(cls) -> None:
        """Forget the process-wide instance (tests use this to change settings)."""
        with cls._instance_lock:
            cls._instance = None

    @property
    def table(self) -> _native.PortTable:
        """The reservation table, opened on first use."""
        if self._table is None:
            with self._table_lock:
                if self._table is None:
                    self._table = _open_table()
        return self._table

    def find_available_port(self, ip: str) -> int:
        """Reserve one port free to bind on ``ip`` and return it.

        Held by this process until :meth:`return_port` or its exit.
        """
        return self.reserve(ip, 1)[0]

    def reserve(self, ip: str, count: int) -> list[int]:
        """Reserve ``count`` distinct ports free to bind on ``ip``, in one call.

        Held by this process until :meth:`return_port` or its exit.

        Raises
        ------
        OSError
            (EADDRINUSE) when no candidate port is free.
        ValueError
            When ``count`` exceeds the number of candidate ports.
        """
        _check_count(count)
        table = self._table or self.table
        try:
            return table.reserve(ip or localhost(), count, self.port_range)
        finally:
            _warn_notices(table)

    def lease(self, ip: str, count: int, path: str | os.PathLike[str] | None = None) -> list[int]:
        """Lease ``count`` distinct ports free to bind on ``ip``.

        The ports are protected for ``lease_seconds`` and then end by
        themselves, even if this process has exited. With ``path``, call
        :meth:`leased_for` once that file is written: the lease then also ends
        as soon as this process sees the file deleted or replaced. Once this
        process has ``max_leased_ports`` newer leased ports, its oldest lease
        ends early.
        """
        _check_count(count)
        if count > self.max_leased_ports:
            raise ValueError(
                f"cannot lease {count} ports at once: one process leases at most "
                f"{self.max_leased_ports}"
            )
        self._settle_leases()
        table = self._table or self.table
        self._end_oldest_leases(table, count)
        try:
            ports = table.reserve(ip or localhost(), count, self.port_range, self.lease_seconds)
        finally:
            _warn_notices(table)
        until = _native.clock_seconds() + self.lease_seconds
        with self._leases_lock:
            for port in ports:
                self._leased[port] = until
        return ports

    def _end_oldest_leases(self, table: _native.PortTable, count: int) -> None:
        """Make room for ``count`` leased ports under ``max_leased_ports``,
        ending this process's oldest leases first (ended ones are just forgotten)."""
        now = _native.clock_seconds()
        ending: list[int] = []
        with self._leases_lock:
            leased = self._leased
            while leased:
                port, until = next(iter(leased.items()))
                if until > now and len(leased) + count <= self.max_leased_ports:
                    break
                del leased[port]
                if until > now:
                    ending.append(port)
        for port in ending:
            table.release(port)

    def leased_for(self, ports: Iterable[int], path: str | os.PathLike[str]) -> None:
        """Tie leased ``ports`` to the connection file at ``path`` (just written)."""
        ports = tuple(ports)
        if not ports:
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        until = _native.clock_seconds() + self.lease_seconds
        with self._leases_lock:
            self._leases.append(_Lease(ports, os.fspath(path), st.st_dev, st.st_ino, until))

    def _settle_leases(self) -> None:
        """End the leases of a few files that are gone; forget ended leases.

        Checks at most a couple per call, round robin, so the cost of a lease
        stays flat however many files this process has written.
        """
        gone: list[int] = []
        with self._leases_lock:
            if not self._leases:
                return
            now = _native.clock_seconds()
            for _ in range(min(_LEASES_CHECKED_PER_CALL, len(self._leases))):
                lease = self._leases.popleft()
                if lease.until <= now:
                    continue  # ended by itself
                try:
                    st = os.stat(lease.path)
                    same = (st.st_dev, st.st_ino) == (lease.device, lease.inode)
                except OSError:
                    same = False
                if same:
                    self._leases.append(lease)
                else:
                    gone.extend(lease.ports)
        self.return_ports(gone)  # outside the lock: return_port takes it

    def return_port(self, port: int) -> None:
        """Give ``port`` back (held or leased). Ports this process does not
        hold are ignored."""
        if isinstance(port, int) and 0 < port < 65536:
            with self._leases_lock:
                self._leased.pop(port, None)
            (self._table or self.table).release(port)

    def return_ports(self, ports: Iterable[int]) -> None:
        """Give several ports back."""
        for port in ports:
            self.return_port(port)


def _check_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count >= 65536:
        raise ValueError(f"cannot reserve {count} ports: a host has fewer than 65,536")


def _range_from_env() -> tuple[int, int] | None:
    text = os.environ.get("KERNEL_CONNECT_PORT_RANGE", "").strip()
    if not text:
        return None
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = -1
    if not sep or not 0 < lo <= hi < 65536:
        raise ValueError(
            f"KERNEL_CONNECT_PORT_RANGE={text!r}: "
            "expected 'low-high' with 1 <= low <= high <= 65535"
        )
    return lo, hi


def _lease_from_env() -> int:
    text = os.environ.get("KERNEL_CONNECT_LEASE_SECONDS", "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if not 0 < seconds < 2**31:
        raise ValueError(
            f"KERNEL_CONNECT_LEASE_SECONDS={text!r}: expected a whole number of seconds >= 1"
        )
    return seconds


def _warn_notices(table: _native.PortTable) -> None:
    """Pass on what the table saw (a table replaced under us) as warnings."""
    for notice in table.take_notices():
        warnings.warn(f"kernel-connect: {notice}", RuntimeWarning, stacklevel=4)


_opened_tables: list[_native.PortTable] = []


def _open_table() -> _native.PortTable:
    """The first table location that works, with one warning per fallback.

    The host-wide table first; where it cannot be used, this user's own; where
    no file can be used, a table in this process only.
    """
    failures: list[str] = []
    table: _native.PortTable | None = None
    for location in port_table_locations():
        try:
            table = _open_at(location)
            break
        except (OSError, ValueError) as err:
            failures.append(f"{location.path} ({err})")
    if table is None:
        table = _native.PortTable(None)
    if failures:
        where = (
            f"this user's own table {table.path}"
            if table.path
            else "an in-process table, which does not protect against other processes"
        )
        warnings.warn(
            f"kernel-connect: cannot use the port table at {'; nor at '.join(failures)}; "
            f"using {where}",
            RuntimeWarning,
            stacklevel=4,
        )
    if not _opened_tables:
        atexit.register(_release_at_exit)
    _opened_tables.append(table)
    return table


def _open_at(location: TableLocation) -> _native.PortTable:
    location.prepare()
    return _native.PortTable(location.path, shared=location.shared)


def _release_at_exit() -> None:
    """A clean exit frees our held reservations at once instead of waiting for
    reclaim. In a forked child the table knows it holds none of its parent's
    ports, so this never frees them."""
    for table in _opened_tables:
        table.release_all()


__all__ = ["DEFAULT_LEASE_SECONDS", "MAX_LEASED_PORTS", "LocalPortCache"]
