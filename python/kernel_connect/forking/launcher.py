"""The manager's side of the fork launcher: templates, fork requests, forked kernel processes.

One template process (:mod:`kernel_connect.forking._template`) per interpreter
and start-up environment, started on first use and kept for the life of this
process; a kernel is forked from it in milliseconds instead of exec'd and
imported in half a second.

How a forked kernel is waited for: it is the template's child, not ours. The
template opens a pidfd for it at once and sends us a copy (SCM_RIGHTS), so we
see the exit the instant it happens, and a signal sent through the pidfd can
never reach another process that was given the same pid later. The exit code
only the template can read: it reports it on the socket, and whichever thread
needs it first reads the socket (under the template's lock: no thread per
kernel, no reader thread). The template keeps the zombie, and with it the pid
and process-group id, until we have the code, as an exec kernel's zombie waits
for Popen.wait. If the template died before reporting, the code is lost:
:data:`UNKNOWN_RETURNCODE`, with a warning.

Nothing here sends key material anywhere: the key stays in the connection
file, which the kernel reads as an exec kernel does (only its path travels).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[Any]

#: The template's script, run by path with the kernel spec's interpreter.
TEMPLATE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_template.py")

#: The exit code of a forked kernel whose template died before reporting it
#: (255: an abnormal end, like ssh's own failures; never a code a clean exit gives).
UNKNOWN_RETURNCODE = 255
#: Longest wait for a new template to import ipykernel and say it is ready.
TEMPLATE_START_TIMEOUT_S = 30.0
#: Longest wait for the template to answer a fork request (a fork takes milliseconds).
REQUEST_TIMEOUT_S = 10.0
#: Longest wait for the template's report of an exit it has seen (it reports at once).
REPORT_TIMEOUT_S = 5.0
#: After a template could not start (or refused to fork), its interpreter is
#: started by exec for this long before a new template is tried.
RETRY_AFTER_S = 60.0

_KERNEL_MODULES = ("ipykernel_launcher", "ipykernel")
# launch_kernel arguments the fork launcher honours; any other Popen argument needs exec.
_LAUNCH_ARGS = frozenset({"stdin", "stdout", "stderr", "env", "cwd", "independent"})
# Read by the interpreter at start-up, so a template serves only kernels that
# agree on them: PYTHON* (paths, flags, hash seed), the locale (the filesystem
# and stdio encodings) and HOME (where the user site-packages directory is).
_STARTUP_VARS = frozenset({"HOME", "LANG", "LC_ALL", "LC_CTYPE"})
# Read by ipykernel at *import* time (class-level trait defaults), so never
# given to the template: JPY_PARENT_PID would make every forked kernel watch
# the wrong parent (its getppid() is the template).
_IMPORT_TIME_VARS = frozenset({"JPY_PARENT_PID", "JPY_INTERRUPT_EVENT"})
_REPLY_BYTES = 1 << 16


class ForkUnavailable(Exception):
    """This kernel cannot be forked; the message says why. It is started by exec instead."""


class _TemplateDied(ForkUnavailable):
    """The template died (found dead, or during a request): a new one may be tried."""


class _RetryLater(ForkUnavailable):
    """The template could not start or refused to fork: exec for RETRY_AFTER_S."""


class _Refused(_RetryLater):
    """The template found itself unsafe to fork (a thread, a zmq context, ...)."""


# -- what to fork ------------------------------------------------------------------------

TemplateKey = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class ForkPlan:
    """A kernel command the fork launcher can run, taken apart."""

    #: The interpreter as the spec names it (found on PATH): a template runs it
    #: by this path, not its realpath, so that a virtualenv's python stays in its venv.
    python: str
    module: str
    #: The arguments after ``-m <module>``.
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdin: Any
    stdout: Any
    stderr: Any
    independent: bool
    #: The whole command, as exec would have run it.
    args: list[str]
    key: TemplateKey


def plan_fork(cmd: list[str], kw: Mapping[str, Any]) -> ForkPlan:
    """Take ``cmd`` and launch_kernel's ``kw`` apart for a fork.

    Raises
    ------
    ForkUnavailable
        If the kernel must be started by exec; the message says why.
    """
    if not (
        sys.platform.startswith("linux")
        and hasattr(os, "pidfd_open")
        and hasattr(signal, "pidfd_send_signal")
        and hasattr(socket, "send_fds")
    ):
        raise ForkUnavailable("the fork launcher needs Linux pidfds and SCM_RIGHTS")
    extra = sorted(set(kw) - _LAUNCH_ARGS)
    if extra:
        raise ForkUnavailable(f"launch arguments {extra} need exec")
    argv = [os.path.expanduser(str(arg)) for arg in cmd]
    if len(argv) < 3 or argv[1] != "-m" or argv[2] not in _KERNEL_MODULES:
        raise ForkUnavailable(
            f"the command is not `<python> -m ipykernel_launcher|ipykernel ...`: {argv[:3]!r}"
        )
    tail = argv[3:]
    if "-f" not in tail[:-1]:
        raise ForkUnavailable("the command has no `-f <connection file>`")
    env = dict(os.environ if kw.get("env") is None else kw["env"])
    independent = bool(kw.get("independent", False))
    if not independent:
        # As launch_kernel: user code sees it (the forked kernel watches us
        # through a pidfd, not through ipykernel's poller).
        env["JPY_PARENT_PID"] = str(os.getpid())
    python = _find_interpreter(argv[0], env)
    for name in ("stdin", "stdout", "stderr"):
        _check_stream(name, kw.get(name))
    cwd = kw.get("cwd")
    return ForkPlan(
        python=python,
        module=argv[2],
        argv=tail,
        env=env,
        cwd=os.fspath(cwd) if cwd is not None else None,
        stdin=kw.get("stdin"),
        stdout=kw.get("stdout"),
        stderr=kw.get("stderr"),
        independent=independent,
        args=argv,
        key=_template_key(python, env),
    )


def _find_interpreter(name: str, env: Mapping[str, str]) -> str:
    path = name if os.sep in name else shutil.which(name, path=env.get("PATH", os.defpath))
    if path is None or not os.access(path, os.X_OK) or not os.path.isfile(path):
        raise ForkUnavailable(f"no interpreter {name!r} to run a template with")
    return os.path.abspath(path)


def _check_stream(name: str, value: Any) -> None:
    if value is None or value == subprocess.DEVNULL:
        return
    if name == "stderr" and value == subprocess.STDOUT:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    if callable(getattr(value, "fileno", None)):
        return
    raise ForkUnavailable(f"{name}={value!r} needs exec (a pipe to the kernel)")


def _template_key(python: str, env: Mapping[str, str]) -> TemplateKey:
    """Which template may fork this kernel: same interpreter, venv and start-up variables.

    The realpath alone would let a virtualenv's python (a symlink to the base
    interpreter) share the base interpreter's template and miss the venv's
    site-packages: Python finds pyvenv.cfg next to the path it was started
    by, not next to its realpath.
    """
    venv = ""
    for directory in (os.path.dirname(python), os.path.dirname(os.path.dirname(python))):
        if os.path.isfile(os.path.join(directory, "pyvenv.cfg")):
            venv = directory
            break
    startup = tuple(sorted((k, v) for k, v in env.items() if _is_startup_var(k)))
    return (os.path.realpath(python), venv, startup)


def _is_startup_var(name: str) -> bool:
    return name.startswith("PYTHON") or name in _STARTUP_VARS


def _template_env(key: TemplateKey) -> dict[str, str]:
    """The template's environment: ours, with the key's start-up variables.

    Not the first kernel's environment: a template serves many kernels, and
    whatever a module reads from the environment at import time must not
    carry one kernel's variables into the next (each kernel gets its own
    environment after the fork).
    """
    env = {
        k: v for k, v in os.environ.items() if not _is_startup_var(k) and k not in _IMPORT_TIME_VARS
    }
    env.update(key[2])
    return env


# -- a template and our end of its socket -----------------------------------------------


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` s (None: wait as long as it takes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    return bool(poller.poll(ms))


class _Template:
    """One template process: start, fork requests, exit reports, death.

    All socket I/O happens under ``_lock``: a fork request holds it from the
    request to the reply (the template answers in order, in milliseconds), and
    a thread that needs an exit code takes it to read the socket until the
    report comes. Reports read meanwhile by anyone wait in ``_exits``.
    """

    def __init__(self, key: TemplateKey, python: str) -> None:
        self.key = key
        self.python = python
        self._lock = threading.Lock()
        # The process that started it: a fork of ours must never read its socket
        # (it would steal our messages) or kill it.
        self._owner = os.getpid()
        self._sock: socket.socket | None = None
        self._pidfd: int | None = None
        self.pid: int | None = None
        self._next_id = 0
        self._exits: dict[int, int] = {}
        self.dead = False
        self.death_reason = ""

    def __repr__(self) -> str:
        return f"<fork template {self.python} pid={self.pid} dead={self.dead}>"

    # -- life and death ----------------------------------------------------------------

    def _start(self) -> None:
        """Start the template and wait until it has imported ipykernel (under ``_lock``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Both ends are close-on-exec; the dup2 below makes the template's
            # end inheritable in the template only, so kernels exec'd by
            # other threads meanwhile never inherit it.
            target = 3 if theirs.fileno() != 3 else 4
            try:
                pid = os.posix_spawn(
                    self.python,
                    [self.python, TEMPLATE_SCRIPT, str(target), str(os.getpid())],
                    _template_env(self.key),
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, theirs.fileno(), target),
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    ],
                    # Out of our terminal's process group: a Ctrl-C meant for
                    # us must not kill every future kernel's template.
                    setsid=True,
                )
            except OSError as e:
                raise _RetryLater(f"cannot run {self.python}: {e}") from None
        finally:
            theirs.close()
        # posix_spawn rather than Popen: Popen would warn at our exit that the
        # template "is still running", which it is, on purpose (see _template).
        self.pid = pid
        self._sock = ours
        ours.setblocking(False)
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None
        try:
            msg, fds = self._receive(time.monotonic() + TEMPLATE_START_TIMEOUT_S, "start")
        except ForkUnavailable as e:
            self._die(str(e))
            raise _RetryLater(f"the template could not start: {e}") from None
        _close_fds(fds)
        if msg.get("op") != "ready":
            self._die(f"template failed: {msg.get('error', msg)}")
            raise _RetryLater(f"the template could not start: {msg.get('error', msg)}")

    def alive(self) -> bool:
        """Whether the template is running (noticing its death, if it died)."""
        if self.dead:
            return False
        if self._pidfd is not None and _readable(self._pidfd, 0):
            self._die("the template process exited")
            return False
        return True

    def _die(self, reason: str) -> None:
        """Forget a dead (or hopeless) template: kill it if need be, reap it, close our end."""
        if self.dead:
            return
        self.dead = True
        self.death_reason = reason
        if self._owner != os.getpid():
            return
        pid, pidfd = self.pid, self._pidfd
        if pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            # SIGKILLed: gone in a moment; bounded all the same.
            _readable(pidfd, 5.0)
            os.close(pidfd)
            self._pidfd = None
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def discard(self, reason: str) -> None:
        """Kill and forget the template (it misbehaved), from outside a request."""
        if self._lock.acquire(timeout=REQUEST_TIMEOUT_S + TEMPLATE_START_TIMEOUT_S):
            try:
                self._die(reason)
            finally:
                self._lock.release()

    def abandon(self) -> None:
        """In a forked child of our process: close our copies, touch nothing else."""
        self.dead = True
        self.death_reason = "inherited from the process that started it"
        for fd in (self._pidfd,):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pidfd = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # -- messages --------------------------------------------------------------------------

    def _receive(self, deadline: float, waiting_for: str) -> tuple[dict[str, Any], list[int]]:
        """Read one message (under ``_lock``); the template dies on end of file or timeout.

        Exit reports read on the way are kept in ``_exits``; unless
        ``waiting_for`` is "exit", reading goes on past them. A report that is
        late is no reason to kill the template (TimeoutError then).
        """
        sock = self._sock
        if sock is None:
            raise _TemplateDied(self.death_reason or "the template is gone")
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _REPLY_BYTES, 1, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining > 0 and _readable(sock.fileno(), remaining):
                    continue
                if waiting_for == "exit":
                    raise TimeoutError(waiting_for) from None
                self._die(f"no answer to {waiting_for} within the time limit")
                raise ForkUnavailable(
                    f"the template for {self.python} did not answer ({waiting_for}): killed"
                ) from None
            except OSError as e:
                self._die(f"socket error: {e}")
                raise _TemplateDied(f"the template's socket failed: {e}") from None
            if not data:
                self._die("the template exited")
                raise _TemplateDied("the template exited")
            msg = json.loads(data)
            if msg.get("op") == "exited":
                _close_fds(fds)
                self._exits[int(msg["id"])] = int(msg["returncode"])
                if waiting_for != "exit":
                    continue
            return msg, fds

    def _send(self, msg: dict[str, Any], fds: list[int], deadline: float) -> None:
        sock = self._sock
        if sock is None:
            raise _TemplateDied(self.death_reason or "the template is gone")
        data = json.dumps(msg).encode()
        while True:
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if remaining > 0 and poller.poll(int(remaining * 1000) + 1):
                    continue
                self._die("it took no request within the time limit")
                raise ForkUnavailable(
                    f"the template for {self.python} took no request: killed"
                ) from None
            except OSError as e:
                if e.errno == errno.EMSGSIZE:  # an environment too big for one message
                    raise ForkUnavailable(f"the request is too large ({len(data)} bytes)") from None
                self._die(f"socket error: {e}")
                raise _TemplateDied(f"the template's socket failed: {e}") from None

    # -- requests ----------------------------------------------------------------------------

    def fork(self, plan: ForkPlan, stdio: list[int]) -> tuple[int, int, int]:
        """Fork a kernel for ``plan`` with ``stdio`` fds -> (request id, pid, pidfd).

        Raises
        ------
        OSError
            If the kernel could not be set up (a bad cwd), as exec would.
        ForkUnavailable
            If it must be started by exec (a subclass says whether to retry).
        """
        if self._owner != os.getpid():
            raise _TemplateDied("a template is used only by the process that started it")
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        if not self._lock.acquire(timeout=REQUEST_TIMEOUT_S + TEMPLATE_START_TIMEOUT_S):
            raise ForkUnavailable("the template is busy (its lock was not released)")
        try:
            if self._sock is None and not self.dead:
                self._start()
                deadline = time.monotonic() + REQUEST_TIMEOUT_S
            if not self.alive():
                raise _TemplateDied(self.death_reason)
            self._next_id += 1
            request_id = self._next_id
            request = {
                "op": "fork",
                "id": request_id,
                "module": plan.module,
                "argv": plan.argv,
                "env": plan.env,
                "cwd": plan.cwd,
                "watch_manager": not plan.independent,
            }
            self._send(request, stdio, deadline)
            msg, fds = self._receive(deadline, "fork")
        finally:
            self._lock.release()
        op = msg.get("op")
        if op == "forked" and len(fds) == 1 and msg.get("id") == request_id:
            return request_id, int(msg["pid"]), fds[0]
        _close_fds(fds)
        if op == "refused":
            raise _Refused(f"the template refused to fork: {msg.get('error')}")
        code = int(msg.get("errno") or 0)
        if op == "failed" and code:
            raise OSError(code, str(msg.get("error")))
        raise ForkUnavailable(f"the template could not fork: {msg.get('error', msg)}")

    def exit_code(self, request_id: int, log: Logger | None = None) -> int:
        """The exit code the template reported for ``request_id`` (which has exited).

        Waits at most :data:`REPORT_TIMEOUT_S` for the report (plus a request
        under way); :data:`UNKNOWN_RETURNCODE` if it never comes.
        """
        code: int | None = None
        if self._owner == os.getpid() and self._lock.acquire(
            timeout=REQUEST_TIMEOUT_S + REPORT_TIMEOUT_S
        ):
            try:
                deadline = time.monotonic() + REPORT_TIMEOUT_S
                while request_id not in self._exits and not self.dead:
                    try:
                        self._receive(deadline, "exit")
                    except (ForkUnavailable, TimeoutError):
                        break
                code = self._exits.pop(request_id, None)
                if code is not None and self._sock is not None:
                    # The zombie may go now. Never blocks (and never needs to
                    # arrive: the template reaps after REAP_AFTER_S anyway).
                    with contextlib.suppress(OSError):
                        self._sock.send(json.dumps({"op": "reap", "id": request_id}).encode())
            finally:
                self._lock.release()
        if code is None:
            (log or _log).warning(
                "the exit code of a forked kernel is unknown (%s); reporting %d",
                self.death_reason or "no report from its template",
                UNKNOWN_RETURNCODE,
            )
            code = UNKNOWN_RETURNCODE
        return code


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_log = logging.getLogger(__name__)

# The current template of each key; older ones live on in their kernels' process objects.
_templates: dict[TemplateKey, _Template] = {}
# Every template this process made, for the at-fork clean-up.
_every_template: weakref.WeakSet[_Template] = weakref.WeakSet()
# key -> (monotonic time before which exec is used, why)
_retry_after: dict[TemplateKey, tuple[float, str]] = {}
_registry_lock = threading.Lock()


def _template_for(plan: ForkPlan) -> _Template:
    with _registry_lock:
        hold = _retry_after.get(plan.key)
        if hold is not None:
            if time.monotonic() < hold[0]:
                raise ForkUnavailable(
                    f"the template for {plan.python} failed recently ({hold[1]}); "
                    f"not retried for {hold[0] - time.monotonic():.0f} s"
                )
            del _retry_after[plan.key]
        template = _templates.get(plan.key)
        if template is None or template.dead:
            template = _Template(plan.key, plan.python)
            _templates[plan.key] = template
            _every_template.add(template)
        return template


def _forget_in_child() -> None:
    """After os.fork() in our process: the templates are the parent's, not the child's."""
    global _registry_lock
    _registry_lock = threading.Lock()
    for template in list(_every_template):
        template.abandon()
    _templates.clear()
    _retry_after.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_in_child)


# -- the forked kernel as a Popen ---------------------------------------------------------


class ForkedKernelProcess(subprocess.Popen[bytes]):
    """A forked kernel, with the parts of :class:`subprocess.Popen` a manager uses.

    ``pid``, ``returncode``, ``poll()``, ``wait(timeout)`` (raising
    TimeoutExpired), ``send_signal()``, ``terminate()``, ``kill()``, ``args``
    and ``stdin``/``stdout``/``stderr`` (always None: the kernel's stdio are
    files or ours, never pipes). A Popen subclass so that it fits wherever a
    Popen is expected (``KernelManager.kernel`` and what uses it), but
    Popen.__init__ is never called: it would start a process.

    Signals go through a pidfd, so they can never reach another process given
    the same pid; the exit is seen on that pidfd the instant it happens, and
    the exit code comes from the template (see the module's docstring).
    """

    def __init__(
        self,
        args: list[str],
        pid: int,
        pidfd: int,
        template: _Template,
        request_id: int,
        log: Logger | None = None,
    ) -> None:
        self.args = args
        self.pid = pid
        self.returncode = None
        self.stdin = self.stdout = self.stderr = None
        self._pidfd = pidfd
        self._template = template
        self._request_id = request_id
        self._log = log
        # One thread fetches the code; the others wait for it.
        self._code_lock = threading.Lock()
        # Closed with the object, not at the exit: another thread may be
        # polling it then, and a closed number can be reused at once.
        self._close_pidfd = weakref.finalize(self, os.close, pidfd)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: pid {self.pid} returncode: {self.returncode}>"

    def poll(self) -> int | None:
        """The exit code if the kernel has exited, else None."""
        if self.returncode is not None:
            return int(self.returncode)
        if not _readable(self._pidfd, 0):
            return None
        return self._fetch_code()

    def _fetch_code(self) -> int:
        with self._code_lock:
            if self.returncode is None:
                self.returncode = self._template.exit_code(self._request_id, self._log)
            return int(self.returncode)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the kernel to exit and return its exit code.

        Raises
        ------
        subprocess.TimeoutExpired
            If it is still running after ``timeout`` seconds.
        """
        if self.returncode is not None:
            return int(self.returncode)
        if not _readable(self._pidfd, timeout):
            raise subprocess.TimeoutExpired(self.args, timeout if timeout is not None else 0)
        return self._fetch_code()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the kernel (nothing if it has exited, as Popen)."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, sig)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Wait for the kernel to exit: it has no pipes, so there is nothing to read."""
        self.wait(timeout)
        return None, None

    def __enter__(self) -> ForkedKernelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def __del__(self) -> None:
        # Popen.__del__ looks for a child of ours to reap later: there is none.
        pass


# -- the entry point ----------------------------------------------------------------------


def launch_forked(
    cmd: list[str], kw: Mapping[str, Any], log: Logger | None = None
) -> ForkedKernelProcess | None:
    """Fork the kernel ``cmd`` (with launch_kernel's ``kw``) from a template.

    Returns None when it must be started by exec instead, after a debug line
    saying why (a warning when a template misbehaved).

    Raises
    ------
    OSError
        If the kernel itself could not be set up (a bad ``cwd``), as exec would.
    """
    log = log or _log
    try:
        plan = plan_fork(cmd, kw)
    except ForkUnavailable as e:
        log.debug("Not forking the kernel (%s): starting it by exec", e)
        return None
    # A template found dead is replaced once: it may have died idle, long ago.
    for attempt in (1, 2):
        try:
            template = _template_for(plan)
        except ForkUnavailable as e:
            log.debug("Not forking the kernel (%s): starting it by exec", e)
            return None
        try:
            return _fork_from(template, plan, log)
        except _TemplateDied as e:
            if attempt == 2:
                log.debug("Not forking the kernel (%s): starting it by exec", e)
                return None
        except _RetryLater as e:
            template.discard(str(e))
            with _registry_lock:
                _retry_after[plan.key] = (time.monotonic() + RETRY_AFTER_S, str(e))
            # A refusal means something in that interpreter's start-up broke a
            # rule of the template (a thread, say): worth a warning, not a crash.
            level = logging.WARNING if isinstance(e, _Refused) else logging.DEBUG
            log.log(level, "Not forking the kernel (%s): starting it by exec", e)
            return None
        except ForkUnavailable as e:
            log.warning("Not forking the kernel (%s): starting it by exec", e)
            return None
    return None


def _fork_from(template: _Template, plan: ForkPlan, log: Logger) -> ForkedKernelProcess:
    opened: list[int] = []

    def fd_of(value: Any, default: int, flags: int) -> int:
        if value is None:
            try:
                os.fstat(default)
            except OSError:  # ours is closed: the kernel gets /dev/null
                value = subprocess.DEVNULL
            else:
                return default
        if value == subprocess.DEVNULL:
            fd = os.open(os.devnull, flags)
            opened.append(fd)
            return fd
        if isinstance(value, int):
            return value
        stream: IO[Any] = value
        return stream.fileno()

    try:
        # stdin: /dev/null, never our own (a kernel must not read our terminal).
        stdin = fd_of(plan.stdin if plan.stdin is not None else subprocess.DEVNULL, 0, os.O_RDONLY)
        stdout = fd_of(plan.stdout, 1, os.O_WRONLY)
        stderr = stdout if plan.stderr == subprocess.STDOUT else fd_of(plan.stderr, 2, os.O_WRONLY)
        try:
            request_id, pid, pidfd = template.fork(plan, [stdin, stdout, stderr])
        except OSError as e:
            where = f" in {plan.cwd!r}" if plan.cwd is not None else ""
            raise type(e)(
                e.errno, f"cannot start kernel command {plan.args!r}{where}: {e.strerror}"
            ) from None
    finally:
        _close_fds(opened)
    log.debug("Forked kernel %d from template %d: %s", pid, template.pid, plan.args)
    return ForkedKernelProcess(plan.args, pid, pidfd, template, request_id, log)
