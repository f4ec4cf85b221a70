"""No key, curve secret or password in any exception (text, args, repr, chained
causes), log line or repr; a failed write leaves no file and no reservation.

Each public path that can refuse a secret-bearing input is driven with a
marker secret, and everything it produced is searched for the marker.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_connect import ConnectionFileError, _native
from kernel_connect.connect import read_connection_file, write_connection_file
from kernel_connect.ports import LocalPortCache

MARKER = "Zq7-MARKER-SECRET-9xK"


def _texts(exc: BaseException, seen: set[int] | None = None) -> Iterator[str]:
    """Every text an exception shows, its chained causes and contexts included."""
    seen = seen if seen is not None else set()
    if id(exc) in seen:
        return
    seen.add(id(exc))
    yield str(exc)
    yield repr(exc)
    for arg in exc.args:
        yield repr(arg)
    for note in getattr(exc, "__notes__", []):
        yield str(note)
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            yield from _texts(linked, seen)


def _refused(call: Callable[[], object], caplog: pytest.LogCaptureFixture) -> BaseException:
    """Run ``call``, which must raise; assert the marker shows nowhere."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any refusal; what it shows matters
        call()
    shown = [*_texts(caught.value), *(r.getMessage() for r in caplog.records)]
    leaks = [text for text in shown if MARKER in text or MARKER.encode().hex() in text]
    assert leaks == [], f"the secret leaked: {leaks[:2]}"
    return caught.value


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory, for this test only (to see what a write leaves)."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _my_reservations() -> set[int]:
    table = LocalPortCache.instance().table
    return {p for p, pid, alive, _ in table.held() if pid == os.getpid() and alive}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": b"\xff" + MARKER.encode()},
        {"key": MARKER.encode() + b"\xc3"},
        {"key": MARKER, "curve_publickey": b"x" * 40, "curve_secretkey": "é" + MARKER},
        {"key": MARKER, "curve_publickey": b"x" * 40, "curve_secretkey": b"\xe9" + MARKER.encode()},
        {"key": MARKER, "signature_scheme": "hmac-" + "nope"},
        {"key": MARKER, "transport": "udp"},
        {"key": MARKER, "shell_port": 70000},
    ],
    ids=[
        "key-not-utf8",
        "key-truncated-utf8",
        "curve-non-ascii",
        "curve-bytes",
        "scheme",
        "transport",
        "port",
    ],
)
def test_a_refused_write_shows_no_secret_and_leaves_nothing(
    kwargs: dict[str, Any], private_tempdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _my_reservations()
    err = _refused(lambda: write_connection_file(None, ip="127.0.0.1", **kwargs), caplog)
    assert isinstance(err, ConnectionFileError), type(err)
    assert list(private_tempdir.iterdir()) == [], "no temporary file left behind"
    assert _my_reservations() == before, "no port left reserved"


def test_a_bad_file_is_refused_without_quoting_its_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_files = {
        "transport": f'{{"key": "{MARKER}", "transport": "udp"}}',
        "truncated": f'{{"shell_port": 1, "key": "{MARKER}',
        "scheme": f'{{"key": "{MARKER}", "signature_scheme": "hmac-nope"}}',
        "port": f'{{"key": "{MARKER}", "hb_port": "80"}}',
        "curve": f'{{"curve_secretkey": "{MARKER}", "hb_port": -1}}',
        "key-type": f'{{"key": ["{MARKER}"]}}',
        "control": f'{{"key": "{MARKER}\u0001"}}',
    }
    for name, text in bad_files.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        err = _refused(lambda p=path: read_connection_file(p), caplog)
        assert isinstance(err, ConnectionFileError)
        _refused(lambda t=text: _native.parse_connection_info(t), caplog)


def test_mixin_and_session_refusals_show_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    from kernel_connect.mixin import ConnectionFileMixin
    from kernel_connect.session import Session

    _refused(lambda: Session(key=MARKER.encode(), signature_scheme="hmac-nope"), caplog)
    _refused(lambda: Session(key=MARKER.encode(), signature_scheme="rot13"), caplog)
    mixin = ConnectionFileMixin()
    _refused(
        lambda: mixin.load_connection_info({"key": MARKER, "signature_scheme": "hmac-nope"}),
        caplog,
    )
    _refused(lambda: setattr(mixin.session, "key", 12345), caplog)


def test_reprs_of_objects_holding_connection_info_redact_secrets(tmp_path: Path) -> None:
    from kernel_connect.client import BlockingKernelClient
    from kernel_connect.liveness import scan_directory
    from kernel_connect.manager import KernelManager
    from kernel_connect.session import Session

    path = tmp_path / "kernel-1.json"
    write_connection_file(
        str(path),
        ip="127.0.0.1",
        key=MARKER,
        shell_port=1,
        iopub_port=2,
        stdin_port=3,
        control_port=4,
        hb_port=5,
        curve_publickey=b"p" * 40,
        curve_secretkey=(MARKER * 3)[:40],
    )
    statuses = scan_directory(str(tmp_path))
    assert len(statuses) == 1 and statuses[0].info is not None
    assert statuses[0].info["key"] == MARKER, "the data itself is intact"
    shown = [repr(statuses), str(statuses[0])]
    km = KernelManager(connection_file=str(path))
    km.load_connection_file()
    client = BlockingKernelClient()
    client.load_connection_file(str(path))
    shown += [repr(km), repr(client), repr(km.session), repr(Session(key=MARKER.encode()))]
    assert not [s for s in shown if MARKER[:12] in s], shown
    assert "<redacted>" in repr(statuses)
