"""``ports``: who holds which port in the reservation table."""

from __future__ import annotations

import argparse
from collections import Counter

from kernel_connect.cli.output import emit_json, plural, table


def run_ports(args: argparse.Namespace) -> int:
    from kernel_connect import _native
    from kernel_connect.ports import LocalPortCache

    cache = LocalPortCache.instance()
    now = _native.clock_seconds()
    held = sorted(cache.table.held())
    alive = sum(1 for _, _, is_alive, _ in held if is_alive)
    owners = Counter(pid for _, pid, _, until in held if until is None)
    leases = sum(1 for *_, until in held if until is not None)
    if args.json:
        emit_json(
            {
                "table": cache.table.path,
                "ports": [
                    {
                        "port": p,
                        "pid": pid,
                        "alive": a,
                        "kind": "held" if until is None else "lease",
                        "lease_seconds_left": None if until is None else max(0, until - now),
                    }
                    for p, pid, a, until in held
                ],
                "held": len(held),
                "alive": alive,
                "reclaimable": len(held) - alive,
                "owners": len(owners),
                "leases": leases,
            }
        )
        return 0
    print(f"port table: {cache.table.path or '(in-process only)'}")
    if held:
        rows = [[p, pid, _state(a, until, now)] for p, pid, a, until in held]
        print(table(["port", "pid", "reservation"], rows))
    print(
        f"\n{plural(len(held), 'port')} reserved: "
        f"{len(held) - leases} held by {plural(len(owners), 'process', 'processes')}, "
        f"{plural(leases, 'lease')}; "
        f"{alive} protected, {len(held) - alive} reclaimable"
    )
    return 0


def _state(alive: bool, until: int | None, now: int) -> str:
    if until is None:
        return "held, owner alive" if alive else "held, owner dead (reclaimable)"
    if alive:
        return f"lease, {until - now} s left"
    return "lease ended (reclaimable)"
