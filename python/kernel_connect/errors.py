"""Exceptions raised while starting, reaching and stopping kernels."""

from __future__ import annotations


class KernelDiedError(RuntimeError):
    """The kernel process exited (e.g. during start-up); the message says how.

    Attributes
    ----------
    exit_code : int or None
        The process's exit status (negative: killed by that signal).
    stderr_tail : str
        The last lines the kernel wrote to stderr, when they were captured.
    """

    def __init__(self, message: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class KernelTimeoutError(RuntimeError):
    """A kernel did not answer (ready, reply or shutdown) within the timeout."""


__all__ = ["KernelDiedError", "KernelTimeoutError"]
