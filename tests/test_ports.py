"""The port reservation table: no port held twice, dead owners reclaimed, bound
ports never handed out, fallback when the runtime directory is unusable."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_connect import _native
from kernel_connect.connect import LocalPortCache
from kernel_connect.paths import port_table_path


def _free_range(width: int) -> tuple[int, int]:
    """A range of `width` ports outside the ephemeral range, probably unused."""
    base = 20000 + (os.getpid() * 97) % 10000
    return base, base + width - 1


def test_a_table_placed_by_setting_is_private_and_shared_by_its_users() -> None:
    cache = LocalPortCache.instance()
    port = cache.find_available_port("127.0.0.1")
    path = port_table_path()
    assert path == os.environ["KERNEL_CONNECT_PORT_TABLE"]
    assert cache.table.path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = _native.PortTable(path)
    assert other.owner(port) == (os.getpid(), True), "a second mapping sees the reservation"
    cache.return_port(port)
    assert other.owner(port) is None


def test_find_available_port_is_bindable_and_return_is_tolerant() -> None:
    cache = LocalPortCache.instance()
    port = cache.find_available_port("127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    cache.return_port(port)
    cache.return_port(port)  # twice: ignored
    cache.return_port(1)  # never reserved: ignored
    cache.return_port(0)
    cache.return_port(99999)
    assert not cache.table.holds(port)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured on this host")
    port = LocalPortCache.instance().find_available_port("::1")
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", port))
    LocalPortCache.instance().return_port(port)


def test_sixteen_threads_never_share_a_port() -> None:
    table = _native.PortTable(port_table_path())
    results: list[list[int]] = []
    barrier = threading.Barrier(16)
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        mine: list[int] = []
        for _ in range(25):
            mine.extend(table.reserve("127.0.0.1", 5))
        with lock:
            results.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    held = [p for r in results for p in r]
    assert len(results) == 16
    assert len(held) == 16 * 125
    duplicates = [p for p, n in Counter(held).items() if n > 1]
    assert duplicates == []
    for p in held:
        assert table.release(p)


HAMMER = textwrap.dedent("""
    import json, socket, sys
    from kernel_connect import _native
    table = _native.PortTable(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # "go": all eight start together
    conflicts, kernels, held = 0, 0, []
    for round_ in range(int(sys.argv[2])):
        ports = table.reserve("127.0.0.1", 5)
        socks = []
        for p in ports:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                conflicts += 1
            socks.append(s)
        # Keep every 4th kernel's ports for the cross-process uniqueness check.
        if round_ % 4 == 0:
            held.extend(ports)
        else:
            for p in ports:
                table.release(p)
        for s in socks:
            s.close()
        kernels += 1
    print(json.dumps({"conflicts": conflicts, "kernels": kernels, "held": held}), flush=True)
    sys.stdin.read()  # stay alive (a dead owner's ports are fair game) until told
""")


def test_eight_processes_hammering_never_share_a_port(tmp_path: Path) -> None:
    """Eight processes reserve and bind ports as kernels would, at the same time;
    every reserved port binds, and the ports they keep are all distinct."""
    table_path = str(tmp_path / "ports")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, table_path, "200"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    for p in procs:
        p.communicate(timeout=60)
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["kernels"] for r in reports) == 1600
    assert sum(r["conflicts"] for r in reports) == 0
    kept = [port for r in reports for port in r["held"]]
    assert len(kept) == 8 * 50 * 5
    assert len(set(kept)) == len(kept), "a port was held by two processes at once"


HOLDER = textwrap.dedent("""
    import sys
    from kernel_connect import _native
    table = _native.PortTable(sys.argv[1])
    lo, hi = int(sys.argv[2]), int(sys.argv[3])
    ports = table.reserve("127.0.0.1", hi - lo + 1, (lo, hi))
    print(" ".join(map(str, ports)), flush=True)
    sys.stdin.read()
""")


def test_reservations_of_a_sigkilled_process_are_reclaimed(tmp_path: Path) -> None:
    table_path = str(tmp_path / "ports")
    lo, hi = _free_range(3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, table_path, str(lo), str(hi)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    held = sorted(map(int, holder.stdout.readline().split()))
    assert held == list(range(lo, hi + 1))
    table = _native.PortTable(table_path)
    # While the holder lives, its ports are not ours to take.
    with pytest.raises(OSError, match="no free port"):
        table.reserve("127.0.0.1", 1, (lo, hi))
    assert table.owner(lo) == (holder.pid, True)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert table.owner(lo) == (holder.pid, False)
    assert sorted(table.reserve("127.0.0.1", 3, (lo, hi))) == held
    assert all(table.owner(p) == (os.getpid(), True) for p in held)
    for p in held:
        table.release(p)


def test_a_port_bound_by_someone_else_is_never_returned(tmp_path: Path) -> None:
    table = _native.PortTable(str(tmp_path / "ports"))
    lo, hi = _free_range(8)
    listeners = []
    for p in range(lo, hi + 1):
        if p == lo + 5:
            continue
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        s.listen()
        listeners.append(s)
    try:
        for _ in range(5):
            [port] = table.reserve("127.0.0.1", 1, (lo, hi))
            assert port == lo + 5
            assert table.release(port)
        assert [p for p, *_ in table.held()] == [], "failed probes release their slots"
    finally:
        for s in listeners:
            s.close()


def test_os_candidates_skip_bound_ports(tmp_path: Path) -> None:
    table = _native.PortTable(str(tmp_path / "ports"))
    listeners = []
    for _ in range(20):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        listeners.append(s)
    bound = {s.getsockname()[1] for s in listeners}
    try:
        got = table.reserve("127.0.0.1", 200)
        assert not bound & set(got)
    finally:
        for s in listeners:
            s.close()
        table.release_all()


def test_random_binds_by_kernels_never_land_on_reserved_ports(tmp_path: Path) -> None:
    """Every ipykernel binds a socket of its own to a random port (bind to port 0).
    Such binds, by any process, must never take a port reserved for a kernel that
    has not bound it yet: reserved ports lie where the OS does not hand out."""
    table = _native.PortTable(str(tmp_path / "ports"))
    reserved = set(table.reserve("127.0.0.1", 500))
    randoms = []
    try:
        for _ in range(3000):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            randoms.append(s)
        taken = {s.getsockname()[1] for s in randoms}
        assert not reserved & taken
    finally:
        for s in randoms:
            s.close()
        table.release_all()


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 10)), min_size=1, max_size=30))
def test_model_reserve_release(ops: list[tuple[bool, int]]) -> None:
    """Against a model: held ports are exactly those reserved and not released."""
    table = _native.PortTable(None)
    model: set[int] = set()
    for reserve, n in ops:
        if reserve:
            got = table.reserve("127.0.0.1", n)
            assert len(set(got)) == n
            assert not model & set(got)
            model |= set(got)
        elif model:
            victim = sorted(model)[n % len(model)]
            assert table.release(victim)
            model.discard(victim)
        assert {p for p, *_ in table.held()} == model
    assert table.release_all() == len(model)


def test_port_range_setting_and_bad_ranges(
    fresh_port_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo, hi = _free_range(16)
    monkeypatch.setenv("KERNEL_CONNECT_PORT_RANGE", f"{lo}-{hi}")
    cache = LocalPortCache.instance()
    ports = cache.reserve("127.0.0.1", 5)
    assert all(lo <= p <= hi for p in ports)
    cache.return_ports(ports)
    LocalPortCache.clear_instance()
    for bad in ("5-1", "x", "0-10", "1-70000"):
        monkeypatch.setenv("KERNEL_CONNECT_PORT_RANGE", bad)
        with pytest.raises(ValueError, match="KERNEL_CONNECT_PORT_RANGE"):
            LocalPortCache()
    with pytest.raises(ValueError, match="range"):
        _native.PortTable(None).reserve("127.0.0.1", 1, (9, 3))


def test_unknown_ip_is_an_os_error() -> None:
    """An address this host does not have is an OSError naming it. The call
    runs in a network namespace of its own (loopback only), so even code that
    wrongly sent something to that address could not reach another host."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    script = textwrap.dedent("""
        from kernel_connect.ports import LocalPortCache
        try:
            LocalPortCache.instance().find_available_port("192.0.2.55")
        except OSError as err:
            print(err)
    """)
    out = subprocess.run(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -c "$1"',
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "192.0.2.55" in out.stdout, out


def test_unusable_table_location_falls_back_with_one_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from kernel_connect.connect import LocalPortCache
            cache = LocalPortCache.instance()
            ports = [cache.find_available_port("127.0.0.1") for _ in range(3)]
            ports += cache.reserve("127.0.0.1", 2)
        assert len(set(ports)) == 5, ports
        assert cache.table.path is None
        print(len([w for w in caught if "port table" in str(w.message)]))
    """)
    env = {**os.environ, "KERNEL_CONNECT_PORT_TABLE": str(blocker / "ports")}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"


def test_clean_exit_frees_reservations(tmp_path: Path) -> None:
    table_path = str(tmp_path / "ports")
    script = textwrap.dedent("""
        from kernel_connect.connect import LocalPortCache
        print(LocalPortCache.instance().reserve("127.0.0.1", 4))
    """)
    env = {**os.environ, "KERNEL_CONNECT_PORT_TABLE": table_path}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    assert _native.PortTable(table_path).held() == []


def test_foreign_table_file_falls_back(tmp_path: Path) -> None:
    bogus = tmp_path / "ports"
    bogus.write_bytes(b"\xff" * 4096)
    with pytest.raises(ValueError, match="not a kernel-connect port table"):
        _native.PortTable(str(bogus))


def test_a_forked_child_reserves_as_itself(tmp_path: Path) -> None:
    """After os.fork the child is another owner: its reservations carry its pid
    and die with it, and the parent's stay the parent's."""
    table = _native.PortTable(str(tmp_path / "ports"))
    [mine] = table.reserve("127.0.0.1", 1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            [port] = table.reserve("127.0.0.1", 1)
            ok = table.owner(port) == (os.getpid(), True) and not table.holds(mine)
            os.write(write_end, f"{port} {int(ok)}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        port, ok = map(int, pipe.read().split())
    os.waitpid(pid, 0)
    assert ok == 1
    assert table.owner(port) == (pid, False), "the child's reservation died with it"
    assert table.holds(mine)
    table.release_all()
