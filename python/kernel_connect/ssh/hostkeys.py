"""Host-key checking for the paramiko backend: known_hosts or refuse.

paramiko's own defaults either reject silently or (jupyter_client's choice)
accept any key with a warning.  `HostKeyChecker` does what OpenSSH's
``StrictHostKeyChecking=yes`` does -- a listed key must match, an unlisted host
is refused -- and ``accept-new`` when the caller allows new hosts: the key is
then recorded in known_hosts.  A changed key is always refused.
"""

from __future__ import annotations

import os
from typing import Any

from kernel_connect.ssh.config import ResolvedHost
from kernel_connect.ssh.errors import ChangedHostKeyError, UnknownHostKeyError

__all__ = ["HostKeyChecker", "known_hosts_files"]

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


def known_hosts_files(host: ResolvedHost, known_hosts: str | None) -> tuple[list[str], str]:
    """The files to read host keys from, and the one to record new keys in."""
    if known_hosts is not None:
        return [known_hosts], known_hosts
    user_files = list(host.known_hosts_files) or [os.path.expanduser("~/.ssh/known_hosts")]
    return [*user_files, SYSTEM_KNOWN_HOSTS], user_files[0]


class HostKeyChecker:
    """Checks a server's host key against known_hosts files.

    Use `prefer_known_types` on the transport before key exchange (so the
    server offers the key type we know, as OpenSSH arranges), then `check`
    with the key the server presented.
    """

    def __init__(self, host: ResolvedHost, known_hosts: str | None, allow_new_host: bool):
        import paramiko

        self.host = host
        self.allow_new_host = allow_new_host
        self.files, self.record_file = known_hosts_files(host, known_hosts)
        self.keys = paramiko.HostKeys()
        for path in self.files:
            if os.path.isfile(path):
                self.keys.load(path)

    def known_types(self) -> list[str]:
        """Key types known_hosts lists for this server."""
        entry = self.keys.lookup(self.host.known_hosts_name)
        return list(entry.keys()) if entry is not None else []

    def prefer_known_types(self, transport: Any) -> None:
        """Ask the server for a key type known_hosts has, when it lists one."""
        known = self.known_types()
        if not known:
            return
        options = transport.get_security_options()
        offered = list(options.key_types)
        wanted: list[str] = []
        for kind in known:
            # known_hosts names RSA keys ssh-rsa; the wire uses the SHA-2 signatures
            aliases = ["rsa-sha2-512", "rsa-sha2-256", kind] if kind == "ssh-rsa" else [kind]
            wanted += [a for a in aliases if a in offered and a not in wanted]
        options.key_types = wanted + [k for k in offered if k not in wanted]

    def check(self, key: Any) -> None:
        """Accept `key` or raise UnknownHostKeyError / ChangedHostKeyError."""
        name = self.host.known_hosts_name
        entry = self.keys.lookup(name)
        fingerprint = key.fingerprint
        if entry is not None:
            expected = entry.get(key.get_name())
            if expected is not None and expected == key:
                return
            listed = ", ".join(sorted(entry.keys()))
            raise ChangedHostKeyError(
                f"host key for {name} does not match known_hosts "
                f"({', '.join(self.files)} lists {listed}; the server sent "
                f"{key.get_name()} {fingerprint}). This may be an attack; if the "
                "server's key really changed, remove the old entry (ssh-keygen -R)."
            )
        if not self.allow_new_host:
            raise UnknownHostKeyError(
                f"host key for {name} is not in known_hosts ({', '.join(self.files)}); "
                f"the server sent {key.get_name()} {fingerprint}. Add it (ssh-keyscan, "
                "or ssh once interactively) or pass allow_new_host=True."
            )
        self._record(name, key)

    def _record(self, name: str, key: Any) -> None:
        import paramiko

        path = self.record_file
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        line = paramiko.hostkeys.HostKeyEntry([name], key).to_line() or ""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as stream:
            stream.write(line)
        self.keys.add(name, key.get_name(), key)

    def as_policy(self) -> Any:
        """This checker as a paramiko MissingHostKeyPolicy.

        SSHClient consults the policy for every server when no keys are loaded
        into the client itself, which makes `check` the one place keys are checked.
        """
        import paramiko

        checker = self

        class Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                checker.check(key)

        return Policy()
