"""Session: signing, wire (de)serialization, replay protection, dates, sockets."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets import TraitError

from kernel_connect.jsonutil import extract_dates, json_packer, parse_date
from kernel_connect.session import DELIM, Session, hmac_digests

KEY = b"a-very-secret-key-0123456789"

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
contents = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def _roundtrip(sender: Session, receiver: Session, msg: dict[str, Any]) -> dict[str, Any]:
    frames = sender.serialize(msg)
    idents, rest = receiver.feed_identities(frames)
    assert idents == []
    return receiver.deserialize(rest)


@settings(max_examples=60, deadline=None)
@given(
    content=contents,
    metadata=contents,
    idents=st.lists(st.binary(min_size=1, max_size=8).filter(lambda b: b != DELIM), max_size=3),
    buffers=st.lists(st.binary(max_size=64), max_size=3),
)
def test_serialize_deserialize_roundtrip(
    content: dict[str, Any], metadata: dict[str, Any], idents: list[bytes], buffers: list[bytes]
) -> None:
    s = Session(key=KEY)
    parent = s.msg("execute_request")
    msg = s.msg("execute_reply", content=content, parent=parent, metadata=metadata)
    frames = s.serialize(msg, ident=idents) + buffers
    got_idents, rest = s.feed_identities(frames)
    assert got_idents == idents
    back = s.deserialize(rest)
    assert back["content"] == json.loads(json.dumps(content))
    assert back["metadata"] == json.loads(json.dumps(metadata))
    assert back["msg_id"] == msg["msg_id"]
    assert back["msg_type"] == "execute_reply"
    assert back["header"] == msg["header"]
    assert back["parent_header"]["msg_id"] == parent["msg_id"]
    assert [bytes(b) for b in back["buffers"]] == buffers


def test_wire_format_and_signature_are_hmac_of_the_four_parts() -> None:
    s = Session(key=KEY, signature_scheme="hmac-sha256")
    msg = s.msg("kernel_info_request")
    frames = s.serialize(msg, ident=[b"id1", b"id2"])
    assert frames[:3] == [b"id1", b"id2", DELIM]
    signature, parts = frames[3], frames[4:8]
    expected = hmac.new(KEY, b"".join(parts), hashlib.sha256).hexdigest().encode()
    assert signature == expected
    header = json.loads(parts[0])
    assert header["msg_type"] == "kernel_info_request"
    assert header["date"].endswith("Z")  # ISO 8601 UTC as jupyter_client writes it
    assert header["version"] == "5.4"
    assert header["session"] == s.session


@settings(max_examples=60, deadline=None)
@given(part=st.integers(1, 4), pos=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_tampered_message_is_rejected(part: int, pos: int, flip: int) -> None:
    s = Session(key=KEY)
    frames = s.serialize(s.msg("execute_request", content={"code": "1+1"}))
    rest = frames[1:]
    data = bytearray(rest[part])
    data[pos % len(data)] ^= flip
    rest[part] = bytes(data)
    with pytest.raises(ValueError, match="invalid message signature") as info:
        Session(key=KEY).deserialize(rest)
    assert KEY.decode() not in str(info.value)


def test_wrong_key_and_unsigned_messages_are_rejected() -> None:
    sender = Session(key=b"other-key")
    rest = sender.serialize(sender.msg("status"))[1:]
    with pytest.raises(ValueError, match="invalid message signature"):
        Session(key=KEY).deserialize(rest)
    unsigned = Session(key=b"")
    rest = unsigned.serialize(unsigned.msg("status"))[1:]
    assert rest[0] == b""
    with pytest.raises(ValueError, match="unsigned message"):
        Session(key=KEY).deserialize(rest)


def test_replayed_message_is_rejected_but_peek_is_not_recorded() -> None:
    sender, receiver = Session(key=KEY), Session(key=KEY)
    rest = sender.serialize(sender.msg("execute_request", content={"code": "x"}))[1:]
    peek = receiver.deserialize(rest, content=False)
    assert json.loads(peek["content"]) == {"code": "x"}  # left packed
    assert receiver.deserialize(rest)["content"] == {"code": "x"}
    with pytest.raises(ValueError, match="replayed"):
        receiver.deserialize(rest)


def test_digest_history_is_bounded_and_forgets_oldest_first() -> None:
    sender, receiver = Session(key=KEY), Session(key=KEY, digest_history_size=10)
    messages = [sender.serialize(sender.msg("status"))[1:] for _ in range(25)]
    for rest in messages:
        receiver.deserialize(rest)
        assert len(receiver.digest_history) <= 10
    # The newest are remembered (replays rejected), the oldest were forgotten.
    with pytest.raises(ValueError, match="replayed"):
        receiver.deserialize(messages[-1])
    assert receiver.deserialize(messages[0])["msg_type"] == "status"


def test_empty_key_means_unsigned_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        s = Session(key=b"")
    assert "signing is disabled" in caplog.text
    assert s.auth is None
    assert s.sign([b"a", b"b"]) == b""
    rest = s.serialize(s.msg("status"))[1:]
    assert s.deserialize(rest)["msg_type"] == "status"
    # No replay history without signatures: the same message is accepted again.
    assert s.deserialize(rest)["msg_type"] == "status"


@pytest.mark.parametrize("digest", ["sha1", "sha512", "sha3_256", "blake2b", "sha224"])
def test_any_hashlib_digest_can_sign(digest: str) -> None:
    s = Session(key=KEY, signature_scheme=f"hmac-{digest}")
    parts = [b"h", b"p", b"m", b"c"]
    assert s.sign(parts) == hmac.new(KEY, b"hpmc", digest).hexdigest().encode()
    rest = s.serialize(s.msg("status"))[1:]
    assert Session(key=KEY, signature_scheme=f"hmac-{digest}").deserialize(rest)


@pytest.mark.parametrize("scheme", ["sha256", "hmac-nosuchhash", "hmac-shake_128", "rsa-sha256"])
def test_bad_signature_scheme_is_a_clear_error(scheme: str) -> None:
    with pytest.raises(TraitError, match="hmac-") as info:
        Session(key=KEY, signature_scheme=scheme)
    assert KEY.decode() not in str(info.value)


def test_hmac_digests_lists_usable_names() -> None:
    names = hmac_digests()
    assert "sha256" in names
    assert "sha512" in names
    assert not any(n.startswith("shake") for n in names)


def test_key_never_in_repr_or_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        s = Session(key=KEY, debug=True)
        a, b = zmq.Context.instance().socket(zmq.PAIR), zmq.Context.instance().socket(zmq.PAIR)
        try:
            a.bind("inproc://kc-session-log")
            b.connect("inproc://kc-session-log")
            s.send(a, "status", content={"execution_state": "idle"})
            assert b.poll(5000)
            s.recv(b)
        finally:
            a.close(0)
            b.close(0)
    assert KEY.decode() not in repr(s)
    assert "signed" in repr(s)
    assert KEY.decode() not in caplog.text


def test_clone_shares_settings_not_replay_history() -> None:
    s = Session(key=KEY, signature_scheme="hmac-sha512", username="alice")
    rest = s.serialize(s.msg("status"))[1:]
    s.deserialize(rest)
    c = s.clone()
    assert (c.key, c.signature_scheme, c.session, c.username) == (
        KEY,
        "hmac-sha512",
        s.session,
        "alice",
    )
    assert c.digest_history == s.digest_history
    assert c.digest_history is not s.digest_history
    rest2 = s.serialize(s.msg("status"))[1:]
    c.deserialize(rest2)
    assert s.deserialize(rest2)  # not a replay for the original
    assert c.msg_id != s.msg_id  # ids stay unique across clones


def test_send_recv_over_real_sockets_with_buffers() -> None:
    ctx = zmq.Context.instance()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        s_client, s_server = Session(key=KEY), Session(key=KEY)
        big = bytes(range(256)) * 300  # above copy_threshold: sent zero-copy
        sent = s_client.send(client, "execute_request", {"code": "1"}, buffers=[b"b1", big])
        assert sent is not None
        assert server.poll(5000)
        idents, msg = s_server.recv(server)
        assert idents is not None
        assert msg is not None
        assert len(idents) == 1
        assert msg["content"] == {"code": "1"}
        assert [bytes(b) for b in msg["buffers"]] == [b"b1", big]
        s_server.send(server, "execute_reply", {"status": "ok"}, parent=msg, ident=idents)
        assert client.poll(5000)
        _, reply = s_client.recv(client)
        assert reply is not None
        assert reply["parent_header"]["msg_id"] == sent["msg_id"]
        assert s_client.recv(client) == (None, None)  # nothing waiting: no block
    finally:
        server.close(0)
        client.close(0)


def test_header_dates_roundtrip_as_aware_datetimes() -> None:
    s = Session(key=KEY)
    msg = s.msg("status")
    back = s.deserialize(s.serialize(msg)[1:])
    date = back["header"]["date"]
    assert isinstance(date, datetime)
    assert date.tzinfo is not None
    assert date == msg["header"]["date"]


@settings(max_examples=100, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 1, 1),
        timezones=st.sampled_from(
            [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
        ),
    )
)
def test_dates_pack_and_parse_back(dt: datetime) -> None:
    text = json.loads(json_packer({"d": dt}))["d"]
    parsed = parse_date(text)
    assert parsed == dt
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == dt.utcoffset()


def test_parse_date_shapes() -> None:
    assert parse_date("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_date("2024-01-02T03:04:05.5+0100") == datetime(
        2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone(timedelta(hours=1))
    )
    naive = parse_date("2024-01-02T03:04:05.123456")
    assert isinstance(naive, datetime)
    assert naive.tzinfo is not None
    for not_a_date in (
        "hello",
        "2024-13-45T00:00:00Z",
        "2024-01-02",
        "2024-01-02T03:04:05.1234567",
    ):
        assert parse_date(not_a_date) == not_a_date
    assert extract_dates({"a": ["2024-01-02T03:04:05Z", 1]})["a"][0].year == 2024


def test_interop_with_jupyter_client_session() -> None:
    from jupyter_client.session import Session as JCSession

    for scheme in ("hmac-sha256", "hmac-sha512"):
        ours, theirs = (
            Session(key=KEY, signature_scheme=scheme),
            JCSession(key=KEY, signature_scheme=scheme),
        )
        msg = ours.msg("execute_request", content={"code": "print(1)"}, metadata={"m": 1})
        got = theirs.deserialize(ours.serialize(msg)[1:])
        assert got["content"] == {"code": "print(1)"}
        assert got["metadata"] == {"m": 1}
        assert got["header"]["date"] == msg["header"]["date"]
        jmsg = theirs.msg("execute_reply", content={"status": "ok"}, parent=msg)
        back = ours.deserialize(theirs.serialize(jmsg)[1:])
        assert back["content"] == {"status": "ok"}
        assert back["parent_header"]["msg_id"] == msg["msg_id"]
        assert back["header"]["date"] == jmsg["header"]["date"]


def test_recv_without_copy_and_keyfile(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY + b"\n")
    s = Session(keyfile=str(keyfile))
    assert s.key == KEY
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://kc-session-nocopy")
        b.connect("inproc://kc-session-nocopy")
        s.send(a, "data", {"n": 1}, buffers=[b"x" * 10, b"y"], ident=[b"route"])
        assert b.poll(5000)
        idents, msg = Session(key=KEY).recv(b, copy=False)
        assert idents == [b"route"]
        assert msg is not None and msg["content"] == {"n": 1}
        assert [bytes(buf) for buf in msg["buffers"]] == [b"x" * 10, b"y"]
    finally:
        a.close(0)
        b.close(0)


def test_bad_key_type_error_does_not_show_the_value() -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match="not int") as caught:
        Session(key=987654321)
    assert "987654321" not in str(caught.value)
    assert Session(key="text-key").key == b"text-key", "a str key is UTF-8 encoded"


def test_curve_secret_key_errors_do_not_show_the_value() -> None:
    from traitlets import TraitError

    from kernel_connect.mixin import ConnectionFileMixin

    mixin = ConnectionFileMixin()
    with pytest.raises(TraitError) as caught:
        mixin.curve_secretkey = 31415926535  # type: ignore[assignment]
    assert "31415926535" not in str(caught.value)


def test_a_session_and_a_connection_file_accept_the_same_schemes(tmp_path: Path) -> None:
    """One list of digests: a scheme a Session takes is one a file may name,
    and the other way round (a Session once took hmac-sha512_256, which the
    file then refused)."""
    from kernel_connect.connect import write_connection_file

    for name in sorted(hashlib.algorithms_available | {"nosuchhash"}):
        scheme = f"hmac-{name}"
        try:
            Session(key=KEY, signature_scheme=scheme)
            session_ok = True
        except TraitError:
            session_ok = False
        try:
            write_connection_file(
                str(tmp_path / "k.json"),
                ip="127.0.0.1",
                key=KEY,
                signature_scheme=scheme,
                shell_port=1,
                iopub_port=2,
                stdin_port=3,
                control_port=4,
                hb_port=5,
            )
            file_ok = True
        except ValueError:
            file_ok = False
        assert session_ok == file_ok, scheme
