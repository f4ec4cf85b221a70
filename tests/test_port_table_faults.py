"""The port table at farm scale and under faults (each test is one thing a farm
operator saw break): reservations that end, a full disk, a truncated, deleted
or foreign table file, pid namespaces, absurd counts, capacity, and one table
for every process of the host whatever its user or runtime directory."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_connect import _native
from kernel_connect.paths import PORT_TABLE_PREFIX, SHARED_TABLE_DIR, network_namespace
from kernel_connect.ports import DEFAULT_LEASE_SECONDS, LocalPortCache

#: A child that opens the table at argv[1] (or the default), reserves argv[2]
#: ports (held, or leased with argv[3]), prints them, and waits for stdin.
HOLDER = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("always")
    from kernel_connect import _native
    from kernel_connect.ports import LocalPortCache
    with warnings.catch_warnings(record=True) as caught:
        cache = LocalPortCache.instance()
        n = int(sys.argv[1])
        ports = cache.reserve("127.0.0.1", n) if n else []
    print(json.dumps({
        "ports": ports,
        "table": cache.table.path,
        "warnings": [str(w.message) for w in caught],
    }), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "reserve":
            with warnings.catch_warnings(record=True) as caught:
                try:
                    got = cache.reserve("127.0.0.1", int(cmd[1]))
                except (OSError, ValueError) as err:
                    print(json.dumps({"error": str(err)}), flush=True)
                    continue
            print(json.dumps({"ports": got, "warnings": [str(w.message) for w in caught]}),
                  flush=True)
        elif cmd[0] == "release":
            print(json.dumps({"released": cache.table.release(int(cmd[1]))}), flush=True)
""")


class Holder:
    """A live child process holding ports in a table."""

    def __init__(self, count: int, env: dict[str, str], argv0: list[str] | None = None):
        self.proc = subprocess.Popen(
            [*(argv0 or []), sys.executable, "-c", HOLDER, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = self._read()
        self.ports: list[int] = first["ports"]
        self.table: str | None = first["table"]
        self.warnings: list[str] = first["warnings"]

    def _read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"holder died with {self.proc.poll()}"
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, command: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """End the holder by closing its input (a normal exit)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def table_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose processes share a private table file."""
    return {**os.environ, "KERNEL_CONNECT_PORT_TABLE": str(tmp_path / "ports")}


def _run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- reservations that end ------------------------------------------------


def test_a_long_lived_process_writes_connection_files_forever(table_env: dict[str, str]) -> None:
    """100,000 module-level writes (each file deleted, as a server does) never
    run out of ports: a lease ends when its file is gone. Today's code gave
    "no free port" after about 3,700."""
    script = """
        import os, tempfile
        from kernel_connect.connect import write_connection_file
        from kernel_connect.ports import LocalPortCache
        d = tempfile.mkdtemp()
        path = os.path.join(d, "kernel.json")
        for i in range(100_000):
            fname, info = write_connection_file(path, ip="127.0.0.1")
            os.remove(fname)
        held = LocalPortCache.instance().table.held()
        print(len(held))
    """
    out = _run(script, table_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) <= 10, "leases of deleted files ended"


def test_a_lease_outlives_its_maker_until_its_window_ends(
    table_env: dict[str, str], tmp_path: Path
) -> None:
    """`kernel-connect new`-style: the writer exits, the kernel has not started
    yet; its ports stay protected for the window, then end by themselves."""
    env = {**table_env, "KERNEL_CONNECT_LEASE_SECONDS": "2"}
    script = """
        import json, sys
        from kernel_connect.connect import write_connection_file
        fname, info = write_connection_file(sys.argv[1], ip="127.0.0.1")
        print(json.dumps([info[k] for k in
              ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]))
    """
    out = _run(script, env, str(tmp_path / "kernel-1.json"))
    assert out.returncode == 0, out.stderr
    ports = json.loads(out.stdout)
    table = _native.PortTable(table_env["KERNEL_CONNECT_PORT_TABLE"])
    rows = {p: (alive, until) for p, _pid, alive, until in table.held()}
    assert set(rows) == set(ports), "the writer's exit did not end its leases"
    assert all(alive and until is not None for alive, until in rows.values())
    for port in ports:
        with pytest.raises(OSError, match="no free port"):
            table.reserve("127.0.0.1", 1, (port, port))
    # The event here is the shared clock passing the leases' end: poll it,
    # bounded (there is nothing else to wait on).
    end = max(until for _alive, until in rows.values() if until is not None)
    deadline = time.monotonic() + 30
    while _native.clock_seconds() < end:
        assert time.monotonic() < deadline, "the clock never reached the lease's end"
        time.sleep(0.05)
    assert not any((table.owner(p) or (0, False))[1] for p in ports), "leases ended"
    for port in ports:
        assert table.reserve("127.0.0.1", 1, (port, port)) == [port]
    table.release_all()


def test_the_lease_window_has_a_documented_default_and_a_setting(
    fresh_port_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert LocalPortCache.instance().lease_seconds == DEFAULT_LEASE_SECONDS == 120
    LocalPortCache.clear_instance()
    monkeypatch.setenv("KERNEL_CONNECT_LEASE_SECONDS", "45")
    assert LocalPortCache.instance().lease_seconds == 45
    for bad in ("0", "-3", "soon", "1.5"):
        monkeypatch.setenv("KERNEL_CONNECT_LEASE_SECONDS", bad)
        with pytest.raises(ValueError, match="KERNEL_CONNECT_LEASE_SECONDS"):
            LocalPortCache()


def test_module_level_ports_are_leases_and_managed_ports_are_held(tmp_path: Path) -> None:
    from kernel_connect.connect import write_connection_file
    from kernel_connect.mixin import ConnectionFileMixin

    table = LocalPortCache.instance().table
    _, info = write_connection_file(str(tmp_path / "a.json"), ip="127.0.0.1")
    mixin = ConnectionFileMixin(connection_file=str(tmp_path / "b.json"))
    mixin.write_connection_file()
    rows = {p: until for p, _pid, _alive, until in table.held()}
    assert all(rows[info[k]] is not None for k in info if k.endswith("_port"))
    assert all(rows[p] is None for p in mixin.ports), "a manager's ports are held"
    mixin.cleanup_random_ports()
    assert not any(table.holds(p) for p in mixin.ports if p)
    LocalPortCache.instance().return_ports(info[k] for k in info if k.endswith("_port"))


def test_a_replaced_file_ends_the_lease_of_the_old_one(tmp_path: Path) -> None:
    from kernel_connect.connect import write_connection_file

    table = LocalPortCache.instance().table
    path = str(tmp_path / "kernel.json")
    _, first = write_connection_file(path, ip="127.0.0.1")
    _, second = write_connection_file(path, ip="127.0.0.1")  # renamed over the first
    _, _third = write_connection_file(str(tmp_path / "other.json"), ip="127.0.0.1")
    old = [first[k] for k in first if k.endswith("_port")]
    assert not any(table.holds(p) for p in old)
    assert all(table.holds(second[k]) for k in second if k.endswith("_port"))


def test_one_process_cannot_fill_the_host_table_with_leases(table_env: dict[str, str]) -> None:
    """jupyter_client's own test_ssh.py::test_random_ports leases 40,960 ports
    in one process, more than the whole table: every call succeeds, the
    process never has more than MAX_LEASED_PORTS leased ports protected, its
    oldest lease ends first, and another process still finds ports."""
    script = """
        import json
        from kernel_connect.ports import MAX_LEASED_PORTS, LocalPortCache
        from kernel_connect.ssh.tunnel import select_random_ports
        calls = [select_random_ports(10) for _ in range(4096)]
        assert all(len(set(ports)) == 10 for ports in calls)
        recent = {p for ports in calls[-(MAX_LEASED_PORTS // 10 + 1):] for p in ports}
        leased = [port for port, _pid, _alive, _until in LocalPortCache.instance().table.held()]
        print(json.dumps({
            "cap": MAX_LEASED_PORTS,
            "leased": len(leased),
            "older_still_leased": sorted(set(leased) - recent),
            "last_still_leased": set(calls[-1]) <= set(leased),
        }))
    """
    out = _run(script, table_env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["leased"] <= got["cap"] == 4096
    assert got["older_still_leased"] == [], "the oldest leases end first"
    assert got["last_still_leased"]
    other = _run(
        "from kernel_connect.ports import LocalPortCache;"
        "print(len(LocalPortCache.instance().reserve('127.0.0.1', 1000)))",
        table_env,
    )
    assert other.returncode == 0 and other.stdout.strip() == "1000", other.stderr[-2000:]


# -- faults -----------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 64 KiB tmpfs: too small for a table (about 650 KiB)."""
    where = Path(tempfile.mkdtemp(prefix="kc-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def test_a_full_filesystem_never_kills_with_sigbus(tiny_tmpfs: Path) -> None:
    env = {**os.environ, "KERNEL_CONNECT_PORT_TABLE": str(tiny_tmpfs / "ports")}
    holder = Holder(5, env)
    try:
        assert len(set(holder.ports)) == 5
        assert holder.table is None, "fell back to an in-process table"
        assert len(holder.warnings) == 1 and "No space left" in holder.warnings[0]
    finally:
        holder.close()
    assert list(tiny_tmpfs.iterdir()) == [], "no partial table left behind"
    out = subprocess.run(
        [sys.executable, "-m", "kernel_connect", "ports"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, (out.returncode, out.stderr)


TRUNCATOR = textwrap.dedent("""
    import os, sys
    path, rounds = sys.argv[1], int(sys.argv[2])
    for _ in range(rounds):
        try:
            os.truncate(path, 0)
        except OSError:
            pass
""")


def test_a_truncated_table_never_crashes_and_keeps_reservations(
    table_env: dict[str, str],
) -> None:
    path = table_env["KERNEL_CONNECT_PORT_TABLE"]
    holder = Holder(5, table_env)
    try:
        os.truncate(path, 0)
        # The holder's next reservation notices, replaces the table and moves
        # its five ports there, with a warning.
        more = holder.ask("reserve 1")
        assert any("truncated" in w for w in more["warnings"])  # type: ignore[union-attr]
        assert holder.proc.poll() is None
        table = _native.PortTable(path)
        for port in holder.ports:
            assert table.owner(port) == (holder.proc.pid, True)
        # Now truncate over and over while the holder reserves: never a SIGBUS.
        # Under such an attack a call may fail with a clear error; none kills.
        truncator = subprocess.Popen([sys.executable, "-c", TRUNCATOR, path, "20000"])
        answers = []
        while truncator.poll() is None:
            answers.append(holder.ask("reserve 1"))
        assert holder.proc.poll() is None, "the holder survived every truncation"
        errors = [a["error"] for a in answers if "ports" not in a]
        assert all("changing" in str(e) or "replaced" in str(e) for e in errors), errors
        assert holder.ask("reserve 1")["ports"], "a whole table once the attack stops"
        assert os.path.getsize(path) > 600_000
    finally:
        holder.close()


def test_a_deleted_table_is_noticed_and_no_port_is_held_twice(
    table_env: dict[str, str],
) -> None:
    path = table_env["KERNEL_CONNECT_PORT_TABLE"]
    old = Holder(200, table_env)
    try:
        os.remove(path)
        noticed = old.ask("reserve 1")
        assert any("deleted" in w for w in noticed["warnings"])  # type: ignore[union-attr]
        newcomer = Holder(3000, table_env)
        try:
            assert not set(old.ports) & set(newcomer.ports)
            assert newcomer.table == path == old.table
        finally:
            newcomer.close()
    finally:
        old.close()


def _unshare_pid() -> list[str]:
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here: {probe.stderr.strip()}")
    return ["unshare", "--pid", "--fork", "--mount-proc"]


def test_pid_namespaces_never_take_or_release_each_others_ports(
    table_env: dict[str, str],
) -> None:
    """Two containers sharing one table: each is pid 1 of its own namespace, and
    neither can see the other's processes."""
    unshare = [*_unshare_pid(), "--kill-child"]
    lo = 20000 + (os.getpid() * 13) % 9000
    env = {**table_env, "KERNEL_CONNECT_PORT_RANGE": f"{lo}-{lo + 9}"}
    first = Holder(10, env, unshare)
    try:
        assert sorted(first.ports) == list(range(lo, lo + 10))
        second = Holder(0, env, unshare)
        try:
            answer = second.ask("reserve 1")  # it must not reclaim a live owner's
            assert "no free port" in str(answer.get("error")), answer
        finally:
            second.close()
        third = Holder(0, env, unshare)
        try:
            assert third.ask(f"release {lo}") == {"released": False}
        finally:
            third.close()
        table = _native.PortTable(env["KERNEL_CONNECT_PORT_TABLE"])
        assert all(table.owner(p) is not None and table.owner(p)[1] for p in first.ports)  # type: ignore[index]
    finally:
        first.close()
    table = _native.PortTable(env["KERNEL_CONNECT_PORT_TABLE"])
    assert table.reserve("127.0.0.1", 10, (lo, lo + 9)), "a dead container's ports end"
    table.release_all()


def test_a_foreign_file_at_the_table_path_is_never_modified(tmp_path: Path) -> None:
    path = tmp_path / "ports"
    content = b'{"my": "settings"}\n'
    path.write_bytes(content)
    holder = Holder(2, {**os.environ, "KERNEL_CONNECT_PORT_TABLE": str(path)})
    holder.close()
    assert holder.table is None and len(holder.warnings) == 1
    assert "not a kernel-connect port table" in holder.warnings[0]
    assert path.read_bytes() == content
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("count", [2**40, 2**62, 65536, -1])
def test_absurd_counts_are_ordinary_errors(count: int) -> None:
    with pytest.raises(ValueError, match=r"cannot reserve|negative"):
        LocalPortCache.instance().reserve("127.0.0.1", count)
    # The core itself, asked directly: an ordinary exception, never an abort.
    with pytest.raises((ValueError, OverflowError)):
        LocalPortCache.instance().table.reserve("127.0.0.1", count)


def test_a_rust_panic_is_an_exception_not_a_crash() -> None:
    """Counts past the candidates reach the core unchecked by Python too."""
    script = """
        from kernel_connect import _native
        t = _native.PortTable(None)
        for n in (2**40, 2**62, 2**63):
            try:
                t.reserve("127.0.0.1", n)
            except Exception as err:
                print(type(err).__name__)
    """
    out = _run(script, dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ValueError", "ValueError", "ValueError"]


# -- capacity -----------------------------------------------------------------


def test_twenty_thousand_ports_across_eight_processes_none_held_twice(
    table_env: dict[str, str],
) -> None:
    above, odd, even = _native.default_capacity()
    assert above + odd + even >= 20_000
    holders = [Holder(2500, table_env) for _ in range(8)]
    try:
        ports = [p for h in holders for p in h.ports]
        assert len(ports) == 20_000
        twice = [p for p, n in Counter(ports).items() if n > 1]
        assert twice == []
    finally:
        for h in holders:
            h.close()


# -- one table per port space ------------------------------------------------


def _default_env(runtime: Path) -> dict[str, str]:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("KERNEL_CONNECT_PORT_TABLE")
    return env


def test_one_table_for_every_runtime_directory(tmp_path: Path) -> None:
    """Two servers with their own JUPYTER_RUNTIME_DIR share the host's table
    (600 ports each overlapped in 3 of 10 trials with one table per runtime
    directory), and nothing is left in either runtime directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Holder(600, _default_env(tmp_path / "a"))
    b = Holder(600, _default_env(tmp_path / "b"))
    try:
        expected = os.path.join(SHARED_TABLE_DIR, f"{PORT_TABLE_PREFIX}.{network_namespace()}")
        assert a.table == b.table == expected
        assert stat.S_IMODE(os.stat(expected).st_mode) == 0o666
        assert not set(a.ports) & set(b.ports)
        assert a.warnings == b.warnings == []
    finally:
        a.close()
        b.close()
    assert list((tmp_path / "a").iterdir()) == list((tmp_path / "b").iterdir()) == []


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second local user (created for the test, removed after)."""
    name = "kc-test-user"
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a second user needs root and useradd")
    try:
        pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(["useradd", "--no-create-home", name], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"useradd failed: {made.stderr.decode().strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_two_users_share_the_table_and_never_a_port(
    tmp_path: Path, other_user: pwd.struct_passwd
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="kc-other-user-"))
    os.chown(runtime, other_user.pw_uid, other_user.pw_gid)
    mine = Holder(600, _default_env(tmp_path))
    env = _default_env(runtime)
    env["HOME"] = str(runtime)
    # The interpreter may live under /root (0700): the other user may read and
    # traverse (CAP_DAC_READ_SEARCH) but writes only what its uid may, so the
    # table's own mode (0666) is what lets it in.
    as_other = [
        "setpriv",
        f"--reuid={other_user.pw_uid}",
        f"--regid={other_user.pw_gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
    ]
    theirs = Holder(600, env, as_other)
    try:
        assert theirs.table == mine.table, theirs.warnings
        assert not set(mine.ports) & set(theirs.ports)
        assert theirs.ask(f"release {mine.ports[0]}") == {"released": False}
        # The directory is sticky: the other user can use the table, not delete it.
        assert mine.table is not None
        removal = subprocess.run(
            [*as_other, sys.executable, "-c", f"import os; os.remove({mine.table!r})"],
            capture_output=True,
            text=True,
        )
        assert removal.returncode != 0 and "PermissionError" in removal.stderr
        assert os.path.exists(mine.table)
    finally:
        mine.close()
        theirs.close()
        shutil.rmtree(runtime, ignore_errors=True)


def test_sigkill_of_a_holder_frees_its_ports_for_the_next_allocation(
    table_env: dict[str, str],
) -> None:
    holder = Holder(5, table_env)
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=30)
    table = _native.PortTable(table_env["KERNEL_CONNECT_PORT_TABLE"])
    assert all(table.owner(p) == (holder.proc.pid, False) for p in holder.ports)


def test_where_the_shared_place_is_unusable_a_per_user_table_with_one_warning(
    tmp_path: Path,
) -> None:
    """/dev/shm full (a 64 KiB tmpfs over it, in a mount namespace of the
    test's own): this user's own table, 0600, and one warning."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    env = _default_env(tmp_path)
    env["TMPDIR"] = str(tmp_path)
    env.pop("XDG_RUNTIME_DIR", None)
    script = (
        f"mount --make-rprivate / && mount -t tmpfs -o size=64k tmpfs {SHARED_TABLE_DIR} && "
        f"exec {sys.executable} -c {shlex.quote(HOLDER)} 3"
    )
    holder = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None and holder.stdin is not None
    report = json.loads(holder.stdout.readline())
    holder.stdin.close()
    holder.wait(timeout=30)
    private = tmp_path / f"kernel-connect-{os.geteuid()}"
    assert report["table"] == str(private / f"{PORT_TABLE_PREFIX}.{network_namespace()}")
    assert len(report["warnings"]) == 1 and "No space left" in report["warnings"][0]
    assert stat.S_IMODE(os.stat(report["table"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
