"""Session: builds, signs, serializes, sends and receives Jupyter wire messages.

The wire format (Jupyter messaging protocol 5.x) of one message is::

    [identities..., b'<IDS|MSG>', signature, header, parent_header, metadata, content,
     buffers...]

The signature is the hex HMAC (``signature_scheme`` = ``hmac-<digest>``) of the
four JSON parts. An empty key means messages are neither signed nor checked, as
in jupyter_client. Verification uses a constant-time compare, and a bounded
history of recent signatures rejects a replayed message.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, cast

import zmq
from traitlets import Any as AnyTrait
from traitlets import (
    Bool,
    CBytes,
    CUnicode,
    Dict,
    Integer,
    Set,
    TraitError,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.config import Configurable
from traitlets.utils.importstring import import_item

from kernel_connect import _native
from kernel_connect.jsonutil import extract_dates, json_packer, json_unpacker, squash_dates
from kernel_connect.secret_trait import SecretBytes

log = logging.getLogger(__name__)

#: The messaging protocol version written into headers.
PROTOCOL_VERSION = "5.4"

#: Separates routing identities from the message proper.
DELIM = b"<IDS|MSG>"

# A tracker that is always done, for sends that copy their buffers.
_DONE = zmq.MessageTracker()

_MSG_COUNTER = itertools.count()


def new_id() -> str:
    """Return a new random id (as jupyter_client: 32 hex digits, one dash after 8)."""
    h = uuid.uuid4().hex
    return f"{h[:8]}-{h[8:]}"


def new_id_bytes() -> bytes:
    """Return :func:`new_id` as ASCII bytes (the default HMAC key)."""
    return new_id().encode("ascii")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def hmac_digests() -> list[str]:
    """Return the digest names usable in ``hmac-<digest>``, sorted.

    Their one home is the core (``_native.signature_digests``), which also
    validates connection files: hashlib's own attributes that hmac accepts,
    the names jupyter_client's Session resolves with ``getattr(hashlib, name)``.
    A Session and a connection file therefore accept exactly the same schemes.
    """
    return list(_native.signature_digests())


def msg_header(msg_id: str, msg_type: str, username: str, session: str) -> dict[str, Any]:
    """Return a new message header dict (date is now, in UTC)."""
    return {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": utcnow(),
        "version": PROTOCOL_VERSION,
    }


def extract_header(msg_or_header: dict[str, Any] | None) -> dict[str, Any]:
    """Return the header of a message, or the argument itself when it is a header."""
    if not msg_or_header:
        return {}
    if "header" in msg_or_header:
        return dict(msg_or_header["header"])
    if "msg_id" in msg_or_header:
        return dict(msg_or_header)
    raise KeyError("neither a message nor a header: no 'header' or 'msg_id' key")


class Session(Configurable):
    """Builds, signs and (de)serializes messages of the Jupyter wire protocol.

    Parameters
    ----------
    key : bytes
        HMAC key; empty means messages are not signed or checked.
    signature_scheme : str
        ``hmac-<digest>`` with any digest hashlib offers (default ``hmac-sha256``).
    session : str
        This session's id (default: a new random id).
    username : str
        Username written into headers (default ``$USER``).
    """

    debug = Bool(False, config=True, help="Log every message sent and received at DEBUG level.")
    check_pid = Bool(
        True, config=True, help="Refuse to send from a forked child of the creating process."
    )

    packer = Unicode(
        "json", config=True, help="Serializer for message parts: 'json' or an import name."
    )
    unpacker = Unicode(
        "json", config=True, help="Deserializer for message parts: 'json' or an import name."
    )
    pack = AnyTrait(json_packer)
    unpack = AnyTrait(json_unpacker)

    session = CUnicode("", config=True, help="The id identifying this session.")
    bsession = CBytes(b"")
    username = Unicode(
        os.environ.get("USER", "username"), config=True, help="Username written into headers."
    )
    metadata = Dict({}, config=True, help="Default top-level metadata of every message.")

    key = SecretBytes(config=True, help="HMAC key for signing messages (empty: unsigned).")
    keyfile = Unicode("", config=True, help="File holding the HMAC key.")
    signature_scheme = Unicode(
        "hmac-sha256", config=True, help="Signature scheme, 'hmac-<hashlib digest>'."
    )
    digest_mod = AnyTrait()
    auth = AnyTrait(None, allow_none=True)

    digest_history = Set()
    digest_history_size = Integer(
        2**16, config=True, help="How many recent signatures to remember to reject replays."
    )

    pid = Integer()
    copy_threshold = Integer(
        2**16, config=True, help="Buffers larger than this (bytes) are sent without copying."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._digest_order: deque[bytes] = deque(self.digest_history)
        self._check_packers()
        self.none = self.pack({})
        # Touch the id so that bsession is set from the default.
        _ = self.session
        self.pid = os.getpid()
        self._new_auth()
        if not self.key:
            log.warning("Message signing is disabled. This is insecure and not recommended!")

    def __repr__(self) -> str:
        # The key is a secret: show only whether messages are signed.
        signed = "signed" if self.key else "unsigned"
        return f"<Session {self.session!r} user={self.username!r} {self.signature_scheme} {signed}>"

    # -- traits ------------------------------------------------------------

    @default("session")
    def _session_default(self) -> str:
        sid = new_id()
        self.bsession = sid.encode("ascii")
        return sid

    @observe("session")
    def _session_changed(self, change: Any) -> None:
        self.bsession = self.session.encode("ascii")

    @default("key")
    def _key_default(self) -> bytes:
        return new_id_bytes()

    @observe("key")
    def _key_changed(self, change: Any) -> None:
        self._new_auth()

    @observe("keyfile")
    def _keyfile_changed(self, change: Any) -> None:
        with open(change["new"], "rb") as f:
            self.key = f.read().strip()

    @validate("signature_scheme")
    def _validate_scheme(self, proposal: Any) -> str:
        scheme = str(proposal["value"])
        if not scheme.startswith("hmac-"):
            raise TraitError(f"signature_scheme must look like 'hmac-<digest>', got {scheme!r}")
        name = scheme[len("hmac-") :]
        if name not in hmac_digests():
            raise TraitError(
                f"signature_scheme {scheme!r}: hashlib has no digest {name!r} usable with "
                f"hmac; choose one of {', '.join('hmac-' + d for d in hmac_digests())}"
            )
        return scheme

    @observe("signature_scheme")
    def _signature_scheme_changed(self, change: Any) -> None:
        name = change["new"][len("hmac-") :]
        self.digest_mod = getattr(hashlib, name)
        self._new_auth()

    @default("digest_mod")
    def _digest_mod_default(self) -> Callable[..., Any]:
        return hashlib.sha256

    @observe("packer", "unpacker")
    def _packer_changed(self, change: Any) -> None:
        name = str(change["new"])
        if name.lower() == "json":
            self.pack, self.unpack = json_packer, json_unpacker
            return
        func = import_item(name)
        self.set_trait("pack" if change["name"] == "packer" else "unpack", func)

    def _new_auth(self) -> None:
        digest: Any = self.digest_mod
        self.auth = hmac.new(self.key, digestmod=digest) if self.key else None

    def _check_packers(self) -> None:
        """Check the packers round-trip a simple message and cope with datetimes."""
        pack, unpack = self.pack, self.unpack
        sample = {"a": [1, "hi"]}
        try:
            packed = pack(sample)
        except Exception as e:
            raise ValueError(f"packer {self.packer!r} cannot serialize a simple message") from e
        if not isinstance(packed, bytes):
            raise ValueError(f"packer {self.packer!r} returned {type(packed).__name__}, not bytes")
        try:
            back = unpack(packed)
        except Exception as e:
            raise ValueError(f"unpacker {self.unpacker!r} cannot read {self.packer!r}") from e
        if back != sample:
            raise ValueError(f"unpacker {self.unpacker!r} is not the inverse of {self.packer!r}")
        try:
            dated = unpack(pack({"t": utcnow()}))
            dates_ok = not isinstance(dated["t"], datetime)
        except Exception:
            dates_ok = False
        if not dates_ok:
            # A packer without date support gets dates squashed to strings first.
            self.pack = lambda o: pack(squash_dates(o))

    # -- building messages -------------------------------------------------

    def clone(self) -> Session:
        """Return a copy of this Session with its own (copied) signature history.

        Returns
        -------
        Session
            Same key, scheme, id and settings; replay state is not shared.
        """
        new = type(self)(key=self.key, signature_scheme=self.signature_scheme)
        for name in self.traits():
            if name not in ("digest_history", "auth"):
                setattr(new, name, getattr(self, name))
        new.digest_history = set(self.digest_history)
        new._digest_order = deque(self._digest_order)
        new._new_auth()
        return new

    @property
    def msg_id(self) -> str:
        """A new message id, unique within this process (clones included)."""
        # One process-wide counter: clones share the session id, and next() on
        # itertools.count is atomic, so threads never mint the same id.
        return f"{self.session}_{os.getpid()}_{next(_MSG_COUNTER)}"

    def msg_header(self, msg_type: str) -> dict[str, Any]:
        """Return a new header for a message of ``msg_type``."""
        return msg_header(self.msg_id, msg_type, self.username, self.session)

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Return the nested message dict (not yet serialized).

        Parameters
        ----------
        msg_type : str
            e.g. ``'kernel_info_request'``.
        content, metadata : dict, optional
            Message content and extra metadata.
        parent : dict, optional
            The message (or header) this one replies to.
        header : dict, optional
            Use this header instead of a new one.

        Returns
        -------
        dict
            Keys header, msg_id, msg_type, parent_header, content, metadata.
        """
        header = self.msg_header(msg_type) if header is None else header
        md = dict(self.metadata)
        if metadata is not None:
            md.update(metadata)
        return {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "parent_header": extract_header(parent),
            "content": {} if content is None else content,
            "metadata": md,
        }

    def sign(self, msg_list: Sequence[bytes]) -> bytes:
        """Return the hex HMAC of the message parts, or ``b''`` when unsigned.

        Parameters
        ----------
        msg_list : sequence of bytes
            The packed header, parent_header, metadata and content.
        """
        if self.auth is None:
            return b""
        h = self.auth.copy()
        for part in msg_list:
            h.update(part)
        return cast(str, h.hexdigest()).encode()

    def serialize(
        self, msg: dict[str, Any], ident: bytes | list[bytes] | None = None
    ) -> list[bytes]:
        """Return the wire frames of ``msg`` (without buffers).

        Parameters
        ----------
        msg : dict
            A message as built by :meth:`msg`.
        ident : bytes or list of bytes, optional
            Routing identities to put in front.

        Returns
        -------
        list of bytes
            ``[idents..., DELIM, signature, header, parent, metadata, content]``.
        """
        content = msg.get("content", {})
        if content is None:
            packed_content = self.none
        elif isinstance(content, dict):
            packed_content = self.pack(content)
        elif isinstance(content, bytes):
            packed_content = content  # already packed (a relayed message)
        elif isinstance(content, str):
            packed_content = content.encode("utf8")
        else:
            raise TypeError(f"message content must be a dict, got {type(content).__name__}")
        real = [
            self.pack(msg["header"]),
            self.pack(msg["parent_header"]),
            self.pack(msg["metadata"]),
            packed_content,
        ]
        frames: list[bytes] = []
        if isinstance(ident, list):
            frames.extend(ident)
        elif ident is not None:
            frames.append(ident)
        frames.append(DELIM)
        frames.append(self.sign(real))
        frames.extend(real)
        return frames

    def send(
        self,
        stream: zmq.Socket[Any] | None,
        msg_or_type: dict[str, Any] | str,
        content: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
        ident: bytes | list[bytes] | None = None,
        buffers: list[Any] | None = None,
        track: bool = False,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Build (unless given a message dict), sign and send a message.

        Parameters
        ----------
        stream : zmq.Socket or None
            Where to send; None only builds the message.
        msg_or_type : dict or str
            A message dict, or the msg_type of a new message.
        content, parent, header, metadata : optional
            Used when building a new message.
        ident : bytes or list of bytes, optional
            Routing identities.
        buffers : list, optional
            Extra binary frames (anything supporting the buffer protocol).
        track : bool
            Track zero-copy sends of large buffers.

        Returns
        -------
        dict or None
            The message sent (with a ``tracker`` key), or None from a forked child.
        """
        if isinstance(msg_or_type, dict):
            msg = msg_or_type
            buffers = buffers or msg.get("buffers", [])
        else:
            msg = self.msg(
                msg_or_type, content=content, parent=parent, header=header, metadata=metadata
            )
        if self.check_pid and os.getpid() != self.pid:
            log.warning("refusing to send a %s message from a forked process", msg["msg_type"])
            return None
        buffers = [] if buffers is None else buffers
        for idx, buf in enumerate(buffers):
            try:
                view = buf if isinstance(buf, memoryview) else memoryview(buf)
            except TypeError as e:
                raise TypeError(f"buffer {idx} does not support the buffer protocol") from e
            if not view.contiguous:
                raise ValueError(f"buffer {idx} is not contiguous")
        frames: list[Any] = self.serialize(msg, ident)
        frames.extend(buffers)
        copy = max(memoryview(f).nbytes for f in frames) < self.copy_threshold
        tracker: Any = _DONE
        if stream is not None:
            if buffers and track and not copy:
                tracker = stream.send_multipart(frames, copy=False, track=True)
            else:
                stream.send_multipart(frames, copy=copy)
        if self.debug:
            log.debug("sent %s %s", msg["msg_type"], msg["msg_id"])
        msg["tracker"] = tracker
        return msg

    def send_raw(
        self,
        stream: zmq.Socket[Any],
        msg_list: list[bytes],
        flags: int = 0,
        copy: bool = True,
        ident: bytes | list[bytes] | None = None,
    ) -> None:
        """Sign and send already packed parts ``[header, parent, metadata, content, bufs...]``."""
        frames: list[bytes] = []
        if isinstance(ident, bytes):
            frames.append(ident)
        elif ident is not None:
            frames.extend(ident)
        frames.append(DELIM)
        frames.append(self.sign(msg_list[:4]))  # buffers are not signed (per spec)
        frames.extend(msg_list)
        stream.send_multipart(frames, flags, copy=copy)

    def recv(
        self,
        socket: zmq.Socket[Any],
        mode: int = zmq.NOBLOCK,
        content: bool = True,
        copy: bool = True,
    ) -> tuple[list[bytes] | None, dict[str, Any] | None]:
        """Receive and deserialize one message.

        Parameters
        ----------
        socket : zmq.Socket
            Socket to read from.
        mode : int
            zmq flags (default non-blocking).
        content : bool
            Unpack the content (True) or leave it as bytes.
        copy : bool
            Passed to ``recv_multipart``.

        Returns
        -------
        (idents, msg)
            ``(None, None)`` when no message is waiting (non-blocking mode).
        """
        try:
            frames = socket.recv_multipart(mode, copy=copy)
        except zmq.ZMQError as e:
            if e.errno == zmq.EAGAIN:
                return None, None
            raise
        idents, rest = self.feed_identities(frames, copy)
        return idents, self.deserialize(rest, content=content, copy=copy)

    def feed_identities(
        self, msg_list: Sequence[Any], copy: bool = True
    ) -> tuple[list[bytes], list[Any]]:
        """Split ``msg_list`` at the delimiter into (identities, message parts).

        Raises
        ------
        ValueError
            If there is no ``<IDS|MSG>`` delimiter.
        """
        parts = list(msg_list)
        raw = parts if copy else [bytes(m.bytes) for m in parts]
        try:
            idx = raw.index(DELIM)
        except ValueError:
            raise ValueError("malformed message: no <IDS|MSG> delimiter") from None
        return [bytes(b) for b in raw[:idx]], parts[idx + 1 :]

    def _add_digest(self, signature: bytes) -> None:
        """Remember a signature so that a replay of its message is rejected."""
        if self.digest_history_size == 0:
            return
        self.digest_history.add(signature)
        self._digest_order.append(signature)
        if len(self.digest_history) > self.digest_history_size:
            self._cull_digest_history()

    def _cull_digest_history(self) -> None:
        """Forget the oldest tenth of the history (at least down to the bound)."""
        current = len(self.digest_history)
        n_to_cull = max(current // 10, current - self.digest_history_size)
        if n_to_cull >= current:
            self.digest_history = set()
            self._digest_order.clear()
            return
        culled = 0
        while culled < n_to_cull and self._digest_order:
            old = self._digest_order.popleft()
            if old in self.digest_history:
                self.digest_history.discard(old)
                culled += 1
        while culled < n_to_cull and self.digest_history:
            # History set from outside (not in our order queue): drop arbitrary ones.
            self.digest_history.pop()
            culled += 1

    def deserialize(
        self, msg_list: Sequence[Any], content: bool = True, copy: bool = True
    ) -> dict[str, Any]:
        """Turn wire parts ``[signature, header, parent, metadata, content, bufs...]`` into a dict.

        Parameters
        ----------
        msg_list : sequence of bytes (or zmq.Frame when ``copy`` is False)
            The parts after the delimiter.
        content : bool
            Unpack the content (True), or leave it packed; a peek (False) does
            not record the signature.
        copy : bool
            Whether the parts are bytes (True) or zmq Frames (False).

        Returns
        -------
        dict
            header, msg_id, msg_type, parent_header, metadata, content, buffers.

        Raises
        ------
        ValueError
            If the message is unsigned, wrongly signed or a replay.
        TypeError
            If it has fewer than five parts.
        """
        minlen = 5
        parts: list[Any] = list(msg_list)
        if not copy:
            parts = [bytes(m.bytes) for m in parts[:minlen]] + parts[minlen:]
        if len(parts) < minlen:
            raise TypeError(f"malformed message: {len(parts)} parts, at least {minlen} needed")
        if self.auth is not None:
            signature = parts[0]
            if not signature:
                raise ValueError("unsigned message (this session requires signatures)")
            check = self.sign(parts[1:5])
            if not hmac.compare_digest(signature, check):
                raise ValueError("invalid message signature (wrong key or tampered message)")
            if signature in self.digest_history:
                raise ValueError("duplicate message signature: a replayed message was rejected")
            if content:
                # A peek must not make the real read look like a replay.
                self._add_digest(signature)
        header = self.unpack(parts[1])
        message: dict[str, Any] = {
            "header": extract_dates(header),
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "parent_header": extract_dates(self.unpack(parts[2])),
            "metadata": self.unpack(parts[3]),
            "content": self.unpack(parts[4]) if content else parts[4],
        }
        buffers = [memoryview(b) for b in parts[5:]]
        if buffers and buffers[0].shape is None:
            # Frames whose memoryview has no shape: copy the bytes out.
            buffers = [memoryview(bytes(b.bytes)) for b in parts[5:]]
        message["buffers"] = buffers
        if self.debug:
            log.debug("received %s %s", message["msg_type"], message["msg_id"])
        return message
