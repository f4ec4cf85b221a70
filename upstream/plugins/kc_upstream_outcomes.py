"""pytest plugin: each test's outcome, appended to a JSON-lines file as it happens.

Loaded by upstream/run.py with ``-p kc_upstream_outcomes`` and
``KC_UPSTREAM_OUTCOMES=/path/file.jsonl``. One line is written when collection
ends (every collected node id), one when a test starts and one when it ends,
each flushed at once: when libzmq aborts the interpreter in the middle of a
test, the file still names every finished test and the one that was running.
Each failure's whole traceback goes to ``<file>.failures.txt`` as it happens,
for the same reason (pytest prints its own report only at the end).

With ``KC_UPSTREAM_COUNT_PROVISIONER=1`` it also counts, per test, the kernels
launched through kernel-connect's provisioner (an observation only: the
provisioner's method is wrapped, not changed), to prove the plug-in was used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_PATH = os.environ.get("KC_UPSTREAM_OUTCOMES", "")
_MESSAGE_CHARS = 300

# node id -> outcome so far (the phases of one test arrive one by one)
_current: dict[str, dict[str, Any]] = {}
_launches: dict[str, int] = {}


def _write(record: dict[str, Any]) -> None:
    if not _PATH:
        return
    with open(_PATH, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def _message(report: Any) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = str(crash.message)
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        text = str(longrepr[2])
    else:
        lines = [line for line in str(longrepr or "").splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = " ".join(text.split())
    return text[:_MESSAGE_CHARS]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("KC_UPSTREAM_COUNT_PROVISIONER") != "1":
        return
    from kernel_connect.provisioning import KernelConnectProvisioner

    original = KernelConnectProvisioner.pre_launch

    async def pre_launch(self: Any, **kwargs: Any) -> dict[str, Any]:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        _launches[test] = _launches.get(test, 0) + 1
        result: dict[str, Any] = await original(self, **kwargs)
        return result

    KernelConnectProvisioner.pre_launch = pre_launch  # type: ignore[method-assign]


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write({"event": "collect_error", "nodeid": report.nodeid, "message": _message(report)})


def pytest_collection_finish(session: pytest.Session) -> None:
    _write({"event": "collected", "nodeids": [item.nodeid for item in session.items]})


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _current[nodeid] = {"outcome": None, "message": ""}
    _write({"event": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    state = _current.setdefault(report.nodeid, {"outcome": None, "message": ""})
    if report.failed and _PATH:
        # The whole traceback, kept as it happens: a crash later in the run
        # takes pytest's own end-of-run report with it.
        with open(_PATH + ".failures.txt", "a", encoding="utf-8") as out:
            out.write(f"{'=' * 30} {report.nodeid} ({report.when}) {'=' * 30}\n")
            out.write(report.longreprtext + "\n\n")
    xfail = hasattr(report, "wasxfail")
    if report.when == "setup":
        if report.failed:
            state.update(outcome="error", message="setup: " + _message(report))
        elif report.skipped:
            state.update(outcome="xfailed" if xfail else "skipped", message=_message(report))
    elif report.when == "call":
        if report.passed:
            state.update(outcome="xpassed" if xfail else "passed", message="")
        elif report.failed:
            state.update(outcome="failed", message=_message(report))
        else:
            state.update(outcome="xfailed" if xfail else "skipped", message=_message(report))
    elif report.when == "teardown" and report.failed and state["outcome"] != "failed":
        state.update(outcome="error", message="teardown: " + _message(report))


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    state = _current.pop(nodeid, {"outcome": None, "message": ""})
    record = {"event": "finish", "nodeid": nodeid, "outcome": state["outcome"] or "error"}
    record["message"] = state["message"]
    if _launches.get(nodeid):
        record["provisioner_launches"] = _launches[nodeid]
    _write(record)
