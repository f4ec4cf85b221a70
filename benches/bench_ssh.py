"""SSH tunnel benchmark: kernel-connect vs jupyter_client, against a loopback sshd.

Run: .venv/bin/python benches/bench_ssh.py [--quick]

Starts a throwaway sshd (tests/sshd.py) and one ipykernel, then for each way of
tunnelling to the kernel measures, over N calls: the time tunnel_to_kernel (or
jupyter_client's per-port equivalent) takes, the time until the first
kernel_info reply arrives through the new tunnels, and how many calls got a
reply at all; then the kernel_info round trip through the tunnels against the
direct round trip measured right before it.

jupyter_client's OpenSSH path runs the real `jupyter_client.tunnel_to_kernel`;
its ssh (via pexpect) is pointed at the test server's config with a wrapper
script first on PATH, because OpenSSH reads ~/.ssh from the password database.
Its paramiko path is tunnel_to_kernel's loop with `paramiko_tunnel` per port
(what it does on Windows), with HOME pointing at a directory whose
.ssh/known_hosts knows the test server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Benchmarks get their own runtime dir and port table, like the tests.
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kc-bench-runtime-")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sshd
from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import read_connection_file
from kernel_connect.manager import KernelManager
from kernel_connect.ssh.tunnel import CHANNELS, tunnel_to_kernel

REPLY_TIMEOUT = 5.0
SETUP_TARGET = 0.2
RTT_TARGET = 1.5

# one call: returns the five local ports and a function that tears the tunnels down
Setup = Callable[[], tuple[list[int], Callable[[], None]]]


@dataclass
class Result:
    name: str
    setup: list[float] = field(default_factory=list)
    first_reply: list[float] = field(default_factory=list)
    ok: int = 0
    calls: int = 0
    rtt: float = float("nan")
    direct: float = float("nan")
    note: str = ""


def client_for(info: dict[str, Any], ports: list[int]) -> BlockingKernelClient:
    info = dict(info)
    info.update({f"{name}_port": port for name, port in zip(CHANNELS, ports, strict=True)})
    info["ip"] = "127.0.0.1"
    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels()
    return client


def kernel_info_reply(client: BlockingKernelClient, timeout: float) -> bool:
    msg_id = client.kernel_info()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = client.get_shell_msg(timeout=left)
        except Exception:  # queue.Empty: no reply in time
            return False
        if reply["parent_header"].get("msg_id") == msg_id:
            return True
    return False


def round_trip(client: BlockingKernelClient, count: int) -> float:
    """Median seconds for kernel_info request -> reply."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        if not kernel_info_reply(client, REPLY_TIMEOUT):
            return float("nan")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(
    name: str,
    setup: Setup,
    info: dict[str, Any],
    direct: BlockingKernelClient,
    calls: int,
    rtt_count: int,
) -> Result:
    result = Result(name)
    for _ in range(calls):
        start = time.perf_counter()
        try:
            ports, teardown = setup()
        except Exception as exc:
            result.calls += 1
            result.note = f"set-up failed: {type(exc).__name__}: {exc}"[:160]
            continue
        result.setup.append(time.perf_counter() - start)
        client = client_for(info, ports)
        try:
            answered = kernel_info_reply(client, REPLY_TIMEOUT)
            if answered:
                result.first_reply.append(time.perf_counter() - start)
                result.ok += 1
            if answered and result.rtt != result.rtt:  # first answered call (rtt is nan)
                result.direct = round_trip(direct, rtt_count)
                result.rtt = round_trip(client, rtt_count)
        finally:
            client.stop_channels()
            teardown()
        result.calls += 1
    return result


# -- kernel-connect ---------------------------------------------------------------------


def kc_setup(info: dict[str, Any], server: sshd.SSHServer, backend: str) -> Setup:
    def setup() -> tuple[list[int], Callable[[], None]]:
        ports = tunnel_to_kernel(info, server.alias, backend=backend, **server.client_options())
        return list(ports), ports.close

    return setup


# -- jupyter_client -------------------------------------------------------------------


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null (for processes forked meanwhile), then restore it."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def ssh_wrapper(server: sshd.SSHServer, directory: Path) -> Path:
    """A directory holding an `ssh` that always uses the test server's client files."""
    real = shutil.which("ssh")
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec {real} -F "{server.ssh_config}" -o "UserKnownHostsFile={server.known_hosts}" '
        '"$@"\n'
    )
    wrapper.chmod(0o755)
    return bin_dir


def ssh_pids_forwarding(ports: list[int]) -> list[int]:
    """Pids of ssh processes whose command line forwards one of `ports` (ours only)."""
    marks = [f"127.0.0.1:{port}:".encode() for port in ports]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ssh" in cmdline.split(b"\0", 1)[0] and any(m in cmdline for m in marks):
            found.append(int(entry))
    return found


def jc_openssh_setup(info: dict[str, Any], server: sshd.SSHServer, bin_dir: Path) -> Setup:
    import jupyter_client.connect as jc_connect

    def setup() -> tuple[list[int], Callable[[], None]]:
        path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        with environment(PATH=path):
            ports = list(jc_connect.tunnel_to_kernel(info, server.alias, str(server.client_key)))

        def teardown() -> None:
            # its `ssh -f` processes detach; end exactly the ones forwarding our ports
            for pid in ssh_pids_forwarding(ports):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

        return ports, teardown

    return setup


def jc_paramiko_setup(info: dict[str, Any], server: sshd.SSHServer, home: Path) -> Setup:
    from jupyter_client.ssh import tunnel as jc_tunnel

    remote = [int(info[f"{name}_port"]) for name in CHANNELS]
    target = f"{server.user}@127.0.0.1:{server.port}"

    def setup() -> tuple[list[int], Callable[[], None]]:
        # its forked tunnel processes print tracebacks when terminated: hide them
        with environment(HOME=str(home)), quiet_stderr():
            ports = jc_tunnel.select_random_ports(5)
            processes = [
                jc_tunnel.paramiko_tunnel(
                    lp, rp, target, "127.0.0.1", keyfile=str(server.client_key)
                )
                for lp, rp in zip(ports, remote, strict=True)
            ]

        def teardown() -> None:
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(5)

        return ports, teardown

    return setup


# -- report ----------------------------------------------------------------------------


def stats(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8}"
    return f"{statistics.median(values):>8.3f} {max(values):>8.3f}"


def report(results: list[Result]) -> None:
    print(
        f"\n{'path':<30} {'set-up s':>17} {'first reply s':>17} {'replies':>8} "
        f"{'rtt ms':>7} {'direct':>7} {'ratio':>6}"
    )
    print(f"{'':<30} {'median':>8} {'max':>8} {'median':>8} {'max':>8}")
    for r in results:
        ratio = r.rtt / r.direct if r.direct == r.direct and r.direct else float("nan")
        print(
            f"{r.name:<30} {stats(r.setup)} {stats(r.first_reply)} {r.ok:>3} of {r.calls:<2} "
            f"{r.rtt * 1e3:>7.2f} {r.direct * 1e3:>7.2f} {ratio:>5.2f}x"
        )
        if r.note:
            print(f"{'':<30} note: {r.note}")


def check_targets(results: list[Result]) -> int:
    ours = results[0]  # kernel-connect, default backend
    met = 0
    first = statistics.median(ours.first_reply) if ours.first_reply else float("inf")
    ratio = ours.rtt / ours.direct if ours.direct else float("inf")
    checks = [
        (f"set-up + first reply <= {SETUP_TARGET} s (median {first:.3f} s)", first <= SETUP_TARGET),
        (f"{ours.calls} of {ours.calls} calls reach the kernel ({ours.ok})", ours.ok == ours.calls),
        (f"round trip <= {RTT_TARGET}x direct ({ratio:.2f}x)", ratio <= RTT_TARGET),
    ]
    print(f"\ntargets for {ours.name}:")
    for text, ok in checks:
        met += ok
        print(f"  {text}: {'met' if ok else 'MISSED'}")
    for other in results[1:]:
        if ours.first_reply and other.first_reply:
            speedup = statistics.median(other.first_reply) / first
            print(f"  vs {other.name}: first reply {speedup:.1f}x faster")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and round trips")
    args = parser.parse_args(argv)
    calls, jc_calls, rtt_count = (5, 2, 50) if args.quick else (20, 5, 300)
    reason = sshd.missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="kc-bench-ssh-"))
    km = KernelManager()
    km.start_kernel()
    direct = km.client()
    direct.start_channels()
    try:
        direct.wait_for_ready(timeout=60)
        info = dict(read_connection_file(km.connection_file))
        with sshd.running_sshd() as server:
            home = work / "home"
            (home / ".ssh").mkdir(parents=True)
            shutil.copy(server.known_hosts, home / ".ssh" / "known_hosts")
            bin_dir = ssh_wrapper(server, work)
            print(f"loopback sshd on port {server.port}; {calls} calls per kernel-connect path")
            results = [
                measure("kernel-connect (paramiko)", kc_setup(info, server, "paramiko"),
                        info, direct, calls, rtt_count),
                measure("kernel-connect (openssh)", kc_setup(info, server, "openssh"),
                        info, direct, calls, rtt_count),
                measure("jupyter_client (paramiko)", jc_paramiko_setup(info, server, home),
                        info, direct, jc_calls, rtt_count),
                measure("jupyter_client (openssh)", jc_openssh_setup(info, server, bin_dir),
                        info, direct, jc_calls, rtt_count),
            ]  # fmt: skip
        report(results)
        met = check_targets(results)
    finally:
        direct.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{met} of 3 targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
