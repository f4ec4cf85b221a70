"""A throwaway OpenSSH server on 127.0.0.1 for the SSH tunnel tests and benchmark.

`start_sshd` writes a private host key, an authorized client key, a second key
that is *not* authorized, an sshd_config (keys only, forwarding allowed), a
known_hosts file and a client ssh_config into a temporary directory, starts
`sshd -D` on a free port and waits for its banner.  `SSHServer.stop` ends it by
pid.  The pytest fixtures skip with a visible reason where OpenSSH is missing,
except under CI=true, where a missing sshd is a failure.

OpenSSH takes the home directory from the password database, not from $HOME, so
every client call must name the files made here (`-F`, UserKnownHostsFile).

Test modules load it as a plugin (``pytest_plugins = ["sshd"]``) after importing
helpers from it, so pytest must not try to rewrite it: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
ALIAS = "kc-test-sshd"
JUMP_ALIAS = "kc-test-jump"
PROXY_COMMAND_ALIAS = "kc-test-proxycommand"
PASSPHRASE = "kc-test-passphrase"
START_TIMEOUT = 10.0


def find_sshd() -> str | None:
    """Absolute path of sshd (it refuses to re-exec from a relative path), or None."""
    for candidate in (shutil.which("sshd"), *SSHD_CANDIDATES):
        if candidate and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_reason() -> str | None:
    """Why the SSH tests cannot run here, or None when they can."""
    if find_sshd() is None:
        return "OpenSSH server (sshd) is not installed: apt-get install openssh-server"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"OpenSSH client tool {tool!r} is not installed"
    return None


def require_sshd() -> None:
    """Skip the calling test (fail it under CI=true) when sshd cannot run here."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@dataclass
class SSHServer:
    """A running sshd and the client-side files that reach it."""

    host: str
    port: int
    user: str
    directory: Path
    client_key: Path
    wrong_key: Path
    encrypted_key: Path
    known_hosts: Path
    ssh_config: Path
    host_key_line: str
    process: subprocess.Popen[bytes]
    log: Path
    alias: str = ALIAS
    ipv6: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def server(self) -> str:
        """`user@host:port`, the form jupyter_client's tunnel functions take."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def client_options(self) -> dict[str, str]:
        """Keyword options for kernel_connect's tunnel functions to reach this server."""
        return {
            "known_hosts": str(self.known_hosts),
            "ssh_config": str(self.ssh_config),
        }

    def ssh_argv(self, *options: str, command: tuple[str, ...] = ()) -> list[str]:
        """An `ssh` command line that logs into this server non-interactively."""
        return [
            "ssh",
            "-F",
            str(self.ssh_config),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "BatchMode=yes",
            *options,
            self.alias,
            *command,
        ]

    def write_empty_known_hosts(self, name: str = "empty_known_hosts") -> Path:
        """A known_hosts file that does not know this server."""
        path = self.directory / name
        path.write_text("")
        return path

    def write_wrong_known_hosts(self, name: str = "wrong_known_hosts") -> Path:
        """A known_hosts file that lists a different key for this server."""
        other = self.directory / "other_host_key"
        if not other.exists():
            _keygen(other)
        public = (other.with_suffix(".pub")).read_text().split()
        path = self.directory / name
        path.write_text(f"[{self.host}]:{self.port} {public[0]} {public[1]}\n")
        return path

    def write_bare_ssh_config(self, name: str = "bare_ssh_config") -> Path:
        """An ssh_config naming no key, so only keys given explicitly are offered."""
        path = self.directory / name
        path.write_text("Host *\n    IdentitiesOnly yes\n")
        return path

    def accepted_logins(self) -> int:
        """How many logins sshd has accepted so far (from its log)."""
        return self.log_text().count("Accepted publickey for")

    def connection_pids(self) -> list[int]:
        """Pids of sshd's per-connection children (one per open SSH connection)."""
        return children_of(self.process.pid)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop sshd by its pid and wait for it (bounded)."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (read from /proc; zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _keygen(path: Path, passphrase: str = "") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "kc-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _wait_for_banner(host: str, port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0) as conn:
                conn.settimeout(2.0)
                if conn.recv(64).startswith(b"SSH-2.0"):
                    return True
        except OSError:
            time.sleep(0.01)
    return False


def _write_sshd_config(
    directory: Path, port: int, host: str, host_key: Path, also_ipv6: bool
) -> Path:
    config = directory / "sshd_config"
    listen = [f"ListenAddress {host}"] + (["ListenAddress ::1"] if also_ipv6 else [])
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                *listen,
                f"HostKey {host_key}",
                f"PidFile {directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                # the temporary directory belongs to us but sits in world-writable /tmp
                "StrictModes no",
                "AllowTcpForwarding yes",
                "PermitOpen any",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    return config


def _write_client_files(
    directory: Path,
    host: str,
    port: int,
    user: str,
    client_key: Path,
    host_key: Path,
    also_ipv6: bool,
) -> tuple[Path, Path, str]:
    public = host_key.with_suffix(".pub").read_text().split()
    host_key_line = f"[{host}]:{port} {public[0]} {public[1]}"
    lines = [host_key_line] + ([f"[::1]:{port} {public[0]} {public[1]}"] if also_ipv6 else [])
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("\n".join(lines) + "\n")
    ssh_config = directory / "ssh_config"
    common = [
        f"    HostName {host}",
        f"    Port {port}",
        f"    User {user}",
        f"    IdentityFile {client_key}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known_hosts}",
        "    StrictHostKeyChecking yes",
    ]
    # the server reached through itself: a jump host and a proxy command
    proxy = f"ssh -F {ssh_config} -o BatchMode=yes -W %h:%p {ALIAS}"
    ssh_config.write_text(
        "\n".join(
            [
                f"Host {ALIAS}",
                *common,
                f"Host {JUMP_ALIAS}",
                *common,
                f"    ProxyJump {ALIAS}",
                f"Host {PROXY_COMMAND_ALIAS}",
                *common,
                f"    ProxyCommand {proxy}",
                "",
            ]
        )
    )
    return known_hosts, ssh_config, host_key_line


def start_sshd(directory: Path | None = None, host: str = "127.0.0.1") -> SSHServer:
    """Start sshd on `host` at a free port, with its own keys and client files.

    Raises RuntimeError (with sshd's log) when it does not come up.
    """
    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError("sshd is not installed")
    if os.geteuid() == 0:
        # sshd's privilege separation refuses to start without this directory
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="kc-sshd-"))
    base.chmod(0o700)
    host_key = base / "host_ed25519"
    client_key = base / "client_ed25519"
    wrong_key = base / "wrong_ed25519"
    encrypted_key = base / "encrypted_ed25519"
    for key in (host_key, client_key, wrong_key):
        _keygen(key)
    _keygen(encrypted_key, PASSPHRASE)
    (base / "authorized_keys").write_text(
        client_key.with_suffix(".pub").read_text() + encrypted_key.with_suffix(".pub").read_text()
    )
    user = getpass.getuser()
    log = base / "sshd.log"
    also_ipv6 = ipv6_loopback()
    last_error = ""
    # a free port can be taken between the probe and sshd's bind: try a few
    for _attempt in range(5):
        port = _free_port(host)
        config = _write_sshd_config(base, port, host, host_key, also_ipv6)
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if _wait_for_banner(host, port, process):
            known_hosts, ssh_config, line = _write_client_files(
                base, host, port, user, client_key, host_key, also_ipv6
            )
            return SSHServer(
                host=host,
                port=port,
                user=user,
                directory=base,
                client_key=client_key,
                wrong_key=wrong_key,
                encrypted_key=encrypted_key,
                known_hosts=known_hosts,
                ssh_config=ssh_config,
                host_key_line=line,
                process=process,
                log=log,
                ipv6=also_ipv6,
            )
        last_error = log.read_text(errors="replace")
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
    raise RuntimeError(f"sshd did not start:\n{last_error}")


@contextlib.contextmanager
def running_sshd() -> Iterator[SSHServer]:
    """Context manager: a started sshd, stopped (and its files removed) afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="kc-sshd-"))
    server = start_sshd(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SSHServer]:
    """One loopback sshd for the whole session (skips/fails as `require_sshd` says)."""
    require_sshd()
    with running_sshd() as server:
        yield server


class EchoServer:
    """A TCP echo server on 127.0.0.1 (a thread per connection), the tunnels' far end.

    It echoes until the peer half-closes, then half-closes its own side.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=2)


def exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send `payload` to 127.0.0.1:`port`, half-close, and return all that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        sender = threading.Thread(
            target=lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR))
        )
        sender.start()
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        sender.join(timeout)
        return b"".join(chunks)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound then closed)."""
    return _free_port("127.0.0.1")


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()
