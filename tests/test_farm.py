"""The kernel farm (``python -m kernel_connect.farm``): real kernels, table, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from kernel_connect.farm import format_table, main, run_farm
from kernel_fixtures import pid_alive

pytestmark = pytest.mark.kernel


def test_farm_runs_code_on_every_kernel_and_cleans_up() -> None:
    report = run_farm(n=3, code="import os; os.getpid()")
    assert report.ok
    pids = [k.pid for k in report.kernels]
    assert len(set(pids)) == 3
    for k in report.kernels:
        # Each kernel ran the code in its own process: the result is its pid.
        assert k.result == str(k.pid)
        assert k.ready_s is not None and 0 < k.ready_s <= report.all_ready_s
        assert len(set(k.ports)) == 5
        assert not os.path.exists(k.manager.connection_file)
    assert not any(pid_alive(p) for p in pids if p is not None)


def test_table_labels_each_port_with_its_channel() -> None:
    channels = ["shell", "iopub", "stdin", "hb", "control"]
    seen: dict[str, int] = {}

    def on_ready(fk: Any, state: str) -> None:
        if state == "ready":
            seen.update({c: getattr(fk.manager, f"{c}_port") for c in channels})

    report = run_farm(n=1, code="1", progress=on_ready)
    assert report.ok
    header, _, row = format_table(report).splitlines()[:3]
    labels = header.split("ports (", 1)[1].split(")", 1)[0].split(",")
    values = [int(v) for v in row.split()[2].split(",")]
    assert sorted(labels) == sorted(channels)
    assert dict(zip(labels, values, strict=True)) == seen


def test_farm_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "2", "--code", "print('hello from the farm')", "--zero-race"]) == 0
    out = capsys.readouterr().out
    assert out.count("hello from the farm") == 2
    assert "2 kernels, 0 failed" in out
    assert "left behind: 0 processes, 0 connection files" in out


def test_farm_reports_failures_with_exit_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "1", "--code", "1/0"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_farm_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kernel_connect.farm", "--kernel", "no-such-kernel", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "no kernel spec named 'no-such-kernel'" in proc.stdout
