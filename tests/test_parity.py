"""Parity with jupyter_client 8.10, side by side: Session serializers and traits,
Message, SessionFactory, protocol adaptation, local interfaces, the mixin's
data_dir and write_connection_file parameters, and the version names."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_client
import jupyter_client.adapter as jc_adapter
import jupyter_client.connect as jc_connect
import jupyter_client.localinterfaces as jc_local
import jupyter_client.session as jc_session
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets import TraitError
from traitlets.config import Config

import kernel_connect
from kernel_connect import adapter, localinterfaces, session
from kernel_connect.connect import ConnectionFileError
from kernel_connect.jsonutil import validate_string_dict
from kernel_connect.mixin import ConnectionFileMixin
from kernel_connect.session import Message, Session, SessionFactory
from kernel_fixtures import ports_held

KEY = b"parity-secret-key-0123456789"


@pytest.fixture
def no_warnings() -> Iterator[None]:
    """Any warning is an error (as under ``-W error`` / ``filterwarnings = error``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _both(**kwargs: Any) -> tuple[Session, Any]:
    return Session(**kwargs), jc_session.Session(**kwargs)


# -- Session: serializers ---------------------------------------------------


@pytest.mark.parametrize("packer", ["json", "orjson", "pickle", "msgpack"])
def test_named_packers_give_jupyter_clients_frames(packer: str) -> None:
    ours, theirs = _both(key=KEY, packer=packer)
    assert (ours.packer, ours.unpacker) == (theirs.packer, theirs.unpacker) == (packer, packer)
    parent = ours.msg("execute_request", content={"code": "1"})
    msg = ours.msg(
        "execute_reply",
        content={"status": "ok", "n": [1, 2.5, None, "é"], "when": session.utcnow()},
        parent=parent,
        metadata={"m": True},
    )
    frames = ours.serialize(msg, ident=[b"route"])
    assert frames == theirs.serialize(msg, ident=[b"route"])
    back = ours.deserialize(theirs.feed_identities(frames)[1])
    assert back["header"] == msg["header"]
    assert back["parent_header"]["msg_id"] == parent["msg_id"]
    assert back["content"]["n"] == [1, 2.5, None, "é"]
    their_back = theirs.deserialize(ours.feed_identities(frames)[1])
    assert their_back["content"] == back["content"]


def test_default_packer_is_jupyter_clients() -> None:
    ours, theirs = _both(key=KEY)
    assert session.has_orjson, "orjson is in the test extra"
    assert (ours.packer, ours.unpacker) == (theirs.packer, theirs.unpacker) == ("orjson", "orjson")
    msg = ours.msg("status", content={"execution_state": "idle"})
    assert ours.serialize(msg) == theirs.serialize(msg)


def _outcome(func: Any, arg: Any) -> str:
    """What ``func(arg)`` gives, or which exception it raises, as text to compare."""
    try:
        return repr(func(arg))
    except Exception as e:
        return f"raises {type(e).__name__}: {e}"


def test_serializer_functions_match_jupyter_clients() -> None:
    samples: list[Any] = [
        {"a": [1, "hi"], "t": session.utcnow()},
        {"nan": float("nan"), "inf": float("inf")},  # orjson: null; msgpack: floats
        {1: "int key"},  # orjson refuses: json_packer instead
        {"big": 2**70},
    ]
    pairs = [
        ("orjson_packer", "orjson_unpacker"),
        ("msgpack_packer", "msgpack_unpacker"),
        ("pickle_packer", "pickle_unpacker"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # json_packer's warning, checked below
        for pack_name, unpack_name in pairs:
            ours_pack, theirs_pack = getattr(session, pack_name), getattr(jc_session, pack_name)
            ours_unpack = getattr(session, unpack_name)
            for sample in samples:
                assert _outcome(ours_pack, sample) == _outcome(theirs_pack, sample)
                try:
                    packed = ours_pack(sample)
                except OverflowError:
                    continue  # msgpack has no integers past 64 bits (nor has jupyter_client's)
                theirs_unpack = getattr(jc_session, unpack_name)
                assert _outcome(ours_unpack, packed) == _outcome(theirs_unpack, packed), (
                    unpack_name,
                    sample,
                )
    assert session.PICKLE_PROTOCOL == jc_session.PICKLE_PROTOCOL
    assert (session.has_orjson, session.has_msgpack) == (True, True)


_WITHOUT_OPTIONAL = """
import json, sys
sys.modules["orjson"] = None
sys.modules["msgpack"] = None
from jupyter_client import session as jc
from kernel_connect import session as kc
out = {}
for name, mod in (("jc", jc), ("kc", kc)):
    s = mod.Session(key=b"k")
    res = {"has": [mod.has_orjson, mod.has_msgpack], "default": [s.packer, s.unpacker],
           "default_is_json": s.pack is mod.json_packer,
           "orjson_alias": mod.orjson_packer is mod.json_packer,
           "has_msgpack_packer": hasattr(mod, "msgpack_packer")}
    o = mod.Session(key=b"k", packer="orjson")
    res["orjson"] = [o.packer, o.unpacker, o.pack is mod.json_packer]
    try:
        mod.Session(key=b"k", packer="msgpack")
        res["msgpack"] = "ok"
    except Exception as e:
        res["msgpack"] = type(e).__name__
    out[name] = res
print(json.dumps(out))
"""


def test_without_orjson_and_msgpack_behaves_as_jupyter_client(python: str) -> None:
    """Where the optional libraries are missing: json by default, 'orjson' means
    json, 'msgpack' fails to import; the same in both libraries."""
    done = subprocess.run(
        [python, "-c", _WITHOUT_OPTIONAL], capture_output=True, text=True, check=True, timeout=60
    )
    out = json.loads(done.stdout)
    assert out["kc"] == out["jc"]
    assert out["kc"]["has"] == [False, False]
    assert out["kc"]["default"] == ["json", "json"]
    assert out["kc"]["orjson"] == ["orjson", "orjson", True]
    assert out["kc"]["msgpack"] == "ModuleNotFoundError"


@pytest.mark.parametrize("trait", ["pack", "unpack"])
def test_pack_and_unpack_must_be_callables(trait: str) -> None:
    with pytest.raises(TraitError, match="callable"):
        Session(key=KEY, **{trait: "hi"})
    with pytest.raises(TraitError, match="callable"):
        jc_session.Session(key=KEY, **{trait: "hi"})


def test_packer_must_be_a_dotted_name() -> None:
    with pytest.raises(TraitError):
        Session(key=KEY, packer="not a name!")
    with pytest.raises(TraitError):
        jc_session.Session(key=KEY, packer="not a name!")


def _bad_packer(obj: Any) -> bytes:
    raise TypeError("I don't work")


def test_bad_packer_message_as_jupyter_client() -> None:
    for cls in (Session, jc_session.Session):
        with pytest.raises(ValueError, match=r"could not serialize.*don't work"):
            cls(key=KEY, packer=f"{__name__}._bad_packer")
        with pytest.raises(ValueError, match="could not handle output"):
            cls(key=KEY, unpack=lambda b: 5)


def test_inf_and_nan_are_written_as_text_with_a_warning() -> None:
    """With the json packer, as jupyter_client: "inf"/"nan" written, a UserWarning."""
    ours, theirs = _both(key=KEY, packer="json")
    content = {"x": float("nan"), "y": float("inf"), "z": -float("inf"), "ok": 1.5}
    msg = ours.msg("execute_result", content=content)
    with pytest.warns(UserWarning, match="please make sure your message is JSON-compliant"):
        frames = ours.serialize(msg)
    with pytest.warns(UserWarning, match="please make sure your message is JSON-compliant"):
        assert theirs.serialize(msg) == frames
    assert json.loads(frames[-1]) == {"x": "nan", "y": "inf", "z": "-inf", "ok": 1.5}
    # What cannot be cleaned is still refused, as in jupyter_client.
    with pytest.raises(ValueError, match="clean"):
        session.json_packer({"a": object()})
    with pytest.raises(ValueError, match="clean"):
        jc_session.json_packer({"a": object()})


def test_json_packer_cleans_what_jupyter_client_cleans() -> None:
    from jupyter_client.jsonutil import json_clean as jc_clean

    from kernel_connect.jsonutil import json_clean

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in (
            {(1, 2): 3, "n": float("nan")},
            {"t": (1, 2), "s": {3}, "b": b"\x00\xff", "n": float("inf")},
            {"g": (i for i in range(3)), "n": float("nan")},
        ):
            assert session.json_packer(copy.copy(obj)) == jc_session.json_packer(copy.copy(obj))
    for obj, reason in (({1: "a", "1": "b"}, "key collision"), (object(), "clean for JSON")):
        with pytest.raises(ValueError, match=reason):
            json_clean(obj)
        with pytest.raises(ValueError, match=reason):
            jc_clean(obj)


def test_squash_unicode() -> None:
    for sample in ({"a": "1", "b": ["x", 2, {"c": "d"}]}, ["a", 1], "hi", 3):
        assert session.squash_unicode(copy.deepcopy(sample)) == jc_session.squash_unicode(
            copy.deepcopy(sample)
        )
    assert session.squash_unicode({"a": "1"}) == {b"a": b"1"}


# -- Session: traits, ids, Message, SessionFactory ---------------------------


def test_thresholds_and_adapt_version_traits() -> None:
    ours, theirs = _both(key=KEY)
    for name in ("buffer_threshold", "item_threshold", "copy_threshold", "adapt_version"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (ours.buffer_threshold, ours.item_threshold) == (session.MAX_BYTES, session.MAX_ITEMS)
    assert (session.MAX_BYTES, session.MAX_ITEMS) == (jc_session.MAX_BYTES, jc_session.MAX_ITEMS)
    config = Config({"Session": {"buffer_threshold": 10, "item_threshold": 3}})
    configured = Session(key=KEY, config=config)
    assert (configured.buffer_threshold, configured.item_threshold) == (10, 3)


def test_message_count_numbers_ids_and_clones_continue_it() -> None:
    ours, theirs = _both(key=KEY)
    assert ours.message_count == theirs.message_count == 0
    first, their_first = ours.msg_id, theirs.msg_id
    assert first.endswith(f"_{os.getpid()}_0") and their_first.endswith(f"_{os.getpid()}_0")
    assert ours.message_count == theirs.message_count == 1
    ours.message_count = 41
    assert ours.msg_id.endswith("_41")
    # A clone, or any Session given the same id, continues the numbering: no
    # id is made twice in this process (jupyter_client's clone starts at 0 again).
    clone, same_id = ours.clone(), Session(key=KEY, session=ours.session)
    ids = {s.msg_id for _ in range(3) for s in (ours, clone, same_id)}
    assert len(ids) == 9
    assert clone.message_count == ours.message_count == same_id.message_count == 51
    same_id.session = "another-id"
    assert same_id.message_count == 0 and same_id.msg_id.endswith("_0")


def test_message_ids_stay_unique_across_threads_and_clones() -> None:
    from concurrent.futures import ThreadPoolExecutor

    s = Session(key=KEY)
    sessions = [s, s.clone(), s, s.clone()]

    def mint(one: Session) -> list[str]:
        return [one.msg_id for _ in range(500)]

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(mint, sessions) for i in batch]
    assert len(set(ids)) == len(ids) == 2000
    assert s.message_count == 2000


def test_clone_keeps_the_serializer() -> None:
    s = Session(key=KEY, packer="pickle")
    clone = s.clone()
    assert (clone.packer, clone.unpacker) == ("pickle", "pickle")
    assert clone.pack is session.pickle_packer and clone.unpack is session.pickle_unpacker
    msg = s.msg("status", content={"t": session.utcnow()})
    assert clone.serialize(msg) == s.serialize(msg)


def test_unserialize_is_deprecated_deserialize() -> None:
    s = Session(key=KEY)
    rest = s.serialize(s.msg("status"))[1:]
    with pytest.warns(DeprecationWarning, match="Use Session.deserialize"):
        msg = s.unserialize(rest)
    assert msg["msg_type"] == "status"


def test_message_class() -> None:
    source = {"a": 1, "header": {"msg_id": "x", "deep": {"k": "v"}}}
    ours, theirs = Message(source), jc_session.Message(source)
    assert ours.a == 1 and ours["a"] == 1 and "a" in ours and "b" not in ours
    assert ours.header.deep.k == "v"
    assert isinstance(ours.header, Message)
    assert set(dict(ours)) == {"a", "header"}
    assert str(Message({"a": 1})) == str(jc_session.Message({"a": 1})) == "{'a': 1}"
    assert repr(ours) == repr(theirs)
    assert str(ours) == str(theirs)


def test_a_message_object_can_be_sent() -> None:
    s = Session(key=KEY)
    built = s.msg("execute_request", content={"code": "1"})
    sent = s.send(None, Message(built))
    assert sent is not None
    assert sent["header"] == built["header"] and sent["content"] == {"code": "1"}


def test_session_factory(no_warnings: None) -> None:
    factory = SessionFactory(key=KEY, signature_scheme="hmac-sha512", username="ana")
    try:
        assert isinstance(factory.session, Session)
        assert factory.session.key == KEY
        assert factory.session.signature_scheme == "hmac-sha512"
        assert factory.session.username == "ana"
        # A context of its own (destroying it leaves the shared one alone).
        assert isinstance(factory.context, zmq.Context)
        assert factory.context is not zmq.Context.instance()
        factory.logname = "kc.parity.factory"
        assert factory.log.name == "kc.parity.factory"
    finally:
        factory.context.destroy()
    given = Session(key=KEY)
    assert SessionFactory(session=given).session is given
    with pytest.raises(TraitError):
        SessionFactory(session="not a session")


def test_session_factory_loop_is_a_tornado_ioloop() -> None:
    from tornado.ioloop import IOLoop

    loop = IOLoop(make_current=False)
    try:
        assert SessionFactory(key=KEY, loop=loop).loop is loop
        with pytest.raises(TraitError, match="IOLoop"):
            SessionFactory(key=KEY, loop=object())
    finally:
        loop.close()


def test_session_factory_keeps_the_key_out_of_warnings() -> None:
    """jupyter_client's SessionFactory hands every argument to traitlets as well,
    which repeats the unknown ones, key included, in a DeprecationWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        factory = SessionFactory(key=KEY, no_such_setting=1)
    assert factory.session is not None and factory.session.key == KEY
    assert caught, "the unknown argument is still reported, as by traitlets"
    assert all(KEY.decode() not in str(w.message) for w in caught)


# -- protocol adaptation ------------------------------------------------------


def _v5(msg_type: str, content: dict[str, Any], **header: Any) -> dict[str, Any]:
    head = {"msg_id": "m1", "msg_type": msg_type, "username": "u", "session": "s"}
    head.update(version="5.3", date="2024-01-02T03:04:05.000006Z", **header)
    return {
        "header": head,
        "msg_id": "m1",
        "msg_type": msg_type,
        "parent_header": {"msg_id": "p0", "version": "5.3"},
        "metadata": {},
        "content": content,
    }


def _v4(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    msg = _v5(msg_type, content)
    del msg["header"]["version"]
    del msg["parent_header"]["version"]
    return msg


V5_MESSAGES = [
    _v5(
        "kernel_info_reply",
        {
            "status": "ok",
            "protocol_version": "5.3",
            "implementation": "ipython",
            "implementation_version": "8.1.0",
            "language_info": {"name": "python", "version": "3.11.4"},
        },
    ),
    _v5("execute_request", {"code": "1", "silent": False}),
    _v5("execute_reply", {"status": "ok", "execution_count": 1}),
    _v5("execute_reply", {"status": "error", "ename": "E"}),
    _v5("complete_request", {"code": "a = 1\nprint(a.re", "cursor_pos": 15}),
    _v5(
        "complete_reply",
        {"status": "ok", "matches": ["real"], "cursor_start": 14, "cursor_end": 16, "metadata": {}},
    ),
    _v5("inspect_request", {"code": "f(a, b(c), d", "cursor_pos": 12, "detail_level": 0}),
    _v5("inspect_reply", {"status": "ok", "found": True, "data": {}, "metadata": {}}),
    _v5("stream", {"name": "stdout", "text": "hi"}),
    _v5("display_data", {"data": {"application/json": {"a": 1}}, "metadata": {}}),
    _v5("execute_result", {"data": {"text/plain": "1"}, "execution_count": 1}),
    _v5("error", {"ename": "E", "evalue": "", "traceback": []}),
    _v5("input_request", {"prompt": "?", "password": True}),
    _v5("status", {"execution_state": "idle"}),
]

V4_MESSAGES = [
    _v4(
        "kernel_info_reply",
        {
            "protocol_version": [4, 1],
            "ipython_version": [2, 3, 0],
            "language": "python",
            "language_version": [3, 4, 1],
        },
    ),
    _v4("execute_request", {"code": "x", "user_variables": ["a", "b"]}),
    _v4(
        "execute_reply",
        {"status": "ok", "user_variables": {"a": 1}, "payload": [{"source": "page", "text": "p"}]},
    ),
    _v4("complete_request", {"line": "x.re", "cursor_pos": 4, "text": "re", "block": None}),
    _v4("complete_reply", {"matches": ["x.real"], "matched_text": "x.re"}),
    _v4("complete_reply", {"matches": ["a"], "matched_text": ""}),
    _v4("object_info_request", {"oname": "x.real", "detail_level": 1}),
    _v4(
        "object_info_reply",
        {"found": True, "definition": "f(a)", "docstring": "Doc.", "oname": "f"},
    ),
    _v4("object_info_reply", {"found": True, "oname": "f"}),
    _v4("stream", {"name": "stdout", "data": "hi"}),
    _v4("display_data", {"source": "x", "data": {"application/json": '{"a": 1}'}}),
    _v4("pyout", {"data": {}, "execution_count": 1}),
    _v4("pyerr", {"status": "error", "ename": "E"}),
    _v4("input_request", {"prompt": "?"}),
]


@pytest.mark.parametrize(
    ("msg", "to_version"),
    [(m, 4) for m in V5_MESSAGES] + [(m, 5) for m in V4_MESSAGES] + [(V5_MESSAGES[0], 5)],
    ids=lambda v: v["msg_type"] if isinstance(v, dict) else str(v),
)
def test_adapt_matches_jupyter_client(msg: dict[str, Any], to_version: int) -> None:
    ours = adapter.adapt(copy.deepcopy(msg), to_version)
    theirs = jc_adapter.adapt(copy.deepcopy(msg), to_version)
    assert ours == theirs
    assert json.dumps(ours, default=str) == json.dumps(theirs, default=str)  # key order too


def test_adapt_gives_a_date_and_leaves_same_version_alone() -> None:
    msg = _v5("status", {"execution_state": "busy"})
    del msg["header"]["date"]
    adapted = adapter.adapt(copy.deepcopy(msg))
    assert adapted["header"].pop("date").tzinfo is not None
    assert adapted == msg


@settings(max_examples=200, deadline=None)
@given(code=st.text(alphabet="ab_.(), \n1", max_size=30), cursor=st.integers(0, 35))
def test_code_to_line_and_oname_match_jupyter_client(code: str, cursor: int) -> None:
    assert adapter.code_to_line(code, cursor) == jc_adapter.code_to_line(code, cursor)
    assert adapter.extract_oname_v4(code, cursor) == jc_adapter.extract_oname_v4(code, cursor)


def test_send_adapts_to_adapt_version() -> None:
    ours, theirs = _both(key=KEY, adapt_version=4)
    msg = ours.msg("execute_result", content={"data": {"text/plain": "1"}, "execution_count": 1})
    sent_ours = ours.send(None, copy.deepcopy(msg))
    sent_theirs = theirs.send(None, copy.deepcopy(msg))
    assert sent_ours is not None and sent_theirs is not None
    assert sent_ours["msg_type"] == sent_ours["header"]["msg_type"] == "pyout"
    assert "version" not in sent_ours["header"]
    sent_ours.pop("tracker")
    sent_theirs.pop("tracker")
    assert sent_ours == sent_theirs


def test_received_version_4_messages_are_adapted_to_5() -> None:
    ours, theirs = _both(key=KEY, packer="json")
    v4 = _v4("stream", {"name": "stdout", "data": "hello"})
    parts = [theirs.pack(v4[k]) for k in ("header", "parent_header", "metadata", "content")]
    wire = [ours.sign(parts), *parts]
    got = ours.deserialize(wire)
    assert got["content"] == {"name": "stdout", "text": "hello"}
    assert got["header"]["version"] == got["parent_header"]["version"] == "5.0"
    assert got == theirs.deserialize(wire)
    # A peek (content left packed) is adapted too, as far as it can be.
    peek = Session(key=KEY).deserialize(wire, content=False)
    assert peek["header"]["version"] == "5.0" and isinstance(peek["content"], bytes)


# -- version names ------------------------------------------------------------


def test_protocol_and_version_names() -> None:
    assert kernel_connect.protocol_version == jupyter_client.protocol_version == "5.4"
    assert kernel_connect.protocol_version_info == jupyter_client.protocol_version_info
    assert kernel_connect.version_info == (0, 1, 0)
    assert ".".join(map(str, kernel_connect.version_info)) == kernel_connect.__version__
    s = Session(key=KEY)
    assert s.msg_header("status")["version"] == kernel_connect.protocol_version
    assert {"protocol_version", "protocol_version_info", "version_info"} <= set(
        kernel_connect.__all__
    )


def test_version_tuple_like_jupyter_clients() -> None:
    import re

    pattern = r"(?P<major>\d+).(?P<minor>\d+).(?P<patch>\d+)(?P<rest>.*)"
    for version in ("0.1.0", "8.10.0", "1.2.3rc1", "2.0.0.dev4", "10.20.30-x"):
        match = re.match(pattern, version)
        assert match is not None
        parts: list[int | str] = [int(match[p]) for p in ("major", "minor", "patch")]
        if match["rest"]:
            parts.append(match["rest"])
        assert kernel_connect._version_tuple(version) == tuple(parts), version


# -- connect: channel_socket_types ---------------------------------------------


def test_channel_socket_types_importable_and_lazy(python: str) -> None:
    from kernel_connect.connect import channel_socket_types

    assert channel_socket_types == jc_connect.channel_socket_types
    code = (
        "import sys, kernel_connect.connect as c; before = 'zmq' in sys.modules; "
        "t = c.channel_socket_types; print(before, 'zmq' in sys.modules, sorted(t))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    before, after, names = out.stdout.split(maxsplit=2)
    assert (before, after) == ("False", "True"), "zmq is imported on first use only"
    assert names.strip() == str(sorted(jc_connect.channel_socket_types))


# -- localinterfaces -------------------------------------------------------------


def test_local_interfaces_match_jupyter_client() -> None:
    assert localinterfaces.local_ips() == jc_local.local_ips()
    assert localinterfaces.public_ips() == jc_local.public_ips()
    assert localinterfaces.localhost() == jc_local.localhost()
    assert localinterfaces.LOCALHOST == jc_local.LOCALHOST
    assert localinterfaces.LOCAL_IPS == jc_local.LOCAL_IPS
    assert localinterfaces.PUBLIC_IPS == jc_local.PUBLIC_IPS
    assert "" in localinterfaces.local_ips() and "0.0.0.0" in localinterfaces.local_ips()
    for ip in jc_local.local_ips():
        assert localinterfaces.is_local_ip(ip) == jc_local.is_local_ip(ip), ip
        assert localinterfaces.is_public_ip(ip) == jc_local.is_public_ip(ip), ip
    assert issubclass(localinterfaces.NoIPAddresses, Exception)
    namespace: dict[str, Any] = {}
    exec("from kernel_connect.localinterfaces import *", namespace)  # noqa: S102
    assert {"LOCALHOST", "LOCAL_IPS", "PUBLIC_IPS", "NoIPAddresses"} <= set(namespace)


def test_local_ips_list_is_live() -> None:
    """LOCAL_IPS is one list kept up to date: what is added to it counts as local."""
    from kernel_connect.localinterfaces import LOCAL_IPS

    try:
        LOCAL_IPS.append("192.0.2.123")
        assert localinterfaces.is_local_ip("192.0.2.123")
        assert "192.0.2.123" in localinterfaces.local_ips()
    finally:
        localinterfaces.local_ips(refresh=True)
    assert localinterfaces.LOCAL_IPS is LOCAL_IPS
    assert not localinterfaces.is_local_ip("192.0.2.123")


#: Run in a network namespace of its own (`unshare --net`): the addresses it
#: names are not this host's, so nothing may ever be able to reach them.
_ADDRESS_RULES = """
import pytest
from kernel_connect import localinterfaces
localinterfaces.local_ips()  # loaded first: a later access must not reload over _populate
localinterfaces._populate(["10.1.2.3", "127.0.0.1", "169.254.9.9", "127.0.1.1"])
assert localinterfaces.LOCAL_IPS == [
    "127.0.0.1", "10.1.2.3", "169.254.9.9", "127.0.1.1", "0.0.0.0", "",
], localinterfaces.LOCAL_IPS
assert localinterfaces.PUBLIC_IPS == ["10.1.2.3"], localinterfaces.PUBLIC_IPS
assert localinterfaces.LOCALHOST == "127.0.0.1"
with pytest.raises(localinterfaces.NoIPAddresses):
    localinterfaces._populate([])
print("ok")
"""


def test_address_rules_are_jupyter_clients() -> None:
    """Interface order kept, 127.0.0.1 first, link-local never public, '' and
    0.0.0.0 local; no address at all is NoIPAddresses."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace (root needed): {probe.stderr.strip()}")
    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", _ADDRESS_RULES],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# -- validate_string_dict ------------------------------------------------------


def test_validate_string_dict_as_jupyter_client() -> None:
    from jupyter_client.client import validate_string_dict as jc_validate

    validate_string_dict({"a": "b"})
    for bad in ({1: "b"}, {"a": 2}):
        with pytest.raises(ValueError, match="must be a string") as ours:
            validate_string_dict(bad)
        with pytest.raises(ValueError, match="must be a string") as theirs:
            jc_validate(bad)
        assert str(ours.value) == str(theirs.value)


# -- ConnectionFileMixin -------------------------------------------------------


def test_mixin_data_dir_trait(no_warnings: None, tmp_path: Path) -> None:
    from jupyter_core.paths import jupyter_data_dir

    assert ConnectionFileMixin(data_dir=str(tmp_path)).data_dir == str(tmp_path)
    assert ConnectionFileMixin().data_dir == jupyter_data_dir()
    assert ConnectionFileMixin().data_dir == jc_connect.ConnectionFileMixin().data_dir


def test_write_connection_file_takes_connection_parameters(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-params.json"
    m = ConnectionFileMixin(connection_file=str(conn))
    m.write_connection_file(
        shell_port=54001,
        ip="127.0.0.1",
        key=b"file-key",
        signature_scheme="hmac-sha512",
        kernel_name="python3",
        extra_field="kept",
    )
    on_disk = json.loads(conn.read_text())
    assert on_disk["shell_port"] == m.shell_port == 54001
    assert on_disk["key"] == "file-key" and m.session.key == b"file-key"
    assert on_disk["signature_scheme"] == m.session.signature_scheme == "hmac-sha512"
    assert on_disk["kernel_name"] == m.kernel_name == "python3"
    assert on_disk["extra_field"] == "kept"
    others = [m.iopub_port, m.stdin_port, m.hb_port, m.control_port]
    assert all(ports_held(others)), "ports left at 0 are still reserved"
    assert m.get_connection_info()["shell_port"] == 54001
    public, secret = zmq.curve_keypair()
    m.write_connection_file(curve_publickey=public.decode(), curve_secretkey=secret)
    on_disk = json.loads(conn.read_text())
    assert on_disk["curve_publickey"] == public.decode() and m.curve_publickey == public
    assert on_disk["curve_secretkey"] == secret.decode() and m.curve_secretkey == secret
    assert on_disk["shell_port"] == 54001 and "extra_field" not in on_disk
    m.cleanup_random_ports()
    assert m.shell_port == 54001, "a given port is not a random one"
    assert not any(ports_held(others))


def test_write_connection_file_rewrites_only_on_change(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-rewrite.json"
    m = ConnectionFileMixin(connection_file=str(conn))
    m.write_connection_file()
    first = conn.stat().st_ino
    m.write_connection_file(ip=m.ip, shell_port=m.shell_port)  # nothing changes
    assert conn.stat().st_ino == first
    m.write_connection_file(hb_port=54099)
    assert conn.stat().st_ino != first, "written anew (atomically)"
    assert json.loads(conn.read_text())["hb_port"] == m.hb_port == 54099
    moved = tmp_path / "kernel-moved.json"
    m.write_connection_file(fname=str(moved))
    assert m.connection_file == str(moved) and moved.exists()
    assert not conn.exists(), "the file written before is removed"
    m.cleanup_random_ports()
    assert not moved.exists()


def test_refused_parameters_leave_the_object_as_it_was(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-refused.json"
    m = ConnectionFileMixin(connection_file=str(conn))
    before = (m.ip, m.ports, m.session.key, m.kernel_name)
    with pytest.raises(ConnectionFileError) as caught:
        m.write_connection_file(shell_port=70000, key=b"never-shown-key", kernel_name="k")
    assert "never-shown-key" not in str(caught.value)
    assert (m.ip, m.ports, m.session.key, m.kernel_name) == before
    assert not conn.exists()
    with pytest.raises(TraitError):
        m.write_connection_file(ip="127.0.0.1", shell_port="not a port")
    assert (m.ip, m.ports) == before[:2]
