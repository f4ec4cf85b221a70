"""``ls``, ``prune`` and ``new``: the connection files of a runtime directory."""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from kernel_connect.cli import CommandError
from kernel_connect.cli.output import age, emit_json, plural, table
from kernel_connect.connect import PORT_NAMES, port_names
from kernel_connect.liveness import ConnectionFileStatus, probe, scan_directory
from kernel_connect.paths import runtime_dir
from kernel_connect.secrets import SECRET_FIELDS


def _directory(args: argparse.Namespace) -> str:
    directory = args.dir or runtime_dir()
    if not os.path.isdir(directory):
        raise CommandError(f"{directory} is not a directory")
    return directory


def _endpoint(info: dict[str, Any]) -> str:
    return f"{info.get('transport', '?')}://{info.get('ip', '?')}"


def _as_json(status: ConnectionFileStatus) -> dict[str, Any]:
    info = status.info or {}
    return {
        "path": status.path,
        "kernel_name": info.get("kernel_name"),
        "transport": info.get("transport"),
        "ip": info.get("ip"),
        "ports": {n: info.get(n) for n in PORT_NAMES},
        "age_s": round(status.age_s, 3),
        "alive": status.alive,
        "state": status.state,
        "reason": status.reason,
        "error": status.error,
    }


def _judged(args: argparse.Namespace) -> list[ConnectionFileStatus]:
    statuses = scan_directory(_directory(args), args.pattern)
    probe(statuses, timeout=args.timeout)
    return statuses


def run_ls(args: argparse.Namespace) -> int:
    statuses = _judged(args)
    if args.json:
        emit_json([_as_json(s) for s in statuses])
        return 0
    rows = []
    for s in statuses:
        info = s.info or {}
        rows.append(
            [
                os.path.basename(s.path),
                info.get("kernel_name") or "-",
                _endpoint(info) if s.info else "-",
                ",".join(map(str, s.ports)) or "-",
                age(s.age_s),
                f"unknown: {s.reason}" if s.alive is None else s.state,
            ]
        )
    order = ",".join(name.removesuffix("_port") for name in port_names)
    headers = ["file", "kernel", "endpoint", f"ports ({order})", "age", "state"]
    print(table(headers, rows))
    alive = sum(1 for s in statuses if s.alive is True)
    dead = sum(1 for s in statuses if s.alive is False)
    unknown = len(statuses) - alive - dead
    summary = f"{plural(len(statuses), 'connection file')}: {alive} alive, {dead} dead"
    print(f"\n{summary}, {unknown} unknown" if unknown else f"\n{summary}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    """Remove the files proved dead and older than --min-age; a dry run takes the
    same decisions and only skips the unlink."""
    statuses = _judged(args)
    removed: list[ConnectionFileStatus] = []
    kept_busy: list[ConnectionFileStatus] = []
    kept_unknown: list[ConnectionFileStatus] = []
    failures: list[str] = []
    for s in statuses:
        if s.alive is None:
            (kept_busy if s.extra.get("busy_ports") else kept_unknown).append(s)
            continue
        if s.alive or s.age_s < args.min_age:
            continue
        if not args.dry_run:
            try:
                os.unlink(s.path)
            except FileNotFoundError:
                pass
            except OSError as err:
                failures.append(f"{s.path}: {err.strerror}")
                continue
        removed.append(s)
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        emit_json(
            {
                "dry_run": args.dry_run,
                "removed": [s.path for s in removed],
                "kept_ports_in_use": [s.path for s in kept_busy],
                "kept_unknown": [{"path": s.path, "reason": s.reason} for s in kept_unknown],
                "errors": failures,
            }
        )
    else:
        for s in removed:
            print(f"{verb} {s.path} ({s.reason})")
        for s in kept_busy:
            print(f"kept {s.path}: ports {s.extra['busy_ports']} are in use on this host")
        for s in kept_unknown:
            print(f"kept {s.path}: unknown ({s.reason})")
        print(f"{verb} {len(removed)} of {plural(len(statuses), 'connection file')}")
        for line in failures:
            print(f"error: {line}")
    return 1 if failures else 0


def run_new(args: argparse.Namespace) -> int:
    from kernel_connect.connect import write_connection_file

    path = args.file or os.path.join(runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory")
    key = uuid.uuid4().hex.encode("ascii")
    try:
        fname, info = write_connection_file(
            path, ip=args.ip, key=key, transport=args.transport, kernel_name=args.kernel_name
        )
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from err
    if not args.show_key:
        info = {k: v for k, v in info.items() if k not in SECRET_FIELDS}
    if args.json:
        emit_json({"path": os.path.abspath(fname), **info})
    else:
        print(os.path.abspath(fname))
        if args.show_key:
            print(f"key: {key.decode()}")
    return 0
