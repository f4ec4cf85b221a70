"""Exceptions raised while starting, reaching and stopping kernels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelDeath:
    """How a kernel ended, as far as whoever watched it can tell.

    Attributes
    ----------
    description : str
        For people: e.g. ``killed by SIGKILL`` (with the stderr tail when
        captured) or ``no heartbeat echo for 3.0 s``.
    exit_code : int or None
        The process's exit status (negative: killed by that signal); None when
        only the heartbeat was watched.
    stderr_tail : str
        The last lines the kernel wrote to stderr, when they were captured.
    """

    description: str
    exit_code: int | None = None
    stderr_tail: str = ""


class KernelDiedError(RuntimeError):
    """The kernel died (at start-up, or while a client waited for it); the message says how.

    Raised as soon as the death is noticed: from the kernel's process when our
    manager started it, from its heartbeat otherwise.

    Attributes
    ----------
    exit_code : int or None
        The process's exit status (negative: killed by that signal); None when
        not known (a kernel watched by its heartbeat only).
    stderr_tail : str
        The last lines the kernel wrote to stderr, when they were captured.
    """

    def __init__(self, message: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class KernelTimeoutError(RuntimeError):
    """A kernel did not answer (ready, reply or shutdown) within the timeout."""


class KernelStartCancelledError(RuntimeError):
    """``start_kernel`` gave up because ``shutdown_kernel`` was called while it ran.

    Raised by the starting thread when another thread shut the manager down
    before the kernel had started (in zero-race mode: before it had published
    its ports). By then the kernel process is gone, its connection file removed
    and its ports returned.
    """


__all__ = ["KernelDeath", "KernelDiedError", "KernelStartCancelledError", "KernelTimeoutError"]
