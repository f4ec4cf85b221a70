"""find_connection_file semantics (against jupyter_client's), the glob matcher,
local interfaces, and import hygiene."""

from __future__ import annotations

import fnmatch
import glob
import os
import subprocess
import sys
from pathlib import Path

import jupyter_client.connect as jc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_connect import _native, find_connection_file, localinterfaces

NAMES = st.text(alphabet="ab.-[]!*?k", min_size=1, max_size=6).filter(lambda n: "/" not in n)
PATTERN_CHARS = "ab.-[]!*?k"


def _touch(directory: Path, name: str, atime: int) -> None:
    path = directory / name
    path.write_text("{}")
    os.utime(path, (atime, atime))


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(alphabet="ab-]!.", max_size=6), pattern=st.text(alphabet=PATTERN_CHARS, max_size=7)
)
def test_fnmatch_agrees_with_python(name: str, pattern: str) -> None:
    assert _native.fnmatch(name, pattern) == fnmatch.fnmatchcase(name, pattern)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        NAMES.filter(lambda n: n not in {".", ".."}), st.integers(1, 5), max_size=8
    ),
    query=st.text(alphabet="abk.*-", min_size=1, max_size=4),
)
def test_find_agrees_with_jupyter_client(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, int], query: str
) -> None:
    directory = tmp_path_factory.mktemp("find")
    for i, (name, day) in enumerate(files.items()):
        # distinct access times so "newest" is never a tie
        _touch(directory, name, 1_000_000 + day * 1000 + i)
    try:
        expected: str | None = jc.find_connection_file(query, path=str(directory))
    except OSError:
        expected = None
    try:
        got: str | None = find_connection_file(query, path=str(directory))
    except OSError:
        got = None
    assert got == expected


def test_explicit_name_then_glob_then_substring(tmp_path: Path) -> None:
    _touch(tmp_path, "kernel-old.json", 1_000_000)
    _touch(tmp_path, "kernel-new.json", 2_000_000)
    _touch(tmp_path, "kernel-mid.json", 1_500_000)
    _touch(tmp_path, ".kernel-hidden.json", 3_000_000)
    d = str(tmp_path)
    assert find_connection_file("kernel-old.json", path=d) == str(tmp_path / "kernel-old.json")
    assert find_connection_file(str(tmp_path / "kernel-mid.json")) == str(
        tmp_path / "kernel-mid.json"
    )
    assert find_connection_file(path=d) == str(tmp_path / "kernel-new.json"), (
        "newest by atime, hidden skipped"
    )
    assert find_connection_file("mid", path=d) == str(tmp_path / "kernel-mid.json"), "substring"
    assert find_connection_file(".kernel-*", path=d) == str(tmp_path / ".kernel-hidden.json")
    with pytest.raises(OSError, match="Could not find 'nothing'"):
        find_connection_file("nothing", path=d)


def test_search_path_order_and_default_runtime_dir(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _touch(second, "kernel-x.json", 1_000_000)
    assert find_connection_file("kernel-x.json", path=[str(first), str(second)]) == str(
        second / "kernel-x.json"
    )
    _touch(runtime_dir, "kernel-in-runtime.json", 2_000_000)
    monkeypatch.chdir(first)
    assert find_connection_file("in-runtime") == str(runtime_dir / "kernel-in-runtime.json")
    os.unlink(runtime_dir / "kernel-in-runtime.json")


def test_profile_warns_and_is_ignored(tmp_path: Path) -> None:
    _touch(tmp_path, "kernel-1.json", 1_000_000)
    with pytest.warns(UserWarning, match="no profiles"):
        assert find_connection_file("kernel-1.json", path=str(tmp_path), profile="default")


def test_glob_in_directory_part_falls_back_to_python_glob(tmp_path: Path) -> None:
    (tmp_path / "d1").mkdir()
    _touch(tmp_path / "d1", "kernel-1.json", 1_000_000)
    assert find_connection_file("d*/kernel-*.json", path=str(tmp_path)) == str(
        tmp_path / "d1" / "kernel-1.json"
    )


def test_glob_names_matches_glob(tmp_path: Path) -> None:
    for name in ["kernel-1.json", "kernel-2.json", "other.json", ".kernel-3.json"]:
        _touch(tmp_path, name, 1_000_000)
    ours = sorted(_native.glob_names(str(tmp_path), "kernel-*.json"))
    theirs = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "kernel-*.json")))
    assert ours == theirs == ["kernel-1.json", "kernel-2.json"]
    assert _native.glob_names(str(tmp_path / "missing"), "*") == []


def test_local_interfaces() -> None:
    assert localinterfaces.localhost() == "127.0.0.1"
    ips = localinterfaces.local_ips()
    assert ips[0] == "127.0.0.1"
    assert "0.0.0.0" in ips
    assert localinterfaces.is_local_ip("127.0.0.1")
    assert localinterfaces.is_local_ip("127.0.0.2"), "all of 127/8 is loopback"
    assert not localinterfaces.is_local_ip("192.0.2.1")
    for ip in localinterfaces.public_ips():
        assert localinterfaces.is_public_ip(ip)
        assert localinterfaces.is_local_ip(ip)
    assert not localinterfaces.is_public_ip("127.0.0.1")
    assert localinterfaces.local_ips(refresh=True) == ips


def test_import_is_light() -> None:
    """Importing the package and its connection API loads neither paramiko nor zmq."""
    code = (
        "import sys, kernel_connect, kernel_connect.connect; "
        "kernel_connect.write_connection_file; "
        "print(sorted(m for m in ('paramiko', 'zmq', 'traitlets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve() -> None:
    import kernel_connect

    for name in (
        "write_connection_file",
        "find_connection_file",
        "LocalPortCache",
        "KernelConnectionInfo",
        "ConnectionFileError",
        "tunnel_to_kernel",
    ):
        assert getattr(kernel_connect, name) is getattr(kernel_connect.connect, name)
    for name in kernel_connect.__all__:
        assert getattr(kernel_connect, name) is not None, name
    with pytest.raises(AttributeError):
        kernel_connect.no_such_name  # noqa: B018


@pytest.mark.parametrize("count", [2, 700, 3000])
def test_ties_and_large_directories_agree_with_jupyter_client(tmp_path: Path, count: int) -> None:
    """Equal access times resolve to the last match in directory order, as the last
    element of jupyter_client's stable sort, also when matches are stat'ed in
    batches on two threads."""
    for i in range(count):
        _touch(tmp_path, f"kernel-{i}.json", 1_000_000 + (i % 3))
    _touch(tmp_path, "unrelated.txt", 9_000_000)
    expected = jc.find_connection_file(path=str(tmp_path))
    assert find_connection_file(path=str(tmp_path)) == expected
    newest = tmp_path / f"kernel-{count // 2}.json"
    os.utime(newest, (5_000_000, 5_000_000))
    assert find_connection_file(path=str(tmp_path)) == str(newest)
