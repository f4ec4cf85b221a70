"""Kernel specs on the Jupyter path, the native python3 fallback, argv substitution."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_connect import kernelspec
from kernel_connect.connect import LocalPortCache
from kernel_connect.kernelspec import (
    NoSuchKernel,
    find_kernel_specs,
    get_kernel_spec,
    substitute_argv,
)
from kernel_connect.manager import KernelManager
from kernel_fixtures import write_kernel_spec


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private JUPYTER_PATH entry searched before every other kernel directory."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return tmp_path


def test_spec_on_jupyter_path_is_found_and_read(jupyter_path: Path) -> None:
    spec_dir = write_kernel_spec(
        jupyter_path,
        "MyKernel",
        ["mykernel", "-f", "{connection_file}"],
        env={"A": "1"},
        interrupt_mode="message",
        metadata={"supported_encryption": ["curve"]},
    )
    assert find_kernel_specs()["mykernel"] == str(spec_dir)
    spec = get_kernel_spec("MYKERNEL")
    assert spec.argv == ["mykernel", "-f", "{connection_file}"]
    assert spec.env == {"A": "1"}
    assert spec.interrupt_mode == "message"
    assert spec.resource_dir == str(spec_dir)
    assert spec.supports_curve


def test_first_directory_on_the_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_kernel_spec(first, "dup", ["first"])
    write_kernel_spec(second, "dup", ["second"])
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(first), str(second)]))
    assert get_kernel_spec("dup").argv == ["first"]


def test_missing_spec_names_itself_and_the_searched_directories(jupyter_path: Path) -> None:
    with pytest.raises(NoSuchKernel) as info:
        get_kernel_spec("no-such-kernel")
    assert "no-such-kernel" in str(info.value)
    assert str(jupyter_path / "kernels") in str(info.value)
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"argv": []}', "argv"),
        ('{"argv": ["k"], "interrupt_mode": "x"}', "interrupt_mode"),
    ],
)
def test_broken_spec_is_a_clear_error(jupyter_path: Path, body: str, problem: str) -> None:
    spec_dir = jupyter_path / "kernels" / "broken"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(body)
    with pytest.raises(ValueError, match=problem):
        get_kernel_spec("broken")


def test_native_python3_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelspec, "kernel_dirs", lambda: [str(tmp_path)])
    spec = get_kernel_spec("python3")
    assert spec.argv == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec.supports_curve
    assert find_kernel_specs() == {"python3": ""}


def test_installed_python3_spec_is_used() -> None:
    spec = get_kernel_spec("python3")
    assert "ipykernel_launcher" in spec.argv
    assert "{connection_file}" in spec.argv


@given(
    st.lists(st.text(alphabet="ab{}_xyz", max_size=12), max_size=5),
    st.dictionaries(st.sampled_from(["x", "y", "a_b"]), st.text(alphabet="pq/", max_size=5)),
)
def test_substitution_replaces_known_names_only(argv: list[str], values: dict[str, str]) -> None:
    out = substitute_argv(argv, values)
    assert len(out) == len(argv)
    for before, after in zip(argv, out, strict=True):
        expected = before
        # Re-derive: placeholders of known names are replaced, everything else stays.
        for name in values:
            expected = expected.replace("{" + name + "}", "\0" + name + "\0")
        for name, value in values.items():
            expected = expected.replace("\0" + name + "\0", value)
        assert after == expected


def test_manager_formats_the_command(jupyter_path: Path, tmp_path: Path) -> None:
    write_kernel_spec(
        jupyter_path,
        "fmt",
        ["python", "-m", "k", "-f", "{connection_file}", "{resource_dir}", "{other}"],
    )
    km = KernelManager(kernel_name="fmt", connection_file=str(tmp_path / "c.json"))
    cmd = km.format_kernel_cmd(extra_arguments=["--x"])
    assert cmd[0] == sys.executable
    assert cmd[4] == os.path.realpath(tmp_path / "c.json")
    assert cmd[5] == str(jupyter_path / "kernels" / "fmt")
    assert cmd[6:] == ["{other}", "--x"]


def test_unknown_spec_fails_before_reserving_ports_or_writing(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-x.json"
    km = KernelManager(kernel_name="definitely-not-installed", connection_file=str(conn))
    held_before = LocalPortCache.instance().table.held()
    with pytest.raises(NoSuchKernel, match="definitely-not-installed"):
        km.start_kernel()
    assert not conn.exists()
    assert km.ports == [0, 0, 0, 0, 0]
    assert LocalPortCache.instance().table.held() == held_before


@pytest.fixture
def escaping_name(jupyter_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A kernel name that, read as a path inside a kernel directory, reaches a
    kernel.json outside every kernel directory; and the marker file that spec's
    kernel creates (it exists only if that kernel was launched)."""
    outside = tmp_path_factory.mktemp("outside")
    marker = outside / "launched"
    code = f"open({str(marker)!r}, 'w').close()"
    spec_dir = write_kernel_spec(outside, "evil", [sys.executable, "-c", code, "{connection_file}"])
    kernel_dir = jupyter_path / "kernels"
    kernel_dir.mkdir(exist_ok=True)
    name = os.path.relpath(spec_dir, kernel_dir)
    assert name.startswith("..")
    assert os.sep in name
    return name, marker


def test_a_name_with_a_path_never_reaches_a_spec_outside_the_kernel_dirs(
    escaping_name: tuple[str, Path],
) -> None:
    name, _ = escaping_name
    with pytest.raises(NoSuchKernel, match=r"not '\.' or '\.\.'") as info:
        get_kernel_spec(name)
    assert isinstance(info.value, KeyError)  # jupyter_client's type for a bad or unknown name


def test_dot_dot_alone_is_not_a_kernel_name(jupyter_path: Path) -> None:
    # Letters of the allowed alphabet, but a way out of the kernel directory.
    (jupyter_path / "kernels").mkdir(exist_ok=True)
    (jupyter_path / "kernel.json").write_text('{"argv": ["evil"]}')
    (jupyter_path / "kernels" / "kernel.json").write_text('{"argv": ["evil"]}')
    for name in ("..", "."):
        with pytest.raises(NoSuchKernel):
            get_kernel_spec(name)
    # A dot inside a name is still allowed, as in jupyter_client.
    write_kernel_spec(jupyter_path, "py..3.11", ["ok"])
    assert get_kernel_spec("py..3.11").argv == ["ok"]


def test_manager_refuses_a_name_with_a_path_and_launches_nothing(
    escaping_name: tuple[str, Path],
) -> None:
    name, marker = escaping_name
    km = KernelManager(kernel_name=name)
    held_before = LocalPortCache.instance().table.held()
    try:
        with pytest.raises(NoSuchKernel):
            _ = km.kernel_spec
        with pytest.raises(NoSuchKernel):
            km.start_kernel()
    finally:
        started = km.kernel
        km.shutdown_kernel(now=True)
    assert started is None
    assert not marker.exists()
    assert not km.connection_file or not os.path.exists(km.connection_file)
    assert LocalPortCache.instance().table.held() == held_before
