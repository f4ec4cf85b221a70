"""JupyterConsoleApp: what console frontends share, under jupyter_client's module name.

The mixin that jupyter-console and qtconsole put beside ``JupyterApp``: it finds
or writes the connection file, tunnels the kernel's ports over SSH when asked,
starts a kernel (or attaches to an ``--existing`` one) and opens a client. Its
names, traits, flags and aliases are jupyter_client's (``jupyter_client.consoleapp``),
so a frontend moves over by changing the import; underneath are kernel-connect's
KernelManager, BlockingKernelClient, connection files and one-connection tunnels.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import uuid
import warnings
from typing import TYPE_CHECKING, Any, NoReturn

from jupyter_core.application import base_aliases, base_flags
from traitlets import CBool, CUnicode, Dict, List, Type, Unicode, default
from traitlets.config.application import boolean_flag

from kernel_connect.client import BlockingKernelClient
from kernel_connect.connect import (
    KernelConnectionInfo,
    _filefind,
    find_connection_file,
    tunnel_to_kernel,
)
from kernel_connect.kernelspec import NoSuchKernel
from kernel_connect.localinterfaces import localhost
from kernel_connect.manager import KernelManager
from kernel_connect.mixin import PORT_NAMES, ConnectionFileMixin
from kernel_connect.restarter import KernelRestarter
from kernel_connect.session import Session

# -- flags and aliases ---------------------------------------------------------------

#: Every flag of a console app: jupyter_core's base flags and the frontend's own.
flags: dict[str, Any] = dict(base_flags)

#: The frontend's own flags. A frontend that passes its command line on to the
#: kernel must take these out first: the kernel would refuse them.
app_flags: dict[str, Any] = {
    "existing": (
        {"JupyterConsoleApp": {"existing": "kernel*.json"}},
        "Connect to an existing kernel. If no argument specified, guess most recent",
    ),
}
app_flags.update(
    boolean_flag(
        "confirm-exit",
        "JupyterConsoleApp.confirm_exit",
        """Set to display confirmation dialog on exit. You can always use 'exit' or
       'quit', to force a direct exit without any confirmation. This can also
       be set in the config file by setting
       `c.JupyterConsoleApp.confirm_exit`.
    """,
        """Don't prompt the user when exiting. This will terminate the kernel
       if it is owned by the frontend, and leave it alive if it is external.
       This can also be set in the config file by setting
       `c.JupyterConsoleApp.confirm_exit`.
    """,
    )
)
flags.update(app_flags)

#: Every alias of a console app: jupyter_core's base aliases and the frontend's own.
aliases: dict[str, Any] = dict(base_aliases)

#: The frontend's own aliases (to be taken out of a command line passed to the kernel).
app_aliases: dict[str, str] = {
    "ip": "JupyterConsoleApp.ip",
    "transport": "JupyterConsoleApp.transport",
    "hb": "JupyterConsoleApp.hb_port",
    "shell": "JupyterConsoleApp.shell_port",
    "iopub": "JupyterConsoleApp.iopub_port",
    "stdin": "JupyterConsoleApp.stdin_port",
    "control": "JupyterConsoleApp.control_port",
    "existing": "JupyterConsoleApp.existing",
    "f": "JupyterConsoleApp.connection_file",
    "kernel": "JupyterConsoleApp.kernel_name",
    "ssh": "JupyterConsoleApp.sshserver",
    "sshkey": "JupyterConsoleApp.sshkey",
}
aliases.update(app_aliases)

#: The configurable classes a console app exposes (for ``--help-all`` and config files).
classes: list[type[Any]] = [KernelManager, KernelRestarter, Session]


class JupyterConsoleApp(ConnectionFileMixin):
    """The part of a console frontend that connects it to a kernel.

    Mix it into a ``jupyter_core.application.JupyterApp`` subclass and call
    :meth:`initialize` from the app's own ``initialize``. It starts a kernel
    of ``kernel_name`` (owned by the frontend), or, with ``existing``, attaches
    to a running one through its connection file, tunnelled over SSH when
    ``sshserver`` or ``sshkey`` is set. The client is ``self.kernel_client``
    (a :class:`BlockingKernelClient` by default), the manager
    ``self.kernel_manager`` (None for an existing kernel).
    """

    name: str | Unicode[str, Any] = "jupyter-console-mixin"

    description: str | Unicode[str, Any] = """
        The Jupyter Console Mixin.

        This class contains the common portions of console client (QtConsole,
        ZMQ-based terminal console, etc).  It is not a full console, in that
        launched terminal subprocesses will not be able to accept input.

        The Console using this mixing supports various extra features beyond
        the single-process Terminal IPython shell, such as connecting to
        existing kernel, via:

            jupyter console <appname> --existing

        as well as tunnel via SSH

    """

    classes = classes
    flags = Dict(flags)
    aliases = Dict(aliases)
    kernel_manager_class = Type(
        default_value=KernelManager,
        config=True,
        help="The kernel manager class to use.",
    )
    kernel_client_class: type[Any] = BlockingKernelClient

    kernel_argv = List(Unicode())

    sshserver = Unicode("", config=True, help="""The SSH server to use to connect to the kernel.""")
    sshkey = Unicode(
        "",
        config=True,
        help="""Path to the ssh key to use for logging in to the ssh server.""",
    )

    existing = CUnicode("", config=True, help="""Connect to an already running kernel""")

    kernel_name = Unicode(
        "python", config=True, help="""The name of the default kernel to start."""
    )

    confirm_exit = CBool(
        True,
        config=True,
        help="""
        Set to display confirmation dialog on exit. You can always use 'exit' or 'quit',
        to force a direct exit without any confirmation.""",
    )

    #: The manager of the kernel this frontend started (None: an existing kernel).
    kernel_manager: KernelManager | None
    #: The client connected to the kernel (``kernel_client_class``).
    kernel_client: Any

    if TYPE_CHECKING:
        # Provided by the JupyterApp this class is mixed into.
        runtime_dir: str
        extra_args: list[str]

        def exit(self, exit_status: int | str | None = 0) -> NoReturn: ...

    @default("connection_file")
    def _connection_file_default(self) -> str:
        # One file per frontend process, in the runtime directory once
        # init_connection_file has made the name a full path.
        return f"kernel-{os.getpid()}.json"

    def build_kernel_argv(self, argv: object = None) -> None:
        """Set ``kernel_argv``, the arguments the kernel is started with.

        The app's leftover command-line arguments, by default; override to
        pass others.
        """
        self.kernel_argv = self.extra_args

    def init_connection_file(self) -> None:
        """Find the connection file and load it if it exists.

        With ``existing``, the file is searched in the current directory and
        the runtime directory, as a name, then as a glob or substring (the
        most recently used match wins); a file that cannot be found ends the
        app. Otherwise ``connection_file`` is made a full path (a bare name
        goes into the runtime directory) and loaded if it exists, so a
        frontend started again on its own file reuses the ports in it.

        After this, ``self.connection_file`` is a full path, never just a name.
        """
        runtime_dir = self.runtime_dir
        if self.existing:
            try:
                cf = find_connection_file(self.existing, [".", runtime_dir])
            except Exception:
                self.log.critical(
                    "Could not find existing kernel connection file %s", self.existing
                )
                self.exit(1)
            self.log.debug("Connecting to existing kernel: %s", cf)
            self.connection_file = cf
        else:
            try:
                cf = find_connection_file(self.connection_file, [runtime_dir])
            except Exception:
                # Not there yet: the file this app will write.
                if self.connection_file == os.path.basename(self.connection_file):
                    cf = os.path.join(runtime_dir, self.connection_file)
                else:
                    cf = self.connection_file
                self.connection_file = cf
        try:
            self.connection_file = _filefind(self.connection_file, [".", runtime_dir])
        except OSError:
            self.log.debug("Connection File not found: %s", self.connection_file)
            return

        try:
            self.load_connection_file()
        except Exception:
            self.log.error(
                "Failed to load connection file: %r", self.connection_file, exc_info=True
            )
            self.exit(1)

    def init_ssh(self) -> None:
        """Tunnel an existing kernel's ports over SSH, if ``sshserver`` or ``sshkey`` is set.

        The five ports go over one SSH connection (host keys checked against
        known_hosts); the app then talks to local ports on localhost, and
        writes them to ``<connection file>-ssh.json`` so that other clients
        can use the same tunnel. Only tcp kernels can be tunnelled.
        """
        if not self.existing or (not self.sshserver and not self.sshkey):
            return
        self.load_connection_file()

        transport = self.transport
        ip = self.ip

        if transport != "tcp":
            self.log.error("Can only use ssh tunnels with TCP sockets, not %s", transport)
            sys.exit(-1)

        if self.sshkey and not self.sshserver:
            # Only a key: log in to the kernel's own host and reach it as localhost there.
            self.sshserver = ip
            ip = localhost()

        info: KernelConnectionInfo = {
            "ip": ip,
            "shell_port": self.shell_port,
            "iopub_port": self.iopub_port,
            "stdin_port": self.stdin_port,
            "hb_port": self.hb_port,
            "control_port": self.control_port,
        }

        self.log.info("Forwarding connections to %s via %s", ip, self.sshserver)

        # The tunnel's ports are local.
        self.ip = localhost()
        try:
            newports = tunnel_to_kernel(info, self.sshserver, self.sshkey or None)
        except (Exception, KeyboardInterrupt):
            # Interrupted at a password prompt is a failed tunnel, too.
            self.log.error("Could not setup tunnels", exc_info=True)
            self.exit(1)
        # Kept, so that the tunnel lives as long as the app (it also closes at exit).
        self._tunnel = newports

        (
            self.shell_port,
            self.iopub_port,
            self.stdin_port,
            self.hb_port,
            self.control_port,
        ) = newports

        root, ext = os.path.splitext(self.connection_file)
        self.connection_file = root + "-ssh" + ext
        self.write_connection_file()
        self.log.info("To connect another client via this tunnel, use:")
        self.log.info("--existing %s", os.path.basename(self.connection_file))

    def _new_connection_file(self) -> str:
        """A connection file name in the runtime directory that no file has yet."""
        cf = ""
        while not cf:
            # 48 random bits (12 hex digits): readable, and plenty for one user's kernels.
            ident = str(uuid.uuid4()).split("-")[-1]
            cf = os.path.join(self.runtime_dir, f"kernel-{ident}.json")
            cf = cf if not os.path.exists(cf) else ""
        return cf

    def init_kernel_manager(self) -> None:
        """Start the frontend's own kernel (nothing for an ``existing`` one).

        An unknown ``kernel_name`` ends the app. The manager's ports and
        connection file become the app's; the file and ipc sockets are
        removed at exit.
        """
        if self.existing:
            self.kernel_manager = None
            return
        # Ctrl-C must reach the frontend, not be swallowed by a GUI or zmq loop.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

        try:
            self.kernel_manager = self.kernel_manager_class(
                **self._connection_traits(),
                kernel_name=self.kernel_name,
                data_dir=self.data_dir,
            )
            # Look the spec up now, so an unknown kernel name fails here.
            self.kernel_manager.kernel_spec  # noqa: B018
        except NoSuchKernel:
            self.log.critical("Could not find kernel %r", self.kernel_name)
            self.exit(1)

        km = self.kernel_manager
        km.client_factory = self.kernel_client_class
        km.start_kernel(extra_arguments=self.kernel_argv)
        atexit.register(km.cleanup_ipc_files)

        if self.sshserver:
            # Others reach this kernel over ssh: they need its file.
            km.write_connection_file()

        # The manager may have chosen ports (and a file): the app reports those.
        for name in PORT_NAMES:
            setattr(self, name, getattr(km, name))
        self.connection_file = km.connection_file

        atexit.register(km.cleanup_connection_file)

    def _connection_traits(self) -> dict[str, Any]:
        """The app's connection settings, as a manager's or client's traits."""
        traits: dict[str, Any] = {name: getattr(self, name) for name in PORT_NAMES}
        traits.update(
            ip=self.ip,
            session=self.session,
            transport=self.transport,
            connection_file=self.connection_file,
            parent=self,
        )
        return traits

    def init_kernel_client(self) -> None:
        """Open ``self.kernel_client`` on the kernel and start its channels.

        A kernel the app started gets its manager's client (which knows the
        kernel's process); an existing one a ``kernel_client_class`` client
        on the app's connection info.
        """
        if self.kernel_manager is not None:
            self.kernel_client = self.kernel_manager.client()
        else:
            self.kernel_client = self.kernel_client_class(**self._connection_traits())

        self.kernel_client.start_channels()

    def initialize(self, argv: object = None) -> None:
        """Connection file, SSH tunnel, kernel, client, in that order.

        Classes that mix this class in call ``JupyterConsoleApp.initialize(self, argv)``
        from their own ``initialize``.
        """
        if getattr(self, "_dispatching", False):
            return
        self.init_connection_file()
        self.init_ssh()
        self.init_kernel_manager()
        self.init_kernel_client()


class IPythonConsoleApp(JupyterConsoleApp):
    """The former name of :class:`JupyterConsoleApp` (deprecated)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("IPythonConsoleApp is deprecated. Use JupyterConsoleApp", stacklevel=2)
        super().__init__(*args, **kwargs)


__all__ = [
    "ConnectionFileMixin",
    "IPythonConsoleApp",
    "JupyterConsoleApp",
    "aliases",
    "app_aliases",
    "app_flags",
    "classes",
    "flags",
]
