"""A jupyter_client provisioner that starts kernels from a warm pool: ready in milliseconds.

Unchanged servers and notebook runners (jupyter_server, nbclient, papermill)
get warm kernels with one line of configuration::

    c.KernelProvisionerFactory.default_provisioner_name = "kernel-connect-pool-provisioner"

(or ``JUPYTER_DEFAULT_PROVISIONER_NAME=kernel-connect-pool-provisioner``, or per
kernel spec with ``"metadata": {"kernel_provisioner": {"provisioner_name":
"kernel-connect-pool-provisioner"}}``), and, optionally::

    c.KernelConnectPoolProvisioner.pool_size = 4          # kernels kept ready per spec
    c.KernelConnectPoolProvisioner.launcher = "fork"      # where available
    c.KernelConnectPoolProvisioner.max_concurrent_starts = 2

How it fits jupyter_client's KernelManager:

- **One pool per kernel spec, per process**, made by the first start of that
  spec (that start waits for a kernel as a cold start would; the next ones find
  the pool warm), and closed at interpreter exit. Kernels are keyed on
  everything that must match: the spec, launcher, transport, ip, encryption
  policy and signature scheme.
- **The pooled kernel's connection info becomes the KernelManager's.**
  ``launch_kernel`` returns it (ports, key, transport, ip, signature scheme,
  CurveZMQ keys), and jupyter_client, which considers it the truth, loads it
  and writes its own connection file with exactly those values. So there are
  two files for one kernel, identical in content: the KernelManager's (where
  jupyter_server and ``jupyter console --existing`` look) and the pooled
  manager's (kernel-connect's, in the runtime directory, which the kernel read
  at start). Both are removed at shutdown. This ``pre_launch`` writes no file
  and allocates no port: the kernel has them already.
- **cwd and env** given to ``start_kernel`` are applied at take time to Python
  kernels (see :mod:`kernel_connect.pool`): the difference between the
  requested environment and the one pooled kernels start with, and the
  requested cwd. Variables read only at interpreter start (``PYTHONPATH``, ...)
  belong in the kernel spec's ``env``, which pooled kernels start with. A
  start the pool cannot serve (a non-Python kernel asked for another cwd or
  env, ``extra_arguments``, other ``Popen`` arguments, ports configured on the
  KernelManager) starts a kernel cold, as LocalProvisioner would, through a
  kernel-connect manager (ports from its reservation table).
- **Restart and shutdown behave as through LocalProvisioner.** A restart gives a
  fresh kernel on the same ports with the same key (on new ports when
  jupyter_client asks for them), so clients and websockets that survive a
  restart keep working; it is a cold start (a fast one with the fork launcher),
  not a take: a pooled kernel has its own key, and a new key would break every
  client made before the restart. Shutdown leaves no process, file or port
  reservation; a kernel that was handed out is never pooled again.

This module imports jupyter_client, which kernel-connect itself never needs;
it is loaded only through its entry point, where jupyter_client is installed.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import threading
from contextlib import suppress
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, Integer, Unicode
from traitlets.config import Config

from kernel_connect.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from kernel_connect.manager import KernelManager
from kernel_connect.mixin import PORT_NAMES
from kernel_connect.pool import KernelPool, launcher_traits

# Launch arguments a pooled kernel can be given at take time; any other asks
# for a cold start (the pool's kernels were launched without it).
_TAKE_ARGS = frozenset({"env", "cwd"})
# What jupyter_client passes along that is not for the kernel process.
_NOT_FOR_POPEN = ("kernel_id", "extra_arguments", "transport_encryption")

# The process's pools, one per key (see _pool_key); a forked child starts with none.
_pools: dict[tuple[str, ...], KernelPool] = {}
_pools_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_pools.clear)


class _OneSpec(KernelSpecManager):
    """Serves exactly the spec the KernelManager was given (whatever its own
    KernelSpecManager found it in), so that pooled kernels start from it."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name.lower() != self._spec.name.lower():
            raise NoSuchKernel(kernel_name, reason=f"this manager serves {self._spec.name!r} only")
        return self._spec


class KernelConnectPoolProvisioner(KernelProvisionerBase):
    """Starts kernels by taking them from a process-wide warm pool per kernel spec."""

    pool_size = Integer(
        2,
        config=True,
        help="Kernels of each kernel spec kept started and ready (read when the spec's "
        "pool is made, at its first start).",
    )
    launcher = Unicode(
        "exec",
        config=True,
        help="How pooled kernels are launched: 'exec', or 'fork' where kernel-connect's "
        "KernelManager has the fork launcher.",
    )
    max_concurrent_starts = Integer(
        2,
        config=True,
        help="Kernels a pool starts at once, at most: refills never starve kernels in use.",
    )
    take_timeout = Float(
        60.0,
        config=True,
        help="Seconds a start waits for a ready kernel when the pool is empty.",
    )

    #: The kernel-connect manager of our kernel (taken from the pool, or started cold).
    _km: KernelManager | None = None
    _extra_arguments: list[str] | None = None
    _new_ports = False
    _encryption = "disabled"
    cwd: str | None = None

    # -- the process ------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        km = self._km
        return km is not None and km.has_kernel

    @property
    def pid(self) -> int | None:
        """The kernel's process id (as LocalProvisioner's ``pid``)."""
        km = self._km
        pid = getattr(km.kernel, "pid", None) if km is not None else None
        return pid if isinstance(pid, int) else None

    async def poll(self) -> int | None:
        km = self._km
        if km is None or not km.has_kernel:
            return 0
        if km.is_alive():
            return None
        return km.exit_code if km.exit_code is not None else 0

    async def wait(self) -> int | None:
        km = self._km
        if km is None:
            return 0
        # As LocalProvisioner: poll until it has exited (jupyter_client calls
        # this once it has seen it exit, and bounds the call with a timeout).
        while km.is_alive():
            await asyncio.sleep(0.05)
        # Reap it; its connection file, ports and key stay until cleanup().
        await asyncio.to_thread(km.shutdown_kernel, now=True, restart=True)
        return km.exit_code

    async def send_signal(self, signum: int) -> None:
        km = self._km
        if km is not None and km.has_kernel:
            km.signal_kernel(signum)

    async def kill(self, restart: bool = False) -> None:
        with suppress(ProcessLookupError):
            await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        with suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)

    # -- start --------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Note what the launch asks for; no file is written, no port reserved."""
        km = self.parent
        encryption = kwargs.pop("transport_encryption", None)
        if km is not None and hasattr(km, "_transport_encryption_policy"):
            encryption = km._transport_encryption_policy(encryption)
        self._encryption = str(encryption or "disabled")
        self._extra_arguments = list(kwargs.pop("extra_arguments", None) or [])
        # jupyter_client zeroes the ports when a restart asks for new ones.
        self._new_ports = km is not None and not any(getattr(km, n, 0) for n in PORT_NAMES)
        # The base class applies the spec's env substitutions and drops
        # PYTHONEXECUTABLE, as for any provisioner.
        kwargs = await super().pre_launch(**kwargs)
        if km is not None:
            # The command jupyter_client logs; our manager builds the same one.
            cmd = km.format_kernel_cmd(extra_arguments=self._extra_arguments)
        else:
            cmd = [*self.kernel_spec.argv, *self._extra_arguments]
        return {**kwargs, "cmd": cmd}

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Take a kernel from the pool (a fresh cold one on a restart); return its
        connection info, which jupyter_client loads and writes to its own file."""
        for name in _NOT_FOR_POPEN:
            kwargs.pop(name, None)
        if self._km is None:
            self._km = await asyncio.to_thread(self._first_kernel, kwargs)
        else:
            await asyncio.to_thread(self._restart_kernel, kwargs)
        cwd = kwargs.get("cwd")
        self.cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
        # The same keys and types as jupyter_client's (key: bytes, curve keys: str).
        info = cast(KernelConnectionInfo, self._km.get_connection_info())
        self.connection_info = info
        return info

    def _first_kernel(self, kwargs: dict[str, Any]) -> KernelManager:
        parent = self.parent
        env = dict(kwargs.get("env") or os.environ)
        cwd = kwargs.get("cwd")
        configured_ports = parent is not None and any(getattr(parent, n, 0) for n in PORT_NAMES)
        if set(kwargs) <= _TAKE_ARGS and not self._extra_arguments and not configured_ports:
            pool = self._pool()
            kernel_env = pool.kernel_env()
            set_env = {k: v for k, v in env.items() if kernel_env.get(k) != v}
            unset = [k for k in kernel_env if k not in env]
            if pool.python or (not set_env and not unset and _same_dir(cwd, pool.kernel_cwd)):
                return pool.take(cwd=cwd, env=set_env, unset_env=unset, timeout=self.take_timeout)
        self.log.debug("kernel-connect pool: starting a %r kernel cold", self._kernel_name())
        ports = {n: getattr(parent, n) for n in PORT_NAMES if getattr(parent, n, 0)}
        traits = {**self._manager_kwargs(), **launcher_traits(self.launcher), **ports}
        km = KernelManager(kernel_name=self._kernel_name(), **traits)
        km.start_kernel(**self._start_args(kwargs))
        return km

    def _restart_kernel(self, kwargs: dict[str, Any]) -> None:
        km = self._km
        assert km is not None
        if self._new_ports:
            km.cleanup_random_ports()
        km.start_kernel(**self._start_args(kwargs))

    def _start_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        args = dict(kwargs)
        if self._extra_arguments:
            args["extra_arguments"] = list(self._extra_arguments)
        return args

    # -- pools --------------------------------------------------------------------

    def _kernel_name(self) -> str:
        parent = self.parent
        name = getattr(parent, "kernel_name", "") or getattr(self.kernel_spec, "name", "")
        return str(name or "python3")

    def _spec(self) -> KernelSpec:
        """The KernelManager's spec as kernel-connect's KernelSpec."""
        jspec = self.kernel_spec
        fields = {
            k: v
            for k, v in jspec.to_dict().items()
            if k in KernelSpec.class_trait_names() and v is not None
        }
        return KernelSpec(resource_dir=jspec.resource_dir, name=self._kernel_name(), **fields)

    def _manager_kwargs(self) -> dict[str, Any]:
        parent = self.parent
        """KernelManager traits every kernel of ours needs (the launcher aside)."""
        kw: dict[str, Any] = {"kernel_spec_manager": _OneSpec(self._spec())}
        if parent is not None:
            kw["transport"] = parent.transport
            kw["ip"] = parent.ip
            scheme = parent.session.signature_scheme
            kw["config"] = Config({"Session": {"signature_scheme": scheme}})
        if self._encryption != "disabled":
            kw["transport_encryption"] = self._encryption
        return kw

    def _pool_key(self) -> tuple[str, ...]:
        parent = self.parent
        spec = self.kernel_spec
        return (
            self._kernel_name(),
            str(spec.resource_dir),
            spec.to_json() if hasattr(spec, "to_json") else repr(spec.to_dict()),
            self.launcher,
            str(getattr(parent, "transport", "")),
            str(getattr(parent, "ip", "")),
            self._encryption,
            str(parent.session.signature_scheme) if parent is not None else "",
        )

    def _pool(self) -> KernelPool:
        """The process's pool for this spec (made now if it is the first start)."""
        key = self._pool_key()
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None or pool.stats().closed:
                pool = KernelPool(
                    size=self.pool_size,
                    kernel_name=self._kernel_name(),
                    max_concurrent_starts=self.max_concurrent_starts,
                    manager_kwargs=self._manager_kwargs(),
                    launcher=self.launcher,
                )
                _pools[key] = pool
            elif pool.size != self.pool_size:
                self.log.debug(
                    "kernel-connect pool for %r keeps its size %d (pool_size=%d is read when "
                    "the pool is made)",
                    self._kernel_name(),
                    pool.size,
                    self.pool_size,
                )
        return pool

    # -- stop ---------------------------------------------------------------------

    async def cleanup(self, restart: bool = False) -> None:
        """After the kernel ended: on a restart keep its file, ports and key for the
        next kernel; otherwise remove the file and return the ports."""
        km = self._km
        if km is None:
            return
        if not restart:
            self._km = None
        await asyncio.to_thread(km.shutdown_kernel, now=True, restart=restart)

    # -- the rest of LocalProvisioner's surface -----------------------------------

    def resolve_path(self, path_str: str) -> str | None:
        """Resolve ``path_str`` relative to the kernel's working directory, as
        LocalProvisioner does."""
        path = pathlib.Path(path_str).expanduser()
        if not path.is_absolute() and self.cwd:
            path = (pathlib.Path(self.cwd) / path).resolve()
        return path.as_posix() if path.exists() else None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["pid"] = self.pid
        return info


def _same_dir(cwd: Any, kernel_cwd: str) -> bool:
    return cwd is None or os.path.abspath(os.fspath(cwd)) == kernel_cwd


__all__ = ["KernelConnectPoolProvisioner"]
