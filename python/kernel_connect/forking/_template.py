"""The fork template: a process that has imported ipykernel and forks one kernel per request.

Started by :mod:`kernel_connect.forking.launcher` as ``<python> <this file>
<socket fd> <manager pid>``, with the kernel spec's own interpreter. It runs
as a script, by path, so that interpreter needs ipykernel but not
kernel-connect: this module imports only the standard library (and, as a
kernel does, ipykernel and what it needs).

Why it is safe to fork: the template only *imports* ipykernel, IPython, zmq
and tornado. It never makes an InteractiveShell, an IPKernelApp, a zmq
context or an event loop, and it starts no thread. Before every fork it checks
that this still holds (:func:`fork_hazards`) and refuses otherwise, because a
thread, a zmq context (its I/O threads) or a running loop would be copied
into the kernel half-alive.

Protocol, over a unix SOCK_SEQPACKET socketpair (one JSON object per message;
descriptors travel with SCM_RIGHTS):

- template -> manager, once: ``{"op": "ready", "pid": p}`` or
  ``{"op": "failed", "error": "..."}`` (it cannot import ipykernel, say).
- manager -> template: ``{"op": "fork", "id": n, "module": "ipykernel_launcher",
  "argv": [...], "env": {...}, "cwd": "..." | null, "watch_manager": bool}``
  with three fds: the kernel's stdin, stdout and stderr.
- template -> manager: ``{"op": "forked", "id": n, "pid": p}`` with one fd, a
  pidfd of the kernel; or ``{"op": "refused", "id": n, "error": "..."}`` (not
  safe to fork, nothing started); or ``{"op": "failed", "id": n, "errno": e,
  "error": "..."}`` (the child could not be set up, e.g. a bad cwd; it is gone).
- template -> manager, later: ``{"op": "exited", "id": n, "pid": p,
  "returncode": rc}`` (rc as Popen gives it: negative for a signal).
- manager -> template: ``{"op": "reap", "id": n}``: the manager has the exit
  code; the template reaps the zombie now.

The kernels are the template's children, so it waits for them; it reports an
exit but leaves the zombie in place until the manager has read the code (at
most :data:`REAP_AFTER_S`), because the zombie holds the kernel's pid and so
its process-group id: the manager's ``killpg``, and anything that opens a
pidfd by pid, can then never reach a stranger that was given the same pid,
exactly as with an exec kernel, whose zombie waits for ``Popen.wait``.

The template ends when its socket reaches end of file or the manager process
exits (it watches a pidfd of the manager). PR_SET_PDEATHSIG is not used: its
"parent" is the *thread* that started the process, so a template started from
a worker thread would be killed as soon as that thread ended (seen here).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import select
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

# The modules a kernel needs that are safe to import ahead of a fork: nothing
# of theirs runs until a kernel is made. (ipykernel.debugger, which imports
# debugpy and prints a warning at import, is left to each kernel, as an exec
# kernel does it, so that its stderr is the same.)
PRELOAD = ("zmq", "tornado", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel")
# The modules a fork request may run.
KERNEL_MODULES = ("ipykernel_launcher", "ipykernel")
#: Longest wait for an exited kernel's zombie to be claimed by the manager.
REAP_AFTER_S = 60.0
# Longest wait for a forked child to finish its set-up (a few syscalls); well
# under the manager's request timeout, so the template answers before it is given up.
_SETUP_TIMEOUT_S = 5.0
# Room for one request: the kernel's environment is the big part.
_RECV_BYTES = 1 << 20


def fork_hazards(allowed_fds: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """What in this process would make a fork unsafe ([] when it is safe).

    A thread (Python's, or a C library's: /proc counts both), a zmq context, an
    event loop or an open socket other than ``allowed_fds`` would be copied
    into the child in a state nothing there can repair.
    """
    hazards: list[str] = []
    if threading.active_count() != 1:
        hazards.append(f"{threading.active_count()} Python threads")
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if tasks != 1:
        hazards.append(f"{tasks} OS threads")
    zmq = sys.modules.get("zmq")
    context = getattr(getattr(zmq, "Context", None), "_instance", None)
    if context is not None and not getattr(context, "closed", False):
        hazards.append("a zmq context")
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        if asyncio._get_running_loop() is not None:
            hazards.append("a running asyncio loop")
        # A loop made by get_event_loop() and set as current, even if idle.
        policy = getattr(asyncio.events, "_event_loop_policy", None)
        local = getattr(policy, "_local", None)
        if getattr(local, "_loop", None) is not None:
            hazards.append("an asyncio event loop")
    sockets = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in allowed_fds:
                continue
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue  # the listing's own descriptor, closed already
            if target.startswith("socket:"):
                sockets.append(fd)
    if sockets:
        hazards.append(f"open sockets (fds {sockets})")
    return hazards


def _returncode(pid: int) -> int | None:
    """The exit status of child ``pid`` as Popen gives it, leaving it a zombie; None if running."""
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status  # CLD_KILLED, CLD_DUMPED


class Template:
    """The template's state and its loop: requests in, kernels out, exits reported."""

    def __init__(self, sock: socket.socket, manager_pidfd: int) -> None:
        self.sock = sock
        self.manager_pidfd = manager_pidfd
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.poller.register(manager_pidfd, select.POLLIN)
        # Running kernels: pidfd -> (request id, pid).
        self.running: dict[int, tuple[int, int]] = {}
        # Exited, reported, not yet reaped: request id -> (pid, reap deadline).
        self.zombies: dict[int, tuple[int, float]] = {}
        # Messages the manager has not taken yet (its socket buffer was full):
        # the template never blocks on a slow reader.
        self.outbox: list[tuple[bytes, list[int]]] = []

    # -- messages ----------------------------------------------------------

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        """Queue ``msg`` (and ``fds``, closed once sent) and send what the socket takes."""
        self.outbox.append((json.dumps(msg).encode(), fds or []))
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            data, fds = self.outbox[0]
            try:
                socket.send_fds(self.sock, [data], fds)
            except BlockingIOError:
                break
            self.outbox.pop(0)
            for fd in fds:
                os.close(fd)
        events = select.POLLIN | (select.POLLOUT if self.outbox else 0)
        self.poller.modify(self.sock, events)

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        while True:
            now = time.monotonic()
            deadlines = [deadline for _, deadline in self.zombies.values()]
            timeout = None if not deadlines else max(0, int((min(deadlines) - now) * 1000) + 1)
            for fd, events in self.poller.poll(timeout):
                if fd == self.manager_pidfd:
                    return 0  # the manager is gone; its kernels watch it themselves
                if fd == self.sock.fileno():
                    if events & select.POLLOUT:
                        self.flush()
                    readable = events & (select.POLLIN | select.POLLHUP | select.POLLERR)
                    if readable and not self.receive():
                        return 0
                elif fd in self.running:
                    self.report_exit(fd)
            self.reap_overdue()

    def receive(self) -> bool:
        """Handle one message; False at end of file."""
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, _RECV_BYTES, 3)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        msg: Any = None
        try:
            msg = json.loads(data)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("request truncated")
            op = msg.get("op")
            if op == "fork":
                stdio, fds = fds, []  # fork() closes them, whatever happens
                self.fork(msg, stdio)
            elif op == "reap":
                self.reap(int(msg["id"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # A malformed message: answer it if it can be answered, never die of it.
            request_id = msg.get("id") if isinstance(msg, dict) else None
            self.send({"op": "failed", "id": request_id, "errno": 0, "error": repr(e)})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def fork(self, req: dict[str, Any], stdio: list[int]) -> None:
        """Fork one kernel for ``req`` and answer; always closes ``stdio``."""
        request_id = int(req["id"])
        try:
            if len(stdio) != 3 or req.get("module") not in KERNEL_MODULES:
                raise ValueError("a fork request needs three fds and an ipykernel module")
            allowed = {self.sock.fileno(), self.manager_pidfd, *stdio, *self.running}
            hazards = fork_hazards(allowed)
            if hazards:
                self.send({"op": "refused", "id": request_id, "error": ", ".join(hazards)})
                return
            err_r, err_w = os.pipe()
            try:
                pid = os.fork()
            except OSError as e:  # out of processes or memory: the manager execs instead
                os.close(err_r)
                os.close(err_w)
                self.send({"op": "refused", "id": request_id, "error": f"fork: {e}"})
                return
            if pid == 0:
                os.close(err_r)
                _child(req, stdio, err_w, self)
            os.close(err_w)
            # Ours until we reap it, so this pidfd is surely this child's.
            pidfd = os.pidfd_open(pid)
            try:
                error = _read_setup_result(err_r, pidfd)
            finally:
                os.close(err_r)
            if error is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                os.waitpid(pid, 0)
                os.close(pidfd)
                self.send({"op": "failed", "id": request_id, **error})
                return
            self.running[pidfd] = (request_id, pid)
            self.poller.register(pidfd, select.POLLIN)
            # A dup travels (and is closed once sent); we keep ours to watch it.
            self.send({"op": "forked", "id": request_id, "pid": pid}, [os.dup(pidfd)])
        finally:
            for fd in stdio:
                os.close(fd)

    def report_exit(self, pidfd: int) -> None:
        request_id, pid = self.running[pidfd]
        code = _returncode(pid)
        if code is None:
            return
        self.poller.unregister(pidfd)
        del self.running[pidfd]
        os.close(pidfd)
        self.zombies[request_id] = (pid, time.monotonic() + REAP_AFTER_S)
        self.send({"op": "exited", "id": request_id, "pid": pid, "returncode": code})

    def reap(self, request_id: int) -> None:
        entry = self.zombies.pop(request_id, None)
        if entry is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(entry[0], 0)  # a zombie: does not block

    def reap_overdue(self) -> None:
        now = time.monotonic()
        for request_id, (_, deadline) in list(self.zombies.items()):
            if deadline <= now:
                self.reap(request_id)


def _read_setup_result(err_r: int, pidfd: int) -> dict[str, Any] | None:
    """Wait for the child to finish its set-up: None when it did, else the error."""
    poller = select.poll()
    poller.register(err_r, select.POLLIN)
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
            return {"errno": 0, "error": "the forked kernel did not finish its set-up"}
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        return None  # end of file without a word: set up
    try:
        error: dict[str, Any] = json.loads(data)
    except ValueError:
        return {"errno": 0, "error": data.decode("utf-8", "replace")}
    return error


# -- the child: from fork to a running kernel ---------------------------------------


def _child(req: dict[str, Any], stdio: list[int], err_w: int, template: Template) -> NoReturn:
    """Become the kernel: set up as an exec kernel would be, then run ipykernel.

    Never returns into the template's loop: it ends in os._exit.
    """
    try:
        # Own session and process group (pgid == pid): signals to the group
        # reach the kernel and what it starts, as for an exec kernel.
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        watch = bool(req.get("watch_manager", True))
        keep = sorted({0, 1, 2, err_w} | ({template.manager_pidfd} if watch else set()))
        # The template's socket object must not own (and someday close) a
        # number that ipykernel will reuse.
        template.sock.detach()
        _close_all_but(keep)
        cwd = req.get("cwd")
        if cwd:
            try:
                os.chdir(cwd)
            except OSError as e:
                # Reported as exec reports it: an OSError with this errno.
                _setup_failed(err_w, e.errno or 0, e.strerror or str(e))
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in req["env"].items()})
        module = str(req["module"])
        argv = [str(a) for a in req["argv"]]
        sys.argv = [_module_path(module), *argv]
        sys.orig_argv = [sys.executable, "-m", module, *argv]
        if module == "ipykernel" and not _safe_path():
            # `python -m ipykernel` keeps the cwd first on sys.path
            # (ipykernel_launcher removes it, as the template did its own).
            sys.path.insert(0, os.getcwd())
        if isinstance(sys.stdout, io.TextIOWrapper):
            # Buffered as Python would for this stdout (a terminal: by line).
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        if watch:
            threading.Thread(
                target=_exit_with_manager,
                args=(template.manager_pidfd,),
                name="kernel-connect-manager-watch",
                daemon=True,
            ).start()
    except BaseException as e:  # reported to the manager
        _setup_failed(err_w, 0, f"kernel set-up failed: {e!r}")
    os.close(err_w)  # end of file: set up
    _run_kernel(argv)


def _safe_path() -> bool:
    """Whether sys.path lacks the script's (or cwd's) entry: -P / PYTHONSAFEPATH (3.11+)."""
    return bool(getattr(sys.flags, "safe_path", False))


def _module_path(module: str) -> str:
    """What sys.argv[0] is under ``python -m module``: the file that runs."""
    spec = importlib.util.find_spec(module if module != "ipykernel" else "ipykernel.__main__")
    return spec.origin if spec is not None and spec.origin else module


def _close_all_but(keep: list[int]) -> None:
    """Close every descriptor but ``keep`` (sorted): the template's socket, pidfds, ..."""
    low = 0
    for fd in keep:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _setup_failed(err_w: int, errno: int, message: str) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(err_w, json.dumps({"errno": errno, "error": message}).encode())
    os._exit(127)


def _exit_with_manager(manager_pidfd: int) -> None:
    """Exit when the manager process exits (SIGKILL included), as an exec kernel does
    through JPY_PARENT_PID: ipykernel's own watch compares getppid(), which for a
    forked kernel is the template, not the manager."""
    poller = select.poll()
    poller.register(manager_pidfd, select.POLLIN)
    while not poller.poll():
        pass
    os._exit(1)


def _run_kernel(argv: list[str]) -> NoReturn:
    """Run ipykernel as ``python -m ipykernel_launcher`` would, then exit as Python would."""
    code = 0
    interrupted = False
    try:
        kernelapp: Any = importlib.import_module("ipykernel.kernelapp")
        # parent_handle=1: no ParentPollerUnix (getppid() is the template, so
        # it would see a "dead" parent) and no "To connect ... --existing"
        # banner on stdout (printed when it is 0): what an exec kernel given
        # JPY_PARENT_PID does. The manager watch above replaces the poller.
        kernelapp.IPKernelApp.launch_instance(argv=argv, parent_handle=1)
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:  # printed, as the interpreter would
        traceback.print_exc()
        code = 1
    _finalize()
    if interrupted:
        # Python exits by SIGINT after an uncaught KeyboardInterrupt (-2 to Popen).
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    os._exit(code)


def _exit_code(code: object) -> int:
    """The process exit status for ``SystemExit(code)``, as the interpreter computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _finalize() -> None:
    """What the interpreter does at exit that a kernel relies on: join non-daemon
    threads, run atexit hooks (IPython's history, ipykernel's clean-up), flush."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(BaseException):
            shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(BaseException):
            if stream is not None:
                stream.flush()


# -- start-up -------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Run the template on the socket ``argv[1]`` for the manager process ``argv[2]``."""
    sock_fd, manager_pid = int(argv[1]), int(argv[2])
    # Nothing but our socket (and stdio) from the manager: stray inheritable
    # descriptors would otherwise live on in the template and every kernel.
    _close_all_but([0, 1, 2, sock_fd])
    sock = socket.socket(fileno=sock_fd)
    try:
        manager_pidfd = os.pidfd_open(manager_pid)
    except OSError:
        return 0
    if os.getppid() != manager_pid:
        return 0  # the manager died before we could watch it
    os.chdir("/")  # hold no directory busy
    if not _safe_path():
        # This script's directory, which `python -m ipykernel_launcher` would
        # not have (its cwd entry it removes itself).
        del sys.path[0]
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except BaseException as e:  # reported to the manager
        socket.send_fds(sock, [json.dumps({"op": "failed", "error": repr(e)}).encode()], [])
        return 1
    sock.setblocking(False)
    template = Template(sock, manager_pidfd)
    template.send({"op": "ready", "pid": os.getpid()})
    return template.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
