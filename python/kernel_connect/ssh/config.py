"""Resolving a server string through ssh_config, for the paramiko backend.

OpenSSH reads its own config; paramiko does not, so this applies the user's
``~/.ssh/config`` (or the file given) the way ``ssh`` would for the options a
tunnel needs: HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
ProxyCommand, UserKnownHostsFile, HostKeyAlias and ConnectTimeout.  Parts given
in the server string win over the config, as on the ssh command line.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

from kernel_connect.ssh.server import ServerSpec

__all__ = ["ResolvedHost", "default_config_path", "resolve_host"]

DEFAULT_PORT = 22


@dataclass(frozen=True)
class ResolvedHost:
    """Where and as whom to log in, after ssh_config."""

    name: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: str | None = None
    proxy_command: str | None = None
    known_hosts_files: tuple[str, ...] = ()
    host_key_alias: str | None = None
    connect_timeout: float | None = None

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this server's key under in known_hosts."""
        if self.host_key_alias:
            return self.host_key_alias
        if self.port == DEFAULT_PORT:
            return self.hostname
        return f"[{self.hostname}]:{self.port}"


def default_config_path() -> str:
    """The user's ssh_config path (paramiko, like most tools, follows $HOME)."""
    return os.path.expanduser("~/.ssh/config")


def _first(value: object) -> str | None:
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


def resolve_host(spec: ServerSpec, ssh_config: str | None = None) -> ResolvedHost:
    """Apply ssh_config to a parsed server string.

    Parameters
    ----------
    spec : ServerSpec
        The parsed server string.
    ssh_config : str or None
        Config file to read; ``~/.ssh/config`` when None (a missing default
        file is fine; a missing explicit file is an error).

    Returns
    -------
    ResolvedHost
    """
    import paramiko  # lazily: importing kernel_connect.ssh must not load paramiko

    path = ssh_config if ssh_config is not None else default_config_path()
    options: dict[str, object] = {}
    if ssh_config is not None or os.path.exists(path):
        config = paramiko.SSHConfig.from_path(path)
        options = dict(config.lookup(spec.host))
    hostname = str(options.get("hostname") or spec.host)
    port = spec.port or int(str(options.get("port") or DEFAULT_PORT))
    user = spec.user or _first(options.get("user")) or getpass.getuser()
    identity = options.get("identityfile") or []
    identity_files = tuple(
        os.path.expanduser(str(p)) for p in (identity if isinstance(identity, list) else [identity])
    )
    known = str(options.get("userknownhostsfile") or "").split()
    proxy_jump = _first(options.get("proxyjump"))
    proxy_command = _first(options.get("proxycommand"))
    timeout_text = _first(options.get("connecttimeout"))
    return ResolvedHost(
        name=spec.host,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identity_files,
        identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=None if proxy_jump in (None, "none") else proxy_jump,
        proxy_command=None if proxy_command in (None, "none") else proxy_command,
        known_hosts_files=tuple(os.path.expanduser(p) for p in known if p != "none"),
        host_key_alias=_first(options.get("hostkeyalias")),
        connect_timeout=float(timeout_text) if timeout_text else None,
    )
