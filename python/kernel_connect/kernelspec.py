"""Kernel specs: find, read, install and remove ``kernels/<name>/kernel.json``.

jupyter_client 8.10's kernelspec API (``KernelSpec``, ``KernelSpecManager``,
``NoSuchKernel`` and the module functions), with three differences, all on
the safe side:

- a kernel name is letters, digits, ``.``, ``-`` and ``_``, and never ``.`` or
  ``..``; any other name is refused before a path is built from it, so a name
  is never a way out of a kernel directory;
- an install copies the spec beside its destination and moves it into place
  with one rename (a swap where the OS has one), so a reader sees the old spec
  or the new one, never half of one, and a symlink found at the destination is
  replaced, never followed;
- a ``kernel.json`` is checked as it is read (``argv`` a non-empty list of
  strings, ``env`` and ``metadata`` objects), and every problem is a
  ``ValueError`` naming the file.

As in jupyter_client, the native ``python3`` spec falls back to ipykernel in
the interpreter running this code when no ``kernel.json`` for it is installed.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from contextlib import suppress
from functools import cache
from typing import Any, ClassVar, TypeVar

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    HasTraits,
    List,
    Set,
    TraitError,
    Type,
    Unicode,
    default,
    observe,
)
from traitlets.config import LoggingConfigurable

#: The spec name served by the running interpreter when nothing is installed.
NATIVE_KERNEL_NAME = "python3"

_VALID_NAME = re.compile(r"^[a-z0-9._\-]+$", re.IGNORECASE)
_NAME_RULE = "kernel names are ASCII letters, digits, '.', '-' and '_', and not '.' or '..'"

# The entry-point group and built-in name of jupyter_client's kernel provisioners.
_PROVISIONER_GROUP = "jupyter_client.kernel_provisioners"
_LOCAL_PROVISIONER = "local-provisioner"
_DEFAULT_PROVISIONER_ENV = "JUPYTER_DEFAULT_PROVISIONER_NAME"
# Provisioner names found installed (entry points do not vanish while we run).
_installed_provisioners: set[str] = {_LOCAL_PROVISIONER}

# Installs and removals stage their work in a directory of this name prefix
# inside the kernel directory: it has no kernel.json of its own, so no reader
# (ours or jupyter_client's) ever lists it, or anything in it, as a spec.
_STAGING_PREFIX = ".kernel-connect-staging-"
# A rename that loses a race with another install is retried this many times.
_PLACE_ATTEMPTS = 100


def is_valid_kernel_name(name: str) -> bool:
    """Whether ``name`` can name a kernel spec: jupyter_client's characters, no path.

    Letters, digits, ``.``, ``-`` and ``_`` only (so no path separator), and
    neither ``.`` nor ``..``: a name is one directory inside a kernel directory,
    never a way out of it.
    """
    return bool(_VALID_NAME.match(name)) and name not in (".", "..")


# jupyter_client's private name for it (its own test suite uses it).
_is_valid_kernel_name = is_valid_kernel_name


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


_Spec = TypeVar("_Spec", bound="KernelSpec")


class KernelSpec(HasTraits):
    """One kernel spec: how to start a kernel and what it supports.

    The traits mirror the fields of ``kernel.json``; ``resource_dir`` is the
    directory the spec was read from, and ``name`` the name it was found under.
    """

    argv: List[str] = List(help="The command line that starts the kernel.")
    name = Unicode()
    mimetype = Unicode()
    display_name = Unicode()
    language = Unicode()
    kernel_protocol_version = Unicode()
    env = Dict()
    resource_dir = Unicode()
    interrupt_mode = CaselessStrEnum(["message", "signal"], default_value="signal")
    metadata = Dict()

    @classmethod
    def from_resource_dir(cls: type[_Spec], resource_dir: str) -> _Spec:
        """Read the spec in ``resource_dir/kernel.json``.

        Keys that are traits of the class are read (so a ``kernel_spec_class``
        subclass gets its own fields too); other keys are ignored.

        Raises
        ------
        OSError
            If the file cannot be read.
        ValueError
            If it is not JSON, lacks a usable ``argv`` or has a field of the
            wrong type or value; the message names the file.
        """
        path = os.path.join(resource_dir, "kernel.json")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"kernel spec {path}: not valid JSON ({e})") from None
        fields = _checked_fields(path, data, set(cls.class_trait_names()))
        try:
            return cls(resource_dir=resource_dir, **fields)
        except TraitError as e:
            raise ValueError(f"kernel spec {path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The spec as jupyter_client writes it to ``kernel.json`` (the same keys)."""
        return {
            "argv": self.argv,
            "env": self.env,
            "display_name": self.display_name,
            "language": self.language,
            "interrupt_mode": self.interrupt_mode,
            "metadata": self.metadata,
            "kernel_protocol_version": self.kernel_protocol_version,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @property
    def supports_curve(self) -> bool:
        """Whether the spec declares CurveZMQ in ``metadata.supported_encryption``."""
        declared = self.metadata.get("supported_encryption")
        if isinstance(declared, str):
            declared = [declared]
        if not isinstance(declared, list | tuple | set):
            return False
        return "curve" in {str(item).strip().lower() for item in declared}


def _checked_fields(path: str, data: Any, traits: set[str]) -> dict[str, Any]:
    """The trait values in ``data`` (a parsed kernel.json), checked; ValueError if unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"kernel spec {path}: expected a JSON object")
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"kernel spec {path}: 'argv' must be a non-empty list of strings")
    fields = {k: v for k, v in data.items() if k in traits and k != "resource_dir"}
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise ValueError(f"kernel spec {path}: 'env' must be an object")
    # Values become environment variables: text, whatever JSON type they were given as.
    fields["env"] = {str(k): str(v) for k, v in env.items()}
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"kernel spec {path}: 'metadata' must be an object")
    fields["metadata"] = metadata
    return fields


def kernel_dirs() -> list[str]:
    """The directories searched for kernel specs, highest priority first.

    ``jupyter_path('kernels')`` and, where IPython is installed, the ``kernels``
    directory of the IPython directory, as jupyter_client searches them.
    """
    from jupyter_core.paths import jupyter_path

    dirs = list(jupyter_path("kernels"))
    ipython_dir = _ipython_dir()
    if ipython_dir is not None:
        dirs.append(os.path.join(ipython_dir, "kernels"))
    return dirs


class KernelSpecManager(LoggingConfigurable):
    """Finds, reads, installs and removes kernel specs (jupyter_client's, same traits).

    Lookups are case-insensitive; the first kernel directory holding a name
    wins. A name that is not a valid kernel name (see :func:`is_valid_kernel_name`)
    is refused before any path is built from it.
    """

    kernel_spec_class = Type(
        KernelSpec,
        config=True,
        help="""The kernel spec class.  This is configurable to allow
        subclassing of the KernelSpecManager for customized behavior.
        """,
    )

    ensure_native_kernel = Bool(
        True,
        config=True,
        help="""If there is no Python kernelspec registered and the IPython
        kernel is available, ensure it is added to the spec list.
        """,
    )

    data_dir = Unicode(help="The Jupyter data directory (default: jupyter_data_dir()).")

    @default("data_dir")
    def _data_dir_default(self) -> str:
        from jupyter_core.paths import jupyter_data_dir

        return str(jupyter_data_dir())

    user_kernel_dir = Unicode(help="Where user installs go (default: data_dir/kernels).")

    @default("user_kernel_dir")
    def _user_kernel_dir_default(self) -> str:
        return os.path.join(self.data_dir, "kernels")

    whitelist = Set(
        config=True,
        help="""Deprecated, use `KernelSpecManager.allowed_kernelspecs`
        """,
    )
    allowed_kernelspecs = Set(
        config=True,
        help="""List of allowed kernel names.

        By default, all installed kernels are allowed.
        """,
    )
    kernel_dirs: List[str] = List(
        help="""
        List of kernel directories to search.

        Directories earlier in the list take priority: when two directories
        contain a kernelspec with the same name, the one from the earlier
        directory wins. This matches the precedence of ``$JUPYTER_PATH``,
        where the first entry has the highest priority (see
        ``jupyter_path("kernels")``).
        """
    )

    @default("kernel_dirs")
    def _kernel_dirs_default(self) -> list[str]:
        return kernel_dirs()

    # old trait name -> (new trait name, jupyter_client version that deprecated it)
    _deprecated_aliases: ClassVar[dict[str, tuple[str, str]]] = {
        "whitelist": ("allowed_kernelspecs", "7.0")
    }

    @observe(*_deprecated_aliases)
    def _deprecated_trait(self, change: Any) -> None:
        old_attr = change.name
        new_attr, version = self._deprecated_aliases[old_attr]
        # No warning when both names were given the same value (config kept for
        # older versions); otherwise the old name's value wins, as in jupyter_client.
        if getattr(self, new_attr) != change.new:
            cls = type(self).__name__
            self.log.warning(
                f"{cls}.{old_attr} is deprecated in jupyter_client {version}, "
                f"use {cls}.{new_attr} instead"
            )
            setattr(self, new_attr, change.new)

    # -- finding and reading ---------------------------------------------------

    def find_kernel_specs(self) -> dict[str, str]:
        """Return ``{name: resource_dir}`` for every installed kernel spec.

        Names are lower case; the first kernel directory holding a name wins.
        ``python3`` maps to ipykernel's resources directory when it is only
        served by the native fallback (unless ``ensure_native_kernel`` is off),
        and ``allowed_kernelspecs``, when not empty, filters the result.
        """
        specs = self._installed_specs()
        if self.ensure_native_kernel and NATIVE_KERNEL_NAME not in specs:
            native = _native_resource_dir()
            if native is not None:
                self.log.debug("Native kernel (%s) available from %s", NATIVE_KERNEL_NAME, native)
                specs[NATIVE_KERNEL_NAME] = native
            else:
                self.log.warning("Native kernel (%s) is not available", NATIVE_KERNEL_NAME)
        if self.allowed_kernelspecs:
            specs = {k: v for k, v in specs.items() if k in self.allowed_kernelspecs}
        return specs

    def _installed_specs(self) -> dict[str, str]:
        """``{name: resource_dir}`` of the specs in the kernel directories only."""
        specs: dict[str, str] = {}
        for kdir in self.kernel_dirs:
            try:
                entries = sorted(os.scandir(kdir), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if not os.path.isfile(os.path.join(entry.path, "kernel.json")):
                    continue
                name = entry.name.lower()
                if not is_valid_kernel_name(name):
                    self.log.warning("Ignoring kernel spec %s: %s", entry.path, _NAME_RULE)
                elif name not in specs:
                    self.log.debug("Found kernel %s in %s", name, kdir)
                    specs[name] = entry.path
        return specs

    def _find_spec_directory(self, kernel_name: str) -> str | None:
        """The resource directory of the (lower-case, valid) name, or None."""
        for kdir in self.kernel_dirs:
            resource_dir = _spec_dir(kdir, kernel_name)
            if resource_dir is not None:
                return resource_dir
        if kernel_name == NATIVE_KERNEL_NAME:
            return _native_resource_dir()
        return None

    def _get_kernel_spec_by_name(self, kernel_name: str, resource_dir: str) -> KernelSpec:
        """Read the spec in ``resource_dir``; NoSuchKernel if its provisioner is missing."""
        spec: KernelSpec
        if kernel_name.lower() == NATIVE_KERNEL_NAME and resource_dir == _native_resource_dir():
            # ipykernel's own spec for this interpreter (what its installer writes).
            try:
                from ipykernel.kernelspec import get_kernel_dict
            except ImportError as e:
                raise NoSuchKernel(kernel_name, reason=f"ipykernel cannot be imported ({e})") from e
            spec = self.kernel_spec_class(resource_dir=resource_dir, **get_kernel_dict())
        else:
            spec = self.kernel_spec_class.from_resource_dir(resource_dir)
        if not spec.name:
            spec.name = kernel_name.lower()
        provisioner = self._provisioner_name(spec)
        if not _provisioner_installed(provisioner):
            self.log.warning(
                "Kernel '%s' is referencing a kernel provisioner ('%s') that is not "
                "available.  Ensure the appropriate package has been installed and retry.",
                spec.display_name,
                provisioner,
            )
            raise NoSuchKernel(
                kernel_name,
                reason=f"its kernel provisioner {provisioner!r} is not installed "
                f"(no {_PROVISIONER_GROUP!r} entry point of that name)",
            )
        return spec

    def _provisioner_name(self, spec: KernelSpec) -> object:
        """The provisioner the spec asks for, else the configured default."""
        stanza = spec.metadata.get("kernel_provisioner")
        if isinstance(stanza, dict) and "provisioner_name" in stanza:
            # jupyter_client's check completes the stanza in the spec it returns.
            stanza.setdefault("config", {})
            return stanza["provisioner_name"]
        if "KernelProvisionerFactory" in self.config:
            section = self.config["KernelProvisionerFactory"]
            if "default_provisioner_name" in section:
                return section["default_provisioner_name"]
        return os.environ.get(_DEFAULT_PROVISIONER_ENV, _LOCAL_PROVISIONER)

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        """Return the kernel spec called ``kernel_name`` (case-insensitive).

        Raises
        ------
        NoSuchKernel
            If no such spec is installed (and it is not the native fallback),
            its ``kernel_provisioner`` is not installed, or ``kernel_name`` is
            not a valid kernel name (see :func:`is_valid_kernel_name`): a name
            is never read as a path, so ``../x`` cannot reach a ``kernel.json``
            outside the kernel directories.
        ValueError
            If the spec's ``kernel.json`` is not a usable spec.
        """
        if not is_valid_kernel_name(kernel_name):
            raise NoSuchKernel(kernel_name, reason=_NAME_RULE)
        resource_dir = self._find_spec_directory(kernel_name.lower())
        if resource_dir is None:
            raise NoSuchKernel(kernel_name, list(self.kernel_dirs))
        return self._get_kernel_spec_by_name(kernel_name, resource_dir)

    def get_all_specs(self) -> dict[str, Any]:
        """Return ``{name: {'resource_dir': ..., 'spec': spec.to_dict()}}`` for every spec.

        A spec that cannot be read is left out, with a warning in the log.
        """
        result: dict[str, Any] = {}
        for name, resource_dir in self.find_kernel_specs().items():
            try:
                if type(self) is KernelSpecManager:
                    spec = self._get_kernel_spec_by_name(name, resource_dir)
                else:
                    # A subclass may override get_kernel_spec and not this method.
                    spec = self.get_kernel_spec(name)
            except NoSuchKernel:
                continue  # already logged
            except Exception:
                self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                continue
            result[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
        return result

    # -- installing and removing -------------------------------------------------

    def remove_kernel_spec(self, name: str) -> str:
        """Remove the installed spec ``name`` (exactly as listed: lower case).

        A spec that is a symlink loses the link only, never its target. A
        directory is first moved out of sight in one rename, so no reader
        sees it half-deleted.

        Returns
        -------
        str
            The path that was removed.

        Raises
        ------
        NoSuchKernel
            (a ``KeyError``) If no spec of that name is installed, or the name
            is not valid.
        """
        if not is_valid_kernel_name(name):
            raise NoSuchKernel(name, reason=_NAME_RULE)
        specs = self._installed_specs()
        if self.allowed_kernelspecs:
            specs = {k: v for k, v in specs.items() if k in self.allowed_kernelspecs}
        spec_dir = specs.get(name)
        if spec_dir is None:
            raise NoSuchKernel(name, list(self.kernel_dirs))
        self.log.debug("Removing %s", spec_dir)
        if os.path.islink(spec_dir):
            os.remove(spec_dir)
            return spec_dir
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=os.path.dirname(spec_dir))
        try:
            os.rename(spec_dir, os.path.join(staging, "old"))
        finally:
            self._remove_staging(staging)
        return spec_dir

    def _get_destination_dir(
        self, kernel_name: str, user: bool = False, prefix: str | None = None
    ) -> str:
        if user:
            return os.path.join(self.user_kernel_dir, kernel_name)
        if prefix:
            return os.path.join(os.path.abspath(prefix), "share", "jupyter", "kernels", kernel_name)
        from jupyter_core import paths

        return os.path.join(paths.SYSTEM_JUPYTER_PATH[0], "kernels", kernel_name)

    def install_kernel_spec(
        self,
        source_dir: str,
        kernel_name: str | None = None,
        user: bool = False,
        replace: bool | None = None,
        prefix: str | None = None,
    ) -> str:
        """Install a kernel spec by copying its directory.

        If ``kernel_name`` is not given, the basename of ``source_dir`` will
        be used.

        If ``user`` is False, it will attempt to install into the systemwide
        kernel registry. If the process does not have appropriate permissions,
        an :exc:`OSError` will be raised.

        If ``prefix`` is given, the kernelspec will be installed to
        PREFIX/share/jupyter/kernels/KERNEL_NAME. This can be sys.prefix
        for installation inside virtual or conda envs.

        An existing spec of that name is replaced (``replace`` is ignored, with
        a DeprecationWarning, as in jupyter_client). The copy is made beside
        the destination and moved into place by one rename, so a reader sees
        the old spec or the new one, never half of one; a symlink at the
        destination is replaced, never followed.

        Returns
        -------
        str
            The directory the spec was installed to.

        Raises
        ------
        ValueError
            If the kernel name is not valid (see :func:`is_valid_kernel_name`;
            checked before anything is touched), or both ``user`` and
            ``prefix`` are given.
        OSError
            If ``source_dir`` is not a readable directory, the destination is
            a file, or the copy fails (nothing is left behind).
        """
        source_dir = os.fspath(source_dir).rstrip("/\\")
        if not kernel_name:
            kernel_name = os.path.basename(source_dir)
        kernel_name = kernel_name.lower()
        if not is_valid_kernel_name(kernel_name):
            raise ValueError(f"Invalid kernel name {kernel_name!r}: {_NAME_RULE}")
        if user and prefix:
            raise ValueError("Can't specify both user and prefix. Please choose one or the other.")
        if replace is not None:
            warnings.warn(
                "replace is ignored. Installing a kernelspec always replaces an existing "
                "installation",
                DeprecationWarning,
                stacklevel=2,
            )
        destination = self._get_destination_dir(kernel_name, user=user, prefix=prefix)
        self.log.debug("Installing kernelspec in %s", destination)
        kernel_dir = os.path.dirname(destination)
        if kernel_dir not in self.kernel_dirs:
            self.log.warning(
                "Installing to %s, which is not in %s. The kernelspec may not be found.",
                kernel_dir,
                self.kernel_dirs,
            )
        with os.scandir(source_dir):
            pass  # a missing or unreadable source fails here, before anything is created
        os.makedirs(kernel_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=kernel_dir)
        try:
            staged = os.path.join(staging, "new")
            shutil.copytree(
                source_dir,
                staged,
                # A source that holds the kernel directory must not copy our staging.
                ignore=shutil.ignore_patterns(_STAGING_PREFIX + "*"),
                copy_function=shutil.copy2,  # (looked up now, so tests can watch each copy)
            )
            if self._put_in_place(staged, destination, staging):
                self.log.info("Replaced the existing kernelspec in %s", destination)
        finally:
            self._remove_staging(staging)
        self.log.info("Installed kernelspec %s in %s", kernel_name, destination)
        return destination

    def _put_in_place(self, staged: str, destination: str, staging: str) -> bool:
        """Move the complete copy ``staged`` to ``destination``; True if it replaced one.

        Whatever was at the destination (a spec directory, or a symlink, which is
        not followed) ends up inside ``staging``, to be deleted with it.
        """
        replaced = ""
        for attempt in range(_PLACE_ATTEMPTS):
            if os.path.lexists(destination):
                if not os.path.islink(destination) and not os.path.isdir(destination):
                    raise FileExistsError(
                        errno.EEXIST, "exists and is not a kernel spec directory", destination
                    )
                try:
                    if _exchange(staged, destination):
                        return True
                    # No atomic swap here: the destination is briefly absent, never partial.
                    aside = os.path.join(staging, f"old-{attempt}")
                    os.rename(destination, aside)
                    replaced = aside
                except FileNotFoundError:
                    continue  # removed meanwhile: look again
            try:
                os.rename(staged, destination)
                return bool(replaced)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    if replaced:  # put the old spec back rather than lose it with the staging
                        with suppress(OSError):
                            os.rename(replaced, destination)
                    raise
                # Another install got there first: replace its spec in turn.
        raise OSError(errno.EBUSY, "kernel spec kept changing during the install", destination)

    def _remove_staging(self, staging: str) -> None:
        # rmtree never follows a symlink: a replaced symlinked spec loses its link only.
        try:
            shutil.rmtree(staging)
        except OSError as e:
            self.log.warning("Could not remove the staging directory %s: %s", staging, e)

    def install_native_kernel_spec(self, user: bool = False) -> None:
        """DEPRECATED: Use ipykernel.kernelspec.install"""
        warnings.warn(
            "install_native_kernel_spec is deprecated. Use ipykernel.kernelspec import install.",
            stacklevel=2,
        )
        from ipykernel.kernelspec import install

        install(self, user=user)  # type: ignore[arg-type]  # any object with install_kernel_spec


def find_kernel_specs() -> dict[str, str]:
    """Return ``{name: resource_dir}`` for every installed kernel spec.

    The first directory on the Jupyter path wins for a name. ``python3`` maps
    to ipykernel's resources directory when only the native fallback serves it.
    """
    return KernelSpecManager().find_kernel_specs()


def get_kernel_spec(kernel_name: str) -> KernelSpec:
    """Return the kernel spec called ``kernel_name`` (case-insensitive).

    Raises
    ------
    NoSuchKernel
        (a ``KeyError``) If there is none, or the name is not valid; see
        :meth:`KernelSpecManager.get_kernel_spec`.
    """
    return KernelSpecManager().get_kernel_spec(kernel_name)


def install_kernel_spec(
    source_dir: str,
    kernel_name: str | None = None,
    user: bool = False,
    replace: bool | None = False,
    prefix: str | None = None,
) -> str:
    """Install a kernel spec by copying its directory; see
    :meth:`KernelSpecManager.install_kernel_spec`.

    As in jupyter_client, ``replace`` defaults to False here, which is not None,
    so this warns that ``replace`` is ignored unless ``replace=None`` is passed.
    """
    return KernelSpecManager().install_kernel_spec(source_dir, kernel_name, user, replace, prefix)


def install_native_kernel_spec(user: bool = False) -> None:
    """DEPRECATED: Use ipykernel.kernelspec.install"""
    KernelSpecManager().install_native_kernel_spec(user=user)


def native_kernel_spec() -> KernelSpec:
    """The ``python3`` spec of this interpreter running ipykernel (ipykernel's own)."""
    resource_dir = _native_resource_dir()
    if resource_dir is None:
        raise NoSuchKernel(NATIVE_KERNEL_NAME, reason="ipykernel is not installed")
    return KernelSpecManager()._get_kernel_spec_by_name(NATIVE_KERNEL_NAME, resource_dir)


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
    """The spec directory in ``kdir`` whose name is ``key`` ignoring case, if any.

    ``key`` must be a valid kernel name: it is joined to ``kdir``.
    """
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


@cache
def _package_dir(name: str) -> str | None:
    """The directory of the installed package ``name``, found without importing
    it (a search of sys.path, so done once); None if it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def _native_resource_dir() -> str | None:
    """ipykernel's ``resources`` directory (its ``kernelspec.RESOURCES``); None
    if ipykernel is not installed."""
    package = _package_dir("ipykernel")
    return None if package is None else os.path.join(package, "resources")


def _ipython_dir() -> str | None:
    """IPython's directory as ``IPython.paths.get_ipython_dir`` names it, None
    without IPython; computed, not imported, and never created."""
    if _package_dir("IPython") is None:
        return None
    configured = os.environ.get("IPYTHONDIR")
    if configured is None:
        configured = os.path.join(os.path.realpath(os.path.expanduser("~")), ".ipython")
    return os.path.normpath(os.path.expanduser(configured))


def _provisioner_installed(name: object) -> bool:
    """Whether jupyter_client could load the kernel provisioner ``name``.

    ``local-provisioner`` always (jupyter_client builds it when its entry point
    is missing); any other name when an entry point of that name is installed.
    """
    if not isinstance(name, str):
        return False
    if name in _installed_provisioners:
        return True
    from importlib.metadata import entry_points

    if entry_points(group=_PROVISIONER_GROUP, name=name):
        _installed_provisioners.add(name)
        return True
    return False


def _exchange(a: str, b: str) -> bool:
    """Swap the entries ``a`` and ``b`` atomically (neither is followed if a symlink).

    Returns False, having changed nothing, where the OS or file system has no
    such swap; raises OSError (FileNotFoundError if either is gone) otherwise.
    """
    swap = _swap_function()
    if swap is None:
        return False
    import ctypes

    if swap(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


@cache
def _swap_function() -> Callable[[bytes, bytes], int] | None:
    """libc's atomic swap of two paths: Linux renameat2(RENAME_EXCHANGE), macOS
    renamex_np(RENAME_SWAP); None where there is none."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux"):
        renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28, musl >= 1.2.5
        if renameat2 is None:
            return None
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        renameat2.argtypes += [ctypes.c_uint]
        renameat2.restype = ctypes.c_int
        at_fdcwd, rename_exchange = -100, 2

        def linux_swap(a: bytes, b: bytes) -> int:
            return int(renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange))

        return linux_swap
    if sys.platform == "darwin":
        renamex_np = getattr(libc, "renamex_np", None)  # macOS 10.12+
        if renamex_np is None:
            return None
        renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        renamex_np.restype = ctypes.c_int
        rename_swap = 2

        def darwin_swap(a: bytes, b: bytes) -> int:
            return int(renamex_np(a, b, rename_swap))

        return darwin_swap
    return None
