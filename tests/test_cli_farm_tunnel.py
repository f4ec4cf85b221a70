"""`kernel-connect farm` and `kernel-connect tunnel` as subprocesses, with real
kernels, a real sshd, and jupyter_client's client on the tunnelled file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient as JupyterBlockingClient

from kernel_connect.client import BlockingKernelClient
from kernel_connect.manager import KernelManager
from kernel_fixtures import pid_alive, start_ready_kernel, stop_kernel
from sshd import SSHServer

pytestmark = pytest.mark.kernel
pytest_plugins = ["sshd"]


def kc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kernel_connect", *args]


def test_farm_plain_progress_and_table(runtime_dir: Path) -> None:
    before = set(runtime_dir.glob("kernel-*.json"))
    out = subprocess.run(
        kc_cmd("farm", "-n", "3", "--code", "6 * 7"), capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # Not a terminal: one plain line per state change, for every kernel.
    for i in range(3):
        assert f"kernel {i}: starting" in lines
        assert any(line.startswith(f"kernel {i}: ready in ") for line in lines)
        assert f"kernel {i}: stopped" in lines
    assert "\x1b[" not in out.stdout
    rows = [line.split() for line in lines if line[:1].isdigit() and "kernels," not in line]
    assert len(rows) == 3 and all(row[-1] == "42" for row in rows)
    assert "left behind: 0 processes, 0 connection files" in out.stdout
    assert set(runtime_dir.glob("kernel-*.json")) == before


def test_farm_json_report() -> None:
    out = subprocess.run(
        kc_cmd("farm", "-n", "2", "--json", "--code", "'ok'"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert [k["result"] for k in report["kernels"]] == ["'ok'", "'ok'"]
    assert all(len(set(k["ports"])) == 5 for k in report["kernels"])


def test_farm_interrupted_shuts_everything_down(runtime_dir: Path) -> None:
    before = set(runtime_dir.glob("kernel-*.json"))
    proc = subprocess.Popen(
        kc_cmd("farm", "-n", "3", "--code", "import time; time.sleep(60)"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = []
    for line in proc.stdout:  # wait until the code is running on every kernel
        if ": ready in " in line:
            pids.append(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
        if line.endswith(": running\n") and len(pids) == 3:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err
    assert len(pids) == 3
    assert not any(pid_alive(p) for p in pids)
    assert set(runtime_dir.glob("kernel-*.json")) == before


@pytest.fixture(scope="module")
def remote_kernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_ready_kernel()
    yield km, kc
    stop_kernel(km, kc)


@pytest.mark.ssh
def test_tunnel_writes_a_file_jupyter_client_can_use(
    sshd_server: SSHServer, remote_kernel: tuple[KernelManager, BlockingKernelClient]
) -> None:
    km, _ = remote_kernel
    remote_file = Path(km.connection_file)
    local_file = remote_file.with_name(remote_file.stem + "-ssh.json")
    proc = subprocess.Popen(
        kc_cmd(
            "tunnel",
            str(remote_file),
            sshd_server.server,
            "-i",
            str(sshd_server.client_key),
            "--known-hosts",
            str(sshd_server.known_hosts),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("tunnels up:")
        assert proc.stdout.readline().strip() == str(local_file)
        client = JupyterBlockingClient(connection_file=str(local_file))
        client.load_connection_file()
        assert client.ip == "127.0.0.1"
        assert client.shell_port != km.shell_port, "the file points at the local tunnel ends"
        client.start_channels()
        try:
            reply = client.kernel_info(reply=True, timeout=30)
            assert reply["content"]["status"] == "ok"
            result = client.execute_interactive("'through the tunnel'", timeout=30)
            assert result["content"]["status"] == "ok"
        finally:
            client.stop_channels()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not local_file.exists(), "the local file is removed when the tunnel closes"


@pytest.mark.ssh
def test_tunnel_to_an_unknown_host_fails_with_exit_1(
    sshd_server: SSHServer,
    remote_kernel: tuple[KernelManager, BlockingKernelClient],
    tmp_path: Path,
) -> None:
    km, _ = remote_kernel
    empty = sshd_server.write_empty_known_hosts("cli_empty_known_hosts")
    out = subprocess.run(
        kc_cmd(
            "tunnel",
            km.connection_file,
            sshd_server.server,
            "-i",
            str(sshd_server.client_key),
            "--known-hosts",
            str(empty),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "kernel-connect tunnel:" in out.stderr
    assert "host key" in out.stderr.lower()
