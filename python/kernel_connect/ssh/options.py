"""The settings every SSH login takes, shared by the OpenSSH and paramiko backends."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "SSHOptions"]

#: Seconds allowed for reaching the server, logging in and opening the forwards.
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class SSHOptions:
    """How to log in to an SSH server.

    Attributes
    ----------
    keyfile : str or None
        Private key to offer first (ssh-config IdentityFile and the agent are
        still used, as OpenSSH does).
    password : str or None
        Login password, also tried as the key passphrase.  Never shown in reprs.
    known_hosts : str or None
        known_hosts file to check the server's key against (and to add it to
        when `allow_new_host`); the user's files when None.
    allow_new_host : bool
        Accept and record a key for a server that known_hosts does not list.
        A *changed* key is refused regardless.
    ssh_config : str or None
        ssh_config file to resolve aliases with (``ssh -F``); the user's
        ``~/.ssh/config`` when None.
    timeout : float
        Seconds allowed for connecting, logging in and opening the forwards.
    """

    keyfile: str | None = None
    password: str | None = field(default=None, repr=False)
    known_hosts: str | None = None
    allow_new_host: bool = False
    ssh_config: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {self.timeout!r}")
        for name in ("keyfile", "known_hosts", "ssh_config"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.path.expanduser(os.fspath(value)))

    def with_password(self, password: str | None) -> SSHOptions:
        """A copy with another password (used after prompting on a TTY)."""
        return replace(self, password=password)

    @classmethod
    def from_kwargs(
        cls,
        keyfile: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> SSHOptions:
        """Build options from the keyword arguments of the public tunnel functions.

        Raises TypeError for an unknown option, naming it.
        """
        known = {"known_hosts", "allow_new_host", "ssh_config"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unexpected SSH option(s): {', '.join(unknown)}")
        return cls(
            keyfile=keyfile,
            password=password or None,
            timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
            **kwargs,
        )
