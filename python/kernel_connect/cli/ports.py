"""``ports``: who holds which port in the reservation table."""

from __future__ import annotations

import argparse
from collections import Counter

from kernel_connect.cli.output import emit_json, plural, table


def run_ports(args: argparse.Namespace) -> int:
    from kernel_connect.connect import LocalPortCache

    cache = LocalPortCache.instance()
    held = sorted(cache.table.held())
    alive = sum(1 for _, _, is_alive in held if is_alive)
    owners = Counter(pid for _, pid, _ in held)
    if args.json:
        emit_json(
            {
                "table": cache.table.path,
                "ports": [{"port": p, "pid": pid, "alive": a} for p, pid, a in held],
                "held": len(held),
                "alive": alive,
                "reclaimable": len(held) - alive,
                "owners": len(owners),
            }
        )
        return 0
    print(f"port table: {cache.table.path or '(in-process only)'}")
    if held:
        rows = [[p, pid, "alive" if a else "dead (reclaimable)"] for p, pid, a in held]
        print(table(["port", "pid", "owner"], rows))
    print(
        f"\n{plural(len(held), 'port')} held by "
        f"{plural(len(owners), 'process', 'processes')}: "
        f"{alive} by live owners, {len(held) - alive} reclaimable"
    )
    return 0
