"""A process that owns a kernel (and tunnels) and forks children: run by test_fork_safety.py.

It starts one kernel through KernelManager, then reads one JSON request per line on
stdin.  For each it opens the tunnel asked for (if any) with a client connected
through it, forks a child that ends as asked, waits for the child, and answers with
one JSON line saying what of its kernel, connection file, ports and tunnel survived.
End of stdin ends it normally (its own exit clean-up then stops the kernel).

The child ends the way a worker does: ``sys.exit(0)`` unwinds to the interpreter's
normal exit, so every atexit hook it inherited runs; or SIGTERM, which runs the
inherited signal handlers.  Nothing around the fork catches SystemExit, so the child
runs no clean-up code of this script on its way out.

Request: ``{"child": "exit" | "sigterm", "tunnel": null | {"server": ...,
"backend": "paramiko" | "openssh", "known_hosts": ..., "ssh_config": ...}}``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

from kernel_connect.client import BlockingKernelClient
from kernel_connect.errors import KernelDiedError
from kernel_connect.manager import KernelManager
from kernel_connect.ssh.tunnel import CHANNELS, TunnelPorts, tunnel_to_kernel
from kernel_fixtures import ports_held, start_ready_kernel

# Generous: a healthy kernel answers in milliseconds; only a broken one waits this out.
REPLY_TIMEOUT = 15.0
CHILD_TIMEOUT = 30.0


def answers(client: BlockingKernelClient) -> bool:
    """Whether the kernel replies to a kernel_info request from `client`."""
    try:
        client._recv_reply(client.kernel_info(), timeout=REPLY_TIMEOUT)
    except (TimeoutError, KernelDiedError):  # no reply, or no heartbeat either
        return False
    return True


def new_client_answers(info: dict[str, Any]) -> bool:
    """Whether a client connected afresh with `info` gets the kernel ready."""
    client = BlockingKernelClient()
    client.load_connection_info(info)
    try:
        client.wait_for_ready(timeout=REPLY_TIMEOUT)
    except Exception:
        return False
    finally:
        client.stop_channels()
    return True


def fork_child(how: str) -> str:
    """Fork a child that ends as `how` says; in the parent, how the child ended."""
    pid = os.fork()
    if pid == 0:
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(0)
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], CHILD_TIMEOUT)
    finally:
        os.close(fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "hung"
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


def read_file(path: str) -> bytes | None:
    """The bytes of `path`, or None when it is gone."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def serve(request: dict[str, Any], km: KernelManager, kc: BlockingKernelClient) -> dict[str, Any]:
    """Open the tunnel asked for, fork the child, and say what survived it."""
    # each request starts from an intact file, whatever an earlier child did to it
    km.write_connection_file()
    file_before = read_file(km.connection_file)
    info = km.get_connection_info()
    ports: TunnelPorts | None = None
    tunneled: BlockingKernelClient | None = None
    tunnel_info: dict[str, Any] = {}
    if request["tunnel"] is not None:
        options = dict(request["tunnel"])
        server = options.pop("server")
        ports = tunnel_to_kernel(info, server, **options)
        tunnel_info = dict(info, ip="127.0.0.1")
        tunnel_info.update({f"{name}_port": p for name, p in zip(CHANNELS, ports, strict=True)})
        tunneled = BlockingKernelClient()
        tunneled.load_connection_info(tunnel_info)
        tunneled.wait_for_ready(timeout=REPLY_TIMEOUT)

    facts: dict[str, Any] = {"child": fork_child(request["child"])}

    file_after = read_file(km.connection_file)
    facts["connection_file_kept"] = file_after is not None and file_after == file_before
    facts["kernel_alive"] = km.is_alive()
    facts["kernel_answers"] = answers(kc)
    facts["ports_held"] = all(ports_held(km.ports))
    if ports is not None and tunneled is not None:
        facts["tunnel_alive"] = ports.is_alive()
        facts["tunneled_client_answers"] = answers(tunneled)
        facts["new_tunneled_client_answers"] = new_client_answers(tunnel_info)
        facts["tunnel_ports_held"] = all(ports_held(list(ports)))
        tunneled.stop_channels()
        ports.close()
    return facts


def main() -> None:
    km, kc = start_ready_kernel()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        facts = serve(json.loads(line), km, kc)
        print(json.dumps(facts), flush=True)


if __name__ == "__main__":
    main()
