"""KernelManager: start, watch, interrupt, restart and stop one local kernel process.

Same names and behaviour as jupyter_client's KernelManager, synchronous, with:

- ports from the cross-process reservation table, returned on shutdown;
- an opt-in zero-race start-up (``kernel_binds_ports``): the connection file
  carries port 0 and the kernel binds its own ports and writes them back, so no
  port can collide whatever other processes on the host do;
- a fast shutdown: shutdown_request on control, then a short-poll wait, then
  SIGTERM, then SIGKILL, and in every path the file removed and ports returned;
- start-up failures reported with the kernel's exit code and stderr tail.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import string
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

import zmq
from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Integer,
    TraitError,
    Type,
    Unicode,
    observe,
    validate,
)

from kernel_connect.client import BlockingKernelClient
from kernel_connect.errors import (
    KernelDeath,
    KernelDiedError,
    KernelStartCancelledError,
    KernelTimeoutError,
)
from kernel_connect.kernelspec import (
    NATIVE_KERNEL_NAME,
    KernelSpec,
    get_kernel_spec,
    substitute_argv,
)
from kernel_connect.launcher import launch_kernel
from kernel_connect.mixin import PORT_NAMES, ConnectionFileMixin

# How much of the kernel's stderr to keep for error reports.
_STDERR_TAIL_BYTES = 4096
# Poll period while waiting for the kernel to write its ports back.
_PORT_POLL_S = 0.005

# Managers whose kernel this process started. A forked child starts with none:
# Popen.poll() there reports 0 for the parent's kernel, so an exit clean-up in
# the child would "reap" it and remove the parent's live connection file.
_live_managers: weakref.WeakSet[KernelManager] = weakref.WeakSet()


def _shutdown_all_at_exit() -> None:
    # Kernels notice our death by themselves (JPY_PARENT_PID), but their
    # connection files would be left behind. Independent kernels were asked
    # to outlive us: they and their files stay.
    for km in list(_live_managers):
        if (km._launch_args or {}).get("independent"):
            continue  # asked to outlive us
        try:
            km.shutdown_kernel(now=True)
        except Exception:  # noqa: S112 - best effort at interpreter exit
            continue


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_live_managers.clear)


class KernelManager(ConnectionFileMixin):
    """Manages one kernel process: its connection file, ports, lifecycle and clients.

    Parameters
    ----------
    kernel_name : str
        Kernel spec to start (default ``python3``).
    **kwargs
        Any trait, e.g. ``connection_file``, ``ip``, ``transport``,
        ``transport_encryption``, ``kernel_binds_ports``.
    """

    kernel_name = Unicode(NATIVE_KERNEL_NAME, config=True, help="Name of the kernel spec.")
    kernel_id = Unicode(None, allow_none=True, help="Id of the kernel (default: a new uuid).")

    shutdown_wait_time = Float(
        5.0,
        config=True,
        help="Seconds to wait for a polite shutdown; half of it after shutdown_request, "
        "half after SIGTERM, then SIGKILL.",
    )
    transport_encryption = CaselessStrEnum(
        ["disabled", "auto", "required"],
        default_value="disabled",
        config=True,
        help="CurveZMQ between us and the kernel: 'disabled'; 'auto' (on when the kernel "
        "spec declares 'curve' in metadata.supported_encryption); 'required' (start fails "
        "unless the spec declares it).",
    )
    kernel_binds_ports = Bool(
        False,
        config=True,
        help="Zero-race start-up: write port 0 for every channel and let the kernel bind "
        "its own ports and write them back to the connection file (ipykernel does).",
    )
    port_wait_timeout = Float(
        60.0, config=True, help="Seconds to wait for the kernel to write back its ports."
    )
    port_clash_retries = Integer(
        3,
        config=True,
        help="If the kernel dies at start-up because a process that does not use the "
        "reservation table took one of its ports, a client's wait_for_ready restarts it "
        "on new ports up to this many times. (kernel_binds_ports avoids clashes entirely.)",
    )
    capture_stderr = Bool(
        True,
        config=True,
        help="Keep the kernel's stderr in an anonymous temporary file (for start-up error "
        "reports) instead of sharing ours, unless stderr is passed to start_kernel.",
    )
    client_factory = Type(
        klass=BlockingKernelClient, default_value=BlockingKernelClient, config=True
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._launch_args: dict[str, Any] | None = None
        self._control_socket: zmq.Socket[Any] | None = None
        self._stderr_file: IO[bytes] | None = None
        self._kernel_spec: KernelSpec | None = None
        self.exit_code: int | None = None
        self.shutting_down = False
        # Zero-race mode: the ports on file were chosen by the kernel (bind to
        # port 0), so they lie in the ephemeral range, unprotected by the table.
        self._ports_from_kernel = False
        #: Restarts on new ports after a port clash (see ``port_clash_retries``).
        self.port_clash_restarts = 0

    def __enter__(self) -> KernelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown_kernel()

    # -- spec and command --------------------------------------------------

    @observe("kernel_name")
    def _kernel_name_changed(self, change: Any) -> None:
        self._kernel_spec = None

    @validate("transport_encryption")
    def _validate_encryption(self, proposal: Any) -> str:
        value = str(proposal["value"]).lower()
        if value != "disabled" and not zmq.has("curve"):
            raise TraitError(
                f"transport_encryption={value!r} needs CurveZMQ, but this libzmq has no "
                "CURVE support (zmq.has('curve') is False)"
            )
        return value

    @property
    def kernel_spec(self) -> KernelSpec:
        """The kernel spec of ``kernel_name`` (raises NoSuchKernel if there is none)."""
        if self._kernel_spec is None:
            self._kernel_spec = get_kernel_spec(self.kernel_name)
        return self._kernel_spec

    @property
    def ipykernel(self) -> bool:
        """Whether the kernel is (presumably) ipykernel."""
        return self.kernel_name in {"python", "python2", "python3"}

    @property
    def owns_kernel(self) -> bool:
        """Always True: this manager starts the kernels it manages."""
        return True

    @property
    def has_kernel(self) -> bool:
        """Whether a kernel process was started and not yet shut down."""
        return self.kernel is not None

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """Return the spec's argv with ``{connection_file}`` etc. substituted.

        A leading ``python``/``python3``/``python3.X`` becomes this interpreter.
        """
        cmd = list(self.kernel_spec.argv) + list(extra_arguments or [])
        major, minor = sys.version_info[:2]
        if cmd and cmd[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
            cmd[0] = sys.executable
        values: dict[str, Any] = {
            "connection_file": os.path.realpath(self.connection_file),
            "prefix": sys.prefix,
            "resource_dir": self.kernel_spec.resource_dir,
        }
        values.update(self._launch_args or {})
        return substitute_argv(cmd, values)

    def _kernel_env(
        self, env: dict[str, str] | None, extra_env: dict[str, str] | None
    ) -> dict[str, str]:
        """The kernel's environment: ``env`` (default ours) + spec env + ``extra_env``."""
        result = dict(os.environ if env is None else env)
        for name, value in self.kernel_spec.env.items():
            result[name] = string.Template(value).safe_substitute(result)
        if extra_env:
            result.update(extra_env)
        if self.kernel_spec.language.lower().startswith("python"):
            # Would make a Python kernel re-exec as our interpreter (macOS framework builds).
            result.pop("PYTHONEXECUTABLE", None)
        return result

    # -- start -------------------------------------------------------------

    def start_kernel(self, **kw: Any) -> None:
        """Start a kernel process.

        Ports left at 0 are reserved from the port reservation table (or, with
        ``kernel_binds_ports``, chosen by the kernel itself); the connection
        file is written atomically before the launch.

        Parameters
        ----------
        **kw
            ``extra_arguments`` (list, appended to the spec's argv), ``env``
            (the whole environment, default ours), ``extra_env`` (merged on top),
            ``cwd``, ``independent``, ``transport_encryption``, ``kernel_id``,
            and any :class:`subprocess.Popen` argument.

        Raises
        ------
        NoSuchKernel
            If the kernel spec does not exist.
        RuntimeError
            If the ip is not local, or encryption is required but unsupported.
        KernelDiedError
            If, in zero-race mode, the kernel exits before writing its ports.
        KernelStartCancelledError
            If ``shutdown_kernel`` was called (from another thread) before the
            kernel had started; nothing is left behind.
        """
        if self.kernel is not None:
            if self.kernel.poll() is None:
                raise RuntimeError("a kernel is already running; shut it down or restart it")
            self._reap()  # died on its own: forget it before starting anew
        encryption = kw.pop("transport_encryption", None)
        if encryption is not None:
            self.transport_encryption = encryption
        self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
        kw.pop("kernel_id", None)
        self._launch_args = dict(kw)
        spec = self.kernel_spec
        self._check_local_ip()
        self._provision_curve(spec)
        self.shutting_down = False
        if not self.connection_file:
            from kernel_connect.paths import runtime_dir

            self.connection_file = os.path.join(runtime_dir(), f"kernel-{self.kernel_id}.json")
        if self.kernel_binds_ports and (
            not self._connection_file_written or self._ports_from_kernel
        ):
            # Also on a restart: the last kernel's ports are ephemeral ones that
            # anything on the host may have taken since it let them go, and the
            # table cannot protect them, so the new kernel binds its own again.
            self._write_port0_connection_file()
        else:
            self.write_connection_file()
        try:
            self._launch(dict(kw))
            # Registered at once, so that a shutdown in another thread, before
            # or after any step below, always leaves the set as it found it.
            _live_managers.add(self)
            if self.kernel_binds_ports:
                self._wait_for_bound_ports()
            self._raise_if_start_cancelled()
        except BaseException as e:
            # A failed start leaves nothing behind: process, file or ports.
            self._kill_and_reap()
            self.cleanup_resources(restart=False)
            if isinstance(e, Exception) and not isinstance(e, KernelStartCancelledError):
                self._raise_if_start_cancelled()  # whatever failed, a shutdown caused it
            raise

    def _check_local_ip(self) -> None:
        from kernel_connect.localinterfaces import is_local_ip, local_ips

        if self.transport == "tcp" and not is_local_ip(self.ip):
            raise RuntimeError(
                f"can only launch a kernel on a local interface; {self.ip!r} is not one "
                f"(local addresses: {', '.join(local_ips())})"
            )

    def _provision_curve(self, spec: KernelSpec) -> None:
        policy = self.transport_encryption
        if policy == "disabled":
            return
        if not spec.supports_curve:
            if policy == "required":
                raise RuntimeError(
                    f"transport_encryption='required' but kernel spec {spec.name!r} does not "
                    "declare 'curve' in metadata.supported_encryption"
                )
            return
        if self.curve_publickey is None or self.curve_secretkey is None:
            # Kept across restarts, like the HMAC key: the file keeps them too.
            public, secret = zmq.curve_keypair()
            self.curve_publickey, self.curve_secretkey = public, secret

    def _launch(self, kw: dict[str, Any]) -> None:
        extra_arguments = kw.pop("extra_arguments", None) or []
        env = self._kernel_env(kw.pop("env", None), kw.pop("extra_env", None))
        cmd = self.format_kernel_cmd(extra_arguments)
        if "stderr" not in kw and self.capture_stderr:
            self._close_stderr_file()
            # Lives as long as the kernel; closed by _close_stderr_file.
            self._stderr_file = tempfile.TemporaryFile(prefix="kernel-stderr-")  # noqa: SIM115
            kw["stderr"] = self._stderr_file
        self.log.debug("Starting kernel: %s", cmd)
        self.exit_code = None
        self.kernel = launch_kernel(cmd, env=env, **kw)
        try:
            self._pgid = os.getpgid(self.kernel.pid)
        except OSError:
            self._pgid = None

    def _write_port0_connection_file(self) -> None:
        """Write the connection file with port 0 everywhere (zero-race mode), atomically."""
        from kernel_connect import _native

        pub, sec = self.curve_publickey, self.curve_secretkey
        _native.write_connection_file(
            os.path.abspath(self.connection_file),
            [0, 0, 0, 0, 0],
            self.ip,
            self.session.key.decode(),
            self.transport,
            self.session.signature_scheme,
            self.kernel_name,
            pub.decode() if pub is not None and sec is not None else None,
            sec.decode() if pub is not None and sec is not None else None,
            None,
        )
        self._connection_file_written = True
        self._ports_from_kernel = True
        self._random_port_names = list(PORT_NAMES)
        for name in PORT_NAMES:
            setattr(self, name, 0)

    def _raise_if_start_cancelled(self) -> None:
        """Raise KernelStartCancelledError if shutdown_kernel ran since this start began."""
        if self.shutting_down:
            raise KernelStartCancelledError(
                "kernel start cancelled: shutdown_kernel() was called before the kernel "
                "had started; it was stopped and its connection file removed"
            )

    def _wait_for_bound_ports(self) -> None:
        """Wait until the kernel has written its real ports into the file, then load them.

        ipykernel rewrites the file in place, so a read can see it half-written:
        a read counts only when it parses and every port is nonzero.

        ``shutdown_kernel`` from another thread may stop (and forget) the
        kernel meanwhile: the wait then ends in KernelStartCancelledError.
        """
        proc = self.kernel
        self._raise_if_start_cancelled()
        assert proc is not None
        deadline = time.monotonic() + self.port_wait_timeout
        last_stamp: tuple[int, int] | None = None
        while True:
            self._raise_if_start_cancelled()
            try:
                st = os.stat(self.connection_file)
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp != last_stamp:
                last_stamp = stamp
                ports = _read_bound_ports(self.connection_file)
                if ports is not None:
                    for name, port in ports.items():
                        setattr(self, name, port)
                    return
                # Half-written: read again even if the stamp does not change.
                last_stamp = None
            try:
                proc.wait(_PORT_POLL_S)
            except subprocess.TimeoutExpired:
                pass
            else:
                self._raise_if_start_cancelled()  # it was stopped, it did not die
                raise KernelDiedError(
                    "kernel exited before binding its ports: " + self.death_report(),
                    exit_code=proc.returncode,
                    stderr_tail=self.stderr_tail(),
                )
            if time.monotonic() > deadline:
                raise KernelTimeoutError(
                    f"kernel did not write its ports to {self.connection_file} within "
                    f"{self.port_wait_timeout} s"
                )

    # -- state -------------------------------------------------------------

    def is_alive(self) -> bool:
        """Whether the kernel process is running."""
        if self.kernel is None:
            return False
        code = self.kernel.poll()
        if code is not None:
            self.exit_code = code
            return False
        return True

    def stderr_tail(self, max_lines: int = 20) -> str:
        """The last lines the kernel wrote to stderr ('' when not captured)."""
        f = self._stderr_file
        if f is None or f.closed:
            return ""
        fd = f.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - _STDERR_TAIL_BYTES)
        # pread leaves the file offset, which the kernel shares, alone.
        data = os.pread(fd, size - start, start).decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-max_lines:])

    def port_clash(self) -> bool:
        """Whether the kernel reported that one of its ports was already in use.

        ipykernel may die of it or hang after the error; either way it will
        never answer, so a caller can restart it on new ports at once.
        """
        if self.kernel is None:
            return False
        return "Address already in use" in self.stderr_tail(max_lines=200)

    def death_report(self) -> str:
        """Describe how the kernel ended: exit code or signal, and its stderr tail."""
        code = self.kernel.poll() if self.kernel is not None else self.exit_code
        if code is None:
            what = "still running"
        elif code < 0:
            try:
                what = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                what = f"killed by signal {-code}"
        else:
            what = f"exit code {code}"
        tail = self.stderr_tail()
        return f"{what}; stderr tail:\n{tail}" if tail else what

    # -- signals and interrupt ----------------------------------------------

    def signal_kernel(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group (kernel and its children).

        Raises
        ------
        RuntimeError
            If no kernel is running.
        """
        proc = self.kernel
        if proc is None:
            raise RuntimeError("cannot signal the kernel: no kernel is running")
        self._signal(proc, signum)

    def _signal(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to ``proc``'s process group, or to ``proc`` alone."""
        pgid = self._pgid
        if pgid is not None and proc.poll() is None:
            try:
                os.killpg(pgid, signum)
                return
            except OSError:
                pass
        with suppress(ProcessLookupError):
            proc.send_signal(signum)

    def interrupt_kernel(self) -> None:
        """Interrupt the kernel: SIGINT, or an interrupt_request if its spec asks for that.

        Raises
        ------
        RuntimeError
            If no kernel is running.
        """
        if self.kernel is None:
            raise RuntimeError("cannot interrupt the kernel: no kernel is running")
        if self.kernel_spec.interrupt_mode == "message":
            self._send_control("interrupt_request", {})
        else:
            self.signal_kernel(signal.SIGINT)

    def _interrupt_quietly(self) -> None:
        try:
            self.interrupt_kernel()
        except (OSError, RuntimeError, zmq.ZMQError) as e:
            self.log.debug("interrupt before shutdown failed: %s", e)

    # -- shutdown ----------------------------------------------------------

    def _connect_control_socket(self) -> zmq.Socket[Any]:
        if self._control_socket is None:
            self._control_socket = self.connect_control()
            self._control_socket.linger = 100
        return self._control_socket

    def _close_control_socket(self) -> None:
        sock, self._control_socket = self._control_socket, None
        if sock is not None:
            sock.close(linger=0)

    def _send_control(self, msg_type: str, content: dict[str, Any]) -> None:
        self.session.send(self._connect_control_socket(), msg_type, content=content)

    def request_shutdown(self, restart: bool = False) -> None:
        """Send a shutdown_request on the control channel."""
        self._send_control("shutdown_request", {"restart": restart})

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to exit; True if it did."""
        # One look at self.kernel: another thread (a shutdown during a start)
        # may reap and forget the process meanwhile.
        proc = self.kernel
        if proc is None or proc.poll() is not None:
            return True
        if _wait_pidfd(proc.pid, timeout) is False:
            return False
        try:
            # Reaps at once after a pidfd wakeup; otherwise polls with back-off.
            proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True

    def finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        """Wait for the kernel to exit; SIGTERM after half ``waittime``, SIGKILL after all.

        ``pollinterval`` is accepted for jupyter_client compatibility; the wait
        itself polls with a short back-off.
        """
        if waittime is None:
            waittime = max(self.shutdown_wait_time, 0.0)
        if self._wait(waittime / 2):
            return
        self.log.debug("Kernel is taking too long to finish, terminating")
        self.signal_kernel(signal.SIGTERM)
        if self._wait(waittime / 2):
            return
        self.log.debug("Kernel is taking too long to finish, killing")
        self._kill_and_reap()

    def _kill_and_reap(self) -> None:
        """SIGKILL the kernel's process group and wait for the kernel."""
        proc = self.kernel
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            if not self._wait(5.0):
                self.log.warning("kernel %d did not die after SIGKILL", proc.pid)
                return
        self._reap()

    def _reap(self) -> None:
        """Forget an exited kernel process (and close our end of its pipes)."""
        proc = self.kernel
        if proc is None:
            return
        self.exit_code = proc.returncode
        self.kernel = None
        self._pgid = None
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def _close_stderr_file(self) -> None:
        f, self._stderr_file = self._stderr_file, None
        if f is not None:
            f.close()

    def cleanup_resources(self, restart: bool = False) -> None:
        """Close our control socket; unless restarting, remove the file and return ports."""
        self._close_control_socket()
        self.cleanup_ipc_files()
        if not restart:
            self.cleanup_random_ports()
            self.cleanup_connection_file()
            self.return_reserved_ports()
            self._close_stderr_file()
            self._ports_from_kernel = False
            _live_managers.discard(self)

    def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Stop the kernel and clean up.

        Politely (shutdown_request on control, wait half of
        ``shutdown_wait_time``), then SIGTERM, then SIGKILL. Whatever happened
        to the kernel (even if it died on its own), the connection file is
        removed and the ports returned, unless ``restart``.

        Parameters
        ----------
        now : bool
            Kill at once, without asking.
        restart : bool
            Keep the connection file, ports and keys for a restart.
        """
        self.shutting_down = True  # also cancels a start under way in another thread
        proc = self.kernel
        if proc is not None:
            if proc.poll() is None:
                if now or not self._kernel_ports_known():
                    # A kernel still binding its own ports (a zero-race start
                    # under way) cannot be asked on control, and has nothing to save.
                    self._kill_and_reap()
                else:
                    # As jupyter_client: an interrupt first, so a kernel busy
                    # running code gets back to its loop and can obey the request.
                    self._interrupt_quietly()
                    self.request_shutdown(restart=restart)
                    self.finish_shutdown(restart=restart)
            proc = self.kernel
            if proc is not None and proc.poll() is not None:
                self._reap()
        self.cleanup_resources(restart=restart)

    def _kernel_ports_known(self) -> bool:
        """Whether every port of the kernel is known (not 0, as while it binds its own)."""
        return self.transport != "tcp" or 0 not in self.ports

    def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart the kernel with the same arguments (and, by default, the same ports).

        In zero-race mode (``kernel_binds_ports``) a kernel that bound its own
        ports always binds new ones: the old ones lie in the OS's ephemeral
        range, where anything on the host may take them once the old kernel has
        let them go. The new ports are published as at a start (this manager's
        port traits and the connection file); clients made before the restart
        must be made again (or reload the file).

        Parameters
        ----------
        now : bool
            Kill the old kernel at once instead of asking it to shut down.
        newports : bool
            Pick new random ports instead of keeping the old ones.
        **kw
            Launch arguments that replace those of the first start.

        Raises
        ------
        RuntimeError
            If the kernel was never started.
        """
        if self._launch_args is None:
            raise RuntimeError("cannot restart the kernel: start_kernel was never called")
        self.shutdown_kernel(now=now, restart=True)
        if newports:
            self.cleanup_random_ports()
        self._launch_args.update(kw)
        self.start_kernel(**self._launch_args)

    # -- clients -----------------------------------------------------------

    def client(self, **kwargs: Any) -> BlockingKernelClient:
        """Return a BlockingKernelClient for our kernel (sharing a clone of our Session)."""
        info = self.get_connection_info(session=True)
        pub, sec = info.pop("curve_publickey", None), info.pop("curve_secretkey", None)
        kw: dict[str, Any] = dict(info, connection_file=self.connection_file, parent=self)
        if pub is not None and sec is not None:
            kw.update(curve_publickey=pub.encode(), curve_secretkey=sec.encode())
        kw.update(kwargs)
        client: BlockingKernelClient = self.client_factory(**kw)
        client.liveness = _ProcessLiveness(self)
        return client

    def blocking_client(self) -> BlockingKernelClient:
        """Return a :class:`BlockingKernelClient` loaded with our connection info."""
        client = super().blocking_client()
        client.liveness = _ProcessLiveness(self)
        return client


class _ProcessLiveness:
    """A client's view of a kernel its manager started: the process, not the heartbeat.

    Satisfies ``kernel_connect.client.KernelLiveness``.
    """

    def __init__(self, km: KernelManager) -> None:
        self._km = km

    def is_alive(self) -> bool:
        proc = self._km.kernel
        if proc is None:
            # Never started (nothing to say yet), or ended and reaped.
            return self._km.exit_code is None
        return proc.poll() is None

    def death(self) -> KernelDeath:
        km = self._km
        proc = km.kernel
        code = proc.poll() if proc is not None else km.exit_code
        return KernelDeath(km.death_report(), exit_code=code, stderr_tail=km.stderr_tail())


def _wait_pidfd(pid: int, timeout: float) -> bool | None:
    """Wait for ``pid`` to exit through a pidfd (Linux): woken the instant it exits.

    Returns True (exited), False (still running after ``timeout``), or None
    when pidfds are unavailable and the caller must poll instead.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd = pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _read_bound_ports(path: str) -> dict[str, int] | None:
    """The five ports from ``path`` if it parses and all are nonzero, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    ports: dict[str, int] = {}
    for name in PORT_NAMES:
        port = info.get(name)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            return None
        ports[name] = port
    return ports


def start_new_kernel(
    startup_timeout: float = 60, kernel_name: str = NATIVE_KERNEL_NAME, **kwargs: Any
) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a kernel and return ``(manager, ready client)``.

    Raises
    ------
    KernelDiedError, KernelTimeoutError
        If the kernel does not become ready (it is shut down first).
    """
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(**kwargs)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


@contextmanager
def run_kernel(**kwargs: Any) -> Iterator[BlockingKernelClient]:
    """Context manager: a ready client of a new kernel, shut down on exit."""
    km, kc = start_new_kernel(**kwargs)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


__all__ = ["KernelManager", "run_kernel", "start_new_kernel"]
