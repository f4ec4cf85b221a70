"""The OpenSSH backend: one ``ssh`` process carrying every forward of a tunnel.

The command line is an argv list (no shell, so paths with spaces work and
nothing is re-parsed), with ExitOnForwardFailure, strict host-key checking,
keep-alives, no connection sharing and no terminal.  ssh runs in its own
session so a Ctrl-C at the terminal (meant for the kernel) does not kill it.
The remote side runs ``echo <marker>; exec cat``: the marker tells us the login
succeeded and every local forward is listening (ssh binds them before it opens
the session), the session makes both ends turn Nagle off, and ``cat`` ends when
our end of ssh's stdin closes -- including when this process dies, so no ssh
process outlives its owner.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO

from kernel_connect.ssh.askpass import AskpassServer
from kernel_connect.ssh.errors import (
    ChangedHostKeyError,
    LocalPortInUseError,
    SSHAuthenticationError,
    SSHConnectError,
    SSHTunnelError,
    UnknownHostKeyError,
)
from kernel_connect.ssh.options import SSHOptions
from kernel_connect.ssh.registry import register, unregister
from kernel_connect.ssh.server import ServerSpec, parse_server

__all__ = [
    "OpenSSHTunnel",
    "build_argv",
    "classify_failure",
    "forward_argument",
    "run_ssh_check",
    "start_openssh",
]

READY_MARKER = "kernel-connect-tunnel-ready"
REMOTE_COMMAND = f"echo {READY_MARKER}; exec cat"
ALIVE_INTERVAL = 15
STOP_GRACE = 2.0

# (local port, remote host, remote port)
ForwardSpec = tuple[int, str, int]


def ssh_executable() -> str:
    """The ssh client to run (``ssh`` on PATH)."""
    found = shutil.which("ssh")
    if found is None:
        raise SSHTunnelError("the OpenSSH client 'ssh' is not installed (or not on PATH)")
    return found


def forward_argument(local_port: int, remote_host: str, remote_port: int) -> str:
    """The ``-L`` argument: listen on 127.0.0.1 only, bracket IPv6 destinations."""
    host = f"[{remote_host}]" if ":" in remote_host else remote_host
    return f"127.0.0.1:{local_port}:{host}:{remote_port}"


def _option_value(value: str) -> str:
    # ssh splits -o values like config lines: quote paths holding spaces
    if any(ch.isspace() for ch in value) or '"' in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def base_options(options: SSHOptions, *, batch: bool) -> list[str]:
    """The ssh options every call uses (host keys, timeouts, no sharing)."""
    strict = "accept-new" if options.allow_new_host else "yes"
    argv = [
        "-T",
        "-x",
        "-a",
        "-o", f"BatchMode={'yes' if batch else 'no'}",
        "-o", f"StrictHostKeyChecking={strict}",
        "-o", f"ConnectTimeout={max(1, math.ceil(options.timeout))}",
        "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "PermitLocalCommand=no",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if options.ssh_config:
        argv += ["-F", options.ssh_config]
    if options.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={_option_value(options.known_hosts)}"]
    if options.keyfile:
        argv += ["-i", options.keyfile]
    return argv


def _destination(spec: ServerSpec) -> list[str]:
    argv: list[str] = []
    if spec.port is not None:
        argv += ["-p", str(spec.port)]
    if spec.user is not None:
        argv += ["-l", spec.user]
    # "--" ends option parsing, so no host can ever be read as an option
    return [*argv, "--", spec.host]


def build_argv(
    spec: ServerSpec, forwards: Sequence[ForwardSpec], options: SSHOptions, *, batch: bool
) -> list[str]:
    """The full ssh command line for a tunnel carrying `forwards`."""
    argv = [ssh_executable(), *base_options(options, batch=batch)]
    argv += ["-o", "ExitOnForwardFailure=yes"]
    for local_port, remote_host, remote_port in forwards:
        argv += ["-L", forward_argument(local_port, remote_host, remote_port)]
    return [*argv, *_destination(spec), REMOTE_COMMAND]


def classify_failure(stderr: str, where: str, returncode: int | None) -> SSHTunnelError:
    """Turn ssh's error output into the matching exception, naming the server."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = "; ".join(line for line in lines if not set(line) <= {"@"})[-600:]
    text = stderr.lower()
    if "remote host identification has changed" in text or "has changed and you have" in text:
        return ChangedHostKeyError(f"host key for {where} does not match known_hosts: {detail}")
    if "host key verification failed" in text or "host key is known" in text:
        return UnknownHostKeyError(
            f"host key for {where} is not in known_hosts (pass allow_new_host=True "
            f"or add it first): {detail}"
        )
    in_use = re.search(r"bind \[?[^\]\s]*\]?:(\d+): address already in use", text)
    if in_use or "could not request local forwarding" in text:
        port = int(in_use.group(1)) if in_use else 0
        return LocalPortInUseError(f"local port {port or '?'} is already in use: {detail}", port)
    if "permission denied" in text or "too many authentication failures" in text:
        return SSHAuthenticationError(f"SSH server {where} refused the login: {detail}")
    connect_markers = (
        "could not resolve hostname",
        "connection refused",
        "timed out",
        "no route to host",
        "network is unreachable",
        "connection closed",
        "connection reset",
        "kex_exchange_identification",
    )
    if any(marker in text for marker in connect_markers):
        return SSHConnectError(f"cannot reach SSH server {where}: {detail}")
    return SSHTunnelError(f"ssh to {where} exited with status {returncode}: {detail}")


def _can_prompt() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


class OpenSSHTunnel:
    """A running ``ssh`` process forwarding local ports.

    Attributes
    ----------
    process : subprocess.Popen
        The ssh process.
    local_ports : tuple of int
        The forwarded local ports, in the order given.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        forwards: Sequence[ForwardSpec],
        where: str,
        stderr: IO[bytes],
    ):
        self.process = process
        self.forwards = list(forwards)
        self.where = where
        self._stderr = stderr
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def local_ports(self) -> tuple[int, ...]:
        return tuple(f[0] for f in self.forwards)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid {self.process.pid}"
        routes = ", ".join(f"{lp}->{rh}:{rp}" for lp, rh, rp in self.forwards)
        return f"<OpenSSHTunnel {routes} via {self.where} {state}>"

    def __enter__(self) -> OpenSSHTunnel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    def error_output(self) -> str:
        """What ssh wrote to stderr so far (it never contains passwords)."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")
        return ""

    def abandon(self) -> None:
        """Let go of the tunnel without stopping ssh: for a forked child.

        The ssh process is the parent's; afterwards `close()` does nothing here.
        """
        self._closed = True

    def close(self) -> None:
        """Stop ssh (SIGTERM, then SIGKILL after a grace period) and release its pipes."""
        if self._closed:
            return
        self._closed = True
        unregister(self)
        stop_process(self.process)
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate `process` by pid and reap it, within a bounded time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=STOP_GRACE)


def _wait_ready(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for the marker on ssh's stdout; False when ssh exits first."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        seen += chunk
        if READY_MARKER.encode() in seen:
            return True


def _spawn(argv: list[str], env: dict[str, str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def _environment(askpass: AskpassServer | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE"):
        env.pop(name, None)
    if askpass is not None:
        env.update(askpass.environment())
    return env


def start_openssh(
    server: str, forwards: Sequence[ForwardSpec], options: SSHOptions
) -> OpenSSHTunnel:
    """Start one ssh process forwarding every local port in `forwards`.

    Returns once ssh is logged in and all local ports listen.

    Raises
    ------
    SSHConnectError, SSHAuthenticationError, HostKeyError, LocalPortInUseError
        With ssh's own explanation; SSHConnectError also on timeout.
    """
    spec = parse_server(server)
    where = str(spec)
    interactive = options.password is None and _can_prompt()
    batch = options.password is None and not interactive
    askpass = None if batch else AskpassServer(options.password, interactive)
    # a file, not a pipe: nobody drains ssh's stderr while the tunnel runs
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the tunnel
    argv = build_argv(spec, forwards, options, batch=batch)
    deadline = time.monotonic() + options.timeout
    try:
        process = _spawn(argv, _environment(askpass), stderr)
    except OSError as exc:
        stderr.close()
        if askpass is not None:
            askpass.close()
        raise SSHTunnelError(f"cannot run ssh: {exc}") from None
    tunnel = OpenSSHTunnel(process, forwards, where, stderr)
    try:
        ready = _wait_ready(process, deadline)
    except TimeoutError:
        tunnel.close()
        raise SSHConnectError(
            f"timed out after {options.timeout:.1f} s setting up the tunnel to {where}"
        ) from None
    except BaseException:
        tunnel.close()
        raise
    finally:
        if askpass is not None:
            askpass.close()
    if not ready:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE)
        output = tunnel.error_output()
        returncode = process.poll()
        tunnel.close()
        raise classify_failure(output, where, returncode)
    register(tunnel)
    return tunnel


def run_ssh_check(server: str, options: SSHOptions) -> bool:
    """Log in with BatchMode and run ``true``: True on success, False when refused.

    Raises the matching SSHTunnelError for anything but a refused login.
    """
    spec = parse_server(server)
    argv = [ssh_executable(), *base_options(options, batch=True), *_destination(spec), "true"]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_environment(None),
            timeout=options.timeout + STOP_GRACE,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SSHConnectError(f"timed out logging in to {spec}") from None
    if result.returncode == 0:
        return True
    error = classify_failure(result.stderr.decode("utf-8", "replace"), str(spec), result.returncode)
    if isinstance(error, SSHAuthenticationError):
        return False
    raise error
