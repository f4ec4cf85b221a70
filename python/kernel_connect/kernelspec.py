"""Kernel specs: find ``kernels/<name>/kernel.json`` on the Jupyter path.

A spec is the command line that starts a kernel plus a little metadata. As in
jupyter_client, the native ``python3`` spec falls back to the interpreter running
this code with ipykernel when no ``kernel.json`` for it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

#: The spec name served by the running interpreter when nothing is installed.
NATIVE_KERNEL_NAME = "python3"

_VALID_NAME = re.compile(r"^[a-z0-9._\-]+$", re.IGNORECASE)
_NAME_RULE = "kernel names are ASCII letters, digits, '.', '-' and '_', and not '.' or '..'"


def is_valid_kernel_name(name: str) -> bool:
    """Whether ``name`` can name a kernel spec: jupyter_client's characters, no path.

    Letters, digits, ``.``, ``-`` and ``_`` only (so no path separator), and
    neither ``.`` nor ``..``: a name is one directory inside a kernel directory,
    never a way out of it.
    """
    return bool(_VALID_NAME.match(name)) and name not in (".", "..")


class NoSuchKernel(KeyError):
    """No kernel spec of the requested name is installed (or the name is not valid)."""

    def __init__(self, name: str, searched: list[str] | None = None, reason: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.searched = searched or []
        self.reason = reason

    def __str__(self) -> str:
        if self.reason:
            return f"no kernel spec named {self.name!r}: {self.reason}"
        where = ", ".join(self.searched) or "(no kernel directories)"
        return f"no kernel spec named {self.name!r} (searched {where})"


@dataclass
class KernelSpec:
    """One kernel spec: how to start a kernel and what it supports.

    Attributes mirror the fields of ``kernel.json``; ``resource_dir`` is the
    directory the spec was found in (empty for the built-in fallback).
    """

    name: str
    argv: list[str]
    display_name: str = ""
    language: str = ""
    interrupt_mode: str = "signal"
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    resource_dir: str = ""

    @classmethod
    def from_resource_dir(cls, name: str, resource_dir: str) -> KernelSpec:
        """Read ``kernel.json`` from ``resource_dir``.

        Raises
        ------
        ValueError
            If the file is not JSON or lacks a usable ``argv``.
        """
        path = os.path.join(resource_dir, "kernel.json")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"kernel spec {path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"kernel spec {path}: expected a JSON object")
        argv = data.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"kernel spec {path}: 'argv' must be a non-empty list of strings")
        mode = data.get("interrupt_mode", "signal")
        if mode not in ("signal", "message"):
            raise ValueError(f"kernel spec {path}: interrupt_mode must be 'signal' or 'message'")
        return cls(
            name=name,
            argv=list(argv),
            display_name=str(data.get("display_name", name)),
            language=str(data.get("language", "")),
            interrupt_mode=mode,
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            metadata=dict(data.get("metadata") or {}),
            resource_dir=resource_dir,
        )

    @property
    def supports_curve(self) -> bool:
        """Whether the spec declares CurveZMQ in ``metadata.supported_encryption``."""
        declared = self.metadata.get("supported_encryption")
        if isinstance(declared, str):
            declared = [declared]
        if not isinstance(declared, list | tuple | set):
            return False
        return "curve" in {str(item).strip().lower() for item in declared}


def kernel_dirs() -> list[str]:
    """Return the directories searched for kernel specs, highest priority first."""
    from jupyter_core.paths import jupyter_path

    return list(jupyter_path("kernels"))


def find_kernel_specs() -> dict[str, str]:
    """Return ``{name: resource_dir}`` for every installed kernel spec.

    The first directory on the Jupyter path wins for a name. ``python3`` is
    included (with an empty resource_dir) when only the native fallback serves it.
    """
    specs: dict[str, str] = {}
    for kdir in kernel_dirs():
        try:
            entries = sorted(os.scandir(kdir), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = entry.name.lower()
            if name in specs or not is_valid_kernel_name(name):
                continue
            if os.path.isfile(os.path.join(entry.path, "kernel.json")):
                specs[name] = entry.path
    if NATIVE_KERNEL_NAME not in specs and _ipykernel_available():
        specs[NATIVE_KERNEL_NAME] = ""
    return specs


def get_kernel_spec(name: str) -> KernelSpec:
    """Return the kernel spec called ``name`` (case-insensitive).

    Raises
    ------
    NoSuchKernel
        If no such spec is installed (and it is not the native fallback), or
        ``name`` is not a valid kernel name (see :func:`is_valid_kernel_name`):
        a name is never read as a path, so ``../x`` cannot reach a
        ``kernel.json`` outside the kernel directories.
    """
    key = (name or NATIVE_KERNEL_NAME).lower()
    if not is_valid_kernel_name(key):
        raise NoSuchKernel(name, reason=_NAME_RULE)
    dirs = kernel_dirs()
    for kdir in dirs:
        resource_dir = _spec_dir(kdir, key)
        if resource_dir is not None:
            return KernelSpec.from_resource_dir(key, resource_dir)
    if key == NATIVE_KERNEL_NAME and _ipykernel_available():
        return native_kernel_spec()
    raise NoSuchKernel(name, dirs)


def native_kernel_spec() -> KernelSpec:
    """The ``python3`` spec of this interpreter running ipykernel."""
    return KernelSpec(
        name=NATIVE_KERNEL_NAME,
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name=f"Python {sys.version_info[0]} (ipykernel)",
        language="python",
        # ipykernel's own spec declares CurveZMQ support; so does this stand-in.
        metadata={"debugger": True, "supported_encryption": ["curve"]},
    )


_SUBST = re.compile(r"\{([A-Za-z0-9_]+)\}")


def substitute_argv(argv: list[str], values: dict[str, Any]) -> list[str]:
    """Replace ``{name}`` in every argument with ``values[name]``; unknown names stay.

    Parameters
    ----------
    argv : list of str
        The spec's command line, e.g. ``[..., '-f', '{connection_file}']``.
    values : dict
        Substitutions, e.g. ``{'connection_file': '/run/kernel-1.json'}``.
    """

    def repl(m: re.Match[str]) -> str:
        return str(values[m.group(1)]) if m.group(1) in values else m.group(0)

    return [_SUBST.sub(repl, arg) for arg in argv]


def _spec_dir(kdir: str, key: str) -> str | None:
    """The spec directory in ``kdir`` whose name is ``key`` ignoring case, if any."""
    exact = os.path.join(kdir, key)
    if os.path.isfile(os.path.join(exact, "kernel.json")):
        return exact
    try:
        entries = sorted(os.scandir(kdir), key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if entry.name.lower() == key and os.path.isfile(os.path.join(entry.path, "kernel.json")):
            return entry.path
    return None


def _ipykernel_available() -> bool:
    return importlib.util.find_spec("ipykernel") is not None
