"""launch_kernel against real processes: sessions, stdin, environment, errors, parent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from kernel_connect.connect import LocalPortCache, write_connection_file
from kernel_connect.launcher import launch_kernel
from kernel_connect.session import Session
from kernel_fixtures import ipykernel_argv, pid_alive, wait_until

pytestmark = pytest.mark.kernel


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


@pytest.fixture(scope="module")
def raw_kernel(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], dict]]:
    """An ipykernel started by launch_kernel from a connection file we wrote."""
    conn = str(tmp_path_factory.mktemp("raw") / "kernel-raw.json")
    fname, info = write_connection_file(conn, key=b"raw-kernel-key")
    proc = launch_kernel(ipykernel_argv(fname), stderr=subprocess.DEVNULL)
    yield proc, info
    proc.kill()
    proc.wait(10)
    LocalPortCache.instance().return_ports(
        [info[p] for p in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")]
    )


def test_kernel_answers_a_signed_kernel_info_request(raw_kernel: tuple) -> None:
    proc, info = raw_kernel
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.linger = 0
        sock.connect(f"tcp://{info['ip']}:{info['shell_port']}")
        request = session.send(sock, "kernel_info_request")
        assert request is not None
        assert sock.poll(60_000), "no kernel_info_reply from the kernel"
        _, reply = session.recv(sock)
        assert reply is not None
        assert reply["msg_type"] == "kernel_info_reply"
        assert reply["parent_header"]["msg_id"] == request["msg_id"]
        assert reply["content"]["implementation"] == "ipython"
    finally:
        sock.close()
    assert proc.poll() is None


def test_kernel_leads_its_own_session_with_stdin_closed_and_parent_pid(raw_kernel: tuple) -> None:
    proc, _ = raw_kernel
    assert os.getsid(proc.pid) == proc.pid
    assert os.getpgid(proc.pid) == proc.pid
    assert proc.stdin is None  # our end was closed right after the launch
    # The kernel's stdin is a pipe whose writing end we closed: it reads EOF.
    assert os.readlink(f"/proc/{proc.pid}/fd/0").startswith("pipe:")
    assert _environ_of(proc.pid)["JPY_PARENT_PID"] == str(os.getpid())


def test_group_signal_reaches_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)"
    )
    proc = launch_kernel([sys.executable, "-c", script])
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", 20)
        child = int(pidfile.read_text())
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
        assert wait_until(lambda: not pid_alive(child), 10)
    finally:
        proc.kill()
        proc.wait(10)


def test_env_cwd_tilde_and_independent(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "KC_MARK": "yes"}
    script = "import os,sys; print(os.getcwd()); print(sys.argv[1]); print(sorted(os.environ))"
    proc = launch_kernel(
        [sys.executable, "-c", script, "~/somewhere"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
        independent=True,
    )
    out, _ = proc.communicate(timeout=30)
    cwd, arg, names = out.decode().splitlines()
    assert os.path.realpath(cwd) == os.path.realpath(tmp_path)
    assert arg == os.path.expanduser("~/somewhere")
    assert "~" not in arg
    assert "KC_MARK" in names
    assert "JPY_PARENT_PID" not in names
    assert "HOME" not in names
    assert env == {"PATH": os.environ["PATH"], "KC_MARK": "yes"}  # caller's dict untouched

    proc = launch_kernel(
        [sys.executable, "-c", "import os; print(os.environ['JPY_PARENT_PID'])"],
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=30)
    assert out.decode().strip() == str(os.getpid())


def test_command_that_cannot_start_names_command_and_path_not_env() -> None:
    env = {"PATH": "/nonexistent/bin", "API_TOKEN": "hunter2-secret"}
    with pytest.raises(FileNotFoundError) as info:
        launch_kernel(["no-such-kernel-binary", "-f", "x.json"], env=env)
    text = str(info.value)
    assert "no-such-kernel-binary" in text
    assert "/nonexistent/bin" in text
    assert "hunter2-secret" not in text
    assert "API_TOKEN" not in text


def test_dependent_kernel_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """independent=False: ipykernel polls JPY_PARENT_PID and exits when we die."""
    conn = str(tmp_path / "kernel-orphan.json")
    fname, info = write_connection_file(conn, key=b"k")
    # The parent returns its ports' reservations by exiting.
    parent_script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from kernel_connect.launcher import launch_kernel
        p = launch_kernel({ipykernel_argv(fname)!r}, stderr=subprocess.DEVNULL)
        print(p.pid, flush=True)
        sys.stdin.readline()
        os._exit(0)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    assert parent.stdin is not None
    kernel_pid = int(parent.stdout.readline())
    try:
        # Let the kernel boot fully (its parent poller starts with its loop).
        assert _kernel_ready(info)
        parent.stdin.write(b"\n")
        parent.stdin.close()
        parent.wait(10)
        assert wait_until(lambda: not pid_alive(kernel_pid), 15), "kernel outlived its parent"
    finally:
        if pid_alive(kernel_pid):
            os.kill(kernel_pid, signal.SIGKILL)
        LocalPortCache.instance().return_ports(
            [info[p] for p in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")]
        )


def _kernel_ready(info: dict, timeout: float = 60.0) -> bool:
    """Whether the kernel in ``info`` answers a kernel_info_request within ``timeout``."""
    session = Session(key=info["key"].encode())
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.linger = 0
        sock.connect(f"tcp://{info['ip']}:{info['shell_port']}")
        session.send(sock, "kernel_info_request")
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close()
