"""ConnectionFileMixin: connection info, connection files and channel sockets.

The base of KernelManager and BlockingKernelClient, with the names and traits of
jupyter_client's mixin. Ports left at 0 are taken from the cross-process port
reservation table when the connection file is written; the file is written
atomically and only a file this object wrote is ever removed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import zmq
from traitlets import (
    Bool,
    Bytes,
    CaselessStrEnum,
    Instance,
    Integer,
    Type,
    Unicode,
    default,
    observe,
)
from traitlets.config import LoggingConfigurable

from kernel_connect.connect import port_names
from kernel_connect.secret_trait import SecretBytes
from kernel_connect.session import Session

if TYPE_CHECKING:
    from kernel_connect.client import BlockingKernelClient

#: zmq socket type of the client end of each channel.
CHANNEL_SOCKET_TYPES: dict[str, int] = {
    "hb": zmq.REQ,
    "shell": zmq.DEALER,
    "iopub": zmq.SUB,
    "stdin": zmq.DEALER,
    "control": zmq.DEALER,
}

#: The five port names, in jupyter_client's order.
PORT_NAMES = list(port_names)

#: How long (ms) a closed client socket may keep trying to deliver, so exit never hangs.
SOCKET_LINGER_MS = 1000


def _localhost() -> str:
    from kernel_connect.localinterfaces import localhost

    return localhost()


#: write_connection_file's connection parameters, and the trait each one sets
#: (a name starting with "session." is a trait of the Session).
_CONNECTION_PARAMETERS = {
    "fname": "connection_file",
    "transport": "transport",
    "ip": "ip",
    **{name: name for name in PORT_NAMES},
    "key": "session.key",
    "signature_scheme": "session.signature_scheme",
    "kernel_name": "kernel_name",
    "curve_publickey": "curve_publickey",
    "curve_secretkey": "curve_secretkey",
}


class ConnectionFileMixin(LoggingConfigurable):
    """Connection info, connection file handling and channel sockets of one kernel."""

    data_dir = Unicode(help="The Jupyter data directory [default: jupyter_core's data dir].")

    @default("data_dir")
    def _data_dir_default(self) -> str:
        from jupyter_core.paths import jupyter_data_dir

        return str(jupyter_data_dir())

    connection_file = Unicode(
        "",
        config=True,
        help="JSON file holding the kernel's ip, ports and key [default: kernel-<id>.json "
        "in the Jupyter runtime directory].",
    )
    _connection_file_written = Bool(False)

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="tcp", config=True)
    kernel_name = Unicode("")

    context = Instance(zmq.Context)

    ip = Unicode(
        config=True,
        help="The kernel's IP address [default: localhost]. '*' means 0.0.0.0; anything "
        "but loopback lets other machines connect, so be careful.",
    )

    hb_port = Integer(0, config=True, help="Heartbeat port [default: reserved at random].")
    shell_port = Integer(0, config=True, help="Shell (ROUTER) port [default: random].")
    iopub_port = Integer(0, config=True, help="IOPub (PUB) port [default: random].")
    stdin_port = Integer(0, config=True, help="Stdin (ROUTER) port [default: random].")
    control_port = Integer(0, config=True, help="Control (ROUTER) port [default: random].")

    # CurveZMQ keypair (Z85 bytes) from/to the connection file; None means plaintext.
    curve_publickey = Bytes(None, allow_none=True)
    curve_secretkey = SecretBytes(None, allow_none=True)

    session = Instance("kernel_connect.session.Session")

    blocking_class = Type(klass=object, default_value="kernel_connect.client.BlockingKernelClient")

    # Port names that were 0 before ports were assigned, and the ports this
    # object reserved in the reservation table (returned by cleanup_random_ports).
    _random_port_names: list[str] | None = None
    _reserved_ports: list[int] | None = None

    def _context_default(self) -> zmq.Context[Any]:
        return zmq.Context.instance()

    def _session_default(self) -> Session:
        return Session(parent=self)

    def _ip_default(self) -> str:
        if self.transport == "ipc":
            if self.connection_file:
                return os.path.splitext(self.connection_file)[0] + "-ipc"
            return "kernel-ipc"
        return _localhost()

    @observe("ip")
    def _ip_changed(self, change: Any) -> None:
        if change["new"] == "*":
            self.ip = "0.0.0.0"  # noqa: S104 - the documented meaning of '*'

    @property
    def ports(self) -> list[int]:
        """The five ports, in the order of :data:`PORT_NAMES`."""
        return [int(getattr(self, name)) for name in PORT_NAMES]

    # -- connection info ---------------------------------------------------

    def get_connection_info(self, session: bool = False) -> dict[str, Any]:
        """Return the connection info as a dict.

        Parameters
        ----------
        session : bool
            If True, include a *clone* of our Session under ``'session'`` (so
            replay history is not shared); otherwise include ``key`` (bytes) and
            ``signature_scheme``.

        Returns
        -------
        dict
            transport, ip, the five ports, key and scheme (or session), and the
            CurveZMQ keys when set.
        """
        info: dict[str, Any] = {
            "transport": self.transport,
            "ip": self.ip,
            "shell_port": self.shell_port,
            "iopub_port": self.iopub_port,
            "stdin_port": self.stdin_port,
            "hb_port": self.hb_port,
            "control_port": self.control_port,
        }
        if session:
            info["session"] = self.session.clone()
        else:
            info["signature_scheme"] = self.session.signature_scheme
            info["key"] = self.session.key
        if self.curve_publickey is not None and self.curve_secretkey is not None:
            info["curve_publickey"] = self.curve_publickey.decode()
            info["curve_secretkey"] = self.curve_secretkey.decode()
        return info

    def load_connection_file(self, connection_file: str | None = None) -> None:
        """Load connection info from a connection file (validated).

        Parameters
        ----------
        connection_file : str, optional
            Path to read (default: ``self.connection_file``).

        Raises
        ------
        ConnectionFileError
            If the file is malformed (the message names the field, never the key).
        """
        from kernel_connect.connect import read_connection_file

        if connection_file is None:
            connection_file = self.connection_file
        self.log.debug("Loading connection file %s", connection_file)
        info = read_connection_file(connection_file)
        self.load_connection_info(info)

    def load_connection_info(self, info: dict[str, Any]) -> None:
        """Load connection info from a dict (as read from a connection file).

        Ports already set (by config or arguments) are kept; key and scheme go
        to the Session; CurveZMQ keys are loaded when both are present.

        Parameters
        ----------
        info : dict
            Connection info; ``key`` may be str or bytes.

        Raises
        ------
        ConnectionFileError
            If a field is invalid, judged as a connection file's would be
            (never quoting a secret). Nothing is loaded then.
        """
        from kernel_connect import _native

        _native.validate_connection_info(
            {
                k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                for k, v in info.items()
            }
        )
        self.transport = info.get("transport", self.transport)
        self.ip = info.get("ip", self._ip_default())
        self._record_random_port_names()
        for name in PORT_NAMES:
            if getattr(self, name) == 0 and name in info:
                setattr(self, name, int(info[name]))
        if "key" in info:
            key = info["key"]
            self.session.key = key if isinstance(key, bytes) else str(key).encode()
        if "signature_scheme" in info:
            self.session.signature_scheme = info["signature_scheme"]
        if "curve_publickey" in info and "curve_secretkey" in info:
            pub, sec = info["curve_publickey"], info["curve_secretkey"]
            self.curve_publickey = pub.encode() if isinstance(pub, str) else pub
            self.curve_secretkey = sec.encode() if isinstance(sec, str) else sec

    def write_connection_file(self, **kwargs: Any) -> None:
        """Write our connection info to ``self.connection_file`` (atomically, mode 0600).

        Ports still 0 are reserved in the port reservation table first and
        stored on this object. Does nothing if we already wrote the file, it
        still exists and no connection parameter changes it.

        Parameters
        ----------
        **kwargs
            Connection parameters of ``write_connection_file`` (``fname``,
            ``transport``, ``ip``, the five ports, ``key``, ``signature_scheme``,
            ``kernel_name``, ``curve_publickey``, ``curve_secretkey``): each
            sets its trait on this object (``key`` and ``signature_scheme``
            on its Session, ``fname`` sets ``connection_file``) and so goes
            into the file. A file already written is written again if they
            change anything. Any other keyword is an extra field of the file.
            When the write fails, the traits are set back as they were.
        """
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONNECTION_PARAMETERS}
        previous = {k: self._connection_trait(k) for k in params}
        old_file = self.connection_file if self._connection_file_written else ""
        try:
            # transport first: the ip's default depends on it.
            for name in sorted(params, key=lambda k: k != "transport"):
                self._set_connection_trait(name, params[name])
            changed = any(self._connection_trait(k) != previous[k] for k in params)
            if (
                self._connection_file_written
                and not changed
                and os.path.exists(self.connection_file)
            ):
                return
            self._write_connection_file(kwargs)
        except BaseException:
            for name in reversed(list(previous)):
                self._set_connection_trait(name, previous[name])
            raise
        if old_file and old_file != self.connection_file:
            # Written anew elsewhere (fname=...): the file we wrote before is stale.
            with contextlib.suppress(OSError):
                os.remove(old_file)

    def _connection_trait(self, param: str) -> Any:
        owner, _, trait = _CONNECTION_PARAMETERS[param].rpartition(".")
        return getattr(self.session if owner else self, trait)

    def _set_connection_trait(self, param: str, value: Any) -> None:
        owner, _, trait = _CONNECTION_PARAMETERS[param].rpartition(".")
        if param == "curve_publickey" and isinstance(value, str):
            value = value.encode("ascii")  # Z85 text, as the module function takes it
        setattr(self.session if owner else self, trait, value)

    def _write_connection_file(self, extra: dict[str, Any]) -> None:
        from kernel_connect.connect import write_connection_file
        from kernel_connect.ports import LocalPortCache

        self._record_random_port_names()
        reserved: list[int] = []
        if self.transport == "tcp":
            # Held, not leased: this object returns them when it cleans up.
            unset = [name for name in PORT_NAMES if getattr(self, name) <= 0]
            if unset:
                reserved = LocalPortCache.instance().reserve(self.ip, len(unset))
                for name, port in zip(unset, reserved, strict=True):
                    setattr(self, name, port)
        try:
            fname, cfg = write_connection_file(
                self.connection_file or None,
                transport=self.transport,
                ip=self.ip,
                key=self.session.key,
                stdin_port=self.stdin_port,
                iopub_port=self.iopub_port,
                shell_port=self.shell_port,
                hb_port=self.hb_port,
                control_port=self.control_port,
                signature_scheme=self.session.signature_scheme,
                kernel_name=self.kernel_name,
                curve_publickey=self.curve_publickey,
                curve_secretkey=self.curve_secretkey,
                **extra,
            )
        except BaseException:
            if reserved:
                LocalPortCache.instance().return_ports(reserved)
                for name in PORT_NAMES:
                    if getattr(self, name) in reserved:
                        setattr(self, name, 0)
            raise
        self.connection_file = fname
        for name in PORT_NAMES:
            setattr(self, name, int(cast(int, cfg[name])))
        if reserved:
            self._reserved_ports = [*(self._reserved_ports or []), *reserved]
        self._connection_file_written = True

    def cleanup_connection_file(self) -> None:
        """Remove the connection file, but only if this object wrote it."""
        if self._connection_file_written:
            self._connection_file_written = False
            with contextlib.suppress(OSError):
                os.remove(self.connection_file)

    def cleanup_ipc_files(self) -> None:
        """Remove the ipc socket files of the five channels (ipc transport only)."""
        if self.transport != "ipc":
            return
        for port in self.ports:
            with contextlib.suppress(OSError):
                os.remove(f"{self.ip}-{port}")

    def _record_random_port_names(self) -> None:
        """Remember which ports were unassigned, the first time ports are filled in."""
        if self.transport != "tcp" or self._random_port_names is not None:
            return
        self._random_port_names = [name for name in PORT_NAMES if getattr(self, name) <= 0]

    def return_reserved_ports(self) -> None:
        """Return the ports this object reserved to the reservation table."""
        if not self._reserved_ports:
            return
        from kernel_connect.ports import LocalPortCache

        ports, self._reserved_ports = self._reserved_ports, None
        LocalPortCache.instance().return_ports(ports)

    def cleanup_random_ports(self) -> None:
        """Forget randomly assigned ports (returning them) and remove our connection file.

        Does nothing unless some ports were assigned at random over tcp.
        """
        if not self._random_port_names:
            return
        self.return_reserved_ports()
        for name in self._random_port_names:
            setattr(self, name, 0)
        self.cleanup_connection_file()

    # -- clients and sockets -----------------------------------------------

    def blocking_client(self) -> BlockingKernelClient:
        """Return a :class:`BlockingKernelClient` loaded with our connection info."""
        factory: Any = self.blocking_class
        client = factory(parent=self)
        client.load_connection_info(self.get_connection_info())
        return cast("BlockingKernelClient", client)

    def _make_url(self, channel: str) -> str:
        """The zmq URL of ``channel`` ('shell', 'iopub', 'stdin', 'hb', 'control')."""
        port = int(getattr(self, f"{channel}_port"))
        if self.transport == "tcp":
            ip = self.ip
            if ":" in ip and not ip.startswith("["):
                ip = f"[{ip}]"  # zmq wants IPv6 literals bracketed
            return f"tcp://{ip}:{port}"
        return f"{self.transport}://{self.ip}-{port}"

    def _create_connected_socket(
        self, channel: str, identity: bytes | None = None
    ) -> zmq.Socket[Any]:
        """Return a socket of the right type for ``channel``, connected to the kernel
        (an iopub socket subscribed to every topic)."""
        return self._connected_socket(channel, identity)

    def _connected_socket(
        self,
        channel: str,
        identity: bytes | None = None,
        socket_class: Any = None,
        before_connect: Callable[[zmq.Socket[Any]], object] | None = None,
    ) -> zmq.Socket[Any]:
        """:meth:`_create_connected_socket`, of ``socket_class`` when given instead of the
        context's own kind (a plain ``zmq.Socket`` from an asyncio context, for a ZMQStream).
        ``before_connect`` is called with the socket, set up, before it connects (to
        attach a monitor that must see every event of the connection)."""
        url = self._make_url(channel)
        sock: zmq.Socket[Any] = self.context.socket(
            CHANNEL_SOCKET_TYPES[channel], socket_class=socket_class
        )
        sock.linger = SOCKET_LINGER_MS
        if ":" in self.ip and self.transport == "tcp":
            sock.ipv6 = True
        if identity:
            sock.identity = identity
        if self.curve_publickey is not None and self.curve_secretkey is not None:
            # The file's keypair authenticates the kernel (server key) and, as
            # in jupyter_client and ipykernel, also serves as our client keypair.
            sock.curve_secretkey = self.curve_secretkey
            sock.curve_publickey = self.curve_publickey
            sock.curve_serverkey = self.curve_publickey
        if before_connect is not None:
            before_connect(sock)
        self.log.debug("Connecting to %s", url)
        sock.connect(url)
        if channel == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        return sock

    def connect_iopub(self, identity: bytes | None = None) -> zmq.Socket[Any]:
        """Return a SUB socket connected to IOPub, subscribed to every topic."""
        return self._create_connected_socket("iopub", identity=identity)

    def connect_shell(self, identity: bytes | None = None) -> zmq.Socket[Any]:
        """Return a DEALER socket connected to the shell channel."""
        return self._create_connected_socket("shell", identity=identity)

    def connect_stdin(self, identity: bytes | None = None) -> zmq.Socket[Any]:
        """Return a DEALER socket connected to the stdin channel."""
        return self._create_connected_socket("stdin", identity=identity)

    def connect_hb(self, identity: bytes | None = None) -> zmq.Socket[Any]:
        """Return a REQ socket connected to the heartbeat channel."""
        return self._create_connected_socket("hb", identity=identity)

    def connect_control(self, identity: bytes | None = None) -> zmq.Socket[Any]:
        """Return a DEALER socket connected to the control channel."""
        return self._create_connected_socket("control", identity=identity)


__all__ = ["CHANNEL_SOCKET_TYPES", "PORT_NAMES", "ConnectionFileMixin"]
