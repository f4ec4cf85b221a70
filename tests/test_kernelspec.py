"""Kernel specs on the Jupyter path, the native python3 fallback, argv substitution,
and jupyter_client 8.10's kernelspec API side by side with jupyter_client's own:
KernelSpec, KernelSpecManager (find, get, get_all, install, remove), the provisioner
checks, and the atomic, symlink-safe install."""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipykernel.kernelspec as ipk_kernelspec
import jupyter_client.kernelspec as jc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_core import paths as jupyter_paths
from traitlets import Unicode
from traitlets.config import Config, LoggingConfigurable

import kernel_connect
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
    # As jupyter_client: the fallback lives in ipykernel's resources (its logos).
    assert find_kernel_specs() == {"python3": ipk_kernelspec.RESOURCES}
    assert spec.resource_dir == ipk_kernelspec.RESOURCES


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


# -- jupyter_client 8.10's kernelspec API, side by side with jupyter_client ------
#
# New names are reached through the module (``kernelspec.KernelSpecManager``), so
# each test fails on its own where a name is missing.


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every directory a kernel spec is looked for in or installed to, private:
    JUPYTER_PATH (``path``), the user data dir (``data``), the IPython dir
    (``ipython``) and the first system directory (``system``), for both
    kernel-connect and jupyter_client. The environment's own ``share/jupyter``
    (with ipykernel's python3 spec) stays on the path, for both alike."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("JUPYTER_DEFAULT_PROVISIONER_NAME", raising=False)
    # One list object, read by jupyter_core's jupyter_path and by both install paths.
    system = jupyter_paths.SYSTEM_JUPYTER_PATH
    saved = system[0]
    system[0] = str(tmp_path / "system")
    try:
        yield tmp_path
    finally:
        system[0] = saved


@pytest.fixture
def fresh_provisioner_factory() -> Iterator[None]:
    """jupyter_client's provisioner factory (a singleton that reads its default
    provisioner once) made anew for one test, and again after it."""
    KernelProvisionerFactory.clear_instance()
    yield
    KernelProvisionerFactory.clear_instance()


def _tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """``{relative path: (kind and permission bits, content or link target)}`` under root."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st_ = path.lstat()
            mode = oct(stat.S_IMODE(st_.st_mode))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = (f"dir {mode}", b"")
            else:
                out[rel] = (f"file {mode}", path.read_bytes())
    return out


def _source_spec(root: Path, name: str = "MySpec", argv: list[str] | None = None) -> Path:
    """A kernel spec directory to install: kernel.json, a logo, a sub-directory,
    an executable helper."""
    src = root / name
    (src / "sub").mkdir(parents=True)
    spec = {"argv": argv or ["my-kernel", "-f", "{connection_file}"], "display_name": name}
    (src / "kernel.json").write_text(json.dumps(spec))
    (src / "logo-32x32.png").write_bytes(b"\x89PNG fake")
    (src / "sub" / "helper.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "helper.sh").chmod(0o755)
    return src


def _kernels_entries(kernel_dir: Path) -> list[str]:
    return sorted(os.listdir(kernel_dir)) if kernel_dir.exists() else []


# KernelSpec


def test_kernel_spec_reads_and_serialises_as_jupyter_client(tmp_path: Path) -> None:
    spec_dir = write_kernel_spec(
        tmp_path,
        "full",
        ["k", "-f", "{connection_file}"],
        env={"A": "1"},
        interrupt_mode="Message",  # jupyter_client's enum is case-insensitive
        metadata={"debugger": True, "supported_encryption": ["curve"]},
        kernel_protocol_version="5.5",
        mimetype="text/x-k",
        unknown_key="ignored",
    )
    ours = kernelspec.KernelSpec.from_resource_dir(str(spec_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # traitlets on unknown_key
        theirs = jc.KernelSpec.from_resource_dir(str(spec_dir))
    assert ours.to_dict() == theirs.to_dict()
    assert ours.to_json() == theirs.to_json()
    assert list(ours.to_dict()) == list(theirs.to_dict())
    for trait in ("resource_dir", "argv", "display_name", "language", "env", "mimetype"):
        assert getattr(ours, trait) == getattr(theirs, trait), trait
    assert ours.interrupt_mode == theirs.interrupt_mode == "message"
    assert ours.metadata == theirs.metadata
    assert set(jc.KernelSpec.class_trait_names()) <= set(kernelspec.KernelSpec.class_trait_names())
    # Built from keywords like jupyter_client's; defaults alike.
    bare = kernelspec.KernelSpec(argv=["x"])
    assert bare.to_dict() == jc.KernelSpec(argv=["x"]).to_dict()


def test_kernel_spec_class_is_configurable_and_reads_its_own_fields(jupyter_env: Path) -> None:
    class OurSpec(kernelspec.KernelSpec):
        cluster = Unicode()

    class TheirSpec(jc.KernelSpec):
        cluster = Unicode()

    write_kernel_spec(jupyter_env / "path", "remote", ["k"], cluster="gpu-a")
    ours = kernelspec.KernelSpecManager(kernel_spec_class=OurSpec).get_kernel_spec("remote")
    theirs = jc.KernelSpecManager(kernel_spec_class=TheirSpec).get_kernel_spec("remote")
    assert isinstance(ours, OurSpec)
    assert ours.cluster == theirs.cluster == "gpu-a"
    config = Config({"KernelSpecManager": {"kernel_spec_class": OurSpec}})
    assert kernelspec.KernelSpecManager(config=config).kernel_spec_class is OurSpec


# KernelSpecManager: traits


def test_manager_traits_and_defaults_are_jupyter_clients(jupyter_env: Path) -> None:
    ours, theirs = kernelspec.KernelSpecManager(), jc.KernelSpecManager()
    assert isinstance(ours, LoggingConfigurable)
    assert ours.data_dir == theirs.data_dir == str(jupyter_env / "data")
    assert ours.user_kernel_dir == theirs.user_kernel_dir == str(jupyter_env / "data" / "kernels")
    assert ours.kernel_dirs == theirs.kernel_dirs
    assert ours.kernel_dirs[0] == str(jupyter_env / "path" / "kernels")
    assert ours.kernel_dirs[-1] == str(jupyter_env / "ipython" / "kernels")
    assert ours.ensure_native_kernel is theirs.ensure_native_kernel is True
    assert ours.allowed_kernelspecs == theirs.allowed_kernelspecs == set()
    configurable = {n for n in kernelspec.KernelSpecManager.class_traits(config=True)}
    assert configurable == set(jc.KernelSpecManager.class_traits(config=True))
    assert set(jc.KernelSpecManager.class_trait_names()) <= set(
        kernelspec.KernelSpecManager.class_trait_names()
    )
    # data_dir moves the user kernel directory, as in jupyter_client.
    moved = kernelspec.KernelSpecManager(data_dir=str(jupyter_env / "elsewhere"))
    assert moved.user_kernel_dir == str(jupyter_env / "elsewhere" / "kernels")


def test_ipython_dir_is_not_created(jupyter_env: Path) -> None:
    assert kernelspec.KernelSpecManager().kernel_dirs[-1] == str(
        jupyter_env / "ipython" / "kernels"
    )
    assert not (jupyter_env / "ipython").exists()  # jupyter_client's lookup creates it


def test_whitelist_is_the_deprecated_allowed_kernelspecs(
    jupyter_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = []
    for cls in (kernelspec.KernelSpecManager, jc.KernelSpecManager):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ksm = cls()
            ksm.whitelist = {"a", "b"}
        assert ksm.allowed_kernelspecs == {"a", "b"}
        messages.append([r.getMessage() for r in caplog.records])
        # The same value under both names (config kept for old versions): no warning.
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            both = {"whitelist": {"c"}, "allowed_kernelspecs": {"c"}}
            cls(config=Config({"KernelSpecManager": both}))
        assert not caplog.records
    assert messages[0] == messages[1]
    assert messages[0] == [
        "KernelSpecManager.whitelist is deprecated in jupyter_client 7.0, "
        "use KernelSpecManager.allowed_kernelspecs instead"
    ]


# KernelSpecManager: finding and reading


def _populate(root: Path) -> None:
    """Specs on JUPYTER_PATH (two entries), in the data dir and in the system dir."""
    first, second = root / "path", root / "path2"
    write_kernel_spec(first, "Alpha", ["alpha"])
    write_kernel_spec(first, "shared", ["from-path"])
    write_kernel_spec(second, "shared", ["from-path2"])
    write_kernel_spec(second, "beta.2_x-y", ["beta"], metadata={"m": 1})
    write_kernel_spec(root / "data", "user-spec", ["user"])
    write_kernel_spec(root / "system", "sys-spec", ["sys"], interrupt_mode="message")
    (first / "kernels" / "no-json").mkdir()
    (first / "kernels" / "a-file").write_text("{}")


def test_find_kernel_specs_matches_jupyter_client(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(jupyter_env)
    path = os.pathsep.join([str(jupyter_env / "path"), str(jupyter_env / "path2")])
    monkeypatch.setenv("JUPYTER_PATH", path)
    ours = kernelspec.KernelSpecManager().find_kernel_specs()
    assert ours == jc.KernelSpecManager().find_kernel_specs()
    assert ours == jc.find_kernel_specs() == kernelspec.find_kernel_specs()
    assert ours["alpha"] == str(jupyter_env / "path" / "kernels" / "Alpha")
    assert ours["shared"] == str(jupyter_env / "path" / "kernels" / "shared")
    assert {"beta.2_x-y", "user-spec", "sys-spec", "python3"} <= set(ours)
    assert "no-json" not in ours and "a-file" not in ours
    # The allow list filters; ensure_native_kernel=False leaves the fallback out.
    allowed = {"allowed_kernelspecs": {"alpha", "sys-spec"}}
    assert (
        kernelspec.KernelSpecManager(**allowed).find_kernel_specs()
        == jc.KernelSpecManager(**allowed).find_kernel_specs()
        == {"alpha": ours["alpha"], "sys-spec": ours["sys-spec"]}
    )
    only = {"kernel_dirs": [str(jupyter_env / "path" / "kernels")]}
    for native in (True, False):
        found = kernelspec.KernelSpecManager(ensure_native_kernel=native, **only)
        assert found.find_kernel_specs() == (
            jc.KernelSpecManager(ensure_native_kernel=native, **only).find_kernel_specs()
        )
        assert ("python3" in found.find_kernel_specs()) is native


def test_get_kernel_spec_matches_jupyter_client(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(jupyter_env)
    path = os.pathsep.join([str(jupyter_env / "path"), str(jupyter_env / "path2")])
    monkeypatch.setenv("JUPYTER_PATH", path)
    ours, theirs = kernelspec.KernelSpecManager(), jc.KernelSpecManager()
    for name in ("alpha", "ALPHA", "Shared", "beta.2_x-y", "user-spec", "sys-spec", "python3"):
        mine, jcs = ours.get_kernel_spec(name), theirs.get_kernel_spec(name)
        assert (mine.to_dict(), mine.resource_dir) == (jcs.to_dict(), jcs.resource_dir), name
        assert kernelspec.get_kernel_spec(name).to_dict() == jcs.to_dict()
    assert ours.get_kernel_spec("Alpha").name == "alpha"  # the name it was found under
    with pytest.raises(KeyError):
        theirs.get_kernel_spec("missing")
    with pytest.raises(kernelspec.NoSuchKernel) as info:
        ours.get_kernel_spec("missing")
    assert isinstance(info.value, KeyError)
    assert info.value.name == "missing"


def test_native_fallback_is_ipykernels_spec_as_in_jupyter_client(jupyter_env: Path) -> None:
    empty = {"kernel_dirs": [str(jupyter_env / "nothing")]}
    ours, theirs = kernelspec.KernelSpecManager(**empty), jc.KernelSpecManager(**empty)
    assert ours.find_kernel_specs() == theirs.find_kernel_specs()
    assert ours.find_kernel_specs() == {"python3": ipk_kernelspec.RESOURCES}
    mine, jcs = ours.get_kernel_spec("python3"), theirs.get_kernel_spec("python3")
    assert (
        mine.to_dict()
        == jcs.to_dict()
        == {**ipk_kernelspec.get_kernel_dict(), "env": {}} | {"interrupt_mode": "signal"}
    )
    assert mine.resource_dir == jcs.resource_dir == ipk_kernelspec.RESOURCES
    # As in jupyter_client, the fallback is served even when left out of the list.
    hidden = kernelspec.KernelSpecManager(ensure_native_kernel=False, **empty)
    assert hidden.get_kernel_spec("python3").to_dict() == jcs.to_dict()


def test_get_all_specs_matches_jupyter_client(
    jupyter_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _populate(jupyter_env)
    broken = jupyter_env / "path" / "kernels" / "broken"
    broken.mkdir()
    (broken / "kernel.json").write_text("{not json")
    caplog.set_level(logging.WARNING)
    ours = kernelspec.KernelSpecManager().get_all_specs()
    ours_warnings = [r.getMessage() for r in caplog.records]
    caplog.clear()
    theirs = jc.KernelSpecManager().get_all_specs()
    assert ours == theirs
    assert "broken" not in ours and "alpha" in ours
    assert ours["alpha"] == {
        "resource_dir": str(jupyter_env / "path" / "kernels" / "Alpha"),
        "spec": kernelspec.KernelSpecManager().get_kernel_spec("alpha").to_dict(),
    }
    assert ours_warnings == ["Error loading kernelspec 'broken'"]
    assert [r.getMessage() for r in caplog.records] == ours_warnings


# KernelSpecManager: kernel provisioners named by a spec


def test_spec_whose_provisioner_is_not_installed_is_no_such_kernel(
    jupyter_env: Path, fresh_provisioner_factory: None
) -> None:
    kernels = jupyter_env / "path"
    missing = {"kernel_provisioner": {"provisioner_name": "no-such-provisioner-kc"}}
    ours_prov = {"kernel_provisioner": {"provisioner_name": "kernel-connect-provisioner"}}
    write_kernel_spec(kernels, "needs-missing", ["k"], metadata=missing)
    write_kernel_spec(kernels, "needs-kc", ["k"], metadata=ours_prov)
    write_kernel_spec(kernels, "plain", ["k"])
    with pytest.raises(NoSuchKernel, match="no-such-provisioner-kc"):
        get_kernel_spec("needs-missing")  # the module function (what KernelManager uses)
    ours, theirs = kernelspec.KernelSpecManager(), jc.KernelSpecManager()
    with pytest.raises(KeyError):
        theirs.get_kernel_spec("needs-missing")
    with pytest.raises(kernelspec.NoSuchKernel, match="no-such-provisioner-kc"):
        ours.get_kernel_spec("needs-missing")
    for name in ("needs-kc", "plain"):
        assert ours.get_kernel_spec(name).to_dict() == theirs.get_kernel_spec(name).to_dict()
    # Still listed, but left out of get_all_specs, in both.
    assert "needs-missing" in ours.find_kernel_specs()
    assert "needs-missing" in theirs.find_kernel_specs()
    assert set(ours.get_all_specs()) == set(theirs.get_all_specs())
    assert "needs-missing" not in ours.get_all_specs()


@pytest.mark.parametrize(
    ("default", "available"),
    [("no-such-provisioner-kc", False), ("kernel-connect-provisioner", True)],
)
def test_default_provisioner_from_environment_is_checked(
    jupyter_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_provisioner_factory: None,
    default: str,
    available: bool,
) -> None:
    write_kernel_spec(jupyter_env / "path", "plain", ["k"])
    monkeypatch.setenv("JUPYTER_DEFAULT_PROVISIONER_NAME", default)
    for ksm in (kernelspec.KernelSpecManager(), jc.KernelSpecManager()):
        if available:
            assert ksm.get_kernel_spec("plain").argv == ["k"]
        else:
            with pytest.raises(KeyError):
                ksm.get_kernel_spec("plain")


def test_default_provisioner_from_the_parents_config_is_checked(
    jupyter_env: Path, fresh_provisioner_factory: None
) -> None:
    write_kernel_spec(jupyter_env / "path", "plain", ["k"])
    config = Config({"KernelProvisionerFactory": {"default_provisioner_name": "nope-kc"}})
    parent = LoggingConfigurable(config=config)
    for cls in (kernelspec.KernelSpecManager, jc.KernelSpecManager):
        with pytest.raises(KeyError):
            cls(parent=parent).get_kernel_spec("plain")


# KernelSpecManager: removing


def test_remove_kernel_spec(jupyter_env: Path) -> None:
    spec_dir = write_kernel_spec(jupyter_env / "data", "gone", ["k"])
    (spec_dir / "logo-64x64.png").write_bytes(b"png")
    ksm = kernelspec.KernelSpecManager()
    assert ksm.remove_kernel_spec("gone") == str(spec_dir)
    assert not spec_dir.exists()
    assert _kernels_entries(jupyter_env / "data" / "kernels") == []  # no staging left
    # Missing, or only the native fallback: KeyError, as jupyter_client's.
    for name in ("gone", "python3-not-here"):
        with pytest.raises(KeyError):
            jc.KernelSpecManager().remove_kernel_spec(name)
        with pytest.raises(kernelspec.NoSuchKernel):
            ksm.remove_kernel_spec(name)
    only_native = kernelspec.KernelSpecManager(kernel_dirs=[str(jupyter_env / "none")])
    with pytest.raises(KeyError):
        only_native.remove_kernel_spec("python3")


def test_remove_a_symlinked_spec_removes_the_link_only(jupyter_env: Path) -> None:
    target = _source_spec(jupyter_env / "outside", "linked")
    before = _tree(target)
    kernels = jupyter_env / "data" / "kernels"
    kernels.mkdir(parents=True)
    (kernels / "linked").symlink_to(target)
    assert kernelspec.KernelSpecManager().remove_kernel_spec("linked") == str(kernels / "linked")
    assert not os.path.lexists(kernels / "linked")
    assert _tree(target) == before


def test_remove_refuses_a_name_with_a_path(jupyter_env: Path) -> None:
    victim = _source_spec(jupyter_env / "data", "kernels")  # data/kernels/kernel.json exists
    before = _tree(victim)
    for name in ("..", ".", "../kernels", "a/b"):
        with pytest.raises(kernelspec.NoSuchKernel):
            kernelspec.KernelSpecManager().remove_kernel_spec(name)
    assert _tree(victim) == before


# KernelSpecManager: installing


@pytest.mark.parametrize("where", ["user", "prefix", "system"])
def test_install_layout_matches_jupyter_client(
    jupyter_env: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = _source_spec(jupyter_env / "src")
    results = []
    for side, cls in (("ours", kernelspec.KernelSpecManager), ("jc", jc.KernelSpecManager)):
        kwargs: dict[str, Any] = {}
        if where == "user":
            ksm = cls(data_dir=str(jupyter_env / side))
            kwargs["user"] = True
        else:
            ksm = cls()
            if where == "prefix":
                kwargs["prefix"] = str(jupyter_env / side)
        if where == "system":
            shutil.rmtree(jupyter_env / "system", ignore_errors=True)
        # Trailing separator and capitals: the name is the lower-cased basename.
        dest = ksm.install_kernel_spec(str(src) + os.sep, **kwargs)
        results.append((dest.replace(side, "SIDE"), _tree(Path(dest))))
    assert results[0] == results[1]
    dest, tree = results[0]
    assert dest.endswith(os.path.join("kernels", "myspec"))
    assert tree == _tree(src)
    expected_root = {
        "user": jupyter_env / "SIDE" / "kernels",
        "prefix": jupyter_env / "SIDE" / "share" / "jupyter" / "kernels",
        "system": jupyter_env / "system" / "kernels",
    }[where]
    assert dest == str(expected_root / "myspec")


def test_installed_spec_is_found(jupyter_env: Path) -> None:
    src = _source_spec(jupyter_env / "src", argv=["found-me"])
    dest = kernelspec.install_kernel_spec(str(src), "Found", user=True, replace=None)
    assert dest == str(jupyter_env / "data" / "kernels" / "found")
    assert kernelspec.KernelSpecManager().get_kernel_spec("found").argv == ["found-me"]
    assert jc.KernelSpecManager().get_kernel_spec("found").argv == ["found-me"]
    assert _kernels_entries(jupyter_env / "data" / "kernels") == ["found"]


@pytest.mark.parametrize("kernel_name", ["bad name", "a/b", "caf\u00e9", "x\\y"])
def test_install_refuses_bad_names_like_jupyter_client(jupyter_env: Path, kernel_name: str) -> None:
    src = _source_spec(jupyter_env / "src")
    for ksm in (kernelspec.KernelSpecManager(), jc.KernelSpecManager()):
        with pytest.raises(ValueError, match="Invalid kernel name"):
            ksm.install_kernel_spec(str(src), kernel_name, user=True)
    assert not (jupyter_env / "data").exists()


@pytest.mark.parametrize(
    ("source", "kernel_name"), [(".", None), ("..", None), ("src", ".."), ("src", ".")]
)
def test_install_refuses_dot_names_before_touching_anything(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch, source: str, kernel_name: str | None
) -> None:
    # jupyter_client accepts these: '..' would replace the data directory's parent
    # of 'kernels' (rmtree, then copy); it is not run here for that reason.
    _source_spec(jupyter_env, "src")
    user_dir = jupyter_env / "data" / "kernels"
    user_dir.mkdir(parents=True)
    (user_dir / "keep.txt").write_text("keep")
    before = _tree(jupyter_env / "data")
    monkeypatch.chdir(jupyter_env)
    with pytest.raises(ValueError, match="Invalid kernel name"):
        kernelspec.KernelSpecManager().install_kernel_spec(source, kernel_name, user=True)
    assert _tree(jupyter_env / "data") == before


def test_install_argument_errors_and_warnings_match_jupyter_client(jupyter_env: Path) -> None:
    src = _source_spec(jupyter_env / "src")
    for module in (kernelspec, jc):
        ksm = module.KernelSpecManager()
        with pytest.raises(ValueError, match="Can't specify both user and prefix"):
            ksm.install_kernel_spec(str(src), user=True, prefix=str(jupyter_env / "p"))
        with pytest.warns(DeprecationWarning, match="replace is ignored"):
            ksm.install_kernel_spec(str(src), user=True, replace=True)
        # jupyter_client's module function passes replace=False: it always warns.
        with pytest.warns(DeprecationWarning, match="replace is ignored"):
            module.install_kernel_spec(str(src), user=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ksm.install_kernel_spec(str(src), user=True)
        with pytest.raises(FileNotFoundError):
            ksm.install_kernel_spec(str(jupyter_env / "no-such-dir"), user=True)
    assert not (jupyter_env / "data" / "kernels" / "no-such-dir").exists()
    assert _kernels_entries(jupyter_env / "data" / "kernels") == ["myspec"]


def test_install_over_a_file_is_refused_like_jupyter_client(jupyter_env: Path) -> None:
    src = _source_spec(jupyter_env / "src")
    kernels = jupyter_env / "data" / "kernels"
    kernels.mkdir(parents=True)
    (kernels / "myspec").write_text("not a spec")
    for ksm in (kernelspec.KernelSpecManager(), jc.KernelSpecManager()):
        with pytest.raises(FileExistsError):
            ksm.install_kernel_spec(str(src), user=True)
    assert (kernels / "myspec").read_text() == "not a spec"
    assert _kernels_entries(kernels) == ["myspec"]


def test_missing_source_creates_nothing(jupyter_env: Path) -> None:
    with pytest.raises(FileNotFoundError):
        kernelspec.KernelSpecManager().install_kernel_spec(
            str(jupyter_env / "no-such-spec"), user=True
        )
    assert not (jupyter_env / "data").exists()


@pytest.mark.parametrize("swap", [True, False], ids=["atomic-swap", "rename-aside"])
def test_reinstall_replaces_the_whole_spec(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:  # where the OS has no atomic swap of two paths
        monkeypatch.setattr(kernelspec, "_exchange", lambda a, b: False)
    old = _source_spec(jupyter_env / "old", argv=["old"])
    (old / "only-in-old.txt").write_text("old")
    new = _source_spec(jupyter_env / "new", argv=["new"])
    ksm = kernelspec.KernelSpecManager()
    dest = Path(ksm.install_kernel_spec(str(old), "spec", user=True))
    assert ksm.install_kernel_spec(str(new), "spec", user=True) == str(dest)
    assert _tree(dest) == _tree(new)
    assert _kernels_entries(dest.parent) == ["spec"]
    # Reinstalling from the installed directory itself keeps it whole
    # (jupyter_client deletes it before copying from it).
    assert ksm.install_kernel_spec(str(dest), user=True) == str(dest)
    assert _tree(dest) == _tree(new)
    assert _kernels_entries(dest.parent) == ["spec"]


_REAL_COPY2 = shutil.copy2


def _watch_copies(
    monkeypatch: pytest.MonkeyPatch, check: Callable[[int], None]
) -> list[tuple[str, str]]:
    """Make every file copy of an install call ``check(number of files copied)``."""
    copied: list[tuple[str, str]] = []

    def copy2(src: str, dst: str, **kw: Any) -> Any:
        result = _REAL_COPY2(src, dst, **kw)
        copied.append((src, dst))
        check(len(copied))
        return result

    monkeypatch.setattr(shutil, "copy2", copy2)
    return copied


@pytest.mark.parametrize("swap", [True, False], ids=["atomic-swap", "rename-aside"])
def test_a_reader_never_sees_a_half_installed_spec(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:
        monkeypatch.setattr(kernelspec, "_exchange", lambda a, b: False)
    old = _source_spec(jupyter_env / "old", argv=["old"])
    new = _source_spec(jupyter_env / "new", argv=["new"])
    (new / "more.txt").write_text("more")
    dest = jupyter_env / "data" / "kernels" / "spec"
    old_tree = _tree(old)

    def fresh(_: int) -> None:
        # A first install, half done: nothing to see, for either reader.
        assert not dest.exists()
        assert "spec" not in kernelspec.KernelSpecManager().find_kernel_specs()
        assert set(jc.KernelSpecManager().find_kernel_specs()) == {"python3"}

    copied = _watch_copies(monkeypatch, fresh)
    kernelspec.install_kernel_spec(str(old), "spec", user=True, replace=None)
    assert len(copied) == 3

    def replacing(_: int) -> None:
        # A reinstall, half done: the old spec, whole, and nothing else.
        assert _tree(dest) == old_tree
        assert kernelspec.get_kernel_spec("spec").argv == ["old"]
        assert set(jc.KernelSpecManager().find_kernel_specs()) == {"python3", "spec"}

    copied = _watch_copies(monkeypatch, replacing)
    kernelspec.install_kernel_spec(str(new), "spec", user=True, replace=None)
    assert len(copied) == 4
    assert _tree(dest) == _tree(new)


def test_a_failed_copy_leaves_the_old_spec_and_nothing_else(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _source_spec(jupyter_env / "old", argv=["old"])
    new = _source_spec(jupyter_env / "new", argv=["new"])
    dest = Path(kernelspec.install_kernel_spec(str(old), "spec", user=True, replace=None))

    def fail_second(n: int) -> None:
        if n == 2:
            raise OSError(28, "No space left on device")

    _watch_copies(monkeypatch, fail_second)
    with pytest.raises(shutil.Error):
        kernelspec.install_kernel_spec(str(new), "spec", user=True, replace=None)
    assert _tree(dest) == _tree(old)
    assert _kernels_entries(dest.parent) == ["spec"]


@pytest.mark.parametrize("swap", [True, False], ids=["atomic-swap", "rename-aside"])
def test_a_symlink_at_the_destination_is_replaced_never_followed(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:
        monkeypatch.setattr(kernelspec, "_exchange", lambda a, b: False)
    outside = _source_spec(jupyter_env / "outside", "precious", argv=["precious"])
    (outside / "data.bin").write_bytes(b"keep me")
    before = _tree(outside)
    kernels = jupyter_env / "data" / "kernels"
    kernels.mkdir(parents=True)
    (kernels / "spec").symlink_to(outside, target_is_directory=True)
    (kernels / "dangling").symlink_to(jupyter_env / "nowhere")
    new = _source_spec(jupyter_env / "new", argv=["new"])
    ksm = kernelspec.KernelSpecManager()
    for name in ("spec", "dangling"):
        dest = Path(ksm.install_kernel_spec(str(new), name, user=True))
        assert not dest.is_symlink()
        assert _tree(dest) == _tree(new)
    assert _tree(outside) == before
    assert not (jupyter_env / "nowhere").exists()
    assert _kernels_entries(kernels) == ["dangling", "spec"]


def test_a_symlink_inside_a_replaced_spec_is_not_followed(jupyter_env: Path) -> None:
    outside = jupyter_env / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    kernels = jupyter_env / "data" / "kernels"
    installed = write_kernel_spec(jupyter_env / "data", "spec", ["old"])
    (installed / "link-to-outside").symlink_to(outside, target_is_directory=True)
    new = _source_spec(jupyter_env / "new", argv=["new"])
    kernelspec.KernelSpecManager().install_kernel_spec(str(new), "spec", user=True)
    assert (outside / "precious.txt").read_text() == "keep me"
    assert _tree(kernels / "spec") == _tree(new)


def test_concurrent_installs_and_reads_see_only_whole_specs(jupyter_env: Path) -> None:
    sources = [_source_spec(jupyter_env / f"src{i}", argv=[f"v{i}"]) for i in range(2)]
    ksm = kernelspec.KernelSpecManager()
    ksm.install_kernel_spec(str(sources[0]), "spec", user=True)
    done = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                seen.add(ksm.get_kernel_spec("spec").argv[0])
        except BaseException as e:  # reported below
            errors.append(e)

    def install(source: Path) -> None:
        try:
            for _ in range(40):
                ksm.install_kernel_spec(str(source), "spec", user=True)
        except BaseException as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=install, args=(s,)) for s in sources]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert errors == []
    assert seen <= {"v0", "v1"}
    assert _kernels_entries(jupyter_env / "data" / "kernels") == ["spec"]
    assert _tree(jupyter_env / "data" / "kernels" / "spec") in (_tree(s) for s in sources)


def test_install_native_kernel_spec_matches_jupyter_client(jupyter_env: Path) -> None:
    trees = []
    for side, module in (("ours", kernelspec), ("jc", jc)):
        ksm = module.KernelSpecManager(data_dir=str(jupyter_env / side))
        with pytest.warns(UserWarning, match="install_native_kernel_spec is deprecated"):
            assert ksm.install_native_kernel_spec(user=True) is None
        trees.append(_tree(jupyter_env / side / "kernels"))
    assert trees[0] == trees[1]
    assert set(trees[0]) >= {"python3", "python3/kernel.json", "python3/logo-64x64.png"}
    # The module function installs to the user data directory the same way.
    with pytest.warns(UserWarning, match="deprecated"):
        kernelspec.install_native_kernel_spec(user=True)
    assert _tree(jupyter_env / "data" / "kernels") == trees[0]
    # ipykernel's own installer takes this manager as it takes jupyter_client's.
    ipk_kernelspec.install(kernelspec.KernelSpecManager(), user=True, kernel_name="py-kc")
    assert kernelspec.get_kernel_spec("py-kc").language == "python"


# Module functions, exports, signatures, name rules


def test_module_functions_are_a_default_manager(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    class Recording(kernelspec.KernelSpecManager):
        def find_kernel_specs(self) -> dict[str, str]:
            calls.append("find")
            return super().find_kernel_specs()

        def get_kernel_spec(self, kernel_name: str) -> kernelspec.KernelSpec:
            calls.append("get")
            return super().get_kernel_spec(kernel_name)

        def install_kernel_spec(self, *args: Any, **kwargs: Any) -> str:
            calls.append("install")
            return super().install_kernel_spec(*args, **kwargs)

        def install_native_kernel_spec(self, user: bool = False) -> None:
            calls.append("native")

    monkeypatch.setattr(kernelspec, "KernelSpecManager", Recording)
    src = _source_spec(jupyter_env / "src")
    kernelspec.find_kernel_specs()
    kernelspec.get_kernel_spec("python3")
    kernelspec.install_kernel_spec(str(src), user=True, replace=None)
    kernelspec.install_native_kernel_spec(user=True)
    assert calls == ["find", "get", "install", "native"]


def test_new_names_are_exported() -> None:
    for name in ("KernelSpecManager", "install_kernel_spec", "install_native_kernel_spec"):
        assert name in kernel_connect.__all__
        assert getattr(kernel_connect, name) is getattr(kernelspec, name)


def test_signatures_are_jupyter_clients() -> None:
    def params(func: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    for name in (
        "find_kernel_specs",
        "get_kernel_spec",
        "install_kernel_spec",
        "install_native_kernel_spec",
    ):
        assert params(getattr(kernelspec, name)) == params(getattr(jc, name)), name
    for name in (
        "find_kernel_specs",
        "get_kernel_spec",
        "get_all_specs",
        "remove_kernel_spec",
        "install_kernel_spec",
        "install_native_kernel_spec",
    ):
        ours = getattr(kernelspec.KernelSpecManager, name)
        assert params(ours) == params(getattr(jc.KernelSpecManager, name)), name
    for name in ("from_resource_dir", "to_dict", "to_json"):
        ours = getattr(kernelspec.KernelSpec, name)
        assert params(ours) == params(getattr(jc.KernelSpec, name)), name
    assert kernelspec.NATIVE_KERNEL_NAME == jc.NATIVE_KERNEL_NAME
    assert issubclass(kernelspec.NoSuchKernel, KeyError)


def test_manager_refuses_names_with_paths_and_skips_them_in_listings(
    jupyter_path: Path, escaping_name: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    name, _ = escaping_name
    ksm = kernelspec.KernelSpecManager()
    for bad in (name, "..", ".", ""):
        with pytest.raises(kernelspec.NoSuchKernel):
            ksm.get_kernel_spec(bad)
    # A spec directory whose name is no kernel name is left out, with a warning
    # (jupyter_client lists it, with a warning of its own).
    bad_dir = Path(ksm.kernel_dirs[0], "has space")
    bad_dir.mkdir(parents=True)
    (bad_dir / "kernel.json").write_text('{"argv": ["k"]}')
    with caplog.at_level(logging.WARNING):
        assert "has space" not in ksm.find_kernel_specs()
    assert any("has space" in r.getMessage() for r in caplog.records)


def test_native_fallback_without_an_importable_ipykernel_is_no_such_kernel(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ipykernel.kernelspec", None)  # import fails
    ksm = kernelspec.KernelSpecManager(kernel_dirs=[str(jupyter_env / "nothing")])
    with pytest.raises(kernelspec.NoSuchKernel, match="ipykernel cannot be imported"):
        ksm.get_kernel_spec("python3")


def test_without_a_swap_a_failed_move_puts_the_old_spec_back(
    jupyter_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernelspec, "_exchange", lambda a, b: False)
    old = _source_spec(jupyter_env / "old", argv=["old"])
    new = _source_spec(jupyter_env / "new", argv=["new"])
    dest = Path(kernelspec.install_kernel_spec(str(old), "spec", user=True, replace=None))
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if dst == str(dest) and src.endswith(os.sep + "new"):
            raise PermissionError(13, "Permission denied", dst)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PermissionError):
        kernelspec.install_kernel_spec(str(new), "spec", user=True, replace=None)
    assert _tree(dest) == _tree(old)
    assert _kernels_entries(dest.parent) == ["spec"]


def test_a_kernel_manager_finds_its_spec_through_its_kernel_spec_manager(tmp_path: Path) -> None:
    """km.kernel_spec_manager (jupyter_client's trait): a manager of the user's
    choosing decides which spec a kernel name means."""
    from kernel_connect.kernelspec import KernelSpecManager
    from kernel_connect.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "mine"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        '{"argv": ["python", "-c", "pass", "{connection_file}"], "display_name": "Mine", '
        '"language": "python"}'
    )
    km = KernelManager(kernel_name="mine")
    assert isinstance(km.kernel_spec_manager, KernelSpecManager)
    km.kernel_spec_manager = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    assert km.kernel_spec.display_name == "Mine"
    assert km.kernel_spec.resource_dir == str(spec_dir)
