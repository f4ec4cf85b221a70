"""BlockingKernelClient: talk to a running kernel over its five channels.

Every blocking call waits in short slices and checks between them that the
kernel is still alive, so a kernel that dies mid-wait ends the wait with
KernelDiedError instead of a hang or a timeout. Whether it is alive comes from
the client's ``liveness`` source: its KernelManager's view of the process when
the manager made the client, otherwise the heartbeat.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from getpass import getpass
from queue import Empty
from typing import Any, Literal, Protocol, overload

import zmq
from traitlets import Bool, Float, Integer

from kernel_connect.channels import HBChannel, HeartbeatWatch, ZMQSocketChannel
from kernel_connect.errors import KernelDeath, KernelDiedError, KernelTimeoutError
from kernel_connect.mixin import PORT_NAMES, ConnectionFileMixin
from kernel_connect.session import new_id_bytes

# Resend kernel_info_request this often while waiting: a request queued for a
# kernel that died (a restart) is lost with its connection.
_READY_RESEND_S = 1.0
# Poll granularity while waiting for readiness, also how often we check the process.
_READY_POLL_S = 0.05
# After the kernel_info reply, how long to wait for IOPub to show it is connected
# before asking again (each request makes the kernel publish a status).
_IOPUB_GRACE_S = 0.2
# How often to look at a starting kernel's stderr for a port clash.
_STDERR_CHECK_S = 0.25
# Blocking waits poll their socket this long at most before checking the kernel lives.
_LIVENESS_SLICE_S = 0.1


class KernelLiveness(Protocol):
    """Where a client learns whether its kernel still runs, and if not, how it ended.

    ``KernelManager.client()`` sets one that watches the kernel's process;
    a client without one watches the kernel's heartbeat.
    """

    def is_alive(self) -> bool:
        """Whether the kernel still runs (quick: called between slices of a wait)."""
        ...

    def death(self) -> KernelDeath:
        """How the kernel ended (meaningful once :meth:`is_alive` returned False)."""
        ...


class BlockingKernelClient(ConnectionFileMixin):
    """A client of one kernel with blocking calls, as jupyter_client's.

    Load the connection with :meth:`load_connection_file` or
    :meth:`load_connection_info` (or get one from ``KernelManager.client()``),
    then :meth:`start_channels` and :meth:`wait_for_ready`.
    """

    allow_stdin = Bool(True, help="Whether execute requests may ask us for input.")
    hb_time_to_dead = Float(1.0, config=True, help="Seconds without a heartbeat echo = dead.")
    hb_missed_beats = Integer(
        3,
        config=True,
        help="While a blocking call waits on a kernel without a manager, heartbeats missed "
        "in a row (each after hb_time_to_dead) before it raises KernelDiedError.",
    )
    hb_first_echo_grace = Float(
        30.0,
        config=True,
        help="Seconds a kernel that has not echoed a heartbeat yet may still be starting "
        "before a blocking call counts it as dead.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shell_channel: ZMQSocketChannel | None = None
        self._iopub_channel: ZMQSocketChannel | None = None
        self._stdin_channel: ZMQSocketChannel | None = None
        self._control_channel: ZMQSocketChannel | None = None
        self._hb_channel: HBChannel | None = None
        self._hb_watch: HeartbeatWatch | None = None
        # Whether the kernel behind our channels has sent us anything: then it
        # is up, and a silent heartbeat means death, not a slow start.
        self._kernel_answered = False
        #: Whether the kernel is alive and how it ended; None: watch its heartbeat.
        self.liveness: KernelLiveness | None = None
        self.kernel_info_reply: dict[str, Any] | None = None
        # One routing identity for shell, stdin and control: the kernel sends
        # an input_request to the stdin socket whose identity sent the execute
        # request. Per client rather than per session id (as jupyter_client
        # does), so two clients of one manager never collide at the ROUTER.
        self.identity = new_id_bytes()

    def __enter__(self) -> BlockingKernelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_channels()

    # -- channels ----------------------------------------------------------

    def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        """Connect the selected channels (IOPub first, so no output is missed)."""
        if iopub:
            self.iopub_channel.start()
        if shell:
            self.shell_channel.start()
        if stdin:
            self.stdin_channel.start()
            self.allow_stdin = True
        else:
            self.allow_stdin = False
        if hb:
            self.hb_channel.start()
        if control:
            self.control_channel.start()

    def stop_channels(self) -> None:
        """Close every open channel."""
        for name in ("_shell_channel", "_iopub_channel", "_stdin_channel", "_control_channel"):
            channel = getattr(self, name)
            if channel is not None:
                channel.close()
                setattr(self, name, None)
        if self._hb_channel is not None:
            self._hb_channel.stop()
            self._hb_channel = None
        if self._hb_watch is not None:
            self._hb_watch.close()
            self._hb_watch = None
        self._kernel_answered = False

    @property
    def channels_running(self) -> bool:
        """Whether any channel is open."""
        return any(
            c is not None and c.is_alive()
            for c in (
                self._shell_channel,
                self._iopub_channel,
                self._stdin_channel,
                self._control_channel,
                self._hb_channel,
            )
        )

    @property
    def shell_channel(self) -> ZMQSocketChannel:
        """The shell channel (connected on first use)."""
        if self._shell_channel is None:
            self._shell_channel = ZMQSocketChannel(
                self.connect_shell(identity=self.identity), self.session
            )
        return self._shell_channel

    @property
    def iopub_channel(self) -> ZMQSocketChannel:
        """The IOPub channel (connected on first use)."""
        if self._iopub_channel is None:
            self._iopub_channel = ZMQSocketChannel(self.connect_iopub(), self.session)
        return self._iopub_channel

    @property
    def stdin_channel(self) -> ZMQSocketChannel:
        """The stdin channel (connected on first use)."""
        if self._stdin_channel is None:
            self._stdin_channel = ZMQSocketChannel(
                self.connect_stdin(identity=self.identity), self.session
            )
        return self._stdin_channel

    @property
    def control_channel(self) -> ZMQSocketChannel:
        """The control channel (connected on first use)."""
        if self._control_channel is None:
            self._control_channel = ZMQSocketChannel(
                self.connect_control(identity=self.identity), self.session
            )
        return self._control_channel

    @property
    def hb_channel(self) -> HBChannel:
        """The heartbeat channel."""
        if self._hb_channel is None:
            self._hb_channel = HBChannel(self.connect_hb, time_to_dead=self.hb_time_to_dead)
        return self._hb_channel

    def get_shell_msg(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Return the next shell message.

        Raises ``queue.Empty`` on timeout, and :class:`KernelDiedError` as soon
        as the kernel is found dead while waiting (the same for the other
        ``get_*_msg``).
        """
        return self._get_msg(
            self.shell_channel, block, timeout, "while waiting for a shell message"
        )

    def get_iopub_msg(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Return the next IOPub message (``queue.Empty`` on timeout)."""
        return self._get_msg(
            self.iopub_channel, block, timeout, "while waiting for an IOPub message"
        )

    def get_stdin_msg(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Return the next stdin message (``queue.Empty`` on timeout)."""
        return self._get_msg(
            self.stdin_channel, block, timeout, "while waiting for a stdin message"
        )

    def get_control_msg(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Return the next control message (``queue.Empty`` on timeout)."""
        return self._get_msg(
            self.control_channel, block, timeout, "while waiting for a control message"
        )

    def _get_msg(
        self, chan: ZMQSocketChannel, block: bool, timeout: float | None, doing: str
    ) -> dict[str, Any]:
        """``chan.get_msg`` in slices, checking between them that the kernel lives."""
        if not block:
            return chan.get_msg(block=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _LIVENESS_SLICE_S
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            try:
                msg = chan.get_msg(timeout=wait)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                self._raise_if_dead(doing)
                continue
            self._note_kernel_answered()
            return msg

    # -- liveness ----------------------------------------------------------

    def _manager(self) -> Any:
        from kernel_connect.manager import KernelManager

        return self.parent if isinstance(self.parent, KernelManager) else None

    def is_alive(self) -> bool:
        """Whether the kernel is alive.

        Asks :attr:`liveness` (the process, when a KernelManager made this
        client), else pings the heartbeat once (True when nothing can tell).
        """
        if self.liveness is not None:
            return self.liveness.is_alive()
        if self._hb_channel is not None and self._hb_channel.is_alive():
            return self._hb_channel.is_beating()
        return True

    def _watch(self) -> KernelLiveness | None:
        """What blocking calls ask between slices; None when nothing can tell.

        The heartbeat counts only while the heartbeat channel runs and is not
        paused, as for :meth:`is_alive`.
        """
        if self.liveness is not None:
            return self.liveness
        hb = self._hb_channel
        if hb is None or not hb.is_alive() or hb.paused:
            return None
        if self._hb_watch is None:
            self._hb_watch = HeartbeatWatch(
                self.connect_hb,
                time_to_dead=self.hb_time_to_dead,
                missed_beats=self.hb_missed_beats,
                first_echo_grace=self.hb_first_echo_grace,
                where=self._make_url("hb"),
            )
            if self._kernel_answered:
                self._hb_watch.kernel_answered()
        return self._hb_watch

    def _note_kernel_answered(self) -> None:
        if not self._kernel_answered:
            self._kernel_answered = True
            if self._hb_watch is not None:
                self._hb_watch.kernel_answered()

    def _raise_if_dead(self, doing: str) -> None:
        """Raise KernelDiedError, saying what we were ``doing``, if the kernel is dead."""
        watch = self._watch()
        if watch is None or watch.is_alive():
            return
        death = watch.death()
        raise KernelDiedError(
            f"kernel died {doing}: {death.description}",
            exit_code=death.exit_code,
            stderr_tail=death.stderr_tail,
        )

    def wait_for_ready(self, timeout: float | None = None) -> None:
        """Block until the kernel answers a kernel_info request and IOPub is connected.

        When our KernelManager started the kernel and it died at start-up because
        one of its ports was taken by a process that does not use the reservation
        table, the kernel is restarted on new ports (up to the manager's
        ``port_clash_retries`` times) and the wait goes on.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (None: forever).

        Raises
        ------
        KernelDiedError
            If the kernel dies while we wait (exit code and stderr tail are in
            the message and attributes when our manager started it; without a
            manager, after ``hb_missed_beats`` missed heartbeats, and not before
            ``hb_first_echo_grace`` if it never answered one).
        KernelTimeoutError
            If it does not answer in time; the message says whether it answers
            heartbeats (then the key or signature scheme is probably wrong).
        """
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        km = self._manager()
        retries = int(km.port_clash_retries) if km is not None else 0
        if not self.channels_running:
            self.start_channels()
        while True:
            try:
                reply = self._wait_ready_once(deadline, timeout, km)
            except KernelDiedError:
                if km is None or retries <= 0 or not km.port_clash():
                    raise
                retries -= 1
                self.log.warning(
                    "a port of the kernel was taken by another process; restarting it on new ports"
                )
                km.restart_kernel(now=True, newports=True)
                km.port_clash_restarts += 1
                self._reconnect(km)
                continue
            self._handle_kernel_info_reply(reply)
            return

    def _reconnect(self, km: Any) -> None:
        """Reopen our channels on the (new) ports of ``km``."""
        self.stop_channels()
        for name in PORT_NAMES:
            setattr(self, name, getattr(km, name))
        self.start_channels(stdin=self.allow_stdin)

    def _wait_ready_once(self, deadline: float, timeout: float | None, km: Any) -> dict[str, Any]:
        """One readiness handshake on the current channels; return the kernel_info reply."""
        shell, iopub = self.shell_channel, self.iopub_channel
        assert shell.socket is not None
        assert iopub.socket is not None
        poller = zmq.Poller()
        poller.register(shell.socket, zmq.POLLIN)
        poller.register(iopub.socket, zmq.POLLIN)
        sent: set[str] = set()
        last_sent = float("-inf")
        reply: dict[str, Any] | None = None
        reply_at = 0.0
        iopub_seen = False
        others: list[dict[str, Any]] = []
        next_stderr_check = 0.0
        try:
            while True:
                now = time.monotonic()
                if reply is None and now - last_sent >= _READY_RESEND_S:
                    sent.add(self.kernel_info())
                    last_sent = now
                elif reply is not None and not iopub_seen and now - reply_at >= _IOPUB_GRACE_S:
                    # Ask again: its status messages show when IOPub is connected.
                    sent.add(self.kernel_info())
                    reply_at = now
                if now >= deadline:
                    raise KernelTimeoutError(self._not_ready_message(timeout))
                wait = min(_READY_POLL_S, deadline - now)
                events = dict(poller.poll(max(1, int(wait * 1000))))
                if iopub.socket in events:
                    # The welcome to our subscription, or the status of one of our
                    # requests, proves IOPub works. Any other message may be stale:
                    # after a restart the old kernel's last broadcasts are queued.
                    for msg in iopub.get_msgs():
                        if (
                            msg["msg_type"] == "iopub_welcome"
                            or msg["parent_header"].get("msg_id") in sent
                        ):
                            iopub_seen = True
                if shell.socket in events:
                    for msg in shell.get_msgs():
                        if msg["parent_header"].get("msg_id") not in sent:
                            others.append(msg)  # someone else's reply: keep it
                        elif msg["msg_type"] == "kernel_info_reply":
                            reply = reply or msg
                            reply_at = time.monotonic()
                if reply is not None and iopub_seen:
                    break
                self._raise_if_dead("before replying to kernel_info")
                if km is not None and km.has_kernel and now >= next_stderr_check:
                    # ipykernel can hang, not exit, after failing to bind a port.
                    next_stderr_check = now + _STDERR_CHECK_S
                    if km.port_clash():
                        raise KernelDiedError(
                            "kernel could not bind its ports (still running, but it "
                            "will never answer): " + km.death_report(),
                            stderr_tail=km.stderr_tail(),
                        )
        finally:
            # Replies and statuses of the other requests are of no use to anyone.
            shell.discard(sent)
            iopub.discard(sent)
            shell.requeue(others)
        iopub.get_msgs()
        return reply

    def _not_ready_message(self, timeout: float | None) -> str:
        beating = self.hb_channel.is_beating()
        if beating:
            why = (
                "the kernel answers heartbeats but ignores our requests: the message "
                "signature may be wrong (key or signature_scheme differs from the kernel's)"
            )
        else:
            why = "the kernel does not answer heartbeats either (is it running, on these ports?)"
        return f"kernel did not reply to kernel_info within {timeout} s; {why}"

    def _handle_kernel_info_reply(self, msg: dict[str, Any]) -> None:
        self.kernel_info_reply = msg
        self._note_kernel_answered()

    # -- requests ----------------------------------------------------------

    def _send_shell(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.session.msg(msg_type, content)
        self.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
    ) -> str:
        """Send an execute_request; return its msg_id.

        Parameters
        ----------
        code : str
            Code in the kernel's language.
        silent, store_history, user_expressions, allow_stdin, stop_on_error
            As in the messaging protocol's execute_request.

        Raises
        ------
        ValueError
            If ``code`` is not a string or ``user_expressions`` is not a str->str dict.
        """
        if not isinstance(code, str):
            raise ValueError(f"code must be a string, got {type(code).__name__}")
        user_expressions = user_expressions or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in user_expressions.items()):
            raise ValueError("user_expressions must map str to str")
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions,
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }
        return self._send_shell("execute_request", content)

    def complete(self, code: str, cursor_pos: int | None = None) -> str:
        """Send a complete_request; return its msg_id."""
        pos = len(code) if cursor_pos is None else cursor_pos
        return self._send_shell("complete_request", {"code": code, "cursor_pos": pos})

    def inspect(self, code: str, cursor_pos: int | None = None, detail_level: int = 0) -> str:
        """Send an inspect_request; return its msg_id."""
        pos = len(code) if cursor_pos is None else cursor_pos
        content = {"code": code, "cursor_pos": pos, "detail_level": detail_level}
        return self._send_shell("inspect_request", content)

    def history(
        self, raw: bool = True, output: bool = False, hist_access_type: str = "range", **kwargs: Any
    ) -> str:
        """Send a history_request; return its msg_id."""
        if hist_access_type == "range":
            kwargs.setdefault("session", 0)
            kwargs.setdefault("start", 0)
        content = dict(raw=raw, output=output, hist_access_type=hist_access_type, **kwargs)
        return self._send_shell("history_request", content)

    @overload
    def kernel_info(
        self, *, reply: Literal[False] = False, timeout: float | None = None
    ) -> str: ...

    @overload
    def kernel_info(
        self, *, reply: Literal[True], timeout: float | None = None
    ) -> dict[str, Any]: ...

    def kernel_info(self, *, reply: bool = False, timeout: float | None = None) -> Any:
        """Send a kernel_info_request; return its msg_id, or with ``reply`` its reply.

        Parameters
        ----------
        reply : bool
            Wait for the reply and return it instead of the msg_id (as jupyter_client).
        timeout : float, optional
            With ``reply``: seconds to wait at most (None: until it comes or
            the kernel dies).

        Raises
        ------
        TimeoutError
            With ``reply``, if the reply does not come within ``timeout``.
        KernelDiedError
            With ``reply``, if the kernel dies first.
        """
        msg_id = self._send_shell("kernel_info_request", {})
        if not reply:
            return msg_id
        return self._recv_reply(msg_id, timeout=timeout)

    def comm_info(self, target_name: str | None = None) -> str:
        """Send a comm_info_request; return its msg_id."""
        content = {} if target_name is None else {"target_name": target_name}
        return self._send_shell("comm_info_request", content)

    def is_complete(self, code: str) -> str:
        """Send an is_complete_request; return its msg_id."""
        return self._send_shell("is_complete_request", {"code": code})

    def input(self, string: str) -> None:
        """Answer the kernel's input_request on the stdin channel."""
        msg = self.session.msg("input_reply", {"value": string})
        self.stdin_channel.send(msg)

    def shutdown(self, restart: bool = False) -> str:
        """Ask the kernel to shut down (on the control channel); return the msg_id."""
        msg = self.session.msg("shutdown_request", {"restart": restart})
        self.control_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def _recv_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> dict[str, Any]:
        """Return the reply to ``msg_id`` on ``channel``, skipping other replies.

        Raises
        ------
        TimeoutError
            If it does not come within ``timeout`` seconds.
        KernelDiedError
            If the kernel dies first.
        """
        chan = self.control_channel if channel == "control" else self.shell_channel
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = self._get_msg(
                    chan, True, remaining, f"while waiting for the reply to {msg_id}"
                )
            except Empty:
                raise TimeoutError(f"no reply to {msg_id} within {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def execute_interactive(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        timeout: float | None = None,
        output_hook: Callable[[dict[str, Any]], Any] | None = None,
        stdin_hook: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Execute code, forward its output, answer its input requests, return the reply.

        Parameters
        ----------
        code : str
            Code to run.
        silent, store_history, user_expressions, allow_stdin, stop_on_error
            As for :meth:`execute`.
        timeout : float, optional
            Seconds to wait for the whole execution (None: forever).
        output_hook : callable, optional
            Called with every IOPub message of this request (default: print
            streams, results and errors to our stdout/stderr).
        stdin_hook : callable, optional
            Called with every input_request (default: prompt on our terminal
            and answer with :meth:`input`).

        Returns
        -------
        dict
            The execute_reply message.

        Raises
        ------
        TimeoutError
            If the execution does not finish within ``timeout``.
        KernelDiedError
            As soon as the kernel is found dead (whatever ``timeout``).
        """
        if allow_stdin is None:
            allow_stdin = self.allow_stdin
        iopub = self.iopub_channel
        stdin = self.stdin_channel if allow_stdin else None
        msg_id = self.execute(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions,
            allow_stdin=allow_stdin,
            stop_on_error=stop_on_error,
        )
        output_hook = output_hook or _print_output
        stdin_hook = stdin_hook or self._stdin_hook_default
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(iopub.socket, zmq.POLLIN)
        if stdin is not None:
            poller.register(stdin.socket, zmq.POLLIN)
        next_check = time.monotonic() + _LIVENESS_SLICE_S
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"execution of {msg_id} did not finish within {timeout} s")
            wait = _LIVENESS_SLICE_S if deadline is None else min(_LIVENESS_SLICE_S, deadline - now)
            events = dict(poller.poll(max(1, int(wait * 1000))))
            if stdin is not None and stdin.socket in events:
                for req in stdin.get_msgs():
                    stdin_hook(req)
            done = False
            if iopub.socket in events:
                for msg in iopub.get_msgs():
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    self._note_kernel_answered()
                    output_hook(msg)
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        done = True
            if done:
                break
            # Checked on the clock, not only when a slice was quiet: other
            # clients' output on IOPub must not keep us from noticing.
            if time.monotonic() >= next_check:
                self._raise_if_dead(f"during the execution of {msg_id}")
                next_check = time.monotonic() + _LIVENESS_SLICE_S
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._recv_reply(msg_id, timeout=remaining)

    def _stdin_hook_default(self, msg: dict[str, Any]) -> None:
        content = msg["content"]
        prompt = getpass if content.get("password", False) else input
        try:
            value = prompt(content.get("prompt", ""))
        except EOFError:
            value = "\x04"
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            return
        self.input(value)


def _print_output(msg: dict[str, Any]) -> None:
    """Redisplay plain-text output of an IOPub message on our terminal."""
    msg_type = msg["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(content.get("text", ""))
        stream.flush()
    elif msg_type in ("display_data", "execute_result"):
        text = content.get("data", {}).get("text/plain")
        if text is not None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
    elif msg_type == "error":
        sys.stderr.write("\n".join(content.get("traceback", [])) + "\n")
        sys.stderr.flush()


__all__ = ["BlockingKernelClient", "KernelLiveness"]
