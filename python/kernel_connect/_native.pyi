"""Typed surface of the Rust core (checked against the module by mypy.stubtest)."""

from os import PathLike
from typing import Any, final

_Path = str | PathLike[str]

__all__ = [
    "MAX_CONNECTION_FILE_BYTES",
    "PORT_NAMES",
    "ConnectionFileError",
    "PortTable",
    "clock_seconds",
    "default_capacity",
    "find_newest",
    "fnmatch",
    "format_connection_info",
    "glob_names",
    "interface_addresses",
    "parse_connection_info",
    "read_connection_file",
    "signature_digests",
    "validate_connection_info",
    "write_connection_file",
    "write_private_atomic",
]

# The largest connection file read (1 MiB); larger ones are refused unparsed.
MAX_CONNECTION_FILE_BYTES: int
PORT_NAMES: list[str]

class ConnectionFileError(ValueError):
    """A connection file or connection info is invalid; ``path``/``field`` say where."""

    path: str | None
    field: str | None

@final
class PortTable:
    def __new__(cls, path: _Path | None = None, shared: bool = False) -> PortTable: ...
    @property
    def path(self) -> str | None: ...
    def reserve(
        self,
        ip: str,
        count: int = 1,
        port_range: tuple[int, int] | None = None,
        lease: int | None = None,
    ) -> list[int]: ...
    def release(self, port: int) -> bool: ...
    def release_all(self) -> int: ...
    def holds(self, port: int) -> bool: ...
    def owner(self, port: int) -> tuple[int, bool] | None: ...
    def held(self) -> list[tuple[int, int, bool, int | None]]: ...
    def take_notices(self) -> list[str]: ...

def format_connection_info(
    ports: list[int] | tuple[int, int, int, int, int],
    ip: str,
    key: str,
    transport: str,
    signature_scheme: str,
    kernel_name: str,
    curve_publickey: str | None = None,
    curve_secretkey: str | None = None,
    extra: dict[Any, Any] | None = None,
) -> str: ...
def write_connection_file(
    path: _Path,
    ports: list[int] | tuple[int, int, int, int, int],
    ip: str,
    key: str,
    transport: str,
    signature_scheme: str,
    kernel_name: str,
    curve_publickey: str | None = None,
    curve_secretkey: str | None = None,
    extra: dict[Any, Any] | None = None,
) -> None: ...
def write_private_atomic(path: _Path, data: bytes) -> None: ...
def read_connection_file(path: _Path) -> Any: ...
def parse_connection_info(text: str, path: _Path | None = None) -> Any: ...
def signature_digests() -> list[str]: ...
def validate_connection_info(info: dict[str, Any]) -> None: ...
def glob_names(directory: _Path, pattern: str) -> list[str]: ...
def fnmatch(name: str, pattern: str) -> bool: ...
def find_newest(directories: list[_Path] | list[str], pattern: str) -> str | None: ...
def interface_addresses() -> list[str]: ...
def default_capacity() -> tuple[int, int, int]: ...
def clock_seconds() -> int: ...
