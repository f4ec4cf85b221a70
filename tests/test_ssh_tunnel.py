"""kernel_connect.ssh.tunnel against a real loopback sshd: both backends, host keys,
credentials, failures with bounded time, and the pure parts (server strings, argv)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from kernel_connect.ssh import tunnel as tunnels
from kernel_connect.ssh.errors import (
    ChangedHostKeyError,
    LocalPortInUseError,
    SSHAuthenticationError,
    SSHConnectError,
    SSHTunnelError,
    UnknownHostKeyError,
)
from kernel_connect.ssh.openssh import build_argv, classify_failure, forward_argument
from kernel_connect.ssh.options import SSHOptions
from kernel_connect.ssh.server import ServerSpec, parse_server
from sshd import (
    JUMP_ALIAS,
    PASSPHRASE,
    PROXY_COMMAND_ALIAS,
    EchoServer,
    SSHServer,
    closed_port,
    exchange,
)

BACKENDS = ["paramiko", "openssh"]
# every failure must be reported well within this (the tests pass small timeouts)
BOUND = 8.0
SECRET = "s3cret-Passw0rd-never-shown"

# the sshd_server (session) and echo_server fixtures
pytest_plugins = ["sshd"]


# -- pure parts ---------------------------------------------------------------------


def test_importing_the_tunnel_module_does_not_import_paramiko() -> None:
    code = (
        "import sys, kernel_connect, kernel_connect.ssh, kernel_connect.ssh.tunnel, "
        "kernel_connect.ssh.forward\n"
        "print('paramiko' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", ServerSpec("host")),
        ("alice@host", ServerSpec("host", "alice")),
        ("alice@host:2222", ServerSpec("host", "alice", 2222)),
        ("host:22", ServerSpec("host", None, 22)),
        ("[::1]:2222", ServerSpec("::1", None, 2222)),
        ("bob@[fe80::1%eth0]", ServerSpec("fe80::1%eth0", "bob")),
        ("::1", ServerSpec("::1")),
        ("ssh://carol@example.org:2200/", ServerSpec("example.org", "carol", 2200)),
        ("me@corp@jump", ServerSpec("jump", "me@corp")),
    ],
)
def test_parse_server(text: str, expected: ServerSpec) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "-oProxyCommand=touch /tmp/x", "user@-host", "a b", "h\nx", "h\x00", "h:0",
     "h:65536", "h:x", "[::1", "[::1]x", "@h", "u@", "[]:22"],
)  # fmt: skip
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SSH server"):
        parse_server(text)


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(
    host=hosts,
    user=st.none() | st.from_regex(r"[a-z_][a-z0-9_@.-]{0,12}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
)
def test_parse_server_round_trips(host: str, user: str | None, port: int | None) -> None:
    spec = ServerSpec(host, user, port)
    assert parse_server(str(spec)) == spec


@given(st.text(max_size=40))
def test_parse_server_only_raises_value_error(text: str) -> None:
    try:
        spec = parse_server(text)
    except ValueError:
        return
    assert spec.host
    assert not spec.host.startswith("-")
    assert spec.port is None or 0 < spec.port < 65536


def test_forward_argument_brackets_ipv6() -> None:
    assert forward_argument(1000, "10.0.0.1", 5555) == "127.0.0.1:1000:10.0.0.1:5555"
    assert forward_argument(1000, "::1", 5555) == "127.0.0.1:1000:[::1]:5555"


def test_build_argv_is_a_safe_list(tmp_path: Path) -> None:
    key = tmp_path / "my keys" / "id ed25519"
    known = tmp_path / "known hosts"
    options = SSHOptions(keyfile=str(key), known_hosts=str(known), timeout=2.5)
    argv = build_argv(
        parse_server("al@[::1]:2222"), [(4000, "127.0.0.1", 5000)], options, batch=True
    )
    assert argv[argv.index("-i") + 1] == str(key)  # one element, spaces intact
    assert f'UserKnownHostsFile="{known}"' in argv
    assert argv[argv.index("-L") + 1] == "127.0.0.1:4000:127.0.0.1:5000"
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "al"
    dashdash = argv.index("--")
    assert argv[dashdash + 1] == "::1"
    assert len(argv) == dashdash + 3  # host, then the remote command as ONE element
    for option in ("BatchMode=yes", "ExitOnForwardFailure=yes", "StrictHostKeyChecking=yes",
                   "ConnectTimeout=3", "ControlPath=none"):  # fmt: skip
        assert option in argv
    relaxed = build_argv(parse_server("h"), [], SSHOptions(allow_new_host=True), batch=False)
    assert "StrictHostKeyChecking=accept-new" in relaxed
    assert "BatchMode=no" in relaxed


def test_options_never_show_the_password() -> None:
    options = SSHOptions(password=SECRET, keyfile="/k")
    assert SECRET not in repr(options)
    assert SECRET not in str(options)
    with pytest.raises(TypeError, match="bogus"):
        SSHOptions.from_kwargs(bogus=1)


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("No ED25519 host key is known for [h]:22 and you have requested strict checking.\n"
         "Host key verification failed.", UnknownHostKeyError),
        ("@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
         "Host key verification failed.", ChangedHostKeyError),
        ("bind [127.0.0.1]:4000: Address already in use\n"
         "Could not request local forwarding.", LocalPortInUseError),
        ("root@127.0.0.1: Permission denied (publickey).", SSHAuthenticationError),
        ("ssh: connect to host 127.0.0.1 port 1: Connection refused", SSHConnectError),
        ("something else entirely", SSHTunnelError),
    ],
)  # fmt: skip
def test_classify_failure(stderr: str, kind: type[Exception]) -> None:
    error = classify_failure(stderr, "h", 255)
    assert type(error) is kind
    if kind is LocalPortInUseError:
        assert error.port == 4000  # type: ignore[attr-defined]


# -- against a real sshd ---------------------------------------------------------------


def explicit_server(sshd: SSHServer) -> str:
    return f"{sshd.user}@127.0.0.1:{sshd.port}"


def open_forward(
    backend: str, sshd: SSHServer, remote_port: int, server: str | None = None, **options: object
) -> tuple[int, object]:
    """Forward a reserved local port to 127.0.0.1:remote_port; (local port, handle)."""
    settings: dict[str, object] = {**sshd.client_options(), **options}
    url, handle = tunnels.open_tunnel(
        f"tcp://127.0.0.1:{remote_port}", server or sshd.alias, backend=backend, **settings
    )
    return int(url.rsplit(":", 1)[1]), handle


def close_handle(handle: object) -> None:
    if isinstance(handle, subprocess.Popen):
        handle.terminate()
        handle.wait(timeout=5)
    else:
        handle.close()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_leftover_tunnels() -> Iterator[None]:
    yield
    tunnels.close_all_tunnels()


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["alias", "explicit", "ipv6"])
def test_tunnel_forwards_with_every_server_form(
    backend: str, form: str, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    if form == "ipv6" and not sshd_server.ipv6:
        pytest.skip("no IPv6 loopback on this machine")
    server = {
        "alias": sshd_server.alias,
        "explicit": explicit_server(sshd_server),
        "ipv6": f"{sshd_server.user}@[::1]:{sshd_server.port}",
    }[form]
    extra = {} if form == "alias" else {"keyfile": str(sshd_server.client_key)}
    port, handle = open_forward(backend, sshd_server, echo_server.port, server, **extra)
    try:
        payload = os.urandom(200_000)
        assert exchange(port, payload) == payload
    finally:
        close_handle(handle)


@pytest.mark.ssh
def test_ssh_tunnel_returns_the_ssh_process(
    sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    lport = tunnels.select_random_ports(1)[0]
    process = tunnels.ssh_tunnel(
        lport, echo_server.port, sshd_server.alias, **sshd_server.client_options()
    )
    assert isinstance(process, subprocess.Popen)
    assert process.poll() is None
    assert exchange(lport, b"ping") == b"ping"
    tunnels.close_all_tunnels()
    assert process.wait(timeout=5) is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", lport), timeout=2).close()


@pytest.mark.ssh
def test_paramiko_tunnel_and_spaces_in_paths(
    sshd_server: SSHServer, echo_server: EchoServer, tmp_path: Path
) -> None:
    spaced = tmp_path / "dir with spaces"
    spaced.mkdir()
    key = spaced / "client key"
    shutil.copy(sshd_server.client_key, key)
    key.chmod(0o600)
    known = spaced / "known hosts"
    shutil.copy(sshd_server.known_hosts, known)
    for function in (tunnels.paramiko_tunnel, tunnels.openssh_tunnel):
        lport = tunnels.select_random_ports(1)[0]
        handle = function(
            lport,
            echo_server.port,
            explicit_server(sshd_server),
            keyfile=str(key),
            known_hosts=str(known),
            ssh_config=str(sshd_server.write_bare_ssh_config()),
        )
        try:
            assert exchange(lport, b"spaces are fine") == b"spaces are fine"
        finally:
            close_handle(handle)


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_tunnel_connection_carries_zmq(backend: str, sshd_server: SSHServer) -> None:
    context = zmq.Context.instance()
    rep = context.socket(zmq.REP)
    req = context.socket(zmq.REQ)
    rep_port = rep.bind_to_random_port("tcp://127.0.0.1")
    try:
        handle = tunnels.tunnel_connection(
            req, f"tcp://127.0.0.1:{rep_port}", sshd_server.alias, backend=backend,
            **sshd_server.client_options(),
        )  # fmt: skip
        req.send_multipart([b"hello", b"kernel"])
        assert rep.poll(10_000)
        assert rep.recv_multipart() == [b"hello", b"kernel"]
        rep.send(b"world")
        assert req.poll(10_000)
        assert req.recv() == b"world"
        close_handle(handle)
    finally:
        req.close(linger=0)
        rep.close(linger=0)


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_host_key_is_refused(backend: str, sshd_server: SSHServer) -> None:
    empty = sshd_server.write_empty_known_hosts(f"empty_{backend}")
    start = time.monotonic()
    with pytest.raises(UnknownHostKeyError, match="known_hosts"):
        open_forward(backend, sshd_server, 9, known_hosts=str(empty))
    assert time.monotonic() - start < BOUND
    assert empty.read_text() == ""  # nothing was recorded


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_host_key_is_refused_even_when_new_hosts_are_allowed(
    backend: str, sshd_server: SSHServer
) -> None:
    wrong = sshd_server.write_wrong_known_hosts(f"wrong_{backend}")
    before = wrong.read_text()
    with pytest.raises(ChangedHostKeyError):
        open_forward(backend, sshd_server, 9, known_hosts=str(wrong), allow_new_host=True)
    assert wrong.read_text() == before


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_new_host_records_the_key(
    backend: str, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    fresh = sshd_server.write_empty_known_hosts(f"fresh_{backend}")
    port, handle = open_forward(
        backend, sshd_server, echo_server.port, known_hosts=str(fresh), allow_new_host=True
    )
    try:
        assert exchange(port, b"new host") == b"new host"
    finally:
        close_handle(handle)
    key_type, key_data = sshd_server.host_key_line.split()[1:3]
    recorded = fresh.read_text()
    assert key_data in recorded
    assert key_type in recorded
    # and the recorded key is now enough on its own
    port, handle = open_forward(backend, sshd_server, echo_server.port, known_hosts=str(fresh))
    close_handle(handle)


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_key_is_refused_and_the_password_never_shown(
    backend: str, sshd_server: SSHServer
) -> None:
    bare = sshd_server.write_bare_ssh_config()
    start = time.monotonic()
    for password in (None, SECRET):
        with pytest.raises(SSHAuthenticationError) as info:
            open_forward(
                backend, sshd_server, 9, explicit_server(sshd_server),
                keyfile=str(sshd_server.wrong_key), ssh_config=str(bare), password=password,
            )  # fmt: skip
        assert SECRET not in str(info.value)
        assert SECRET not in repr(info.value)
    assert time.monotonic() - start < 2 * BOUND


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_try_passwordless_ssh(backend: str, sshd_server: SSHServer) -> None:
    bare = str(sshd_server.write_bare_ssh_config())
    server = explicit_server(sshd_server)
    known = str(sshd_server.known_hosts)
    use_paramiko = backend == "paramiko"
    assert tunnels.try_passwordless_ssh(
        server, str(sshd_server.client_key), use_paramiko, ssh_config=bare, known_hosts=known
    )
    assert not tunnels.try_passwordless_ssh(
        server, str(sshd_server.wrong_key), use_paramiko, ssh_config=bare, known_hosts=known
    )
    with pytest.raises(UnknownHostKeyError):
        tunnels.try_passwordless_ssh(
            server, str(sshd_server.client_key), use_paramiko, ssh_config=bare,
            known_hosts=str(sshd_server.write_empty_known_hosts("empty_try")),
        )  # fmt: skip


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_unreachable_server_fails_fast(backend: str, sshd_server: SSHServer) -> None:
    start = time.monotonic()
    with pytest.raises(SSHConnectError, match=r"127\.0\.0\.1"):
        open_forward(
            backend, sshd_server, 9, f"{sshd_server.user}@127.0.0.1:{closed_port()}", timeout=3
        )
    assert time.monotonic() - start < BOUND


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_server_times_out(backend: str, sshd_server: SSHServer) -> None:
    # accepts TCP connections but never sends an SSH banner
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(SSHConnectError):
            open_forward(
                backend, sshd_server, 9, f"root@127.0.0.1:{silent.getsockname()[1]}", timeout=1.5
            )
        assert time.monotonic() - start < BOUND
    finally:
        silent.close()


# Logs in with paramiko to argv[1] (timeout argv[2]), prints the error, and
# waits for paramiko's threads to end: they report their failure as they end.
_LOGIN_AND_WAIT = """
import sys, threading
from kernel_connect.ssh.connection import open_connection
from kernel_connect.ssh.errors import SSHConnectError
from kernel_connect.ssh.options import SSHOptions
try:
    open_connection(sys.argv[1], SSHOptions(timeout=float(sys.argv[2])), session=False)
except SSHConnectError as e:
    print("SSHConnectError:", e)
for thread in threading.enumerate():
    if thread is not threading.main_thread():
        thread.join(60)
"""


@pytest.mark.parametrize("server", ["silent", "hangs up"])
def test_a_server_that_does_not_speak_ssh_leaves_stderr_clean(server: str) -> None:
    pytest.importorskip("paramiko")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(120)
    accepted: list[socket.socket] = []

    def accept_one() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            if server == "hangs up":
                conn.close()
            else:
                accepted.append(conn)  # held open, never a byte written

    acceptor = threading.Thread(target=accept_one)
    acceptor.start()
    try:
        where = f"me@127.0.0.1:{listener.getsockname()[1]}"
        # No logging configured in the child: where paramiko's records would print.
        done = subprocess.run(
            [sys.executable, "-c", _LOGIN_AND_WAIT, where, "2"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    finally:
        acceptor.join(120)
        for conn in accepted:
            conn.close()
        listener.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"SSHConnectError: {where} sent no SSH banner"), done.stdout
    assert done.stderr == ""


@pytest.mark.ssh
@pytest.mark.parametrize("function", [tunnels.paramiko_tunnel, tunnels.openssh_tunnel])
def test_local_port_already_taken(
    function: object, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        start = time.monotonic()
        with pytest.raises(LocalPortInUseError, match=str(port)) as info:
            function(port, echo_server.port, sshd_server.alias, **sshd_server.client_options())  # type: ignore[operator]
        assert info.value.port == port
        assert time.monotonic() - start < BOUND
    finally:
        taken.close()


def test_server_string_beginning_with_dash_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="begins with '-'"):
            tunnels.open_tunnel(
                "tcp://127.0.0.1:9", f"-oProxyCommand=touch {marker}", backend=backend, timeout=2
            )
    assert not marker.exists()


@pytest.mark.ssh
def test_no_prompt_without_a_terminal(sshd_server: SSHServer) -> None:
    """stdin is not a TTY: a refused login is an error at once, never a hung prompt."""
    code = (
        "import sys\n"
        "from kernel_connect.ssh.tunnel import open_tunnel\n"
        "from kernel_connect.ssh.errors import SSHAuthenticationError\n"
        "for backend in ('paramiko', 'openssh'):\n"
        "    try:\n"
        f"        open_tunnel('tcp://127.0.0.1:9', {explicit_server(sshd_server)!r}, "
        f"keyfile={str(sshd_server.wrong_key)!r}, backend=backend, "
        f"known_hosts={str(sshd_server.known_hosts)!r}, "
        f"ssh_config={str(sshd_server.write_bare_ssh_config())!r})\n"
        "    except SSHAuthenticationError:\n"
        "        print(backend, 'refused')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["paramiko refused", "openssh refused"]


@pytest.mark.ssh
def test_threads_can_open_tunnels_at_once(sshd_server: SSHServer, echo_server: EchoServer) -> None:
    results: list[bytes] = []

    def one(n: int) -> None:
        port, handle = open_forward("paramiko", sshd_server, echo_server.port)
        try:
            results.append(exchange(port, b"thread %d" % n))
        finally:
            close_handle(handle)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [b"thread %d" % n for n in range(4)]


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alias", [JUMP_ALIAS, PROXY_COMMAND_ALIAS])
def test_jump_host_and_proxy_command_from_ssh_config(
    backend: str, alias: str, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    logins = sshd_server.accepted_logins()
    port, handle = open_forward(backend, sshd_server, echo_server.port, alias)
    try:
        assert exchange(port, b"hop") == b"hop"
    finally:
        close_handle(handle)
    # the hop and the target each logged in
    assert sshd_server.accepted_logins() - logins == 2


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_encrypted_key_needs_its_passphrase(
    backend: str, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    options = {
        "keyfile": str(sshd_server.encrypted_key),
        "ssh_config": str(sshd_server.write_bare_ssh_config()),
    }
    server = explicit_server(sshd_server)
    # no passphrase and no terminal (pytest's stdin): refused, no prompt
    with pytest.raises(SSHAuthenticationError) as info:
        open_forward(backend, sshd_server, echo_server.port, server, **options)
    assert PASSPHRASE not in str(info.value)
    # the passphrase given as password= unlocks it (OpenSSH: through SSH_ASKPASS)
    port, handle = open_forward(
        backend, sshd_server, echo_server.port, server, password=PASSPHRASE, **options
    )
    try:
        assert exchange(port, b"unlocked") == b"unlocked"
    finally:
        close_handle(handle)
    # and it is nowhere in the arguments of any process we started
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                assert PASSPHRASE.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


PROMPTING_CLIENT = """
import socket, sys
from kernel_connect.ssh.tunnel import open_tunnel
server, key, known_hosts, ssh_config, backend, port = sys.argv[1:]
url, handle = open_tunnel(f"tcp://127.0.0.1:{port}", server, keyfile=key, backend=backend,
                          known_hosts=known_hosts, ssh_config=ssh_config, timeout=20)
with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as conn:
    conn.sendall(b"typed")
    print("TUNNEL-" + conn.recv(5).decode(), flush=True)
"""


def read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    seen = b""
    while needle.lower() not in seen.lower() and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_prompts_for_the_passphrase_on_a_terminal(
    backend: str, sshd_server: SSHServer, echo_server: EchoServer
) -> None:
    argv = [
        sys.executable, "-c", PROMPTING_CLIENT, explicit_server(sshd_server),
        str(sshd_server.encrypted_key), str(sshd_server.known_hosts),
        str(sshd_server.write_bare_ssh_config()), backend, str(echo_server.port),
    ]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin and controlling terminal are the pty
        os.execv(sys.executable, argv)  # noqa: S606 - argv list, no shell wanted
    try:
        deadline = time.monotonic() + 30
        prompt = read_until(fd, b"passphrase", deadline)
        assert b"passphrase" in prompt.lower(), prompt
        os.write(fd, PASSPHRASE.encode() + b"\n")
        output = read_until(fd, b"TUNNEL-typed", deadline)
        assert b"TUNNEL-typed" in output, output
        assert PASSPHRASE.encode() not in prompt + output  # not echoed
    finally:
        with contextlib.suppress(ChildProcessError):
            finished, _status = os.waitpid(pid, os.WNOHANG)
            if not finished:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)


def test_missing_sshd_skips_visibly_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import sshd

    monkeypatch.setattr(sshd, "find_sshd", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install openssh-server"):
        sshd.require_sshd()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        sshd.require_sshd()


@given(host=hosts, port=st.integers(1, 65535))
def test_zmq_urls_split_into_host_and_port(host: str, port: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    # a wildcard address means "the server's own loopback"
    expected = tunnels.WILDCARD_IPS.get(host, host)
    assert tunnels._split_zmq_url(f"tcp://{shown}:{port}") == (expected, port)


def test_zmq_urls_that_cannot_be_tunneled() -> None:
    assert tunnels._split_zmq_url("tcp://*:5555") == ("127.0.0.1", 5555)
    assert tunnels._split_zmq_url("tcp://0.0.0.0:5555") == ("127.0.0.1", 5555)
    for url in ("ipc:///tmp/k-1", "tcp://host", "host:5555", "tcp://:5555"):
        with pytest.raises(ValueError, match="tcp"):
            tunnels._split_zmq_url(url)


@pytest.mark.ssh
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_destination(backend: str, sshd_server: SSHServer) -> None:
    if not sshd_server.ipv6:
        pytest.skip("no IPv6 loopback on this machine")
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen(1)

    def echo_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(100))

    server_thread = threading.Thread(target=echo_once, daemon=True)
    server_thread.start()
    try:
        url, handle = tunnels.open_tunnel(
            f"tcp://[::1]:{listener.getsockname()[1]}", sshd_server.alias, backend=backend,
            **sshd_server.client_options(),
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 10) as conn:
            conn.sendall(b"over v6")
            assert conn.recv(100) == b"over v6"
        close_handle(handle)
    finally:
        listener.close()
        server_thread.join(5)
