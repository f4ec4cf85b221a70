"""Parsing the SSH server strings users pass: `[user@]host[:port]`, `[v6]:port`, `ssh://...`.

The result keeps the host exactly as written, so an ssh-config alias stays an
alias (both backends resolve it later), and says which parts were given, so
values from ssh_config are only used for the parts the user left out.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerSpec", "parse_server"]


@dataclass(frozen=True)
class ServerSpec:
    """The parts of an SSH server string.

    Attributes
    ----------
    host : str
        Host name, ssh-config alias or IP literal (IPv6 without brackets).
    user : str or None
        Login name, when the string gave one.
    port : int or None
        TCP port, when the string gave one.
    """

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port is not None else text


def _check_text(server: str) -> None:
    if not server:
        raise ValueError("SSH server string is empty")
    if server.startswith("-"):
        # ssh would read it as an option (e.g. -oProxyCommand=...), never as a host
        raise ValueError(f"SSH server {server!r} begins with '-'")
    bad = [ch for ch in server if ch.isspace() or ord(ch) < 32 or ord(ch) == 127]
    if bad:
        raise ValueError(f"SSH server {server!r} contains whitespace or control characters")


def _parse_port(text: str, server: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"SSH server {server!r}: port {text!r} is not a number")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"SSH server {server!r}: port {port} is out of range 1-65535")
    return port


def parse_server(server: str) -> ServerSpec:
    """Split an SSH server string into user, host and port.

    Parameters
    ----------
    server : str
        ``host``, ``user@host``, ``host:port``, ``user@host:port``,
        ``[ipv6]:port``, a bare IPv6 literal, or an ``ssh://`` URL of those.

    Returns
    -------
    ServerSpec

    Raises
    ------
    ValueError
        When the string is empty, begins with '-', holds whitespace or control
        characters, or has a bad port or empty user/host.
    """
    if not isinstance(server, str):
        raise TypeError(f"SSH server must be a str, not {type(server).__name__}")
    text = server.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
    _check_text(text)
    user: str | None = None
    if "@" in text:
        # OpenSSH splits at the last '@': user names may themselves hold one
        user, _, text = text.rpartition("@")
        if not user:
            raise ValueError(f"SSH server {server!r} has an empty user name")
    port: int | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"SSH server {server!r} has an unclosed '['")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"SSH server {server!r}: unexpected {rest!r} after ']'")
            port = _parse_port(rest[1:], server)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, server)
    else:
        # no colon, or a bare IPv6 literal (which cannot carry a port unbracketed)
        host = text
    if not host:
        raise ValueError(f"SSH server {server!r} has an empty host")
    if host.startswith("-"):
        raise ValueError(f"SSH server {server!r}: host begins with '-'")
    return ServerSpec(host=host, user=user, port=port)
