"""launch_kernel: start a kernel process the way Jupyter kernels expect to be started."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO, Any

# Popen's stream arguments: a constant such as PIPE/DEVNULL, a descriptor, or a file.
Stream = int | IO[Any] | None


def launch_kernel(
    cmd: list[str],
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    env: dict[str, str] | None = None,
    independent: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Launch a kernel process.

    Parameters
    ----------
    cmd : list of str
        The command; ``~`` in any argument is expanded.
    stdin, stdout, stderr : optional
        As for :class:`subprocess.Popen`. When ``stdin`` is None the kernel gets a
        pipe that is closed right after the launch (``proc.stdin`` is then None),
        so it never waits on our input.
    env : dict, optional
        The kernel's whole environment (default: a copy of ours). Not modified.
    independent : bool
        If False (default) the kernel is told our pid (``JPY_PARENT_PID``) and
        exits when we die; if True it outlives us.
    cwd : path, optional
        Working directory of the kernel (default: ours).
    **kwargs
        Further :class:`subprocess.Popen` arguments.

    Returns
    -------
    subprocess.Popen
        The kernel process, leader of its own session and process group, so a
        signal to the group reaches the kernel and everything it started.

    Raises
    ------
    OSError
        When the command cannot be started; the message names the command and
        PATH, never any other environment value.
    """
    kernel_env = dict(os.environ if env is None else env)
    if not independent:
        kernel_env["JPY_PARENT_PID"] = str(os.getpid())
    argv = [os.path.expanduser(str(arg)) for arg in cmd]
    popen_kwargs: dict[str, Any] = dict(kwargs)
    popen_kwargs.update(
        stdin=subprocess.PIPE if stdin is None else stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=kernel_env,
    )
    if sys.platform == "win32":  # pragma: no cover - POSIX is what this package targets
        if independent:
            popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        popen_kwargs["close_fds"] = False
    else:
        # Own session => own process group: interrupts and kills reach the
        # kernel's children too, and our terminal's Ctrl-C does not reach it.
        popen_kwargs["start_new_session"] = True
    try:
        proc = subprocess.Popen(argv, **popen_kwargs)
    except OSError as e:
        path = kernel_env.get("PATH", os.defpath)
        where = f" in {os.fspath(cwd)!r}" if cwd is not None else ""
        raise type(e)(
            e.errno,
            f"cannot start kernel command {argv!r}{where}: {e.strerror} (PATH={path!r})",
        ) from None
    if stdin is None and proc.stdin is not None:
        proc.stdin.close()
        # Nothing will ever be written; None also keeps Popen.communicate() working.
        proc.stdin = None
    return proc


__all__ = ["launch_kernel"]
