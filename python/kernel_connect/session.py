"""Session: builds, signs, serializes, sends and receives Jupyter wire messages.

The wire format (Jupyter messaging protocol 5.x) of one message is::

    [identities..., b'<IDS|MSG>', signature, header, parent_header, metadata, content,
     buffers...]

The signature is the hex HMAC (``signature_scheme`` = ``hmac-<digest>``) of the
four packed parts. An empty key means messages are neither signed nor checked, as
in jupyter_client. Verification uses a constant-time compare, and a bounded
history of recent signatures rejects a replayed message.

The parts are packed with JSON by default (orjson when it is installed, as
jupyter_client does); ``packer='pickle'``, ``'msgpack'`` or an import name
chooses another serializer. Received messages are adapted to the current
protocol version (:mod:`kernel_connect.adapter`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import logging
import os
import pickle
import pprint
import sys
import threading
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import zmq
from traitlets import Any as AnyTrait
from traitlets import (
    Bool,
    CBytes,
    CUnicode,
    Dict,
    DottedObjectName,
    Instance,
    Integer,
    Set,
    TraitError,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets import Callable as CallableTrait
from traitlets.config import Configurable, LoggingConfigurable
from traitlets.utils.importstring import import_item

from kernel_connect import _native, protocol_version
from kernel_connect.adapter import adapt
from kernel_connect.jsonutil import (
    extract_dates,
    json_default,
    json_packer,
    json_unpacker,
    squash_dates,
)
from kernel_connect.secret_trait import SecretBytes

if TYPE_CHECKING:
    from zmq.eventloop.zmqstream import ZMQStream

log = logging.getLogger(__name__)

#: The messaging protocol version written into headers.
PROTOCOL_VERSION = protocol_version

#: Separates routing identities from the message proper.
DELIM = b"<IDS|MSG>"

#: A tracker that is always done, for sends that copy their buffers.
DONE = zmq.MessageTracker()
_DONE = DONE

#: Defaults of ``Session.item_threshold`` and ``Session.buffer_threshold``.
MAX_ITEMS = 64
MAX_BYTES = 1024

#: The pickle protocol of :func:`pickle_packer`.
PICKLE_PROTOCOL = pickle.DEFAULT_PROTOCOL


def _optional_module(name: str) -> Any:
    """The module ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


_orjson = _optional_module("orjson")
_msgpack = _optional_module("msgpack")
#: Whether the optional serializers are installed (orjson is then the default).
has_orjson = _orjson is not None
has_msgpack = _msgpack is not None

if _orjson is not None:
    _ORJSON_OPTION: int | None = _orjson.OPT_NAIVE_UTC | _orjson.OPT_UTC_Z

    def orjson_packer(obj: Any, *, option: int | None = _ORJSON_OPTION) -> bytes:
        """Pack ``obj`` with orjson (naive datetimes as UTC, written with ``Z``).

        Whatever orjson refuses (non-string keys, integers past 64 bits, ...)
        is packed by :func:`json_packer` instead. orjson writes NaN and the
        infinities as ``null``.
        """
        try:
            return cast(bytes, _orjson.dumps(obj, default=json_default, option=option))
        except Exception:
            return json_packer(obj)

    def orjson_unpacker(s: str | bytes) -> Any:
        """Unpack JSON with orjson, falling back to :func:`json_unpacker`."""
        try:
            return _orjson.loads(s)
        except Exception:
            return json_unpacker(s)

else:
    # Without orjson, 'orjson' means the standard library's json, as in jupyter_client.
    orjson_packer, orjson_unpacker = json_packer, json_unpacker  # type: ignore[assignment]

if _msgpack is not None:
    #: msgpack packing; what msgpack cannot pack goes through ``json_default``.
    msgpack_packer = functools.partial(_msgpack.packb, default=json_default)
    msgpack_unpacker = _msgpack.unpackb


def pickle_packer(o: Any) -> bytes:
    """Pack ``o`` with pickle, datetimes squashed to ISO 8601 strings.

    A pickle unpacker runs code chosen by whoever made the message: use pickle
    only with a key, so that only signed messages are ever unpacked.
    """
    return pickle.dumps(squash_dates(o), PICKLE_PROTOCOL)


#: Unpacks :func:`pickle_packer`'s output (signed messages only: see pickle_packer).
pickle_unpacker = pickle.loads

_DEFAULT_PACKER = "orjson" if has_orjson else "json"


def squash_unicode(obj: Any) -> Any:
    """Encode every str in ``obj`` (dict keys included) as UTF-8 bytes.

    Dicts and lists are changed in place, as in jupyter_client; the result
    is returned (a str becomes new bytes).
    """
    if isinstance(obj, dict):
        for key in list(obj):
            value = squash_unicode(obj.pop(key) if isinstance(key, str) else obj[key])
            obj[squash_unicode(key) if isinstance(key, str) else key] = value
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            obj[i] = squash_unicode(value)
    elif isinstance(obj, str):
        obj = obj.encode("utf8")
    return obj


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


def blocking_view(socket: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A socket to use with blocking (and non-blocking) calls: ``socket`` itself,
    or, for a ``zmq.asyncio`` socket, a shadow of it that does not own it.

    A ``zmq.asyncio`` socket returns futures from ``send_multipart`` and
    ``recv_multipart``; code that reads and writes frames at once (Session,
    the channels, the heartbeat) needs the frames themselves, and a real
    ``MessageTracker`` when it tracks a send. jupyter_client treats an asyncio
    socket handed to its Session the same way.

    The caller keeps closing ``socket`` itself (never the view): an asyncio
    socket must be closed as such, so that its loop stops watching it.
    """
    zmq_asyncio = sys.modules.get("zmq.asyncio")  # not loaded: no asyncio socket exists
    if zmq_asyncio is not None and isinstance(socket, zmq_asyncio.Socket):
        view: zmq.Socket[Any] = zmq.Socket.shadow(socket.underlying)
        return view
    return socket


def _receiving_socket(socket: zmq.Socket[Any] | ZMQStream) -> zmq.Socket[Any]:
    """The socket to read ``socket``'s frames from at once: a ZMQStream's own
    socket (as jupyter_client reads it), an asyncio socket's blocking view."""
    zmqstream = sys.modules.get("zmq.eventloop.zmqstream")  # not loaded: no ZMQStream exists
    if zmqstream is not None and isinstance(socket, zmqstream.ZMQStream):
        socket = socket.socket
    return blocking_view(cast("zmq.Socket[Any]", socket))


class Message:
    """A message (or any dict) whose keys are also attributes, nested dicts included.

    ``dict(Message(d))`` gives the top level back as a dict; ``msg.header.msg_id``
    and ``msg["header"]["msg_id"]`` are the same value. A Session sends a
    Message as it sends the dict it was made from.
    """

    def __init__(self, msg_dict: Mapping[str, Any]) -> None:
        for key, value in dict(msg_dict).items():
            self.__dict__[key] = Message(value) if isinstance(value, dict) else value

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        # Pairs, so that dict(message) works.
        return iter(self.__dict__.items())

    def __repr__(self) -> str:
        return repr(self.__dict__)

    def __str__(self) -> str:
        return pprint.pformat(self.__dict__)

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def __getitem__(self, key: str) -> Any:
        return self.__dict__[key]


def _message_dict(msg: Message) -> dict[str, Any]:
    """A Message as nested dicts again."""
    return {k: _message_dict(v) if isinstance(v, Message) else v for k, v in msg}


class _MessageCounter:
    """Numbers the message ids of one session id in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def take(self) -> int:
        with self._lock:
            number = self.value
            self.value = number + 1
        return number


# One counter per session id, shared by every Session with that id (a clone, or
# one made with session=...), so no two mint the same message id. Kept only
# while such a Session lives.
_COUNTERS: weakref.WeakValueDictionary[str, _MessageCounter] = weakref.WeakValueDictionary()
_COUNTERS_LOCK = threading.Lock()


def _counter_for(session_id: str) -> _MessageCounter:
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(session_id)
        if counter is None:
            counter = _COUNTERS[session_id] = _MessageCounter()
        return counter


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

    packer = DottedObjectName(
        _DEFAULT_PACKER,
        config=True,
        help="Serializer of message parts: 'json', 'orjson', 'pickle', 'msgpack' (each also "
        "sets the unpacker) or the import name of a callable returning bytes.",
    )
    unpacker = DottedObjectName(
        _DEFAULT_PACKER,
        config=True,
        help="Deserializer of message parts; only needed with a custom packer.",
    )
    pack = CallableTrait(orjson_packer if has_orjson else json_packer)
    unpack = CallableTrait(orjson_unpacker if has_orjson else json_unpacker)

    session = CUnicode("", config=True, help="The id identifying this session.")
    bsession = CBytes(b"")
    username = Unicode(
        os.environ.get("USER", "username"), config=True, help="Username written into headers."
    )
    metadata = Dict({}, config=True, help="Default top-level metadata of every message.")

    # The major protocol version sent messages are adapted to; 0: no adapting.
    adapt_version = Integer(0)

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
    buffer_threshold = Integer(
        MAX_BYTES,
        config=True,
        help="Threshold (bytes) beyond which an object's buffer is sent apart rather than "
        "pickled (kept for jupyter_client's serialization helpers).",
    )
    item_threshold = Integer(
        MAX_ITEMS,
        config=True,
        help="Containers with more items than this are pickled whole rather than "
        "introspected (kept for jupyter_client's serialization helpers).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._digest_order: deque[bytes] = deque(self.digest_history)
        self._check_packers()
        self.none = self.pack({})
        # Touch the id so that bsession (and the id's message counter) is set
        # from the default.
        self._counter = _counter_for(self.session)
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
        self._counter = _counter_for(self.session)

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
        # A serializer's name sets both ends (packer and unpacker alike); an
        # import name sets only the end it names. As in jupyter_client, a name
        # whose library is missing ('msgpack') is imported, and fails as such,
        # while 'orjson' without orjson means json.
        name = str(change["new"])
        kind = name.lower()
        pair: tuple[Callable[..., Any], Callable[..., Any]]
        if kind == "orjson" and has_orjson:
            pair = (orjson_packer, orjson_unpacker)
        elif kind in ("json", "orjson"):
            pair = (json_packer, json_unpacker)
        elif kind == "pickle":
            pair = (pickle_packer, pickle_unpacker)
        elif kind == "msgpack" and has_msgpack:
            pair = (msgpack_packer, msgpack_unpacker)
        else:
            func = import_item(name)
            self.set_trait("pack" if change["name"] == "packer" else "unpack", func)
            return
        self.pack, self.unpack = pair
        self.packer = self.unpacker = name

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
            raise ValueError(
                f"packer {self.packer!r} could not serialize a simple message: {e}"
            ) from e
        if not isinstance(packed, bytes):
            raise ValueError(f"message packed to {type(packed)!r}, but bytes are required")
        try:
            back = unpack(packed)
        except Exception as e:
            raise ValueError(
                f"unpacker {self.unpacker!r} could not handle output from packer "
                f"{self.packer!r}: {e}"
            ) from e
        if back != sample:
            raise ValueError(
                f"unpacker {self.unpacker!r} could not handle output from packer "
                f"{self.packer!r}: it is not the packer's inverse"
            )
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
        names = [n for n in self.traits() if n not in ("digest_history", "auth", "pack", "unpack")]
        # The callables last: setting packer/unpacker resets them.
        for name in [*names, "pack", "unpack"]:
            setattr(new, name, getattr(self, name))
        new.digest_history = set(self.digest_history)
        new._digest_order = deque(self._digest_order)
        new._new_auth()
        return new

    @property
    def message_count(self) -> int:
        """The number of the next message id: how many ids were made with this session id.

        Shared by every Session with the same id in this process (a clone,
        one made with ``session=...``), so that they never make the same id;
        a new Session (a new id) starts at 0, as in jupyter_client.
        """
        return self._counter.value

    @message_count.setter
    def message_count(self, value: int) -> None:
        self._counter.value = int(value)

    @property
    def msg_id(self) -> str:
        """A new message id, ``<session>_<pid>_<message_count>``, unique in this process."""
        return f"{self.session}_{os.getpid()}_{self._counter.take()}"

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
        stream: zmq.Socket[Any] | ZMQStream | None,
        msg_or_type: dict[str, Any] | Message | str,
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
        stream : zmq.Socket, zmq.asyncio.Socket, ZMQStream or None
            Where to send; None only builds the message. An asyncio socket is
            written at once, as a blocking one is (zmq queues the message;
            only a full queue makes the call wait); a ZMQStream queues the
            message on its loop.
        msg_or_type : dict, Message or str
            A message, or the msg_type of a new message.
        content, parent, header, metadata : optional
            Used when building a new message.
        ident : bytes or list of bytes, optional
            Routing identities.
        buffers : list, optional
            Extra binary frames (anything supporting the buffer protocol).
        track : bool
            Track zero-copy sends of large buffers (zmq sockets only: a
            ZMQStream cannot track, and its message gets the done tracker).

        Returns
        -------
        dict or None
            The message sent (with a ``tracker`` key), or None from a forked child.
        """
        if stream is not None and not isinstance(stream, zmq.Socket):
            track = False  # a ZMQStream (or a stand-in) sends later, untracked
        else:
            stream = None if stream is None else blocking_view(stream)
        if isinstance(msg_or_type, Message):
            msg_or_type = _message_dict(msg_or_type)
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
        if self.adapt_version:
            msg = adapt(msg, self.adapt_version)
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
        stream: zmq.Socket[Any] | ZMQStream,
        msg_list: list[bytes],
        flags: int = 0,
        copy: bool = True,
        ident: bytes | list[bytes] | None = None,
    ) -> None:
        """Sign and send already packed parts ``[header, parent, metadata, content, bufs...]``.

        ``stream`` may be a zmq socket, a ``zmq.asyncio`` socket (written at
        once, as a blocking one) or a ZMQStream.
        """
        frames: list[bytes] = []
        if isinstance(ident, bytes):
            frames.append(ident)
        elif ident is not None:
            frames.extend(ident)
        frames.append(DELIM)
        frames.append(self.sign(msg_list[:4]))  # buffers are not signed (per spec)
        frames.extend(msg_list)
        if isinstance(stream, zmq.Socket):
            stream = blocking_view(stream)
        stream.send_multipart(frames, flags, copy=copy)

    def recv(
        self,
        socket: zmq.Socket[Any] | ZMQStream,
        mode: int = zmq.NOBLOCK,
        content: bool = True,
        copy: bool = True,
    ) -> tuple[list[bytes] | None, dict[str, Any] | None]:
        """Receive and deserialize one message.

        Parameters
        ----------
        socket : zmq.Socket, zmq.asyncio.Socket or ZMQStream
            Socket to read from. An asyncio socket is read at once, as a
            blocking one (its frames, not a future); a ZMQStream through its
            socket.
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
            frames = _receiving_socket(socket).recv_multipart(mode, copy=copy)
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
            header, msg_id, msg_type, parent_header, metadata, content, buffers;
            adapted to the current protocol version (a message without a
            header version is a version 4 message).

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
        return adapt(message)

    def unserialize(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Deprecated name of :meth:`deserialize`."""
        warnings.warn(
            "Session.unserialize is deprecated. Use Session.deserialize.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.deserialize(*args, **kwargs)


class SessionFactory(LoggingConfigurable):
    """Base of configurables that have a Session, a zmq Context, a logger and an IOLoop.

    Keyword arguments that are Session settings (``key``, ``signature_scheme``,
    ``username``, ...) make the Session, unless one is given as ``session``.
    """

    logname = Unicode("")

    @observe("logname")
    def _logname_changed(self, change: Any) -> None:
        self.log = logging.getLogger(change["new"])

    context = Instance("zmq.Context")

    @default("context")
    def _context_default(self) -> zmq.Context[Any]:
        # A context of its own, as in jupyter_client: destroying it touches no one else.
        return zmq.Context()

    session = Instance(Session, allow_none=True)

    # A tornado IOLoop; tornado is imported only when the loop is used.
    loop = AnyTrait()

    @default("loop")
    def _loop_default(self) -> Any:
        from tornado.ioloop import IOLoop

        return IOLoop.current()

    @validate("loop")
    def _validate_loop(self, proposal: Any) -> Any:
        from tornado.ioloop import IOLoop

        if not isinstance(proposal["value"], IOLoop):
            raise TraitError(
                f"The 'loop' trait of {type(self).__name__} must be a tornado IOLoop, "
                f"not {type(proposal['value']).__name__}"
            )
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        # Session settings go to the Session only: passed on to traitlets as
        # unknown arguments they would be repeated in a warning, key included.
        session_names = set(Session.class_trait_names())
        settings = {k: v for k, v in kwargs.items() if k in session_names and not self.has_trait(k)}
        super().__init__(**{k: v for k, v in kwargs.items() if k not in settings})
        if self.session is None:
            inherited = {k: kwargs[k] for k in ("parent", "config") if k in kwargs}
            self.session = Session(**inherited, **settings)
        elif settings:
            warnings.warn(
                f"{type(self).__name__}: a session was given, so the Session settings "
                f"{', '.join(sorted(settings))} are ignored",
                stacklevel=2,
            )
