"""``KernelManager.provisioner``: the kernel process, as jupyter_client's provisioners show it.

jupyter_client's KernelManager hands its kernel process to a *provisioner*
(``km.provisioner``, a ``LocalProvisioner`` for local kernels), and code
written for it reaches the process there: ``await km.provisioner.kill()`` to
simulate a crash, ``km.provisioner.pid``, ``await km.provisioner.poll()``.
kernel-connect's managers run their process themselves (one lifecycle, see
:mod:`kernel_connect.manager`), so their provisioner is a *view* of the
manager: every method acts through the manager's own steps (the same signal
sending to the process group, the same wait for the exit and reaping as a
shutdown uses), never through a second copy of them.

The lifecycle is jupyter_client's: ``km.provisioner`` is None until the first
start, then the same object for the manager's life, across restarts and after
a shutdown (``has_process`` then False). A manager that does not own its kernel
(``owns_kernel=False``) never starts one and so never has a provisioner.

It is not a subclass of jupyter_client's ``KernelProvisionerBase`` (kernel-connect
never imports jupyter_client) and has only the part of its public surface that
makes sense for a process the manager launched: launching and clean-up stay the
manager's (``start_kernel``, ``shutdown_kernel``). To launch kernels through
jupyter_client's provisioner machinery with kernel-connect's ports, see
:mod:`kernel_connect.provisioning` instead.
"""

from __future__ import annotations

import pathlib
import signal
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

    from kernel_connect.kernelspec import KernelSpec
    from kernel_connect.manager import KernelManager


class LocalProvisioner:
    """The provisioner of a kernel-connect manager: its kernel process, as jupyter_client's
    ``LocalProvisioner`` shows it.

    Made by the manager at its first start (``km.provisioner``); holds only a
    weak reference to it, so a manager that is dropped is not kept alive by its
    provisioner. Its coroutines never block and need no particular event loop,
    except :meth:`wait`, which waits in the running one.
    """

    def __init__(self, manager: KernelManager, cwd: str | None = None) -> None:
        self._manager = weakref.ref(manager)
        #: Directory the kernel was started in (for :meth:`resolve_path`).
        self.cwd = cwd

    def _km(self) -> KernelManager | None:
        return self._manager()

    def _proc(self) -> subprocess.Popen[bytes] | None:
        km = self._km()
        return km.kernel if km is not None else None

    # -- what the kernel is ------------------------------------------------------

    @property
    def kernel_id(self) -> str | None:
        """The manager's kernel id."""
        km = self._km()
        return km.kernel_id if km is not None else None

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """The kernel spec the manager starts."""
        km = self._km()
        return km.kernel_spec if km is not None else None

    @property
    def connection_info(self) -> dict[str, Any]:
        """The kernel's connection info (as ``km.get_connection_info()``).

        Holds the session key, a secret: do not log it.
        """
        km = self._km()
        return km.get_connection_info() if km is not None else {}

    # -- the process ---------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        """Whether a kernel process was launched and not yet reaped.

        True from the launch until a shutdown (or :meth:`wait`) has reaped it:
        a killed kernel still has a process until then, as in jupyter_client.
        """
        return self._proc() is not None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The kernel's process (a :class:`subprocess.Popen`), or None if none runs."""
        return self._proc()

    @property
    def pid(self) -> int | None:
        """The pid of the last kernel launched (kept after it ended, as jupyter_client)."""
        km = self._km()
        if km is None:
            return None
        proc = km.kernel
        return proc.pid if proc is not None else km._last_pid

    @property
    def pgid(self) -> int | None:
        """The kernel's process group, which signals go to (None when none runs)."""
        km = self._km()
        return km._pgid if km is not None else None

    async def poll(self) -> int | None:
        """None while the kernel runs, else its exit code (0 when there is no process,
        as jupyter_client's LocalProvisioner)."""
        km = self._km()
        proc = km.kernel if km is not None else None
        if km is None or proc is None:
            return 0
        if km._poll_alive():
            return None
        return proc.returncode

    async def wait(self) -> int | None:
        """Wait (in the running loop, without blocking it) for the kernel to exit, then
        reap it: ``has_process`` becomes False. Returns its exit code (0 if there was no
        process). As in jupyter_client, there is no timeout: bound the wait yourself.
        """
        km = self._km()
        if km is None or km.kernel is None:
            return 0
        from kernel_connect._sansio import drive_async
        from kernel_connect.manager import _serve_async

        return await drive_async(km._reap_op(), _serve_async)

    async def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel's process group (the kernel and its children),
        or to the kernel alone; nothing when no kernel runs."""
        km = self._km()
        proc = km.kernel if km is not None else None
        if km is not None and proc is not None:
            km._signal(proc, signum)

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL the kernel (and its process group) without waiting for it to die.

        A crash, as far as the manager can tell: a restarter restarts it, and
        the next shutdown reaps it and cleans up. ``restart`` is accepted for
        jupyter_client's signature.
        """
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM the kernel (and its process group) without waiting for it to end."""
        await self.send_signal(signal.SIGTERM)

    # -- policy hooks jupyter_client's managers ask a provisioner --------------------

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        """The time allowed for a polite shutdown: the manager's (``recommended``)."""
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """How long a (re)start may take: the restarter's (``recommended``)."""
        return recommended

    def resolve_path(self, path_str: str) -> str | None:
        """``path_str`` resolved against the kernel's working directory, if it exists.

        ``~`` is expanded; a relative path is taken from the directory the
        kernel was started in. None when the file does not exist.
        """
        path = pathlib.Path(path_str).expanduser()
        if not path.is_absolute() and self.cwd:
            path = (pathlib.Path(self.cwd) / path).resolve()
        return path.as_posix() if path.exists() else None

    def __repr__(self) -> str:
        # No connection info here: it holds the session key.
        return f"<{type(self).__name__} kernel_id={self.kernel_id!r} pid={self.pid!r}>"


__all__ = ["LocalProvisioner"]
