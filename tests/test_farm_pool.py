"""``kernel-connect farm --pool SIZE --launcher L``: kernels taken from a warm pool, same lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kernel_connect.farm import format_table, run_farm
from kernel_connect.pool import launcher_available
from kernel_fixtures import pid_alive

pytestmark = pytest.mark.kernel


def kc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel_connect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_farm_command_takes_from_a_pool() -> None:
    """Three kernels from a pool of two: two takes find it full, the third waits for
    a refill. Same live lines (plain, as output is not a terminal), nothing left."""
    out = kc("farm", "-n", "3", "--pool", "2", "--code", "import os; os.getpid()", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["pool"] == 2 and report["launcher"] == "exec"
    assert report["pool_warm_s"] > 0
    rows = report["kernels"]
    assert len({r["pid"] for r in rows}) == 3
    assert all(r["result"] == str(r["pid"]) for r in rows), "each kernel ran the code itself"
    assert report["leftover_pids"] == [] and report["leftover_files"] == []
    lines = out.stderr.splitlines()
    assert lines[0].startswith("pool: filling 2 python3 kernels")
    assert lines[1].startswith("pool: full in")
    for i in range(3):
        assert f"kernel {i}: taking from the pool" in lines
        assert any(line.startswith(f"kernel {i}: ready in ") for line in lines)
        assert f"kernel {i}: stopped" in lines


def test_run_farm_with_a_pool_leaves_nothing_of_the_pool() -> None:
    states: list[str] = []
    report = run_farm(n=1, code="1 + 1", pool_size=2, progress=lambda k, s: states.append(s))
    assert report.ok, report
    assert report.kernels[0].result == "2"
    assert states[:2] == ["taking", "ready"]
    assert report.pool_warm_s is not None
    # ok: no process or file left, the pool's own kernels (one ready, one
    # refill under way when the farm ended) included.
    assert report.leftover_pids == [] and report.leftover_files == []
    assert not pid_alive(report.kernels[0].pid or 0)
    assert "taken from a pool of 2 (exec launcher)" in format_table(report)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["farm", "--pool", "-1"], 1, "--pool must be at least 0"),
        (["farm", "--launcher", "spawn"], 2, "invalid choice"),
    ],
)
def test_bad_pool_and_launcher_options(argv: list[str], code: int, message: str) -> None:
    out = kc(*argv, timeout=30)
    assert out.returncode == code
    assert message in out.stderr


def test_farm_with_a_pool_of_a_missing_spec_reports_it() -> None:
    out = kc("farm", "-n", "2", "--pool", "1", "--kernel", "no-such-kernel-kc", timeout=60)
    assert out.returncode == 1
    # Once per kernel in the live lines, once per kernel in the table.
    assert out.stdout.count("no kernel spec named 'no-such-kernel-kc'") == 4
    assert "pool: not filled" in out.stdout
    assert "a pool of 1 (exec launcher) could not be made" in out.stdout


@pytest.mark.skipif(not launcher_available("fork"), reason="no fork launcher in this build")
def test_farm_command_with_the_fork_launcher_and_a_pool() -> None:
    argv = ["farm", "-n", "2", "--pool", "2", "--launcher", "fork", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel_connect", *argv, "--code", "import os; os.getppid()"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["ok"] and report["launcher"] == "fork" and report["pool"] == 2
    assert "pool: filling 2 python3 kernels (fork launcher)" in stderr
    # Forked from the template, not exec'd by the farm process.
    assert all(int(k["result"]) != proc.pid for k in report["kernels"])
