"""Answering OpenSSH's password and passphrase prompts without a terminal scraper.

ssh runs without a controlling terminal here (its own session, so a Ctrl-C
meant for the kernel does not kill the tunnel), so prompts go through
SSH_ASKPASS: ssh runs a tiny helper script that asks this process over a Unix
socket in a private 0700 directory.  The answer is the password the caller
gave, or what the user types when this process sits on a terminal; otherwise
the helper fails and ssh reports that login was refused.  The password never
travels through the environment or the command line.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading

__all__ = ["AskpassServer"]

HELPER_SOURCE = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["KERNEL_CONNECT_ASKPASS_SOCKET"])
prompt = sys.argv[1] if len(sys.argv) > 1 else ""
sock.sendall(prompt.encode("utf-8", "replace") + b"\\n")
data = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
if not data.startswith(b"+"):
    sys.exit(1)
sys.stdout.write(data[1:].decode("utf-8") + "\\n")
"""

# ssh asks once per key passphrase and once per password attempt; answering a
# wrong password over and over would only lock accounts
MAX_ANSWERS = 2


class AskpassServer:
    """Serves ssh's askpass prompts for one ssh process.

    Parameters
    ----------
    password : str or None
        The answer to give (password or key passphrase).
    interactive : bool
        When no password is given, ask the user on the terminal.
    """

    def __init__(self, password: str | None, interactive: bool):
        self._password = password
        self._interactive = interactive
        self._answers = 0
        self.prompts: list[str] = []
        self._directory = tempfile.mkdtemp(prefix="kc-askpass-")
        self.socket_path = os.path.join(self._directory, "socket")
        self.script = os.path.join(self._directory, "askpass")
        fd = os.open(self.script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as script:
            script.write(f"#!{sys.executable}\n{HELPER_SOURCE}")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(4)
        self._thread = threading.Thread(
            target=self._serve, name="kernel-connect-ssh-askpass", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<AskpassServer {self.socket_path} answers={self._answers}>"

    def environment(self) -> dict[str, str]:
        """Variables that make ssh use the helper (OpenSSH 8.4 or newer)."""
        return {
            "SSH_ASKPASS": self.script,
            "SSH_ASKPASS_REQUIRE": "force",
            "KERNEL_CONNECT_ASKPASS_SOCKET": self.socket_path,
        }

    def _answer(self, prompt: str) -> str | None:
        self.prompts.append(prompt)
        if self._answers >= MAX_ANSWERS:
            return None
        if self._password is not None:
            self._answers += 1
            return self._password
        if self._interactive:
            self._answers += 1
            return getpass.getpass(prompt.rstrip() + " ")
        return None

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                if not _same_user(conn):
                    continue
                prompt = _read_line(conn)
                answer = self._answer(prompt)
                with contextlib.suppress(OSError):
                    conn.sendall(b"-" if answer is None else b"+" + answer.encode())

    def close(self) -> None:
        """Stop answering and remove the helper and its socket."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=2.0)
        shutil.rmtree(self._directory, ignore_errors=True)


def _same_user(conn: socket.socket) -> bool:
    """Only a process of our own user may ask (the directory is 0700 as well)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _read_line(conn: socket.socket, limit: int = 4096) -> str:
    conn.settimeout(5.0)
    data = b""
    with contextlib.suppress(OSError):
        while b"\n" not in data and len(data) < limit:
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
