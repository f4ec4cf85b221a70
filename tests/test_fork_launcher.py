"""The fork launcher: ipykernel kernels forked from a template behave as exec'd ones.

Real ipykernel kernels only. One forked kernel is shared by the tests that
leave it as they found it; tests that end, kill or restart a kernel start
their own (a forked start takes a fraction of a second).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.forking import LAUNCHER_ENV_VAR, chosen_launcher
from kernel_connect.forking import launcher as fork_launcher
from kernel_connect.forking.launcher import UNKNOWN_RETURNCODE, ForkedKernelProcess
from kernel_connect.manager import AsyncKernelManager, KernelManager
from kernel_connect.restarter import ThreadedKernelRestarter
from kernel_fixtures import (
    READY_TIMEOUT,
    ipykernel_argv,
    pid_alive,
    ports_held,
    run_code,
    start_ready_kernel,
    stop_kernel,
    stream_text,
    wait_until,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel

TEMPLATE_SCRIPT = Path(fork_launcher.TEMPLATE_SCRIPT)
# Bounded waits for things that happen in milliseconds when all is well.
EXIT_TIMEOUT = 15.0
LOGGER = "kc-fork-test"


def private_template(name: str) -> dict[str, Any]:
    """Start arguments that give a kernel a template of its own (for tests that hurt
    templates): a PYTHON* variable is part of what a template is shared by."""
    return {"extra_env": {"PYTHON_KC_FORK_TEST": name}}


def forked(km: KernelManager) -> ForkedKernelProcess:
    """The manager's kernel process, which must be a forked one."""
    assert isinstance(km.kernel, ForkedKernelProcess), km.kernel
    return km.kernel


def template_pid(km: KernelManager) -> int:
    pid = forked(km)._template.pid
    assert pid is not None
    return pid


def kernel_value(kc: BlockingKernelClient, expression: str) -> Any:
    """``expression`` evaluated in the kernel, sent back as JSON."""
    reply, outputs = run_code(kc, f"import json as _j; print(_j.dumps({expression}))")
    assert reply["content"]["status"] == "ok", reply["content"]
    return json.loads(stream_text(outputs))


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (None once it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.fixture(scope="module")
def cwd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fork-cwd")


@pytest.fixture(scope="module")
def shared(cwd_dir: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """One forked kernel, started with a cwd and an extra variable, for the gentle tests."""
    km, kc = start_ready_kernel(
        launcher="fork", start={"cwd": str(cwd_dir), "extra_env": {"KC_FORK_TEST": "forked"}}
    )
    yield km, kc
    stop_kernel(km, kc)


def test_a_forked_kernel_runs_code_as_a_child_of_its_template(
    shared: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = shared
    proc = forked(km)
    pid, ppid, pgid, sid = kernel_value(
        kc,
        "[__import__('os').getpid(), __import__('os').getppid(), "
        "__import__('os').getpgid(0), __import__('os').getsid(0)]",
    )
    assert pid == proc.pid
    assert ppid == template_pid(km) != os.getpid()
    # Its own session and process group, as an exec kernel's.
    assert pgid == sid == pid
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        assert str(TEMPLATE_SCRIPT).encode() in f.read()
    assert kernel_value(kc, "1 + 1") == 2
    assert km.is_alive()


def test_cwd_env_and_stderr_capture_are_the_requested_ones(
    shared: tuple[KernelManager, BlockingKernelClient], cwd_dir: Path
) -> None:
    km, kc = shared
    cwd, extra, parent = kernel_value(
        kc,
        "[__import__('os').getcwd(), __import__('os').environ.get('KC_FORK_TEST'), "
        "__import__('os').environ.get('JPY_PARENT_PID')]",
    )
    assert os.path.realpath(cwd) == os.path.realpath(cwd_dir)
    assert extra == "forked"
    assert parent == str(os.getpid())
    run_code(kc, "import sys; print('kc-fork-stderr-marker', file=sys.__stderr__, flush=True)")
    assert wait_until(lambda: "kc-fork-stderr-marker" in km.stderr_tail(), EXIT_TIMEOUT)


def test_a_keyboard_interrupt_reaches_the_running_cell(
    shared: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = shared
    # Signals go to the kernel's own process group (made before the template
    # answered), not to its template's.
    assert km._pgid == forked(km).pid
    started: list[bool] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "cell-started" in msg["content"]["text"]:
            started.append(True)
            km.interrupt_kernel()  # the cell is running now: interrupt it

    reply = kc.execute_interactive(
        "import time\nprint('cell-started', flush=True)\ntime.sleep(60)",
        timeout=30,
        output_hook=hook,
    )
    assert started
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert km.is_alive()
    assert forked(km)._template.alive()


def test_the_kernels_stdout_is_given_without_a_banner(tmp_path: Path) -> None:
    out = tmp_path / "stdout.txt"
    with open(out, "wb") as f:
        km, kc = start_ready_kernel(launcher="fork", start={"stdout": f})
    try:
        run_code(kc, "import sys; print('kc-fork-stdout-marker', file=sys.__stdout__, flush=True)")
        assert wait_until(lambda: "kc-fork-stdout-marker" in out.read_text(), EXIT_TIMEOUT)
        # ipykernel prints "To connect another client ... --existing" when it has no
        # parent to watch; an exec kernel, given JPY_PARENT_PID, does not.
        assert "--existing" not in out.read_text()
    finally:
        stop_kernel(km, kc)


def test_restart_forks_a_new_kernel_for_the_same_manager() -> None:
    km, kc = start_ready_kernel(launcher="fork")
    try:
        run_code(kc, "state = 'before restart'")
        old = forked(km).pid
        km.restart_kernel()
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert forked(km).pid != old
        assert not pid_alive(old)
        assert kernel_value(kc, "__import__('os').getpid()") == km.kernel.pid  # type: ignore[union-attr]
        assert kernel_value(kc, "'state' in dir()") is False
    finally:
        stop_kernel(km, kc)


def test_shutdown_leaves_no_process_file_port_or_zombie() -> None:
    held_before = LocalPortCache.instance().table.held()
    km, kc = start_ready_kernel(launcher="fork")
    pid, conn, ports = forked(km).pid, km.connection_file, list(km.ports)
    template = template_pid(km)
    assert all(ports_held(ports))
    kc.stop_channels()
    km.shutdown_kernel()  # politely: a shutdown_request, then the wait for its exit
    assert km.kernel is None
    assert km.exit_code == 0
    assert not pid_alive(pid)
    # The template kept the zombie until we had the code, then reaped it.
    assert wait_until(lambda: proc_state(pid) is None, EXIT_TIMEOUT)
    assert not os.path.exists(conn)
    assert not any(ports_held(ports))
    assert LocalPortCache.instance().table.held() == held_before
    assert pid_alive(template)  # kept for the next kernel


def test_a_sigkilled_kernel_exits_with_minus_9_and_keeps_its_pid_until_read() -> None:
    # A template of its own: its socket then carries only this kernel's report.
    km, kc = start_ready_kernel(launcher="fork", start=private_template("sigkill"))
    try:
        proc = forked(km)
        sock = proc._template._sock
        assert sock is not None
        os.kill(proc.pid, signal.SIGKILL)
        # The template has seen the exit once its report is waiting for us. The
        # kernel must still be a zombie then, and stay one until we have read
        # the code: its pid (and so its process-group id) cannot be handed to
        # another process meanwhile, as with an exec kernel before Popen.wait.
        assert fork_launcher._readable(sock.fileno(), EXIT_TIMEOUT)
        assert proc_state(proc.pid) == "Z"
        assert proc.wait(timeout=EXIT_TIMEOUT) == -signal.SIGKILL
        assert not km.is_alive()
        assert km.exit_code == -signal.SIGKILL
        assert "SIGKILL" in km.death_report()
        assert wait_until(lambda: proc_state(proc.pid) is None, EXIT_TIMEOUT)
    finally:
        stop_kernel(km, kc)


def test_wait_times_out_like_popen(
    shared: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, _ = shared
    with pytest.raises(subprocess.TimeoutExpired):
        forked(km).wait(timeout=0.01)
    assert forked(km).poll() is None


def test_a_bad_cwd_is_a_start_failure_that_leaves_nothing(tmp_path: Path) -> None:
    held_before = LocalPortCache.instance().table.held()
    km = KernelManager(launcher="fork")
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        km.start_kernel(cwd=str(missing))
    assert km.kernel is None
    assert not os.path.exists(km.connection_file)
    assert LocalPortCache.instance().table.held() == held_before
    assert km.session.key.decode() not in str(km.death_report())


def test_the_async_manager_forks_too() -> None:
    async def go() -> tuple[int, int | None]:
        km = AsyncKernelManager(launcher="fork")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            pid = forked(km).pid
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        return pid, km.exit_code

    pid, code = asyncio.run(go())
    assert code == 0
    assert not pid_alive(pid)


def test_a_restarter_restarts_a_forked_kernel_that_died() -> None:
    km, kc = start_ready_kernel(launcher="fork", restarter_class=ThreadedKernelRestarter)
    try:
        old = forked(km).pid
        os.kill(old, signal.SIGKILL)
        assert wait_until(
            lambda: km.kernel is not None and km.kernel.pid != old, READY_TIMEOUT, 0.05
        )
        assert isinstance(km.kernel, ForkedKernelProcess)
        # Restarted on new ports (it died young): a new client, as for an exec kernel.
        kc.stop_channels()
        kc = km.client()
        kc.start_channels()
        assert kernel_value(kc, "__import__('os').getpid()") == km.kernel.pid
    finally:
        stop_kernel(km, kc)


# -- the manager process dies: its forked kernels die too ----------------------------------

MANAGER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from kernel_connect.manager import KernelManager

    kms = []
    for _ in range(2):
        km = KernelManager(launcher="fork")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        kms.append(km)
    print(json.dumps({
        "kernels": [km.kernel.pid for km in kms],
        "template": kms[0].kernel._template.pid,
        "files": [km.connection_file for km in kms],
    }), flush=True)
    sys.stdin.read()  # until the test closes it (or kills us)
    """
)


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_the_managers_death_leaves_no_forked_kernel(how: str) -> None:
    manager = subprocess.Popen(
        [sys.executable, "-c", MANAGER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert manager.stdout is not None and manager.stdin is not None
        line = manager.stdout.readline()
        assert line, "the manager script failed"
        info = json.loads(line)
        pids = [*info["kernels"], info["template"]]
        assert all(pid_alive(pid) for pid in pids)
        if how == "sigkill":
            manager.kill()
        else:
            manager.stdin.close()  # a normal exit: its exit clean-up runs
        manager.wait(timeout=EXIT_TIMEOUT * 2)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), EXIT_TIMEOUT)
        if how == "exit":
            assert not any(os.path.exists(f) for f in info["files"])
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()


def test_kernels_outlive_their_template_and_the_next_start_gets_a_new_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = private_template("killed")
    km, kc = start_ready_kernel(launcher="fork", log=logging.getLogger(LOGGER), start=start)
    km2: KernelManager | None = None
    kc2: BlockingKernelClient | None = None
    try:
        old_template = template_pid(km)
        os.kill(old_template, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(old_template), EXIT_TIMEOUT)
        assert kernel_value(kc, "6 * 7") == 42
        assert km.is_alive()
        km2, kc2 = start_ready_kernel(launcher="fork", start=start)
        assert template_pid(km2) != old_template
        assert kernel_value(kc2, "__import__('os').getppid()") == template_pid(km2)
        # Nobody is left to report the first kernel's exit code: the documented value.
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            stop_kernel(km, kc)
        assert km.exit_code == UNKNOWN_RETURNCODE
        assert "exit code of a forked kernel is unknown" in caplog.text
    finally:
        stop_kernel(km, kc)
        if km2 is not None:
            stop_kernel(km2, kc2)


# -- what is not forked, and why --------------------------------------------------------------


def test_a_spec_that_is_not_ipykernel_launcher_is_execd_with_a_debug_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    # A real ipykernel, but not started as `-m ipykernel_launcher`.
    code = "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
    write_kernel_spec(tmp_path, "via-c", [sys.executable, "-c", code, "-f", "{connection_file}"])
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        km, kc = start_ready_kernel(
            kernel_name="via-c", launcher="fork", log=logging.getLogger(LOGGER)
        )
    try:
        assert km.kernel is not None and not isinstance(km.kernel, ForkedKernelProcess)
        assert "Not forking the kernel (the command is not" in caplog.text
        assert kernel_value(kc, "__import__('os').getppid()") == os.getpid()
    finally:
        stop_kernel(km, kc)


def test_a_spec_opts_in_and_the_environment_variable_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.delenv(LAUNCHER_ENV_VAR, raising=False)
    argv = ipykernel_argv("{connection_file}")
    write_kernel_spec(tmp_path, "fork-me", argv, metadata={"kernel_connect": {"launcher": "fork"}})
    km = KernelManager(kernel_name="fork-me")  # launcher left at "exec"
    km.start_kernel()
    try:
        assert isinstance(km.kernel, ForkedKernelProcess)
    finally:
        km.shutdown_kernel(now=True)
    monkeypatch.setenv(LAUNCHER_ENV_VAR, "exec")
    km = KernelManager(kernel_name="fork-me", launcher="fork")
    km.start_kernel()
    try:
        assert km.kernel is not None and not isinstance(km.kernel, ForkedKernelProcess)
    finally:
        km.shutdown_kernel(now=True)


def test_the_launcher_choice_order() -> None:
    fork = {"kernel_connect": {"launcher": "fork"}}
    opt_out = {"kernel_connect": {"launcher": "EXEC"}}
    env = dict(os.environ)
    try:
        os.environ.pop(LAUNCHER_ENV_VAR, None)
        assert chosen_launcher("exec", {}) == "exec"
        assert chosen_launcher("fork", {}) == "fork"
        assert chosen_launcher("exec", fork) == "fork"
        assert chosen_launcher("fork", opt_out) == "exec"
        assert chosen_launcher("fork", {"kernel_connect": "nonsense"}) == "fork"
        os.environ[LAUNCHER_ENV_VAR] = "fork"
        assert chosen_launcher("exec", opt_out) == "fork"
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_a_template_that_holds_a_thread_refuses_and_the_kernel_is_execd(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A sitecustomize that starts a thread in every interpreter given this PYTHONPATH.
    (tmp_path / "sitecustomize.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n"
    )
    extra = {"PYTHONPATH": str(tmp_path)}
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        km, kc = start_ready_kernel(launcher="fork", log=log, start={"extra_env": extra})
        try:
            assert km.kernel is not None and not isinstance(km.kernel, ForkedKernelProcess)
            assert any(
                r.levelno == logging.WARNING
                and "the template refused to fork: 2 Python threads" in r.getMessage()
                for r in caplog.records
            )
        finally:
            stop_kernel(km, kc)
        # Not retried at once: exec straight away, with a debug line.
        caplog.clear()
        km = KernelManager(launcher="fork", log=log)
        km.start_kernel(extra_env=extra)
        try:
            assert not isinstance(km.kernel, ForkedKernelProcess)
            assert "failed recently" in caplog.text
        finally:
            km.shutdown_kernel(now=True)


HAZARDS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, socket, sys, threading, time
    spec = importlib.util.spec_from_file_location("kc_template", sys.argv[1])
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    import zmq, tornado, IPython, ipykernel.kernelapp  # what a template holds
    found = {"clean": template.fork_hazards()}
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    found["thread"] = template.fork_hazards()
    stop.set()
    thread.join()
    # join() returns before the OS thread is quite gone from /proc: wait for it.
    deadline = time.monotonic() + 10
    while template.fork_hazards() and time.monotonic() < deadline:
        time.sleep(0.01)
    found["after thread"] = template.fork_hazards()
    context = zmq.Context.instance()
    found["zmq"] = template.fork_hazards()
    context.term()
    found["after zmq"] = template.fork_hazards()
    import asyncio
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    found["loop"] = template.fork_hazards()
    asyncio.set_event_loop(None)
    loop.close()
    sock = socket.socket()
    found["socket"] = template.fork_hazards()
    found["allowed socket"] = template.fork_hazards({sock.fileno()})
    print(json.dumps(found))
    """
)


def test_the_template_checks_for_what_makes_a_fork_unsafe() -> None:
    out = subprocess.run(
        [sys.executable, "-c", HAZARDS_SCRIPT, str(TEMPLATE_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(out.stdout)
    assert found["clean"] == []
    assert found["thread"] == ["2 Python threads", "2 OS threads"]
    assert found["after thread"] == []
    assert found["zmq"] == ["a zmq context"]
    assert found["after zmq"] == []
    assert "an asyncio event loop" in found["loop"]
    assert any(h.startswith("open sockets") for h in found["socket"])
    assert found["allowed socket"] == []


def test_a_template_that_does_not_answer_is_killed_and_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fork_launcher, "REQUEST_TIMEOUT_S", 0.5)
    log = logging.getLogger(LOGGER)
    start = private_template("stopped")
    km, kc = start_ready_kernel(launcher="fork", log=log, start=start)
    km2 = KernelManager(launcher="fork", log=log)
    try:
        stuck = template_pid(km)
        os.kill(stuck, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            km2.start_kernel(**start)  # bounded by the request timeout, then exec
        assert km2.kernel is not None and not isinstance(km2.kernel, ForkedKernelProcess)
        assert "did not answer" in caplog.text
        assert wait_until(lambda: not pid_alive(stuck), EXIT_TIMEOUT)
        assert kernel_value(kc, "'still here'") == "still here"
        km2.shutdown_kernel(now=True)
        km2.start_kernel(**start)  # a new template
        assert template_pid(km2) != stuck
    finally:
        km2.shutdown_kernel(now=True)
        stop_kernel(km, kc)


def test_a_forked_child_of_the_manager_leaves_the_template_alone() -> None:
    km, kc = start_ready_kernel(launcher="fork")
    try:
        _check_a_fork_of_ours(km, kc)
    finally:
        stop_kernel(km, kc)


def _check_a_fork_of_ours(km: KernelManager, kc: BlockingKernelClient) -> None:
    proc = forked(km)
    template = proc._template
    pid = os.fork()
    if pid == 0:  # the child: look, touch nothing, leave without clean-up
        ok = (
            not fork_launcher._templates and template.dead and proc.poll() is None and km.is_alive()
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not template.dead and template.alive()
    assert kernel_value(kc, "'after the fork'") == "after the fork"
    # Our socket to the template still works (the child closed only its copy).
    km2, kc2 = start_ready_kernel(launcher="fork")
    try:
        assert forked(km2)._template is template
    finally:
        stop_kernel(km2, kc2)
