"""The kernel-connect command, run as a subprocess against real kernels and files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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


# -- ls / prune judge only what this host can prove (issue 9) ----------------------------

_KEY = "0123456789abcdef-never-printed"


def _aged_file(directory: Path, name: str, **fields: Any) -> Path:
    """A connection file as jupyter writes one, last modified an hour ago."""
    info = {
        "shell_port": 1,
        "iopub_port": 2,
        "stdin_port": 3,
        "control_port": 5,
        "hb_port": 4,
        "ip": "127.0.0.1",
        "key": _KEY,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "kernel_name": "python3",
        **fields,
    }
    path = directory / name
    path.write_text(json.dumps(info))
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def _rows(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    return {Path(r["path"]).name: r for r in json.loads(out.stdout)}


def test_prune_keeps_an_ipc_kernel_whose_heartbeat_is_slow(tmp_path: Path) -> None:
    """An ipc kernel is alive while one of its sockets is bound, however late its
    heartbeat answers; one with only stale socket files (or none) is dead."""
    import zmq

    ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "hb_port": 4, "control_port": 5}
    slow_ip = str(tmp_path / "slow-ipc")
    slow = _aged_file(tmp_path, "kernel-slow.json", transport="ipc", ip=slow_ip, **ports)
    gone_ip = str(tmp_path / "gone-ipc")
    gone = _aged_file(tmp_path, "kernel-gone.json", transport="ipc", ip=gone_ip, **ports)
    # The dead kernel left a socket file behind (closed without unlinking it).
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(f"{gone_ip}-4")
    leftover.close()
    never = _aged_file(tmp_path, "kernel-never.json", transport="ipc", ip=str(tmp_path / "n"))
    ctx = zmq.Context()
    # A heartbeat that answers later than any timeout: nothing reads it during the test.
    heartbeat = ctx.socket(zmq.REP)
    heartbeat.bind(f"ipc://{slow_ip}-4")
    try:
        dry = kc("prune", "--dir", str(tmp_path), "--timeout", "0.2", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert sorted(json.loads(dry.stdout)["removed"]) == [str(gone), str(never)]
        rows = _rows(kc("ls", "--dir", str(tmp_path), "--timeout", "0.2", "--json"))
        assert rows["kernel-slow.json"]["state"] == "alive", rows["kernel-slow.json"]
        assert rows["kernel-gone.json"]["state"] == "dead"
        assert rows["kernel-never.json"]["state"] == "dead"
        out = kc("prune", "--dir", str(tmp_path), "--timeout", "0.2")
        assert out.returncode == 0, out.stderr
        assert slow.exists(), out.stdout
        assert not gone.exists() and not never.exists()
        assert "removed 2 of 3 connection files" in out.stdout
    finally:
        heartbeat.close(linger=0)
        ctx.term()


def test_prune_keeps_a_file_still_carrying_port_0(tmp_path: Path) -> None:
    """A zero-race kernel's file has port 0 until the kernel writes its ports back."""
    zeros = {n: 0 for n in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")}
    starting = _aged_file(tmp_path, "kernel-starting.json", **zeros)
    out = kc("prune", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert starting.exists(), out.stdout
    assert f"kept {starting}: unknown (port 0" in out.stdout
    assert "removed 0 of 1 connection file" in out.stdout
    row = _rows(kc("ls", "--dir", str(tmp_path), "--json"))["kernel-starting.json"]
    assert row["state"] == "unknown" and row["alive"] is None
    assert "port 0" in row["reason"]
    text = kc("ls", "--dir", str(tmp_path)).stdout
    assert "unknown: port 0" in text and "1 connection file: 0 alive, 0 dead, 1 unknown" in text


def test_only_kernel_files_are_considered_unless_told_otherwise(tmp_path: Path) -> None:
    settings = _aged_file(tmp_path, "my-settings.json", hb_port=9)
    dead = _aged_file(tmp_path, "kernel-dead.json")
    assert set(_rows(kc("ls", "--dir", str(tmp_path), "--json"))) == {"kernel-dead.json"}
    out = kc("prune", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert settings.exists() and not dead.exists()
    assert "removed 1 of 1 connection file" in out.stdout
    told = _rows(kc("ls", "--dir", str(tmp_path), "--pattern", "*.json", "--json"))
    assert set(told) == {"my-settings.json"}


def test_a_bad_file_is_reported_on_its_row_and_never_stops_the_command(tmp_path: Path) -> None:
    """An invalid curve key where the heartbeat is pinged, and a file that is not
    JSON: each is unknown on its own row, kept, and the others are still judged."""
    cache = LocalPortCache.instance()
    port = cache.find_available_port("127.0.0.1")
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        bad_key = _aged_file(
            tmp_path, "kernel-badkey.json", hb_port=port, curve_publickey="not-a-z85-public-key"
        )
        broken = tmp_path / "kernel-broken.json"
        broken.write_text('{"hb_port": 4, "ip": ')
        old = time.time() - 3600
        os.utime(broken, (old, old))
        dead = _aged_file(tmp_path, "kernel-dead.json")
        rows = _rows(kc("ls", "--dir", str(tmp_path), "--timeout", "0.2", "--json"))
        assert rows["kernel-badkey.json"]["state"] == "unknown"
        assert "invalid curve_publickey" in rows["kernel-badkey.json"]["reason"]
        assert rows["kernel-broken.json"]["state"] == "unknown"
        assert "unreadable" in rows["kernel-broken.json"]["reason"]
        assert rows["kernel-dead.json"]["state"] == "dead"
        text = kc("ls", "--dir", str(tmp_path), "--timeout", "0.2")
        assert text.returncode == 0, text.stderr
        assert "3 connection files: 0 alive, 1 dead, 2 unknown" in text.stdout
        out = kc("prune", "--dir", str(tmp_path), "--timeout", "0.2")
        assert out.returncode == 0, out.stderr
        assert bad_key.exists() and broken.exists() and not dead.exists()
        for run in (text, out):
            assert "Traceback" not in run.stderr
            assert _KEY not in run.stdout + run.stderr
            assert "not-a-z85-public-key" not in run.stdout + run.stderr
    finally:
        listener.close()
        cache.return_port(port)


def test_dry_run_shows_exactly_what_a_real_run_removes(tmp_path: Path) -> None:
    zeros = {n: 0 for n in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")}
    _aged_file(tmp_path, "kernel-starting.json", **zeros)
    _aged_file(tmp_path, "my-settings.json")
    broken = tmp_path / "kernel-broken.json"
    broken.write_text("{")
    os.utime(broken, (time.time() - 3600,) * 2)
    dead = [_aged_file(tmp_path, f"kernel-dead-{i}.json") for i in range(3)]
    young, _ = write_connection_file(str(tmp_path / "kernel-young.json"), 1, 2, 3, 4, 5)
    dry = kc("prune", "--dir", str(tmp_path), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert sorted(would["removed"]) == sorted(map(str, dead))
    real = kc("prune", "--dir", str(tmp_path), "--json")
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["removed"] == would["removed"]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {
        "kernel-starting.json",
        "my-settings.json",
        "kernel-broken.json",
        "kernel-young.json",
    }
    assert os.path.basename(young) in left


# A network namespace of its own whose only way out is a veth pair that counts what it
# sends: a file naming another host can reach nothing off this machine, and any packet
# (a heartbeat ping, an ARP, a DNS query) shows in the counter.
_OFFLINE_SETUP = (
    "ip link set lo up"
    " && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
    " && ip link add kc0 type veth peer name kc1"
    " && ip addr add 198.51.100.1/24 dev kc0 && ip link set kc1 up && ip link set kc0 up"
    " && ip route add default dev kc0"
)
_OFFLINE_DRIVER = """
import json, subprocess, sys
runs = [
    subprocess.run(
        [sys.executable, "-m", "kernel_connect", *argv], capture_output=True, text=True, timeout=120
    )
    for argv in json.loads(sys.argv[1])
]
with open("/proc/net/dev") as f:
    sent = [int(c.split()[9]) for n, _, c in (l.partition(":") for l in f) if n.strip() == "kc0"]
print(json.dumps({"runs": [[r.returncode, r.stdout, r.stderr] for r in runs], "sent": sent[0]}))
"""


@pytest.fixture(scope="module")
def offline() -> None:
    """Skip (saying why) where a network namespace of our own cannot be made."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare(1) and ip(8) to run off-network")
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", _OFFLINE_SETUP],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace (root needed): {probe.stderr.strip()}")


def kc_offline(*argvs: list[str]) -> tuple[list[subprocess.CompletedProcess[str]], int]:
    """Run kernel-connect commands inside their own network namespace; return their
    results and how many packets left through its only interface."""
    out = subprocess.run(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            f'{_OFFLINE_SETUP} && exec "$0" -c "$1" "$2"',
            sys.executable,
            _OFFLINE_DRIVER,
            json.dumps(argvs),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    runs = [
        subprocess.CompletedProcess(a, rc, so, se)
        for a, (rc, so, se) in zip(argvs, report["runs"], strict=True)
    ]
    return runs, int(report["sent"])


def test_remote_kernels_are_unknown_kept_and_never_contacted(offline: None, tmp_path: Path) -> None:
    """Files naming another host (by address or by name) are unknown and kept, and
    nothing at all is sent off this host to judge them."""
    ports = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
    remote = _aged_file(
        tmp_path,
        "kernel-remote.json",
        ip="203.0.113.7",
        **{n: 50001 + i for i, n in enumerate(ports)},
    )
    named = _aged_file(tmp_path, "kernel-named.json", ip="gpu-box.invalid")
    dead = _aged_file(tmp_path, "kernel-dead.json")
    directory = ["--dir", str(tmp_path), "--timeout", "0.5"]
    (ls, dry, real, text), sent = kc_offline(
        ["ls", *directory, "--json"],
        ["prune", *directory, "--dry-run", "--json"],
        ["prune", *directory],
        ["ls", *directory],
    )
    for run in (ls, dry, real, text):
        assert run.returncode == 0, run.stderr
    assert remote.exists() and named.exists() and not dead.exists(), real.stdout
    assert sent == 0, "a packet left the host"
    rows = _rows(ls)
    for name in ("kernel-remote.json", "kernel-named.json"):
        assert rows[name]["state"] == "unknown", rows[name]
        assert "non-local" in rows[name]["reason"]
    assert rows["kernel-dead.json"]["state"] == "dead"
    assert json.loads(dry.stdout)["removed"] == [str(dead)]
    assert f"kept {remote}: unknown (non-local ip 203.0.113.7" in real.stdout
    assert "2 connection files: 0 alive, 0 dead, 2 unknown" in text.stdout


def test_an_invalid_curve_key_on_a_remote_file_stops_nothing(offline: None, tmp_path: Path) -> None:
    bad_key = _aged_file(
        tmp_path, "kernel-badkey.json", ip="203.0.113.8", curve_publickey="not-a-z85-key"
    )
    dead = _aged_file(tmp_path, "kernel-dead.json")
    directory = ["--dir", str(tmp_path), "--timeout", "0.5"]
    (ls, real), sent = kc_offline(["ls", *directory], ["prune", *directory])
    for run in (ls, real):
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert "not-a-z85-key" not in run.stdout + run.stderr
    assert "2 connection files: 0 alive, 1 dead, 1 unknown" in ls.stdout
    assert "unknown: non-local ip 203.0.113.8" in ls.stdout
    assert bad_key.exists() and not dead.exists()
    assert sent == 0, "a packet left the host"
