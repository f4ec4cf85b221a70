"""pytest plugin for nbclient's upstream tests: kernel-connect's manager in every NotebookClient.

Loaded by upstream/run.py with ``-p kc_nbclient_shim``; nbclient's tests are
not edited. Two modes, chosen by ``KC_NBCLIENT_SHIM``:

``observe`` (jupyter_client's side)
    Changes nothing; records which manager and client classes each test's
    NotebookClients drove.
``replace`` (kernel-connect's side)
    Whenever a NotebookClient makes its own kernel manager, it gets
    kernel-connect's instead: ``kernel_connect.AsyncKernelManager`` where nbclient
    would make jupyter_client's ``AsyncKernelManager`` (its default), and
    ``kernel_connect.KernelManager`` where a test asks for jupyter_client's
    ``KernelManager`` by ``kernel_manager_class=``. A class of the test's own
    (``FakeCustomKernelManager``) and a manager object the test builds itself
    and passes as ``km=`` are left alone: the record shows those tests as run
    on jupyter_client.

Why ``create_kernel_manager`` and not ``km=`` at construction: nbclient makes
its manager in ``create_kernel_manager`` (the one place, called whenever
``self.km`` is None: at the first execute and again after each clean-up), and
treats a manager given as ``km=`` as the caller's (``owns_km`` False: it then
never shuts the kernel down and ``reset_kc`` does nothing). Putting the
manager in ``self.km`` there is the ``km=`` hand-over without changing which
side owns the kernel. The manager is built as nbclient builds its own: kernel
name from the client, else from the notebook's ``kernelspec``, and the client's
``config``.

``KC_NBCLIENT_RECORD=/path/file.jsonl`` receives one line per kernel client
start: the test, the manager's and the client's classes. The classes
substituted can be changed (to try the shim with a stand-in) with
``KC_NBCLIENT_MANAGER`` / ``KC_NBCLIENT_SYNC_MANAGER`` = ``module:Class``.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import pytest

_MODE = os.environ.get("KC_NBCLIENT_SHIM", "observe")
_RECORD = os.environ.get("KC_NBCLIENT_RECORD", "")


def _load(spec: str) -> type:
    module, _, name = spec.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def _qualname(obj: Any) -> str | None:
    if obj is None:
        return None
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _record(km: Any, kc: Any, error: BaseException | None) -> None:
    if not _RECORD:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    line = {"test": test, "pid": os.getpid(), "manager": _qualname(km), "client": _qualname(kc)}
    if error is not None:
        line["error"] = repr(error)[:200]
    with open(_RECORD, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    from jupyter_client.manager import AsyncKernelManager, KernelManager
    from nbclient.client import NotebookClient
    from nbclient.util import run_sync

    start_client = NotebookClient.async_start_new_kernel_client

    async def async_start_new_kernel_client(self: Any) -> Any:
        km, error = self.km, None
        try:
            return await start_client(self)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _record(km, self.kc, error)

    # start_new_kernel_client wraps the original coroutine function itself, so
    # both names are replaced.
    NotebookClient.async_start_new_kernel_client = async_start_new_kernel_client
    NotebookClient.start_new_kernel_client = run_sync(async_start_new_kernel_client)

    if _MODE != "replace":
        return
    replacements = {
        AsyncKernelManager: _load(
            os.environ.get("KC_NBCLIENT_MANAGER", "kernel_connect:AsyncKernelManager")
        ),
        KernelManager: _load(
            os.environ.get("KC_NBCLIENT_SYNC_MANAGER", "kernel_connect:KernelManager")
        ),
    }
    create_own = NotebookClient.create_kernel_manager

    def create_kernel_manager(self: Any) -> Any:
        manager_class = replacements.get(self.kernel_manager_class)
        if manager_class is None:  # a manager class of the test's own
            return create_own(self)
        if not self.kernel_name:
            name = self.nb.metadata.get("kernelspec", {}).get("name")
            if name is not None:
                self.kernel_name = name
        if self.kernel_name:
            self.km = manager_class(kernel_name=self.kernel_name, config=self.config)
        else:
            self.km = manager_class(config=self.config)
        return self.km

    NotebookClient.create_kernel_manager = create_kernel_manager
