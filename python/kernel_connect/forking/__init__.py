"""The fork launcher: ipykernel kernels forked from a warm template instead of exec'd.

An exec'd ipykernel spends most of its start importing ipykernel, IPython, zmq
and tornado. A template process (one per interpreter and start-up
environment, a child of the manager process) imports them once; each kernel
is then forked from it and runs ipykernel exactly as ``python -m
ipykernel_launcher -f <connection file>`` would, with its own session and
process group, cwd, environment and stdio, and exits when the manager process
exits (SIGKILL included) as an exec kernel does through JPY_PARENT_PID.

Opt in with ``KernelManager(launcher="fork")`` (or
``c.KernelManager.launcher = "fork"``), or per kernel spec with
``"metadata": {"kernel_connect": {"launcher": "fork"}}`` (``"exec"`` there
opts a spec out). The environment variable ``KERNEL_CONNECT_LAUNCHER``
(``fork`` or ``exec``), when set, overrides both: an operator's switch. Only
``<python> -m ipykernel_launcher|ipykernel ... -f {connection_file} ...``
specs are forked; any other kernel, and any kernel whose template cannot
start or refuses to fork, is started by exec, with a debug line saying why.

When forking fails, the kernel is started by exec and the start goes on:

- the template cannot start (no ipykernel for that interpreter, say): a
  debug line; that interpreter is not tried again for a minute
  (``launcher.RETRY_AFTER_S``);
- the template refuses to fork because it holds a thread, a zmq context, an
  event loop or a socket (a ``sitecustomize`` that starts a thread does
  that): a warning, the template is killed, not tried again for a minute;
- the template does not answer within ``launcher.REQUEST_TIMEOUT_S``: a
  warning, it is killed, and the next start makes a new one;
- the template died (killed, crashed): noticed at the next start, which
  makes a new one. Its kernels live on; their exit codes, which only it could
  read, are reported as ``launcher.UNKNOWN_RETURNCODE`` (255), with a warning.

A kernel that cannot be set up (a ``cwd`` that does not exist) fails to
start with an OSError, as an exec kernel does.

This module is light (it is imported by every start, to choose); the
launcher itself is :mod:`kernel_connect.forking.launcher`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel_connect.forking.launcher import ForkedKernelProcess, launch_forked

#: The launchers a KernelManager can use.
LAUNCHERS = ("exec", "fork")
#: The environment variable that, when set, overrides the manager's and the spec's choice.
LAUNCHER_ENV_VAR = "KERNEL_CONNECT_LAUNCHER"


def spec_launcher(metadata: Mapping[str, Any] | None) -> str | None:
    """The launcher a kernel spec asks for in ``metadata.kernel_connect.launcher`` (or None)."""
    stanza = (metadata or {}).get("kernel_connect")
    if not isinstance(stanza, Mapping):
        return None
    value = stanza.get("launcher")
    if isinstance(value, str) and value.lower() in LAUNCHERS:
        return value.lower()
    return None


def chosen_launcher(configured: str, metadata: Mapping[str, Any] | None) -> str:
    """The launcher for one start: the environment variable, else the spec, else ``configured``.

    The spec outranks the manager's setting because it knows its kernel (a
    spec may opt out of forking); the variable outranks both because it is
    how an operator switches forking off (or on) without touching either.
    """
    forced = os.environ.get(LAUNCHER_ENV_VAR, "").strip().lower()
    if forced in LAUNCHERS:
        return forced
    return spec_launcher(metadata) or configured


def __getattr__(name: str) -> Any:
    # The launcher (sockets, threads, subprocess) loads only when a kernel is forked.
    if name in {"ForkedKernelProcess", "launch_forked", "ForkUnavailable", "UNKNOWN_RETURNCODE"}:
        from kernel_connect.forking import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LAUNCHERS",
    "LAUNCHER_ENV_VAR",
    "ForkedKernelProcess",
    "chosen_launcher",
    "launch_forked",
    "spec_launcher",
]
