"""The kernel-connect command, run as a subprocess against real kernels and files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_connect import read_connection_file, write_connection_file
from kernel_connect.connect import LocalPortCache
from kernel_connect.liveness import listening_tcp_ports


def kc(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel_connect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until something listens on `port` (the kernel bound its heartbeat)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = listening_tcp_ports()
        if ports is not None and port in ports:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"kernel exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A directory with a live kernel, a SIGKILLed kernel's file, and a stale file."""
    directory = tmp_path_factory.mktemp("runtime")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files: dict[str, str] = {}
    for name in ("live", "killed"):
        fname, _ = write_connection_file(
            str(directory / f"kernel-{name}.json"), key=b"k" * 16, kernel_name="python3"
        )
        files[name] = fname
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "ipykernel_launcher", "-f", fname],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    for name in procs:
        _wait_listening(read_connection_file(files[name])["hb_port"], procs[name])
    procs["killed"].send_signal(signal.SIGKILL)
    procs["killed"].wait(timeout=10)
    # Its manager is gone as well: nothing holds its ports any more. (While a
    # live process holds them, prune leaves the file to that process.)
    killed = read_connection_file(files["killed"])
    LocalPortCache.instance().return_ports(
        killed[n] for n in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    )
    stale, _ = write_connection_file(str(directory / "kernel-stale.json"), 1, 2, 3, 4, 5)
    old = time.time() - 3600
    for path in (files["killed"], stale):
        os.utime(path, (old, old))
    (directory / "jpserver-1.json").write_text('{"url": "http://localhost"}')
    yield {
        "dir": str(directory),
        "live": files["live"],
        "killed": files["killed"],
        "stale": stale,
        "proc": procs["live"],
    }
    procs["live"].kill()
    procs["live"].wait(timeout=10)


def test_ls_tells_live_from_dead(kernel_dir: dict[str, Any]) -> None:
    out = kc("ls", "--dir", kernel_dir["dir"], "--json")
    assert out.returncode == 0, out.stderr
    rows = {Path(r["path"]).name: r for r in json.loads(out.stdout)}
    assert set(rows) == {"kernel-live.json", "kernel-killed.json", "kernel-stale.json"}
    assert rows["kernel-live.json"]["alive"] is True
    assert rows["kernel-killed.json"]["alive"] is False
    assert rows["kernel-stale.json"]["alive"] is False
    text = kc("ls", "--dir", kernel_dir["dir"])
    assert "3 connection files: 1 alive, 2 dead" in text.stdout
    assert "python3" in text.stdout


def test_prune_removes_exactly_the_dead(kernel_dir: dict[str, Any], tmp_path: Path) -> None:
    dry = kc("prune", "--dir", kernel_dir["dir"], "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert sorted(report["removed"]) == sorted([kernel_dir["killed"], kernel_dir["stale"]])
    assert os.path.exists(kernel_dir["killed"]), "dry run removes nothing"
    real = kc("prune", "--dir", kernel_dir["dir"])
    assert real.returncode == 0, real.stderr
    assert "removed 2 of 3" in real.stdout
    assert os.path.exists(kernel_dir["live"])
    assert not os.path.exists(kernel_dir["killed"])
    assert not os.path.exists(kernel_dir["stale"])
    assert os.path.exists(os.path.join(kernel_dir["dir"], "jpserver-1.json"))


def test_prune_keeps_young_files_and_files_with_reserved_ports(tmp_path: Path) -> None:
    young, _ = write_connection_file(str(tmp_path / "kernel-young.json"), 1, 2, 3, 4, 5)
    reserved, _ = write_connection_file(str(tmp_path / "kernel-reserved.json"))
    old = time.time() - 3600
    os.utime(reserved, (old, old))
    out = kc("prune", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert os.path.exists(young), "younger than --min-age: its kernel may be starting"
    assert os.path.exists(reserved), "its ports are reserved by a live process (this one)"
    assert "in use" in out.stdout


def test_new_writes_a_private_file_and_hides_the_key(tmp_path: Path) -> None:
    target = tmp_path / "kernel-new.json"
    out = kc("new", "-f", str(target), "--kernel-name", "python3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(target)
    info = read_connection_file(target)
    assert len(info["key"]) == 32 and info["key"] not in out.stdout
    assert info["kernel_name"] == "python3"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    ports = [info[n] for n in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
    assert len(set(ports)) == 5 and all(ports)
    shown = kc("new", "-f", str(tmp_path / "k2.json"), "--show-key", "--json")
    data = json.loads(shown.stdout)
    assert data["key"] == read_connection_file(tmp_path / "k2.json")["key"]


def test_new_in_default_runtime_dir(runtime_dir: Path) -> None:
    out = kc("new", "--transport", "ipc", "--ip", str(runtime_dir / "ipc-kernel"))
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.parent == runtime_dir and path.name.startswith("kernel-")
    assert read_connection_file(path)["transport"] == "ipc"
    path.unlink()


def test_ports_shows_owners(tmp_path: Path) -> None:
    env = {**os.environ, "KERNEL_CONNECT_PORT_TABLE": str(tmp_path / "table")}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from kernel_connect.connect import LocalPortCache as L; "
            "print(L.instance().reserve('127.0.0.1', 3), flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None
    held = json.loads(holder.stdout.readline())
    out = kc("ports", "--json", env=env)
    data = json.loads(out.stdout)
    assert sorted(p["port"] for p in data["ports"]) == sorted(held)
    assert {p["pid"] for p in data["ports"]} == {holder.pid}
    assert data["alive"] == 3 and data["reclaimable"] == 0
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    after = json.loads(kc("ports", "--json", env=env).stdout)
    assert after["alive"] == 0 and after["reclaimable"] == 3
    assert "reclaimable" in kc("ports", env=env).stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["ls", "--nope"],
        ["new", "--transport", "udp"],
        ["farm", "-n", "x"],
        ["tunnel", "only-one-arg"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    out = kc(*argv)
    assert out.returncode == 2
    assert "usage: kernel-connect" in out.stderr


def test_reported_failure_exits_1(tmp_path: Path) -> None:
    out = kc("ls", "--dir", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert "not a directory" in out.stderr
    bad = kc("new", "-f", str(tmp_path / "no" / "dir" / "k.json"))
    assert bad.returncode == 1 and "No such file" in bad.stderr


def test_every_subcommand_has_help() -> None:
    for sub in ("farm", "ls", "prune", "new", "tunnel", "ports"):
        out = kc(sub, "--help")
        assert out.returncode == 0 and f"usage: kernel-connect {sub}" in out.stdout


def test_dead_kernels_cost_no_heartbeat_timeout_each(tmp_path: Path) -> None:
    """Files whose heartbeat port nobody listens on are dead at once: with a 30 s
    heartbeat timeout, waiting per file would blow far past the bound below."""
    for i in range(200):
        write_connection_file(str(tmp_path / f"kernel-{i}.json"), 1, 2, 3, 4, 5)
    out = kc("ls", "--dir", str(tmp_path), "--timeout", "30", "--json", timeout=25)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 200 and not any(r["alive"] for r in rows)
