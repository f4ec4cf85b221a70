"""KernelManager on real ipykernel processes: lifecycle, failures, encryption, zero-race."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from kernel_connect import manager as manager_module
from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.errors import KernelDiedError, KernelStartCancelledError, KernelTimeoutError
from kernel_connect.manager import KernelManager
from kernel_connect.mixin import PORT_NAMES
from kernel_connect.session import Session
from kernel_fixtures import (
    file_mode,
    pid_alive,
    ports_held,
    result_text,
    run_code,
    start_ready_kernel,
    stop_kernel,
    stream_text,
    wait_until,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel


def test_started_kernel_state_file_and_reserved_ports(kernel: tuple) -> None:
    km, kc = kernel
    assert km.has_kernel
    assert km.is_alive()
    assert km.kernel is not None
    assert pid_alive(km.kernel.pid)
    assert os.path.exists(km.connection_file)
    assert file_mode(km.connection_file) == 0o600
    with open(km.connection_file) as f:
        on_disk = json.load(f)
    info = km.get_connection_info()
    for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port", "ip"):
        assert on_disk[name] == info[name]
    assert on_disk["key"].encode() == km.session.key == info["key"]
    assert len(set(km.ports)) == 5
    assert all(p > 0 for p in km.ports)
    assert all(ports_held(km.ports))
    assert result_text(run_code(kc, "6 * 7")[1]) == "42"


def test_get_connection_info_with_session_gives_a_clone(kernel: tuple) -> None:
    km, _ = kernel
    info = km.get_connection_info(session=True)
    assert isinstance(info["session"], Session)
    assert info["session"] is not km.session
    assert info["session"].key == km.session.key
    assert "key" not in info


def test_interrupt_stops_a_sleep_loop(kernel: tuple) -> None:
    km, kc = kernel
    msg_id = kc.execute(
        "import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.05)"
    )
    # Interrupt once the loop runs (its print is out): the kernel's SIGINT
    # handler is only installed around user code.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    km.interrupt_kernel()
    reply = kc._recv_reply(msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert km.is_alive()


def test_wrong_key_times_out_saying_the_signature_may_be_wrong(kernel: tuple) -> None:
    km, _ = kernel
    kc = km.client()
    kc.session.key = b"not-the-kernel-key"
    try:
        started = time.monotonic()
        with pytest.raises(KernelTimeoutError, match="signature may be wrong") as info:
            kc.wait_for_ready(timeout=1.0)
        assert time.monotonic() - started < 5
        assert "not-the-kernel-key" not in str(info.value)
        assert km.session.key.decode() not in str(info.value)
    finally:
        kc.stop_channels()


def test_restart_keeps_ports_file_and_key(kernel: tuple, tmp_path: Path) -> None:
    km, kc = kernel
    run_code(kc, "marker = 1")
    assert km.kernel is not None
    old_pid, old_ports, old_key = km.kernel.pid, km.ports, km.session.key
    # Restart arguments replace the first start's: extra env and cwd reach the kernel.
    km.restart_kernel(extra_env={"KC_RESTARTED": "yes"}, cwd=str(tmp_path))
    assert km.kernel is not None
    assert km.kernel.pid != old_pid
    assert wait_until(lambda: not pid_alive(old_pid), 10)
    assert km.ports == old_ports
    assert km.session.key == old_key
    assert os.path.exists(km.connection_file)
    assert all(ports_held(km.ports))
    kc.wait_for_ready(timeout=60)
    _reply, outputs = run_code(kc, "'marker' in dir()")
    assert result_text(outputs) == "False"  # a new process, same ports
    code = "import os; print(os.environ['KC_RESTARTED'], os.environ['PATH'] != '', os.getcwd())"
    outputs = run_code(kc, code)[1]
    assert stream_text(outputs) == f"yes True {tmp_path}\n"


def test_ipc_transport_kernel(tmp_path: Path) -> None:
    conn = str(tmp_path / "kernel-ipc.json")
    km, kc = start_ready_kernel(transport="ipc", connection_file=conn)
    try:
        assert km.ip == str(tmp_path / "kernel-ipc-ipc")
        assert all(os.path.exists(f"{km.ip}-{p}") for p in km.ports)
        assert result_text(run_code(kc, "'over ipc'")[1]) == "'over ipc'"
    finally:
        stop_kernel(km, kc)
    assert not any(os.path.exists(f"{km.ip}-{p}") for p in km.ports)
    assert not os.path.exists(conn)


def test_shutdown_removes_file_and_returns_ports() -> None:
    km, kc = start_ready_kernel()
    assert km.kernel is not None
    pid, ports, conn = km.kernel.pid, km.ports, km.connection_file
    kc.stop_channels()
    started = time.monotonic()
    km.shutdown_kernel()
    assert time.monotonic() - started < 2.5  # polite shutdown, not the kill path
    assert km.exit_code == 0
    assert not pid_alive(pid)
    assert not os.path.exists(conn)
    assert not any(ports_held(ports))
    assert not km.has_kernel
    assert not km.is_alive()
    km.shutdown_kernel()  # idempotent


def test_hung_kernel_ends_in_a_kill() -> None:
    km, kc = start_ready_kernel(shutdown_wait_time=1.0)
    assert km.kernel is not None
    pid, ports = km.kernel.pid, km.ports
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring signals', flush=True)\n"
        "while True:\n    time.sleep(0.05)"
    )
    msg_id = kc.execute(code)
    # Ask it to stop only once it says its handlers are installed.
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and "ignoring signals" in msg["content"]["text"]
        ):
            break
    kc.stop_channels()
    km.shutdown_kernel()
    assert km.exit_code == -signal.SIGKILL
    assert not pid_alive(pid)
    assert not os.path.exists(km.connection_file)
    assert not any(ports_held(ports))


def test_sigkilled_kernel_is_reported_dead_and_cleaned_up() -> None:
    km, kc = start_ready_kernel()
    assert km.kernel is not None
    pid, ports, conn = km.kernel.pid, km.ports, km.connection_file
    kc.stop_channels()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not km.is_alive(), 10)
    assert "SIGKILL" in km.death_report()
    # A client of the dead kernel's connection file (no manager) gets a clear timeout.
    orphan = BlockingKernelClient(hb_time_to_dead=0.3)
    orphan.load_connection_file(conn)
    try:
        with pytest.raises(KernelTimeoutError, match="heartbeats"):
            orphan.wait_for_ready(timeout=0.5)
        assert not orphan.is_alive()
    finally:
        orphan.stop_channels()
    km.shutdown_kernel()
    assert km.exit_code == -signal.SIGKILL
    assert not os.path.exists(conn)
    assert not any(ports_held(ports))


@pytest.fixture
def failing_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec whose kernel writes to stderr and exits 3 at once."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    code = "import sys; sys.stderr.write('boom: no kernel today\\n'); sys.exit(3)"
    write_kernel_spec(tmp_path, "failing", [sys.executable, "-c", code, "{connection_file}"])
    return "failing"


def test_kernel_exiting_during_startup_reports_code_and_stderr(failing_spec: str) -> None:
    km = KernelManager(kernel_name=failing_spec)
    km.start_kernel()
    ports, conn = km.ports, km.connection_file
    kc = km.client()
    try:
        with pytest.raises(KernelDiedError, match="exit code 3") as info:
            kc.wait_for_ready(timeout=30)
        assert "boom: no kernel today" in str(info.value)
        assert info.value.exit_code == 3
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert not os.path.exists(conn)
    assert not any(ports_held(ports))


def test_zero_race_start_failure_raises_and_leaves_nothing(failing_spec: str) -> None:
    km = KernelManager(kernel_name=failing_spec, kernel_binds_ports=True)
    with pytest.raises(KernelDiedError, match="boom") as info:
        km.start_kernel()
    assert info.value.exit_code == 3
    assert not km.has_kernel
    assert not os.path.exists(km.connection_file)


def test_encryption_required_without_support_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    write_kernel_spec(tmp_path, "plain", [sys.executable, "-c", "pass"])
    km = KernelManager(kernel_name="plain", transport_encryption="required")
    with pytest.raises(RuntimeError, match="supported_encryption"):
        km.start_kernel()
    assert not km.has_kernel
    assert km.ports == [0, 0, 0, 0, 0]


def test_encryption_with_a_kernel_that_supports_it() -> None:
    with KernelManager(transport_encryption="auto") as km:
        km.start_kernel()
        assert km.curve_publickey is not None
        assert km.curve_secretkey is not None
        with open(km.connection_file) as f:
            on_disk = json.load(f)
        assert on_disk["curve_publickey"] == km.curve_publickey.decode()
        assert on_disk["curve_secretkey"] == km.curve_secretkey.decode()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert result_text(run_code(kc, "'encrypted'")[1]) == "'encrypted'"
        kc.stop_channels()
        # A plaintext client gets nothing from the CURVE server sockets.
        plain_session = Session(key=km.session.key)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"tcp://{km.ip}:{km.shell_port}")
        plain_session.send(sock, "kernel_info_request")
        assert not sock.poll(500)
        sock.close()
        pid = km.kernel.pid if km.kernel is not None else -1
        conn = km.connection_file
    # Leaving the context shut the kernel down and cleaned up.
    assert not pid_alive(pid)
    assert not os.path.exists(conn)


# Runs ipykernel after copying its connection file, as handed to the kernel, to
# <snapshot dir>/<file name>.<n> (n counts the launches): what each launch saw.
_SNAPSHOT_LAUNCHER = """
import os, runpy, shutil, sys
conn, snapshots = sys.argv[1], sys.argv[2]
base = os.path.join(snapshots, os.path.basename(conn))
n = 0
while os.path.exists(f"{base}.{n}"):
    n += 1
shutil.copyfile(conn, f"{base}.{n}")
sys.argv = [sys.argv[0], "-f", conn]
runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def snapshot_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An ipykernel spec that keeps each connection file it is launched with."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    script = tmp_path / "snapshot_launcher.py"
    script.write_text(_SNAPSHOT_LAUNCHER)
    snapshots = tmp_path / "launched"
    snapshots.mkdir()
    argv = [sys.executable, str(script), "{connection_file}", str(snapshots)]
    write_kernel_spec(tmp_path, "snapshot", argv)
    return "snapshot", snapshots


def launched_ports(snapshots: Path, connection_file: str) -> list[list[int]]:
    """The five ports of the file each launch of the kernel was handed, in launch order."""
    base = os.path.basename(connection_file)
    found = []
    n = 0
    while (snapshots / f"{base}.{n}").exists():
        with open(snapshots / f"{base}.{n}") as f:
            info = json.load(f)
        found.append([info[name] for name in PORT_NAMES])
        n += 1
    return found


def from_the_table(ports: list[int]) -> list[bool]:
    """For each port, whether any process holds or leases it in the reservation table."""
    table = LocalPortCache.instance().table
    return [table.owner(p) is not None for p in ports]


def test_zero_race_mode_sixteen_kernels_at_once(snapshot_spec: tuple[str, Path]) -> None:
    name, snapshots = snapshot_spec
    n = 16
    managers = [KernelManager(kernel_name=name, kernel_binds_ports=True) for _ in range(n)]
    errors: list[BaseException] = []
    clients: list[BlockingKernelClient | None] = [None] * n

    def start(i: int) -> None:
        try:
            managers[i].start_kernel()
            kc = managers[i].client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            clients[i] = kc
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        all_ports = [p for km in managers for p in km.ports]
        assert len(set(all_ports)) == 5 * n
        assert 0 not in all_ports
        # Zero-race for real: each kernel was handed port 0 and bound its own
        # ports, none of which came from the reservation table.
        for km in managers:
            assert launched_ports(snapshots, km.connection_file) == [[0] * 5]
        assert not any(from_the_table(all_ports))
        for km, kc in zip(managers, clients, strict=True):
            assert kc is not None
            with open(km.connection_file) as f:
                on_disk = json.load(f)
            assert [on_disk[p] for p in ("shell_port", "iopub_port")] == [
                *km.ports[:1],
                km.iopub_port,
            ]
            assert result_text(run_code(kc, "2 + 3")[1]) == "5"
    finally:
        files = [km.connection_file for km in managers]
        pids = [km.kernel.pid for km in managers if km.kernel is not None]
        for kc in clients:
            if kc is not None:
                kc.stop_channels()
        stoppers = [threading.Thread(target=km.shutdown_kernel) for km in managers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(60)
    assert not any(os.path.exists(f) for f in files if f)
    assert not any(pid_alive(p) for p in pids)


def test_port_taken_by_an_outsider_is_recovered_on_new_ports() -> None:
    """A process outside the reservation table binds a reserved port before the kernel does."""
    km = KernelManager()
    km.write_connection_file()  # ports reserved now; the kernel binds them later
    taken = km.shell_port
    outsider = socket.socket()
    try:
        outsider.bind((km.ip, taken))
        outsider.listen()
        km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            assert km.shell_port != taken
            assert km.port_clash_restarts == 1
            assert kc.shell_port == km.shell_port
            assert result_text(run_code(kc, "'recovered'")[1]) == "'recovered'"
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
    finally:
        outsider.close()
    assert not os.path.exists(km.connection_file)


def test_port_clash_without_retries_is_reported() -> None:
    km = KernelManager(port_clash_retries=0)
    km.write_connection_file()
    outsider = socket.socket()
    try:
        outsider.bind((km.ip, km.iopub_port))
        outsider.listen()
        km.start_kernel()
        kc = km.client()
        try:
            started = time.monotonic()
            with pytest.raises(KernelDiedError, match="Address already in use"):
                kc.wait_for_ready(timeout=60)
            assert time.monotonic() - started < 30  # seen in stderr, not a timeout
            assert km.port_clash()
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
    finally:
        outsider.close()


def test_kernel_command_that_cannot_start_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    write_kernel_spec(tmp_path, "missing", ["no-such-kernel-binary-kc", "{connection_file}"])
    km = KernelManager(kernel_name="missing")
    held_before = LocalPortCache.instance().table.held()
    with pytest.raises(FileNotFoundError, match="no-such-kernel-binary-kc"):
        km.start_kernel()
    assert not km.has_kernel
    assert not os.path.exists(km.connection_file)
    assert LocalPortCache.instance().table.held() == held_before


def test_zero_race_restart_has_the_kernel_choose_its_ports_again(
    snapshot_spec: tuple[str, Path],
) -> None:
    """The ports of a kernel that bound its own lie in the ephemeral range, where
    the table cannot protect them; a restart must not hand them to the new kernel."""
    name, snapshots = snapshot_spec
    km, kc = start_ready_kernel(kernel_name=name, kernel_binds_ports=True)
    try:
        first = km.ports
        assert 0 not in first
        assert not any(from_the_table(first))
        kc.stop_channels()
        km.restart_kernel()
        # The new kernel was handed port 0 again, bound its own and published them.
        assert launched_ports(snapshots, km.connection_file) == [[0] * 5, [0] * 5]
        ports = km.ports
        assert 0 not in ports
        assert not any(from_the_table(ports))
        with open(km.connection_file) as f:
            on_disk = json.load(f)
        assert [on_disk[p] for p in PORT_NAMES] == ports
        assert file_mode(km.connection_file) == 0o600
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert result_text(run_code(kc, "6 * 7")[1]) == "42"
    finally:
        stop_kernel(km, kc)
    assert not os.path.exists(km.connection_file)


@pytest.fixture
def never_binding_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A kernel that never writes its ports back: it writes its pid to a file, then waits."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    running = tmp_path / "running"
    code = (
        "import os, signal, sys\n"
        "path = sys.argv[1]\n"
        "with open(path + '.tmp', 'w') as f:\n"
        "    f.write(str(os.getpid()))\n"
        "os.rename(path + '.tmp', path)\n"
        "signal.pause()\n"
    )
    argv = [sys.executable, "-c", code, str(running), "{connection_file}"]
    write_kernel_spec(tmp_path, "never-binds", argv)
    return "never-binds", running


@pytest.mark.parametrize("now", [False, True], ids=["polite", "now"])
def test_shutdown_from_another_thread_cancels_a_zero_race_start(
    never_binding_spec: tuple[str, Path], now: bool
) -> None:
    name, running = never_binding_spec
    km = KernelManager(kernel_name=name, kernel_binds_ports=True)
    held_before = LocalPortCache.instance().table.held()
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            km.start_kernel()
        except BaseException as e:
            outcome.append(e)
        else:
            outcome.append(None)

    starter = threading.Thread(target=start)
    starter.start()
    pid = None
    try:
        # The kernel runs; start_kernel is (or is about to be) waiting for its ports.
        assert wait_until(running.exists, 60)
        pid = int(running.read_text())
        conn = km.connection_file
        km.shutdown_kernel(now=now)
        alive_after_shutdown = pid_alive(pid)
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # only when the shutdown failed: frees the starter
        starter.join(120)
    assert not starter.is_alive()
    assert not alive_after_shutdown
    [error] = outcome
    assert isinstance(error, KernelStartCancelledError), repr(error)
    assert isinstance(error, RuntimeError)
    assert "cancelled" in str(error)
    assert "shutdown_kernel" in str(error)
    assert not km.has_kernel
    assert not os.path.exists(conn)
    assert km.ports == [0, 0, 0, 0, 0]
    assert LocalPortCache.instance().table.held() == held_before
    assert km not in manager_module._live_managers


@pytest.mark.parametrize("binds_ports", [True, False], ids=["zero-race", "table-ports"])
def test_shutdown_while_the_kernel_is_being_launched_cancels_the_start(
    monkeypatch: pytest.MonkeyPatch, binds_ports: bool
) -> None:
    """The shutdown lands after the process exists but before the manager knows it."""
    km = KernelManager(kernel_binds_ports=binds_ports)
    held_before = LocalPortCache.instance().table.held()
    launched = []
    real_launch = manager_module.launch_kernel

    def launch_then_shut_down(*args: object, **kwargs: object) -> object:
        proc = real_launch(*args, **kwargs)  # type: ignore[arg-type]
        launched.append(proc)
        stopper = threading.Thread(target=km.shutdown_kernel)
        stopper.start()
        stopper.join(60)
        return proc

    monkeypatch.setattr(manager_module, "launch_kernel", launch_then_shut_down)
    with pytest.raises(KernelStartCancelledError, match="shutdown_kernel"):
        km.start_kernel()
    [proc] = launched
    assert proc.poll() is not None  # stopped and reaped
    assert not km.has_kernel
    assert not os.path.exists(km.connection_file)
    assert LocalPortCache.instance().table.held() == held_before
    assert km not in manager_module._live_managers


def test_a_shutdown_request_that_cannot_be_sent_still_ends_the_kernel() -> None:
    """The control socket cannot even connect (here an ip nothing resolves;
    for real, an ipc path longer than a socket path may be): the kernel is
    terminated instead, and its file and ports are gone. It used to raise
    ZMQError with the kernel still running and its file and ports held."""
    km, kc = start_ready_kernel()
    kc.stop_channels()
    assert km.kernel is not None
    pid, ports, path = km.kernel.pid, list(km.ports), km.connection_file
    km.ip = "no such host"
    km.shutdown_kernel()
    assert not km.has_kernel
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(path)
    assert not any(LocalPortCache.instance().table.holds(p) for p in ports)


def test_the_kernel_name_python_means_python3() -> None:
    """jupyter_client maps "python" to the native "python3"; notebooks naming
    "python" failed with NoSuchKernel (24 of nbclient's own tests)."""
    km = KernelManager(kernel_name="python")
    assert km.kernel_name == "python3"
    assert km.kernel_spec.language == "python"


def test_validate_string_dict_is_importable_from_client() -> None:
    from kernel_connect.client import validate_string_dict

    validate_string_dict({"a": "b"})
    with pytest.raises(ValueError, match="must be a string"):
        validate_string_dict({"a": 1})
