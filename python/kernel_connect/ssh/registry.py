"""Every open tunnel of this process, closed at exit and on SIGTERM.

Tunnels register here when they open and leave when they close.  An atexit
hook closes what is left; a SIGTERM handler (installed only where SIGTERM still
has its default action, so an application's own handler is never replaced)
closes them and then lets the signal end the process as it would have.

A forked child inherits the parent's tunnels but does not own them: the parent
still forwards over the same listeners, sockets and SSH connections, and
whatever the child did to them (closing a channel, waking an acceptor, ending
an ssh process) would break the parent's.  So the child starts with an empty
registry, and each inherited tunnel is told to `abandon` itself: drop its
claim without a word to anyone.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
from typing import Any, Protocol

__all__ = ["Closable", "active", "close_all", "register", "unregister"]

logger = logging.getLogger("kernel_connect.ssh")


class Closable(Protocol):
    """A tunnel as the registry sees it."""

    def close(self) -> None:
        """Stop the tunnel (in the process that opened it)."""

    def abandon(self) -> None:
        """Let go of the tunnel without stopping it (in a forked child)."""


# re-entrant: the SIGTERM handler may run while the main thread holds it
_lock = threading.RLock()
_open: list[Closable] = []
_hooks_installed = False


def register(tunnel: Closable) -> None:
    """Track `tunnel` so it is closed at exit (or SIGTERM) if still open."""
    global _hooks_installed
    with _lock:
        _open.append(tunnel)
        install = not _hooks_installed
        _hooks_installed = True
    if install:
        atexit.register(close_all)
        _install_sigterm_handler()
        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=_abandon_inherited)


def unregister(tunnel: Closable) -> None:
    """Forget `tunnel` (its owner closed it)."""
    with _lock, contextlib.suppress(ValueError):
        _open.remove(tunnel)


def active() -> list[Closable]:
    """The tunnels still open, oldest first."""
    with _lock:
        return list(_open)


def close_all() -> None:
    """Close every registered tunnel, newest first; errors are logged, not raised."""
    with _lock:
        tunnels = list(reversed(_open))
        _open.clear()
    for tunnel in tunnels:
        try:
            tunnel.close()
        except Exception:  # one broken tunnel must not keep others open
            logger.debug("closing %r failed", tunnel, exc_info=True)


def _abandon_inherited() -> None:
    """In a freshly forked child: forget the parent's tunnels, touching none of them."""
    global _lock, _open
    # a thread of the parent may have held the lock at the fork, for ever in here
    _lock = threading.RLock()
    inherited, _open = _open, []
    for tunnel in inherited:
        try:
            tunnel.abandon()
        except Exception:  # the others must still be let go of
            logger.debug("abandoning %r in a forked child failed", tunnel, exc_info=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    close_all()
    # end the process exactly as the default action would have
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
