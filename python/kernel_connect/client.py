"""Kernel clients: KernelClient (the base), BlockingKernelClient and AsyncKernelClient.

The class layout is jupyter_client's: ``KernelClient`` holds the connection,
the channels and the request methods, and is what users subclass;
``BlockingKernelClient`` and ``AsyncKernelClient`` add the waits, blocking or
as coroutines (``ThreadedKernelClient`` lives in :mod:`kernel_connect.threaded`).

One implementation, two faces. Every exchange that waits (a message, a reply,
the readiness handshake, ``execute_interactive``) is written once, in
KernelClient, as a sans-IO operation (see :mod:`kernel_connect._sansio`): it
yields what it waits for, a poll of some channels, a heartbeat ping, a restart
by the kernel's owner, and is resumed with the outcome. The blocking face
serves those requests with ``zmq.Poller``; the asyncio face awaits
``zmq.asyncio`` sockets in the running loop. No thread per channel, none at all.

Every wait is taken in short slices and checks between them that the kernel
still lives, so a kernel that dies mid-wait ends the wait with KernelDiedError
instead of a hang or a timeout. Whether it lives comes from the client's
``liveness``: its KernelManager's view of the process when the manager made
the client (a :class:`KernelOwner`, which also restarts a kernel whose start
failed on a port clash, by the manager's policy), otherwise the heartbeat.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from getpass import getpass
from inspect import isawaitable
from queue import Empty
from typing import (
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

import zmq
from traitlets import Bool, Float, Instance, Integer, Type

from kernel_connect._sansio import Operation, drive, drive_async
from kernel_connect.channels import (
    AsyncZMQSocketChannel,
    HandshakeWatch,
    HBChannel,
    HeartbeatWatch,
    SocketChannel,
    ZMQSocketChannel,
)
from kernel_connect.errors import KernelDeath, KernelDiedError, KernelTimeoutError
from kernel_connect.jsonutil import validate_string_dict  # noqa: F401 - public, as jupyter_client
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
# How often to ask the kernel's owner whether a starting kernel has failed (a port clash).
_START_FAILURE_CHECK_S = 0.25
# Waits poll their sockets this long at most before checking the kernel lives.
_LIVENESS_SLICE_S = 0.1
# How long ending the client's own zmq context may wait for queued messages (ms),
# as jupyter_client's stop_channels: the wait happens in the caller's thread.
_CONTEXT_END_LINGER_MS = 100

_ReplyT = TypeVar("_ReplyT")
_ChannelT = TypeVar("_ChannelT")


class KernelLiveness(Protocol):
    """Where a client learns whether its kernel still runs, and if not, how it ended.

    ``KernelManager.client()`` sets a :class:`KernelOwner` that watches the
    kernel's process; a client without one watches the kernel's heartbeat.
    """

    def is_alive(self) -> bool:
        """Whether the kernel still runs (quick: called between slices of a wait)."""
        ...

    def death(self) -> KernelDeath:
        """How the kernel ended (meaningful once :meth:`is_alive` returned False)."""
        ...


@runtime_checkable
class KernelOwner(KernelLiveness, Protocol):
    """The client's whole view of the manager that started its kernel.

    A client asks its owner, and nothing else of the manager: whether the
    kernel lives, how it ended, whether a start failed, and to recover from a
    failed start. Whether and how to recover (restart on new ports, how many
    times) is the owner's policy, not the client's.
    """

    def start_failure(self) -> KernelDeath | None:
        """Why a kernel that still runs will never answer (e.g. a port it could not
        bind), or None. Asked now and then while the client waits for readiness."""
        ...

    def recover(self) -> Mapping[str, int] | None:
        """The kernel failed to start (it died, or :meth:`start_failure` said why):
        restart it if the owner's policy allows (blocking).

        Returns
        -------
        mapping or None
            The kernel's five ports (``shell_port`` ...) to reconnect to, or
            None when the owner gives up (the client then raises its error).
        """
        ...

    async def recover_async(self) -> Mapping[str, int] | None:
        """:meth:`recover` for asyncio clients (the restart is awaited)."""
        ...


# -- what the operations wait for (served by each face's driver) --------------


@dataclass(frozen=True)
class _Poll:
    """Wait until one of ``channels`` has a message, or ``timeout`` s; -> the ready ones.

    An event of one of ``handshakes`` ends the wait too (read it with ``pending``).
    """

    channels: tuple[SocketChannel, ...]
    timeout: float
    handshakes: tuple[HandshakeWatch, ...] = ()


@dataclass(frozen=True)
class _Beat:
    """Ping the heartbeat once; -> whether it echoed within ``timeout`` (default time_to_dead)."""

    timeout: float | None = None


@dataclass(frozen=True)
class _Recover:
    """Ask the owner to recover from a failed start; -> new ports, or None."""

    owner: KernelOwner


@dataclass(frozen=True)
class _Await:
    """Wait for what a user hook returned; -> its result."""

    awaitable: Awaitable[Any]


def _poll_ms(timeout: float) -> int:
    return max(0, math.ceil(timeout * 1000))


class KernelClient(ConnectionFileMixin, Generic[_ReplyT, _ChannelT]):
    """Communicates with one kernel over its five channels (the base of the clients).

    The request methods (:meth:`execute`, :meth:`kernel_info`, ...) send their
    message and return its msg_id; with ``reply=True`` they wait for the reply
    and return it (``timeout`` bounds the wait), blocking or as an awaitable
    according to the subclass. Subclasses choose the channel classes through
    the ``*_channel_class`` traits, as in jupyter_client.

    Type parameters: what ``reply=True`` returns, and the channel class.
    """

    allow_stdin = Bool(True, help="Whether execute requests may ask us for input.")
    hb_time_to_dead = Float(1.0, config=True, help="Seconds without a heartbeat echo = dead.")
    hb_missed_beats = Integer(
        3,
        config=True,
        help="While a call waits on a kernel without a manager, heartbeats missed "
        "in a row (each after hb_time_to_dead) before it raises KernelDiedError.",
    )
    hb_first_echo_grace = Float(
        30.0,
        config=True,
        help="Seconds a kernel that has not echoed a heartbeat yet may still be starting "
        "before a waiting call counts it as dead.",
    )

    # Whether ``context`` is the client's own, made by its default (see _context_default).
    _created_context = Bool(False)

    # Channel classes, called as cls(socket, session, ioloop) (hb: cls(connect, time_to_dead)).
    shell_channel_class = Type(ZMQSocketChannel, klass=object)
    iopub_channel_class = Type(ZMQSocketChannel, klass=object)
    stdin_channel_class = Type(ZMQSocketChannel, klass=object)
    control_channel_class = Type(ZMQSocketChannel, klass=object)
    hb_channel_class = Type(HBChannel, klass=object)

    # Channels whose connection wait_for_ready waits for, beyond what its
    # kernel_info exchange proves (shell, which carries it, and IOPub). Only
    # stdin: there the kernel starts the exchange (input_request), and its
    # ROUTER drops what it cannot route yet. Shell and control only answer our
    # requests, which their DEALER holds until the connection is up.
    _handshake_channels: ClassVar[frozenset[str]] = frozenset({"stdin"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Watches of the connections in _handshake_channels, by channel name,
        # from the socket's connect until wait_for_ready has seen them up.
        self._handshakes: dict[str, HandshakeWatch] = {}
        self._watch_handshake_of: str | None = None
        self._shell_channel: _ChannelT | None = None
        self._iopub_channel: _ChannelT | None = None
        self._stdin_channel: _ChannelT | None = None
        self._control_channel: _ChannelT | None = None
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

    # -- the zmq context ---------------------------------------------------

    def _context_default(self) -> zmq.Context[Any]:
        """A context of the client's own, as jupyter_client's clients have.

        Its sockets are then the only ones on it, so the client can end it
        (:meth:`stop_channels` destroys it), and nothing outside the client
        waits on its sockets: ``zmq.Context.instance().destroy()`` or ``term()``
        elsewhere in the process never hangs on an open channel of this client,
        nor does the client's ``context.term()`` on anyone else's socket. A
        context passed in (``context=...``) is the caller's, never closed here.
        """
        self._created_context = True
        return zmq.Context()

    def _create_connected_socket(
        self, channel: str, identity: bytes | None = None
    ) -> zmq.Socket[Any]:
        # stop_channels destroyed the context we made; channels opened again
        # (start_channels after a stop, a reconnect to new ports) get a new one.
        if self._created_context and self.context.closed:
            self.context = self._context_default()
        if channel != self._watch_handshake_of:
            return super()._create_connected_socket(channel, identity)

        def watch(sock: zmq.Socket[Any]) -> None:
            old = self._handshakes.pop(channel, None)
            if old is not None:
                old.close()
            self._handshakes[channel] = HandshakeWatch(sock)

        return self._connected_socket(channel, identity, before_connect=watch)

    def _channel_socket(self, channel: str, connect: Callable[..., zmq.Socket[Any]]) -> Any:
        """``connect(identity=...)`` for a channel, watching its handshake if we wait for it.

        Through ``connect_<channel>``, as jupyter_client, so subclasses that
        override it are heard; a socket they make by other means is not watched.
        """
        if channel in self._handshake_channels:
            self._watch_handshake_of = channel
        try:
            return connect(identity=self.identity)
        finally:
            self._watch_handshake_of = None

    def _close_handshakes(self) -> None:
        handshakes, self._handshakes = self._handshakes, {}
        for watch in handshakes.values():
            watch.close()

    def __del__(self) -> None:
        # A context we made and nobody ended would be destroyed by pyzmq at
        # collection with a ResourceWarning ("unclosed context"); end it
        # quietly, unless channels still use it (as jupyter_client).
        try:
            context = self._trait_values.get("context") if self._created_context else None
            if context is not None and not context.closed and not self.channels_running:
                context.destroy(linger=_CONTEXT_END_LINGER_MS)
        except Exception:  # noqa: S110 - half-built object or interpreter shutdown
            pass

    # -- channels ----------------------------------------------------------

    @property
    def ioloop(self) -> Any:
        """The event loop the channels run on, for channel classes that need one (None)."""
        return None

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
            cast(Any, self.iopub_channel).start()
        if shell:
            cast(Any, self.shell_channel).start()
        if stdin:
            cast(Any, self.stdin_channel).start()
            self.allow_stdin = True
        else:
            self.allow_stdin = False
        if hb:
            self.hb_channel.start()
        if control:
            cast(Any, self.control_channel).start()

    def stop_channels(self) -> None:
        """Close every open channel, then the zmq context if it is the client's own.

        As in jupyter_client, the context the client made itself (the default)
        is destroyed here; one passed in is left open. Ending it waits for
        messages still queued to the kernel, 0.1 s at most (jupyter_client's
        bound), so a kernel that is gone costs no longer stop. Channels
        started again later get a new context.
        """
        ending_context = self._created_context and not self.context.closed
        self._close_handshakes()
        for name in ("_shell_channel", "_iopub_channel", "_stdin_channel", "_control_channel"):
            channel = getattr(self, name)
            if channel is not None:
                sock = channel.socket if isinstance(channel, SocketChannel) else None
                if ending_context and sock is not None and not sock.closed:
                    sock.linger = _CONTEXT_END_LINGER_MS
                channel.close()
                setattr(self, name, None)
        if self._hb_channel is not None:
            self._hb_channel.stop()
            self._hb_channel = None
        if self._hb_watch is not None:
            self._hb_watch.close()
            self._hb_watch = None
        self._kernel_answered = False
        if ending_context:
            self.context.destroy(linger=_CONTEXT_END_LINGER_MS)

    @property
    def channels_running(self) -> bool:
        """Whether any channel is open."""
        return any(
            c is not None and cast(Any, c).is_alive()
            for c in (
                self._shell_channel,
                self._iopub_channel,
                self._stdin_channel,
                self._control_channel,
                self._hb_channel,
            )
        )

    def _make_channel(self, cls: Any, socket: zmq.Socket[Any]) -> _ChannelT:
        try:
            return cast(_ChannelT, cls(socket, self.session, self.ioloop))
        except BaseException:
            socket.close(linger=0)
            raise

    @property
    def shell_channel(self) -> _ChannelT:
        """The shell channel (connected on first use)."""
        if self._shell_channel is None:
            self._shell_channel = self._make_channel(
                self.shell_channel_class, self._channel_socket("shell", self.connect_shell)
            )
        return self._shell_channel

    @property
    def iopub_channel(self) -> _ChannelT:
        """The IOPub channel (connected on first use)."""
        if self._iopub_channel is None:
            self._iopub_channel = self._make_channel(self.iopub_channel_class, self.connect_iopub())
        return self._iopub_channel

    @property
    def stdin_channel(self) -> _ChannelT:
        """The stdin channel (connected on first use)."""
        if self._stdin_channel is None:
            self._stdin_channel = self._make_channel(
                self.stdin_channel_class, self._channel_socket("stdin", self.connect_stdin)
            )
        return self._stdin_channel

    @property
    def control_channel(self) -> _ChannelT:
        """The control channel (connected on first use)."""
        if self._control_channel is None:
            self._control_channel = self._make_channel(
                self.control_channel_class, self._channel_socket("control", self.connect_control)
            )
        return self._control_channel

    @property
    def hb_channel(self) -> HBChannel:
        """The heartbeat channel (pings on demand; no thread)."""
        if self._hb_channel is None:
            self._hb_channel = cast(
                HBChannel, self.hb_channel_class(self.connect_hb, time_to_dead=self.hb_time_to_dead)
            )
        return self._hb_channel

    @staticmethod
    def _core(channel: Any) -> SocketChannel:
        """``channel`` as a SocketChannel, which the waiting operations need."""
        if not isinstance(channel, SocketChannel):
            raise TypeError(
                f"{type(channel).__name__} is not a kernel_connect SocketChannel; "
                "waiting calls need one"
            )
        return channel

    # -- liveness ----------------------------------------------------------

    def _owner(self) -> KernelOwner | None:
        liveness = self.liveness
        return liveness if isinstance(liveness, KernelOwner) else None

    def _watch(self) -> KernelLiveness | None:
        """What waiting calls ask between slices; None when nothing can tell.

        The heartbeat counts only while the heartbeat channel runs and is not
        paused, as for ``is_alive``.
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

    def _reconnect(self, ports: Mapping[str, int]) -> None:
        """Reopen our channels on ``ports`` (a kernel restarted on new ports)."""
        self.stop_channels()
        for name in PORT_NAMES:
            setattr(self, name, int(ports[name]))
        self.start_channels(stdin=self.allow_stdin)

    # -- waiting operations (sans-IO; driven by the subclasses) --------------

    def _is_alive_op(self) -> Operation[bool]:
        if self.liveness is not None:
            return self.liveness.is_alive()
        if self._hb_channel is not None and self._hb_channel.is_alive():
            beating: bool = yield _Beat()
            return beating
        return True  # nothing can tell

    def _get_msg_op(
        self, channel: Any, block: bool, timeout: float | None, doing: str
    ) -> Operation[dict[str, Any]]:
        """The next message of ``channel``, in slices, checking between them that the kernel lives.

        Raises ``queue.Empty`` on timeout (at once if not ``block``), and
        :class:`KernelDiedError` as soon as the kernel is found dead.
        """
        chan = self._core(channel)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = chan.take()
            if msg is not None:
                self._note_kernel_answered()
                return msg
            if not block:
                raise Empty
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise Empty
            wait = _LIVENESS_SLICE_S if deadline is None else min(_LIVENESS_SLICE_S, deadline - now)
            ready = yield _Poll((chan,), wait)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    raise Empty
                self._raise_if_dead(doing)

    def _recv_reply_op(
        self, msg_id: str, timeout: float | None, channel: str
    ) -> Operation[dict[str, Any]]:
        """The reply to ``msg_id`` on ``channel``, skipping other replies.

        Raises TimeoutError if it does not come within ``timeout`` seconds,
        KernelDiedError if the kernel dies first.
        """
        chan = self.control_channel if channel == "control" else self.shell_channel
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = yield from self._get_msg_op(
                    chan, True, remaining, f"while waiting for the reply to {msg_id}"
                )
            except Empty:
                raise TimeoutError(f"no reply to {msg_id} within {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def _wait_for_ready_op(self, timeout: float | None) -> Operation[None]:
        """Wait until the kernel answers kernel_info and IOPub and stdin are connected.

        A start that failed (the kernel died, or says it cannot bind a port)
        goes to the kernel's owner, whose policy may restart it on new ports:
        then the wait goes on with the new ports.
        """
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        owner = self._owner()
        if not self.channels_running:
            self.start_channels()
        while True:
            try:
                reply = yield from self._handshake_op(deadline, timeout, owner)
            except KernelDiedError as died:
                if owner is None:
                    raise
                ports = yield _Recover(owner)
                if ports is None:
                    raise died from None
                self._reconnect(ports)
                continue
            self._handle_kernel_info_reply(reply)
            self._close_handshakes()  # seen up: their monitors have served
            return

    def _handshake_op(
        self, deadline: float, timeout: float | None, owner: KernelOwner | None
    ) -> Operation[dict[str, Any]]:
        """One readiness handshake on the current channels; return the kernel_info reply."""
        shell, iopub = self._core(self.shell_channel), self._core(self.iopub_channel)
        # Connections (stdin's) whose handshake we have not seen succeed yet.
        connecting = dict(self._handshakes)
        sent: set[str] = set()
        last_sent = float("-inf")
        reply: dict[str, Any] | None = None
        reply_at = 0.0
        iopub_seen = False
        others: list[dict[str, Any]] = []
        next_failure_check = 0.0
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
                    if reply is not None:
                        unconnected = ([] if iopub_seen else ["IOPub"]) + list(connecting)
                        raise KernelTimeoutError(_unconnected_message(timeout, unconnected))
                    beating = yield _Beat()
                    raise KernelTimeoutError(_not_ready_message(timeout, beating))
                ready = yield _Poll(
                    (shell, iopub), min(_READY_POLL_S, deadline - now), tuple(connecting.values())
                )
                if iopub in ready:
                    # The welcome to our subscription, or the status of one of our
                    # requests, proves IOPub works. Any other message may be stale:
                    # after a restart the old kernel's last broadcasts are queued.
                    for msg in iopub.take_all():
                        if (
                            msg["msg_type"] == "iopub_welcome"
                            or msg["parent_header"].get("msg_id") in sent
                        ):
                            iopub_seen = True
                if shell in ready:
                    for msg in shell.take_all():
                        if msg["parent_header"].get("msg_id") not in sent:
                            others.append(msg)  # someone else's reply: keep it
                        elif msg["msg_type"] == "kernel_info_reply":
                            reply = reply or msg
                            reply_at = time.monotonic()
                connecting = {n: w for n, w in connecting.items() if w.pending()}
                if reply is not None and iopub_seen and not connecting:
                    break
                self._raise_if_dead("before replying to kernel_info")
                if owner is not None and now >= next_failure_check:
                    # ipykernel can hang, not exit, after failing to bind a port.
                    next_failure_check = now + _START_FAILURE_CHECK_S
                    failure = owner.start_failure()
                    if failure is not None:
                        raise KernelDiedError(
                            f"kernel will never answer: {failure.description}",
                            exit_code=failure.exit_code,
                            stderr_tail=failure.stderr_tail,
                        )
        finally:
            # Replies and statuses of the other requests are of no use to anyone.
            shell.discard(sent)
            iopub.discard(sent)
            shell.requeue(others)
        iopub.take_all()
        return reply

    def _execute_interactive_op(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
        allow_stdin: bool | None,
        stop_on_error: bool,
        timeout: float | None,
        output_hook: Callable[[dict[str, Any]], Any] | None,
        stdin_hook: Callable[[dict[str, Any]], Any] | None,
    ) -> Operation[dict[str, Any]]:
        if allow_stdin is None:
            allow_stdin = self.allow_stdin
        iopub = self._core(self.iopub_channel)
        stdin = self._core(self.stdin_channel) if allow_stdin else None
        msg_id = self.execute(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions,
            allow_stdin=allow_stdin,
            stop_on_error=stop_on_error,
        )
        output_hook = output_hook or self._output_hook_default
        stdin_hook = stdin_hook or self._stdin_hook_default
        deadline = None if timeout is None else time.monotonic() + timeout
        channels = (iopub,) if stdin is None else (iopub, stdin)
        next_check = time.monotonic() + _LIVENESS_SLICE_S
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"execution of {msg_id} did not finish within {timeout} s")
            wait = _LIVENESS_SLICE_S if deadline is None else min(_LIVENESS_SLICE_S, deadline - now)
            ready = yield _Poll(channels, wait)
            if stdin is not None and stdin in ready:
                for req in stdin.take_all():
                    answered = stdin_hook(req)
                    if isawaitable(answered):
                        yield _Await(answered)
            done = False
            if iopub in ready:
                for msg in iopub.take_all():
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
        return (yield from self._recv_reply_op(msg_id, remaining, "shell"))

    def _handle_kernel_info_reply(self, msg: dict[str, Any]) -> None:
        """Record the reply; speak the kernel's protocol if its major version differs."""
        from kernel_connect import protocol_version_info

        self.kernel_info_reply = msg
        self._note_kernel_answered()
        try:
            major = int(str(msg["content"]["protocol_version"]).split(".")[0])
        except (KeyError, ValueError):
            return
        if major != protocol_version_info[0]:
            self.session.adapt_version = major

    # -- requests ----------------------------------------------------------

    def _send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        """Send a request on ``channel`` ('shell' or 'control'); return its msg_id."""
        msg = self.session.msg(msg_type, content)
        chan = self.control_channel if channel == "control" else self.shell_channel
        cast(Any, chan).send(msg)
        return str(msg["header"]["msg_id"])

    def _request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        reply: bool,
        timeout: float | None,
    ) -> str | _ReplyT:
        if reply and not self._waits_for_replies:
            raise self._cannot_wait()  # before sending: nobody would read the reply
        msg_id = self._send(channel, msg_type, content)
        if not reply:
            return msg_id
        return self._reply(msg_id, timeout, channel)

    #: Whether this face can wait for a reply (``reply=True``): the blocking and
    #: async clients can; the base KernelClient and the threaded one only send.
    _waits_for_replies: ClassVar[bool] = False

    def _cannot_wait(self) -> TypeError:
        return TypeError(
            f"{type(self).__name__} cannot wait for replies: use BlockingKernelClient "
            "or AsyncKernelClient for reply=True"
        )

    def _reply(self, msg_id: str, timeout: float | None, channel: str) -> _ReplyT:
        """The reply to ``msg_id`` as the face returns it (a dict, or an awaitable of one);
        the faces that wait for replies say how."""
        raise self._cannot_wait()

    def _execute_content(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
        allow_stdin: bool | None,
        stop_on_error: bool,
    ) -> dict[str, Any]:
        if not isinstance(code, str):
            raise ValueError(f"code must be a string, got {type(code).__name__}")
        user_expressions = user_expressions or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in user_expressions.items()):
            raise ValueError("user_expressions must map str to str")
        return {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions,
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }

    @overload
    def execute(
        self,
        code: str,
        silent: bool = ...,
        store_history: bool = ...,
        user_expressions: dict[str, Any] | None = ...,
        allow_stdin: bool | None = ...,
        stop_on_error: bool = ...,
        *,
        reply: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def execute(
        self,
        code: str,
        silent: bool = ...,
        store_history: bool = ...,
        user_expressions: dict[str, Any] | None = ...,
        allow_stdin: bool | None = ...,
        stop_on_error: bool = ...,
        *,
        reply: Literal[True],
        timeout: float | None = ...,
    ) -> _ReplyT: ...

    @overload
    def execute(
        self,
        code: str,
        silent: bool = ...,
        store_history: bool = ...,
        user_expressions: dict[str, Any] | None = ...,
        allow_stdin: bool | None = ...,
        stop_on_error: bool = ...,
        *,
        reply: bool,
        timeout: float | None = ...,
    ) -> str | _ReplyT: ...

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> str | _ReplyT:
        """Send an execute_request; return its msg_id (with ``reply``: its reply).

        Parameters
        ----------
        code : str
            Code in the kernel's language.
        silent, store_history, user_expressions, allow_stdin, stop_on_error
            As in the messaging protocol's execute_request.
        reply : bool
            Wait for the execute_reply and return it instead of the msg_id.
        timeout : float, optional
            With ``reply``: seconds to wait at most (None: until it comes or
            the kernel dies). The same for every request method.

        Raises
        ------
        ValueError
            If ``code`` is not a string or ``user_expressions`` is not a str->str dict.
        TimeoutError
            With ``reply``, if the reply does not come within ``timeout``.
        KernelDiedError
            With ``reply``, if the kernel dies first.
        """
        content = self._execute_content(
            code, silent, store_history, user_expressions, allow_stdin, stop_on_error
        )
        return self._request("shell", "execute_request", content, reply, timeout)

    @overload
    def complete(
        self,
        code: str,
        cursor_pos: int | None = ...,
        *,
        reply: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def complete(
        self,
        code: str,
        cursor_pos: int | None = ...,
        *,
        reply: Literal[True],
        timeout: float | None = ...,
    ) -> _ReplyT: ...

    @overload
    def complete(
        self, code: str, cursor_pos: int | None = ..., *, reply: bool, timeout: float | None = ...
    ) -> str | _ReplyT: ...

    def complete(
        self,
        code: str,
        cursor_pos: int | None = None,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> str | _ReplyT:
        """Send a complete_request (``cursor_pos`` default: end of ``code``); msg_id or reply."""
        pos = len(code) if cursor_pos is None else cursor_pos
        content = {"code": code, "cursor_pos": pos}
        return self._request("shell", "complete_request", content, reply, timeout)

    @overload
    def inspect(
        self,
        code: str,
        cursor_pos: int | None = ...,
        detail_level: int = ...,
        *,
        reply: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def inspect(
        self,
        code: str,
        cursor_pos: int | None = ...,
        detail_level: int = ...,
        *,
        reply: Literal[True],
        timeout: float | None = ...,
    ) -> _ReplyT: ...

    @overload
    def inspect(
        self,
        code: str,
        cursor_pos: int | None = ...,
        detail_level: int = ...,
        *,
        reply: bool,
        timeout: float | None = ...,
    ) -> str | _ReplyT: ...

    def inspect(
        self,
        code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> str | _ReplyT:
        """Send an inspect_request (``detail_level`` 0-2); msg_id or reply."""
        pos = len(code) if cursor_pos is None else cursor_pos
        content = {"code": code, "cursor_pos": pos, "detail_level": detail_level}
        return self._request("shell", "inspect_request", content, reply, timeout)

    @overload
    def history(
        self,
        raw: bool = ...,
        output: bool = ...,
        hist_access_type: str = ...,
        *,
        reply: Literal[False] = ...,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> str: ...

    @overload
    def history(
        self,
        raw: bool = ...,
        output: bool = ...,
        hist_access_type: str = ...,
        *,
        reply: Literal[True],
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> _ReplyT: ...

    @overload
    def history(
        self,
        raw: bool = ...,
        output: bool = ...,
        hist_access_type: str = ...,
        *,
        reply: bool,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> str | _ReplyT: ...

    def history(
        self,
        raw: bool = True,
        output: bool = False,
        hist_access_type: str = "range",
        *,
        reply: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> str | _ReplyT:
        """Send a history_request; msg_id or reply.

        ``hist_access_type`` 'range' takes ``session``, ``start``, ``stop``;
        'tail' takes ``n``; 'search' takes ``pattern`` (as keyword arguments).
        """
        if hist_access_type == "range":
            kwargs.setdefault("session", 0)
            kwargs.setdefault("start", 0)
        content = dict(raw=raw, output=output, hist_access_type=hist_access_type, **kwargs)
        return self._request("shell", "history_request", content, reply, timeout)

    @overload
    def kernel_info(self, *, reply: Literal[False] = ..., timeout: float | None = ...) -> str: ...

    @overload
    def kernel_info(self, *, reply: Literal[True], timeout: float | None = ...) -> _ReplyT: ...

    @overload
    def kernel_info(self, *, reply: bool, timeout: float | None = ...) -> str | _ReplyT: ...

    def kernel_info(self, *, reply: bool = False, timeout: float | None = None) -> str | _ReplyT:
        """Send a kernel_info_request; msg_id or reply."""
        return self._request("shell", "kernel_info_request", {}, reply, timeout)

    @overload
    def comm_info(
        self,
        target_name: str | None = ...,
        *,
        reply: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def comm_info(
        self, target_name: str | None = ..., *, reply: Literal[True], timeout: float | None = ...
    ) -> _ReplyT: ...

    @overload
    def comm_info(
        self, target_name: str | None = ..., *, reply: bool, timeout: float | None = ...
    ) -> str | _ReplyT: ...

    def comm_info(
        self,
        target_name: str | None = None,
        *,
        reply: bool = False,
        timeout: float | None = None,
    ) -> str | _ReplyT:
        """Send a comm_info_request (for ``target_name``, or all comms); msg_id or reply."""
        content = {} if target_name is None else {"target_name": target_name}
        return self._request("shell", "comm_info_request", content, reply, timeout)

    @overload
    def is_complete(
        self, code: str, *, reply: Literal[False] = ..., timeout: float | None = ...
    ) -> str: ...

    @overload
    def is_complete(
        self, code: str, *, reply: Literal[True], timeout: float | None = ...
    ) -> _ReplyT: ...

    @overload
    def is_complete(
        self, code: str, *, reply: bool, timeout: float | None = ...
    ) -> str | _ReplyT: ...

    def is_complete(
        self, code: str, *, reply: bool = False, timeout: float | None = None
    ) -> str | _ReplyT:
        """Send an is_complete_request; msg_id or reply."""
        return self._request("shell", "is_complete_request", {"code": code}, reply, timeout)

    @overload
    def shutdown(
        self, restart: bool = ..., *, reply: Literal[False] = ..., timeout: float | None = ...
    ) -> str: ...

    @overload
    def shutdown(
        self, restart: bool = ..., *, reply: Literal[True], timeout: float | None = ...
    ) -> _ReplyT: ...

    @overload
    def shutdown(
        self, restart: bool = ..., *, reply: bool, timeout: float | None = ...
    ) -> str | _ReplyT: ...

    def shutdown(
        self, restart: bool = False, *, reply: bool = False, timeout: float | None = None
    ) -> str | _ReplyT:
        """Ask the kernel to shut down, on the control channel; msg_id or reply (on control)."""
        return self._request("control", "shutdown_request", {"restart": restart}, reply, timeout)

    def input(self, string: str) -> None:
        """Answer the kernel's input_request on the stdin channel."""
        msg = self.session.msg("input_reply", {"value": string})
        cast(Any, self.stdin_channel).send(msg)

    # -- hooks of execute_interactive -----------------------------------------

    def _output_hook_default(self, msg: dict[str, Any]) -> None:
        """Redisplay plain-text output of an IOPub message on our terminal."""
        _print_output(msg)

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


def _unconnected_message(timeout: float | None, channels: list[str]) -> str:
    return (
        f"the kernel replied to kernel_info, but our {' and '.join(channels)} "
        f"connection to it was not up within {timeout} s"
    )


def _not_ready_message(timeout: float | None, beating: bool) -> str:
    if beating:
        why = (
            "the kernel answers heartbeats but ignores our requests: the message "
            "signature may be wrong (key or signature_scheme differs from the kernel's)"
        )
    else:
        why = "the kernel does not answer heartbeats either (is it running, on these ports?)"
    return f"kernel did not reply to kernel_info within {timeout} s; {why}"


def _poll_blocking(
    channels: tuple[SocketChannel, ...], timeout: float, handshakes: tuple[HandshakeWatch, ...]
) -> list[SocketChannel]:
    ready = [c for c in channels if c._pending]
    if ready:
        return ready
    poller = zmq.Poller()
    views = []
    for c in channels:
        view = c._view
        if view is None:
            raise RuntimeError("channel is closed")
        poller.register(view, zmq.POLLIN)
        views.append(view)
    for h in handshakes:
        if h._view is not None:
            poller.register(h._view, zmq.POLLIN)
    events = dict(poller.poll(_poll_ms(timeout)))
    return [c for c, v in zip(channels, views, strict=True) if v in events]


async def _poll_async(
    channels: tuple[SocketChannel, ...], timeout: float, handshakes: tuple[HandshakeWatch, ...]
) -> list[SocketChannel]:
    import zmq.asyncio

    ready = [c for c in channels if c._pending]
    if ready:
        return ready
    poller = zmq.asyncio.Poller()
    socks = []
    for c in channels:
        sock = c.socket
        if sock is None:
            raise RuntimeError("channel is closed")
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    for h in handshakes:
        if h.socket is not None:
            poller.register(h.socket, zmq.POLLIN)
    events = dict(await poller.poll(_poll_ms(timeout)))
    return [c for c, s in zip(channels, socks, strict=True) if s in events]


def _run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Wait for what a hook of a blocking client returned (an event loop of its own)."""
    import asyncio

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()
    raise RuntimeError(
        "a hook returned an awaitable while an event loop runs in this thread; "
        "use AsyncKernelClient to await hooks"
    )


class BlockingKernelClient(KernelClient[dict[str, Any], ZMQSocketChannel]):
    """A client of one kernel whose calls block, as jupyter_client's.

    Load the connection with :meth:`load_connection_file` or
    :meth:`load_connection_info` (or get one from ``KernelManager.client()``),
    then :meth:`start_channels` and :meth:`wait_for_ready`.
    """

    shell_channel_class = Type(ZMQSocketChannel, klass=object)
    iopub_channel_class = Type(ZMQSocketChannel, klass=object)
    stdin_channel_class = Type(ZMQSocketChannel, klass=object)
    control_channel_class = Type(ZMQSocketChannel, klass=object)

    def __enter__(self) -> BlockingKernelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_channels()

    def _run(self, op: Operation[Any]) -> Any:
        return drive(op, self._serve)

    def _serve(self, request: Any) -> Any:
        if isinstance(request, _Poll):
            return _poll_blocking(request.channels, request.timeout, request.handshakes)
        if isinstance(request, _Beat):
            return self.hb_channel.is_beating(request.timeout)
        if isinstance(request, _Recover):
            return request.owner.recover()
        if isinstance(request, _Await):
            return _run_awaitable(request.awaitable)
        raise TypeError(f"unknown wait request {request!r}")

    _waits_for_replies = True

    def _reply(self, msg_id: str, timeout: float | None, channel: str) -> dict[str, Any]:
        return self._recv_reply(msg_id, timeout=timeout, channel=channel)

    def get_shell_msg(self, timeout: float | None = None, *, block: bool = True) -> dict[str, Any]:
        """Return the next shell message.

        ``timeout`` (seconds; None: no limit) is the first parameter, as in
        jupyter_client 8, so ``get_shell_msg(5)`` waits five seconds; ``block``
        stays, keyword-only, for the older ``block=False`` calls (take only a
        message already here). The same holds for the other ``get_*_msg``.

        Raises ``queue.Empty`` on timeout, and :class:`KernelDiedError` as soon
        as the kernel is found dead while waiting.
        """
        op = self._get_msg_op(
            self.shell_channel, block, timeout, "while waiting for a shell message"
        )
        return cast(dict[str, Any], self._run(op))

    def get_iopub_msg(self, timeout: float | None = None, *, block: bool = True) -> dict[str, Any]:
        """Return the next IOPub message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.iopub_channel, block, timeout, "while waiting for an IOPub message"
        )
        return cast(dict[str, Any], self._run(op))

    def get_stdin_msg(self, timeout: float | None = None, *, block: bool = True) -> dict[str, Any]:
        """Return the next stdin message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.stdin_channel, block, timeout, "while waiting for a stdin message"
        )
        return cast(dict[str, Any], self._run(op))

    def get_control_msg(
        self, timeout: float | None = None, *, block: bool = True
    ) -> dict[str, Any]:
        """Return the next control message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.control_channel, block, timeout, "while waiting for a control message"
        )
        return cast(dict[str, Any], self._run(op))

    def is_alive(self) -> bool:
        """Whether the kernel is alive.

        Asks :attr:`liveness` (the process, when a KernelManager made this
        client), else pings the heartbeat once (True when nothing can tell).
        """
        return bool(self._run(self._is_alive_op()))

    def wait_for_ready(self, timeout: float | None = None) -> None:
        """Block until the kernel answers a kernel_info request and IOPub and stdin are connected.

        Connected means the connection's handshake is done, so what the kernel
        sends at once finds us: an ``input_request`` to a stdin not connected
        yet would be dropped by the kernel (seen by a socket monitor of the
        stdin channel, set up when it connects and closed once it has served).

        When the kernel's start failed (it died, or cannot bind a port), its
        owner (the KernelManager that made this client) may restart it on new
        ports, by its ``port_clash_retries`` policy; the wait then goes on.

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
            Also if it answers, but our IOPub or stdin connection is not up in time.
        """
        self._run(self._wait_for_ready_op(timeout))

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
        return cast(dict[str, Any], self._run(self._recv_reply_op(msg_id, timeout, channel)))

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
            and answer with :meth:`input`); may return an awaitable.

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
        op = self._execute_interactive_op(
            code,
            silent,
            store_history,
            user_expressions,
            allow_stdin,
            stop_on_error,
            timeout,
            output_hook,
            stdin_hook,
        )
        return cast(dict[str, Any], self._run(op))


class AsyncKernelClient(KernelClient[Awaitable[dict[str, Any]], AsyncZMQSocketChannel]):
    """A client of one kernel whose waits are coroutines, as jupyter_client's.

    The same operations as :class:`BlockingKernelClient`, awaited in the running
    asyncio loop on ``zmq.asyncio`` sockets (no Python thread). The request
    methods return the msg_id at once; with ``reply=True`` they return an
    awaitable of the reply (``await kc.execute(code, reply=True, timeout=10)``).

    Its ``context`` is a ``zmq.asyncio.Context``: by default one of its own,
    as in jupyter_client, destroyed by :meth:`stop_channels`.
    """

    context = Instance("zmq.asyncio.Context")

    shell_channel_class = Type(AsyncZMQSocketChannel, klass=object)
    iopub_channel_class = Type(AsyncZMQSocketChannel, klass=object)
    stdin_channel_class = Type(AsyncZMQSocketChannel, klass=object)
    control_channel_class = Type(AsyncZMQSocketChannel, klass=object)

    def _context_default(self) -> zmq.Context[Any]:
        """An asyncio context of the client's own (see ``KernelClient._context_default``).

        Not a shadow of ``zmq.Context.instance()``: the sockets of a shadow are
        invisible to the instance, whose ``destroy()`` would then wait on them
        for ever, and the shadow's own ``term()`` would wait on every other
        socket of the process.
        """
        import zmq.asyncio

        self._created_context = True
        return zmq.asyncio.Context()

    async def __aenter__(self) -> AsyncKernelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop_channels()

    async def _run(self, op: Operation[Any]) -> Any:
        return await drive_async(op, self._serve)

    async def _serve(self, request: Any) -> Any:
        if isinstance(request, _Poll):
            return await _poll_async(request.channels, request.timeout, request.handshakes)
        if isinstance(request, _Beat):
            return await self.hb_channel.is_beating_async(request.timeout)
        if isinstance(request, _Recover):
            return await request.owner.recover_async()
        if isinstance(request, _Await):
            return await request.awaitable
        raise TypeError(f"unknown wait request {request!r}")

    _waits_for_replies = True

    def _reply(self, msg_id: str, timeout: float | None, channel: str) -> Awaitable[dict[str, Any]]:
        return self._recv_reply(msg_id, timeout=timeout, channel=channel)

    async def get_shell_msg(
        self, timeout: float | None = None, *, block: bool = True
    ) -> dict[str, Any]:
        """Return the next shell message.

        The parameters are those of ``BlockingKernelClient.get_shell_msg``
        (``timeout`` first, as in jupyter_client 8; ``block`` keyword-only).
        Raises ``queue.Empty`` on timeout, and :class:`KernelDiedError` as soon
        as the kernel is found dead while waiting (the same for the other
        ``get_*_msg``).
        """
        op = self._get_msg_op(
            self.shell_channel, block, timeout, "while waiting for a shell message"
        )
        return cast(dict[str, Any], await self._run(op))

    async def get_iopub_msg(
        self, timeout: float | None = None, *, block: bool = True
    ) -> dict[str, Any]:
        """Return the next IOPub message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.iopub_channel, block, timeout, "while waiting for an IOPub message"
        )
        return cast(dict[str, Any], await self._run(op))

    async def get_stdin_msg(
        self, timeout: float | None = None, *, block: bool = True
    ) -> dict[str, Any]:
        """Return the next stdin message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.stdin_channel, block, timeout, "while waiting for a stdin message"
        )
        return cast(dict[str, Any], await self._run(op))

    async def get_control_msg(
        self, timeout: float | None = None, *, block: bool = True
    ) -> dict[str, Any]:
        """Return the next control message (``queue.Empty`` on timeout)."""
        op = self._get_msg_op(
            self.control_channel, block, timeout, "while waiting for a control message"
        )
        return cast(dict[str, Any], await self._run(op))

    async def is_alive(self) -> bool:
        """Whether the kernel is alive (see ``BlockingKernelClient.is_alive``)."""
        return bool(await self._run(self._is_alive_op()))

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Wait until the kernel answers a kernel_info request and IOPub and stdin are connected.

        As ``BlockingKernelClient.wait_for_ready``, awaited.
        """
        await self._run(self._wait_for_ready_op(timeout))

    async def _recv_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> dict[str, Any]:
        """Return the reply to ``msg_id`` on ``channel`` (TimeoutError, KernelDiedError)."""
        return cast(dict[str, Any], await self._run(self._recv_reply_op(msg_id, timeout, channel)))

    async def execute_interactive(
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

        As ``BlockingKernelClient.execute_interactive``, awaited; ``stdin_hook``
        may be a coroutine function.
        """
        op = self._execute_interactive_op(
            code,
            silent,
            store_history,
            user_expressions,
            allow_stdin,
            stop_on_error,
            timeout,
            output_hook,
            stdin_hook,
        )
        return cast(dict[str, Any], await self._run(op))


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


__all__ = [
    "AsyncKernelClient",
    "BlockingKernelClient",
    "KernelClient",
    "KernelLiveness",
    "KernelOwner",
]
