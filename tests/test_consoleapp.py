"""JupyterConsoleApp as console frontends use it: mixed into a JupyterApp, it starts a
kernel or attaches to an ``--existing`` one (tunnelled over SSH when asked), on
kernel-connect's own manager, client, connection files and tunnels.

One kernel for the module: started by an app, then attached to by the others.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from jupyter_core.application import JupyterApp
from traitlets import Dict

import kernel_connect.consoleapp as consoleapp
from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import read_connection_file, write_connection_file
from kernel_connect.consoleapp import IPythonConsoleApp, JupyterConsoleApp
from kernel_connect.manager import KernelManager
from kernel_connect.ssh.tunnel import close_all_tunnels
from kernel_fixtures import READY_TIMEOUT, result_text, run_code
from sshd import SSHServer

pytestmark = pytest.mark.kernel

# the sshd_server fixture (session-wide; skips where OpenSSH is missing)
pytest_plugins = ["sshd"]


class ConsoleApp(JupyterApp, JupyterConsoleApp):
    """A frontend built as jupyter-console builds one (JupyterApp first, so the
    console's flags, aliases and classes are set again on the app itself)."""

    name = "kc-test-console"
    flags = Dict(consoleapp.flags)
    aliases = Dict(consoleapp.aliases)
    classes: ClassVar[list[type[Any]]] = [*consoleapp.classes]

    def initialize(self, argv: Any = None) -> None:
        JupyterApp.initialize(self, argv=argv or [])  # never pytest's own sys.argv
        if self._dispatching:
            return
        self.build_kernel_argv()
        JupyterConsoleApp.initialize(self, argv)


def attach(runtime_dir: str, argv: list[str], **traits: Any) -> ConsoleApp:
    """An app that attaches to an existing kernel, its client ready."""
    app = ConsoleApp(runtime_dir=runtime_dir, **traits)
    app.initialize(argv)
    app.kernel_client.wait_for_ready(timeout=READY_TIMEOUT)
    return app


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The apps' runtime directory: connection files land (and are searched) here."""
    return str(tmp_path_factory.mktemp("console-runtime"))


@pytest.fixture(scope="module")
def owner(runtime: str) -> Iterator[ConsoleApp]:
    """An app that started its own kernel (the module's kernel)."""
    sigint = signal.getsignal(signal.SIGINT)  # the app hands Ctrl-C back to the default
    app = ConsoleApp(runtime_dir=runtime)
    try:
        app.initialize([])
        app.kernel_client.wait_for_ready(timeout=READY_TIMEOUT)
        yield app
    finally:
        signal.signal(signal.SIGINT, sigint)
        client = getattr(app, "kernel_client", None)
        if client is not None:
            client.stop_channels()
        if app.kernel_manager is not None:
            app.kernel_manager.shutdown_kernel(now=True)


def test_an_app_starts_its_own_kernel_and_takes_its_connection(owner: ConsoleApp) -> None:
    km = owner.kernel_manager
    assert isinstance(km, KernelManager)
    # kernel_name 'python' (the app's default) is the native kernel, as in jupyter_client.
    assert km.kernel_name == "python3" and km.client_factory is BlockingKernelClient
    assert isinstance(owner.kernel_client, BlockingKernelClient)
    # The file is a full path in the runtime directory, named for this process.
    assert owner.connection_file == km.connection_file
    assert owner.connection_file == os.path.join(owner.runtime_dir, f"kernel-{os.getpid()}.json")
    on_disk = read_connection_file(owner.connection_file)
    for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"):
        assert getattr(owner, name) == getattr(km, name) == on_disk[name] != 0
    reply, outputs = run_code(owner.kernel_client, "6 * 7")
    assert reply["content"]["status"] == "ok" and result_text(outputs) == "42"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--existing"], id="newest-file"),
        pytest.param(["--existing", "kernel-"], id="substring"),
        pytest.param(["--existing", "{file}"], id="full-path"),
    ],
)
def test_existing_attaches_to_a_running_kernel(
    owner: ConsoleApp, runtime: str, argv: list[str]
) -> None:
    argv = [a.format(file=owner.connection_file) for a in argv]
    app = attach(runtime, argv)
    try:
        assert app.kernel_manager is None
        assert app.connection_file == owner.connection_file
        client = app.kernel_client
        assert type(client) is BlockingKernelClient and client.parent is app
        assert client.session.key == owner.kernel_manager.session.key
        assert client.shell_port == owner.shell_port
        reply, outputs = run_code(client, "'attached'")
        assert reply["content"]["status"] == "ok" and result_text(outputs) == "'attached'"
    finally:
        app.kernel_client.stop_channels()


def test_existing_that_matches_no_file_ends_the_app(runtime: str) -> None:
    app = ConsoleApp(runtime_dir=runtime)
    with pytest.raises(SystemExit) as exited:
        app.initialize(["--existing", "no-such-kernel-file.json"])
    assert exited.value.code == 1


def test_an_unknown_kernel_name_ends_the_app(runtime: str) -> None:
    sigint = signal.getsignal(signal.SIGINT)
    app = ConsoleApp(runtime_dir=runtime, kernel_name="kc-no-such-kernel")
    try:
        with pytest.raises(SystemExit) as exited:
            app.initialize([])
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert exited.value.code == 1


def test_a_connection_file_given_with_f_is_loaded(tmp_path: Path) -> None:
    cf = tmp_path / "given.json"
    write_connection_file(
        str(cf), ip="127.0.0.2", transport="tcp", shell_port=41001, iopub_port=41002,
        stdin_port=41003, hb_port=41004, control_port=41005, key=b"console-key",
        signature_scheme="hmac-sha512",
    )  # fmt: skip
    app = ConsoleApp(runtime_dir=str(tmp_path))
    JupyterApp.initialize(app, argv=["-f", str(cf)])
    app.init_connection_file()
    assert app.connection_file == str(cf)
    assert (app.ip, app.transport) == ("127.0.0.2", "tcp")
    ports = {name: getattr(app, f"{name}_port") for name in ("shell", "iopub", "stdin", "hb")}
    assert ports == {"shell": 41001, "iopub": 41002, "stdin": 41003, "hb": 41004}
    assert app.control_port == 41005
    assert app.session.key == b"console-key"
    assert app.session.signature_scheme == "hmac-sha512"


def test_a_bare_connection_file_name_goes_into_the_runtime_directory(tmp_path: Path) -> None:
    app = ConsoleApp(runtime_dir=str(tmp_path), connection_file="mine.json")
    JupyterApp.initialize(app, argv=[])
    app.init_connection_file()  # nothing there yet: nothing loaded
    assert app.connection_file == str(tmp_path / "mine.json")
    assert app.ports == [0, 0, 0, 0, 0]
    assert app._new_connection_file().startswith(str(tmp_path / "kernel-"))


@pytest.mark.ssh
def test_ssh_tunnels_an_existing_kernel_and_writes_the_tunnels_file(
    owner: ConsoleApp, runtime: str, sshd_server: SSHServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test server's known_hosts and ssh_config (a user's come from ~/.ssh).
    monkeypatch.setattr(
        consoleapp,
        "tunnel_to_kernel",
        functools.partial(consoleapp.tunnel_to_kernel, **sshd_server.client_options()),
    )
    app = None
    try:
        app = attach(runtime, ["--existing", owner.connection_file, "--ssh", sshd_server.alias])
        root, ext = os.path.splitext(owner.connection_file)
        assert app.connection_file == root + "-ssh" + ext
        with open(app.connection_file) as f:
            tunnel_file = json.load(f)
        local = [app.shell_port, app.iopub_port, app.stdin_port, app.hb_port, app.control_port]
        assert [tunnel_file[f"{c}_port"] for c in ("shell", "iopub", "stdin", "hb", "control")] == (
            local
        )
        assert not set(local) & set(owner.kernel_manager.ports)
        assert tunnel_file["ip"] == app.ip == "127.0.0.1"
        reply, outputs = run_code(app.kernel_client, "'through ssh'")
        assert reply["content"]["status"] == "ok" and result_text(outputs) == "'through ssh'"
    finally:
        if app is not None:
            app.kernel_client.stop_channels()
            app.cleanup_connection_file()
        close_all_tunnels()


# -- the module's names -----------------------------------------------------------------


def test_the_module_has_jupyter_clients_names_flags_and_aliases() -> None:
    import jupyter_client.consoleapp as jc

    for name in (
        "JupyterConsoleApp",
        "IPythonConsoleApp",
        "ConnectionFileMixin",
        "flags",
        "aliases",
        "app_flags",
        "app_aliases",
        "classes",
    ):
        assert hasattr(consoleapp, name), name
    assert consoleapp.flags.keys() == jc.flags.keys()
    assert consoleapp.aliases == jc.aliases
    assert consoleapp.app_aliases == jc.app_aliases
    assert consoleapp.app_flags.keys() == jc.app_flags.keys()
    assert [c.__name__ for c in consoleapp.classes] == [c.__name__ for c in jc.classes]
    theirs = set(jc.JupyterConsoleApp.class_trait_names())
    assert theirs <= set(JupyterConsoleApp.class_trait_names())
    for method in (
        "build_kernel_argv",
        "init_connection_file",
        "init_ssh",
        "init_kernel_manager",
        "init_kernel_client",
        "initialize",
    ):
        assert callable(getattr(JupyterConsoleApp, method)), method
    with pytest.warns(UserWarning, match="deprecated. Use JupyterConsoleApp"):
        IPythonConsoleApp()


def test_importing_the_module_never_imports_jupyter_client() -> None:
    code = "import sys, kernel_connect.consoleapp; print('jupyter_client' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"
