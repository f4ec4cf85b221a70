"""The warm kernel pool (kernel_connect.pool): real kernels, taken in milliseconds, never reused.

One pool (``pool``, module-wide) serves the tests that only take kernels from
it; tests that break or close a pool make their own. Waits are on the pool's
own events (``wait_for``), bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import LocalPortCache
from kernel_connect.manager import KernelManager
from kernel_connect.pool import (
    KernelPool,
    PoolError,
    PoolStats,
    PoolTimeoutError,
    launcher_available,
)
from kernel_fixtures import (
    READY_TIMEOUT,
    pid_alive,
    ports_held,
    run_code,
    stream_text,
    wait_until,
    write_kernel_spec,
)

pytestmark = pytest.mark.kernel

# Set in the environment the module's pool is made with, to be unset at take.
PRESET = "KC_POOL_TEST_PRESET"


def _our_reservations() -> set[int]:
    me = os.getpid()
    return {row[0] for row in LocalPortCache.instance().table.held() if row[1] == me}


def _pid(km: KernelManager) -> int:
    pid = getattr(km.kernel, "pid", None)
    assert isinstance(pid, int)
    return pid


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _client(km: KernelManager) -> BlockingKernelClient:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    return kc


def _value(kc: BlockingKernelClient, expression: str) -> Any:
    """``expression`` evaluated in the kernel, sent back as JSON."""
    reply, outputs = run_code(kc, f"import json as _j; print(_j.dumps({expression}))")
    assert reply["content"]["status"] == "ok", reply["content"]
    return json.loads(stream_text(outputs))


def _full(pool: KernelPool) -> None:
    assert pool.wait_until_full(READY_TIMEOUT), pool.stats()


# -- a pool whose kernels cannot start (first: no other pool runs yet) ---------


def test_failed_starts_back_off_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_dir: Path
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    argv = [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"]
    write_kernel_spec(tmp_path, "exits-at-once", argv)
    files_before = set(os.listdir(runtime_dir))
    reserved_before = _our_reservations()
    pool = KernelPool(1, "exits-at-once", start_timeout=20)
    try:
        t0 = time.monotonic()
        assert pool.wait_for(lambda s: s.failed_starts >= 3, 20), pool.stats()
        # Three failures are two back-offs apart (0.5 s, then 1 s): no hot loop.
        assert time.monotonic() - t0 >= 1.5
        stats = pool.stats()
        assert stats.ready == 0 and stats.consecutive_failures >= 3
        assert stats.last_error is not None and "exit code 3" in stats.last_error
        with pytest.raises(PoolTimeoutError, match="exit code 3") as info:
            pool.take(timeout=0.2)
        assert "in a row failed" in str(info.value)
    finally:
        pool.close()
    assert set(os.listdir(runtime_dir)) == files_before, "no connection file left"
    assert _our_reservations() == reserved_before, "no port reservation left"


def test_non_python_kernel_refuses_cwd_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    write_kernel_spec(
        tmp_path, "not-python", ["no-such-binary-kc", "{connection_file}"], language="R"
    )
    # Size 0: no kernel is ever started; the refusal comes before any take.
    with KernelPool(0, "not-python") as pool:
        assert not pool.python
        with pytest.raises(PoolError, match=r"not a Python kernel.*cwd"):
            pool.take(cwd=tmp_path, timeout=1)
        with pytest.raises(PoolError, match=r"not a Python kernel.*KC_X"):
            pool.take(env={"KC_X": "1"}, timeout=1)
        assert pool.stats().waiting == 0


# -- pools of their own (before the module's pool exists: they compare what is left) ----


def test_eight_threads_taking_at_once_never_share_a_kernel() -> None:
    results: list[tuple[KernelManager, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with KernelPool(4, "python3") as pool:
        _full(pool)
        start = threading.Barrier(8)

        def worker() -> None:
            try:
                start.wait(timeout=READY_TIMEOUT)
                for _ in range(2):
                    km = pool.take(timeout=READY_TIMEOUT)
                    kc = _client(km)
                    try:
                        pid = _value(kc, "__import__('os').getpid()")
                    finally:
                        kc.stop_channels()
                    with lock:
                        results.append((km, pid))
                    pool.release(km, now=True)
            except BaseException as e:
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * READY_TIMEOUT)
        assert not errors, errors
        assert len(results) == 16
        assert len({id(km) for km, _ in results}) == 16, "a kernel was handed out twice"
        assert len({pid for _, pid in results}) == 16
        assert pool.stats().taken == 16 and pool.stats().released == 16


def test_close_leaves_no_process_file_or_reservation(runtime_dir: Path) -> None:
    files_before = set(os.listdir(runtime_dir))
    reserved_before = _our_reservations()
    pool = KernelPool(2, "python3")
    _full(pool)
    kept = pool.take()
    # Taking started a refill: close() must cancel that start too.
    assert pool.wait_for(lambda s: s.starting >= 1 or s.ready == s.size, 10)
    members = pool.pooled_managers()
    assert kept not in members
    pool.close()
    assert pool.stats().closed and pool.pooled_managers() == []
    for km in members:
        assert not km.has_kernel
        assert not km.connection_file or not os.path.exists(km.connection_file)
    with pytest.raises(PoolError, match="closed"):
        pool.take(timeout=1)
    # The taken kernel is its taker's: close() leaves it running.
    assert kept.is_alive()
    pool.release(kept, now=True)
    assert set(os.listdir(runtime_dir)) == files_before
    assert _our_reservations() == reserved_before
    pool.close()  # idempotent


def test_interpreter_exit_closes_the_pool_but_a_forked_child_does_not(tmp_path: Path) -> None:
    """At exit the creating process shuts its pooled kernels down; a forked child,
    exiting normally (atexit handlers run), leaves its parent's kernels alone.

    The kernels are ``independent`` (no JPY_PARENT_PID, skipped by the managers'
    own exit clean-up), so that only the pool's exit hook can end them."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from kernel_connect.pool import KernelPool

        pool = KernelPool(1, "python3", start_kwargs={"independent": True})
        assert pool.wait_until_full(60), pool.stats()
        km = pool.pooled_managers()[0]
        child = os.fork()
        if child == 0:
            sys.exit(0)  # runs the atexit hooks, in the child
        os.waitpid(child, 0)
        print(json.dumps({"pid": km.kernel.pid, "file": km.connection_file,
                          "file_kept": os.path.exists(km.connection_file),
                          "alive": km.is_alive(), "ready": pool.stats().ready}), flush=True)
        """
    )
    # Output to a file, not a pipe: a kernel left running would hold a pipe open.
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=2 * READY_TIMEOUT,
            check=False,
        )
    output = log.read_text()
    assert proc.returncode == 0, output
    seen = json.loads(output.strip().splitlines()[-1])
    try:
        assert seen["alive"] and seen["file_kept"] and seen["ready"] == 1, (
            "the child's exit touched the parent's kernel"
        )
        assert wait_until(lambda: not pid_alive(seen["pid"]), 10), "left running at exit"
        assert not os.path.exists(seen["file"])
    finally:
        if pid_alive(seen["pid"]):
            os.kill(seen["pid"], signal.SIGKILL)
            Path(seen["file"]).unlink(missing_ok=True)


def test_the_readme_pool_example_runs_as_written() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "KernelPool(" in b
    ]
    script = textwrap.dedent(block) + textwrap.dedent(
        """
        assert reply["content"]["status"] == "ok", reply
        assert not km.is_alive() and pool.stats().closed and pool.pooled_managers() == []
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=2 * READY_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-2:] == ["/tmp 42", "ok"]


@pytest.mark.skipif(not launcher_available("fork"), reason="no fork launcher in this build")
def test_a_fork_launched_pool(tmp_path: Path) -> None:
    with KernelPool(2, "python3", launcher="fork") as pool:
        _full(pool)
        members = pool.pooled_managers()
        assert all(_parent(_pid(km)) != os.getpid() for km in members), "forked, not exec'd"
        victim = members[0]
        os.kill(_pid(victim), signal.SIGKILL)
        assert pool.wait_for(lambda s: s.replaced == 1 and s.ready == s.size, READY_TIMEOUT)
        km = pool.take(cwd=tmp_path, env={"KC_FORKED": "yes"})
        try:
            kc = _client(km)
            try:
                assert _value(
                    kc, "[__import__('os').getcwd(), __import__('os').environ['KC_FORKED']]"
                ) == [
                    str(tmp_path),
                    "yes",
                ]
            finally:
                kc.stop_channels()
        finally:
            pool.release(km)
        members = pool.pooled_managers()
        pids = [_pid(m) for m in members if m.kernel is not None]
    assert not any(pid_alive(p) for p in pids)
    assert not any(m.connection_file and os.path.exists(m.connection_file) for m in members)


# -- the module's pool ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[KernelPool]:
    os.environ[PRESET] = "from the pool's environment"
    try:
        p = KernelPool(2, "python3")
    finally:
        del os.environ[PRESET]
    yield p
    p.close()


def test_take_hands_out_a_pooled_ready_kernel(pool: KernelPool) -> None:
    _full(pool)
    before = pool.stats()
    pooled = pool.pooled_managers()
    t0 = time.perf_counter()
    km = pool.take()
    took = time.perf_counter() - t0
    try:
        assert km in pooled, "a kernel that was ready in the pool, not a new start"
        assert pool.stats().taken == before.taken + 1
        assert km.is_alive()
        assert took < 0.5, f"a take from a full pool took {took:.3f} s"
        kc = _client(km)
        try:
            assert _value(kc, "21 * 2") == 42
        finally:
            kc.stop_channels()
    finally:
        pool.release(km)


def test_two_taken_kernels_share_no_state(pool: KernelPool) -> None:
    first, second = pool.take(), pool.take()
    try:
        assert first is not second and _pid(first) != _pid(second)
        a, b = _client(first), _client(second)
        try:
            assert (
                run_code(a, "shared_secret = 'only in the first'")[0]["content"]["status"] == "ok"
            )
            assert _value(a, "'shared_secret' in globals()") is True
            assert _value(b, "'shared_secret' in globals()") is False
            assert _value(b, "__import__('os').getpid()") == _pid(second)
        finally:
            a.stop_channels()
            b.stop_channels()
    finally:
        pool.release(first, now=True)
        pool.release(second, now=True)


def test_cwd_and_env_are_applied_at_take(pool: KernelPool, tmp_path: Path) -> None:
    assert pool.kernel_env()[PRESET] == "from the pool's environment"
    tricky = 'it\'s "quoted"\n$(echo no) `no` \\x00 {} ${HOME} ✓'
    km = pool.take(cwd=tmp_path, env={"KC_POOL_TEST": tricky}, unset_env=[PRESET])
    try:
        kc = _client(km)
        try:
            reply, _ = run_code(kc, "1")
            # The take's execute was silent: the user's first cell is number 1.
            assert reply["content"]["execution_count"] == 1
            assert _value(kc, "__import__('os').getcwd()") == str(tmp_path)
            assert _value(kc, "__import__('os').environ['KC_POOL_TEST']") == tricky
            assert _value(kc, f"{PRESET!r} in __import__('os').environ") is False
            # Nothing of ours was left in the user's namespace.
            assert _value(kc, "[n for n in ('os', 'json', 'r') if n in globals()]") == []
            # Subprocesses see the environment too.
            out = _value(kc, "__import__('subprocess').check_output(['pwd'], text=True)")
            assert out.strip() == str(tmp_path)
        finally:
            kc.stop_channels()
        # The manager's record says the same: a restart starts there, with that env.
        pid = _pid(km)
        km.restart_kernel(now=True)
        assert _pid(km) != pid
        kc = _client(km)
        try:
            assert _value(kc, "__import__('os').getcwd()") == str(tmp_path)
            assert _value(kc, "__import__('os').environ['KC_POOL_TEST']") == tricky
            assert _value(kc, f"{PRESET!r} in __import__('os').environ") is False
        finally:
            kc.stop_channels()
    finally:
        pool.release(km, now=True)


def test_a_bad_request_costs_no_kernel(pool: KernelPool, tmp_path: Path) -> None:
    _full(pool)
    taken = pool.stats().taken
    with pytest.raises(FileNotFoundError):
        pool.take(cwd=tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        pool.take(cwd=tmp_path / "file")
    with pytest.raises(ValueError, match="invalid environment variable name"):
        pool.take(env={"A=B": "x"})
    with pytest.raises(TypeError):
        pool.take(env={"A": 1})  # type: ignore[dict-item]
    stats = pool.stats()
    assert stats.taken == taken and stats.ready == stats.size


def test_a_released_kernel_is_shut_down_never_pooled_again(pool: KernelPool) -> None:
    km = pool.take()
    pid, ports, path = _pid(km), km.ports, km.connection_file
    pool.release(km)
    assert not pid_alive(pid)
    assert not os.path.exists(path)
    assert not any(ports_held(ports))
    with pytest.raises(ValueError, match="not taken from this pool"):
        pool.release(km)
    with pytest.raises(ValueError, match="not taken from this pool"):
        pool.release(KernelManager())
    _full(pool)
    assert km not in pool.pooled_managers()
    again = [pool.take(), pool.take()]
    try:
        assert km not in again
    finally:
        for other in again:
            pool.release(other, now=True)


def test_a_kernel_killed_in_the_pool_is_replaced(pool: KernelPool) -> None:
    _full(pool)
    replaced = pool.stats().replaced
    victim = pool.pooled_managers()[0]
    pid, ports, path = _pid(victim), victim.ports, victim.connection_file
    os.kill(pid, signal.SIGKILL)

    def replaced_and_full(s: PoolStats) -> bool:
        return s.replaced > replaced and s.ready == s.size

    assert pool.wait_for(replaced_and_full, READY_TIMEOUT), pool.stats()
    assert victim not in pool.pooled_managers()
    assert wait_until(lambda: not os.path.exists(path), 10)
    assert not pid_alive(pid)
    assert not any(ports_held(ports))
    taken = [pool.take(), pool.take()]
    try:
        assert victim not in taken and all(km.is_alive() for km in taken)
    finally:
        for km in taken:
            pool.release(km, now=True)
