"""Connection files: exact bytes, round trips, privacy, atomicity, validation."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jupyter_client.connect as jc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_connect import ConnectionFileError, _native, read_connection_file, write_connection_file
from kernel_connect.connect import LocalPortCache

PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

port = st.integers(min_value=1, max_value=65535)
text = st.text(max_size=30)
# Any Python str, lone surrogates included: json.dumps writes each as a \udXXX
# escape and json.loads reads it back, so connection files can carry them.
# (Drawn as lists of characters: st.text would weigh the 2,048 surrogates by
# their share of all code points and almost never draw one.)
any_char = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


def any_text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(any_char, min_size=min_size, max_size=max_size).map("".join)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | any_text(30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text(30), inner, max_size=4),
    max_leaves=12,
)
extra_names = any_text(12, min_size=1).filter(
    lambda k: (
        k
        not in {
            *PORTS,
            "ip",
            "key",
            "transport",
            "signature_scheme",
            "kernel_name",
            "fname",
            "curve_publickey",
            "curve_secretkey",
        }
    )
)
extras = st.dictionaries(extra_names, json_values, max_size=4)
schemes = st.sampled_from(["hmac-sha256", "hmac-sha1", "hmac-md5", "hmac-sha512", "hmac-sha3_256"])


@st.composite
def connection_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """write_connection_file keyword arguments: explicit ports, any strings, a
    digest jupyter_client accepts, and extra keys with nested JSON values."""
    ports = draw(st.lists(port, min_size=5, max_size=5))
    return {
        **dict(zip(PORTS, ports, strict=True)),
        "ip": draw(text.filter(bool)),
        "key": draw(text).encode(),
        "signature_scheme": draw(schemes),
        "kernel_name": draw(text),
        **draw(extras),
    }


@SETTINGS
@given(kwargs=connection_kwargs())
def test_bytes_identical_to_jupyter_client(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    ours, _ = write_connection_file(str(tmp_path / "ours.json"), **kwargs)
    theirs, _ = jc.write_connection_file(str(tmp_path / "theirs.json"), **kwargs)
    assert Path(ours).read_bytes() == Path(theirs).read_bytes()


@SETTINGS
@given(kwargs=connection_kwargs())
def test_round_trip(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    fname, info = write_connection_file(str(tmp_path / "k.json"), **kwargs)
    # What Python's own json makes of it: `info` itself, except that a high and
    # a low surrogate side by side ("\ud800\udc00") come back as one code point.
    expected = json.loads(json.dumps(info))
    ours = read_connection_file(fname)
    assert ours == expected
    assert list(ours) == list(expected)
    assert json.loads(Path(fname).read_text()) == expected


@SETTINGS
@given(extra=extras, public=st.none() | st.just(b"P" * 40), secret=st.none() | st.just(b"S" * 40))
def test_format_matches_json_dumps(
    extra: dict[str, Any], public: bytes | None, secret: bytes | None
) -> None:
    cfg: dict[str, Any] = dict(zip(PORTS, [1, 2, 3, 4, 5], strict=True))
    cfg.update(
        ip="127.0.0.1",
        key="k",
        transport="tcp",
        signature_scheme="hmac-sha256",
        kernel_name="python3",
    )
    if public is not None:
        cfg["curve_publickey"] = public.decode()
    if secret is not None:
        cfg["curve_secretkey"] = secret.decode()
    cfg.update(extra)
    rendered = _native.format_connection_info(
        [1, 2, 3, 4, 5],
        "127.0.0.1",
        "k",
        "tcp",
        "hmac-sha256",
        "python3",
        None if public is None else public.decode(),
        None if secret is None else secret.decode(),
        extra,
    )
    assert rendered == json.dumps(cfg, indent=2)


def test_special_floats_and_keys_match_json_dumps() -> None:
    extra: dict[Any, Any] = {
        "nan": math.nan,
        "inf": [math.inf, -math.inf],
        "tiny": 5e-324,
        "nested": {7: "int key", 2.5: "float key", True: "bool", None: 0},
    }
    rendered = _native.format_connection_info(
        [1, 2, 3, 4, 5], "127.0.0.1", "", "tcp", "hmac-sha256", "", extra=extra
    )
    cfg: dict[Any, Any] = dict(zip(PORTS, [1, 2, 3, 4, 5], strict=True))
    cfg.update(
        ip="127.0.0.1", key="", transport="tcp", signature_scheme="hmac-sha256", kernel_name=""
    )
    cfg.update(extra)
    assert rendered == json.dumps(cfg, indent=2)


def test_unserializable_extra_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_connection_file(
            str(tmp_path / "k.json"),
            shell_port=1,
            iopub_port=2,
            stdin_port=3,
            hb_port=4,
            control_port=5,
            weird=object(),
        )
    assert not (tmp_path / "k.json").exists()


def test_auto_ports_are_distinct_reserved_and_bindable(tmp_path: Path) -> None:
    import socket

    _fname, info = write_connection_file(str(tmp_path / "k.json"))
    ports = [info[name] for name in PORTS]
    assert len(set(ports)) == 5
    table = LocalPortCache.instance().table
    assert all(table.holds(p) for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
    LocalPortCache.instance().return_ports(ports)
    assert not any(table.holds(p) for p in ports)


def test_curve_keys_are_written(tmp_path: Path) -> None:
    fname, _info = write_connection_file(
        str(tmp_path / "k.json"),
        1,
        2,
        3,
        4,
        5,
        curve_publickey=b"pub" * 10,
        curve_secretkey=b"sec" * 10,
    )
    data = read_connection_file(fname)
    assert data["curve_publickey"] == "pub" * 10
    assert data["curve_secretkey"] == "sec" * 10
    assert list(data)[-2:] == ["curve_publickey", "curve_secretkey"]


def test_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fname, _ = write_connection_file(str(tmp_path / "k.json"), key=b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fname).st_mode) == 0o600
    assert os.stat(tmp_path).st_mode & stat.S_ISVTX, "runtime dir gets the sticky bit"
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"], "no temp file left behind"


def test_fname_none_makes_a_new_temp_file() -> None:
    fname, info = write_connection_file(key=b"k")
    try:
        assert fname.endswith(".json")
        assert read_connection_file(fname) == info
        assert stat.S_IMODE(os.stat(fname).st_mode) == 0o600
    finally:
        os.unlink(fname)


def test_symlink_at_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "k.json"
    link.symlink_to(victim)
    write_connection_file(str(link), 1, 2, 3, 4, 5, key=b"secret")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink()


def test_ipc_picks_paths_that_do_not_exist(tmp_path: Path) -> None:
    base = tmp_path / "kernel-ipc"
    for n in (1, 2, 4):
        Path(f"{base}-{n}").touch()
    _, info = write_connection_file(str(tmp_path / "k.json"), ip=str(base), transport="ipc")
    assert [info[name] for name in PORTS] == [3, 5, 6, 7, 8]


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "kernel-live.json"
    stop = tmp_path / "stop"
    write_connection_file(str(target), 1, 2, 3, 4, 5, key=b"k", padding="x" * 20000)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import json, os
            reads = bad = 0
            print("reading", flush=True)
            while not os.path.exists({str(stop)!r}) and reads < 500_000:
                try:
                    with open({str(target)!r}) as f:
                        json.load(f)
                except (ValueError, FileNotFoundError):
                    bad += 1
                reads += 1
            print(reads, bad)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "reading"
    # At least 400 rewrites, and for at least half a second, however fast they are.
    started, i = time.monotonic(), 0
    while i < 20_000 and (i < 400 or time.monotonic() - started < 0.5):
        write_connection_file(
            str(target), 1, 2, 3, 4, 5, key=b"k", padding="y" * (i % 7 * 5000 + 1)
        )
        i += 1
    stop.touch()
    out, _ = reader.communicate(timeout=60)
    reads, bad = map(int, out.split())
    assert reads > 100, "the reader must have raced the writer"
    assert bad == 0


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    """A write cut short (here by a file-size limit, as a full disk would) raises
    and leaves the previous file intact."""
    target = tmp_path / "k.json"
    write_connection_file(str(target), 1, 2, 3, 4, 5, key=b"old")
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
        from kernel_connect import write_connection_file
        try:
            write_connection_file({str(target)!r}, 1, 2, 3, 4, 5, key=b"new", pad="z" * 4096)
        except OSError as e:
            print("OSError", e.errno, str(e))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("OSError"), out
    assert str(target) in out
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json"]


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "k.json"
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        write_connection_file(str(missing), 1, 2, 3, 4, 5)


def test_failed_write_returns_its_reserved_ports(tmp_path: Path) -> None:
    table = LocalPortCache.instance().table
    before = {p for p, *_ in table.held()}
    with pytest.raises(FileNotFoundError, match="missing"):
        write_connection_file(str(tmp_path / "missing" / "k.json"))
    assert {p for p, *_ in table.held()} == before


@pytest.mark.parametrize(
    ("content", "field", "needle"),
    [
        ("", None, "empty"),
        ('{"shell_port": 1, "key": "', None, "truncated"),
        ("not json at all", None, "not valid JSON"),
        ("[1, 2, 3]", None, "JSON object"),
        ('{"shell_port": 70000}', "shell_port", "out of range"),
        ('{"iopub_port": -1}', "iopub_port", "out of range"),
        ('{"stdin_port": "80"}', "stdin_port", "integer"),
        ('{"hb_port": 1.0}', "hb_port", "integer"),
        ('{"control_port": true}', "control_port", "integer"),
        ('{"transport": "udp"}', "transport", "udp"),
        ('{"signature_scheme": "hmac-nosuchdigest"}', "signature_scheme", "nosuchdigest"),
        ('{"signature_scheme": "sha256"}', "signature_scheme", "hmac-"),
        ('{"ip": 127}', "ip", "string"),
        ('{"key": ["x"]}', "key", "string"),
        ('{"kernel_name": null}', "kernel_name", "string"),
    ],
)
def test_invalid_files_name_file_and_field(
    tmp_path: Path, content: str, field: str | None, needle: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConnectionFileError) as caught:
        read_connection_file(path)
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert err.path == str(path)
    assert str(path) in str(err)
    assert needle in str(err)


@SETTINGS
@given(
    key=st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=30).map(
        lambda k: f"kc-secret-{k}"
    ),
    bad=st.sampled_from(
        [
            ("shell_port", "70000"),
            ("transport", '"zmtp"'),
            ("signature_scheme", '"hmac-xyz"'),
            ("hb_port", '"x"'),
            ("kernel_name", "[]"),
            ("curve_secretkey", "1"),
        ]
    ),
)
def test_errors_never_echo_the_key(tmp_path: Path, key: str, bad: tuple[str, str]) -> None:
    field, value = bad
    path = tmp_path / "bad.json"
    path.write_text(f'{{"key": {json.dumps(key)}, "{field}": {value}}}')
    with pytest.raises(ConnectionFileError) as caught:
        read_connection_file(path)
    assert caught.value.field == field
    message = str(caught.value) + repr(caught.value)
    assert key not in message
    assert json.dumps(key) not in message


def test_write_rejects_bad_transport_and_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFileError, match="transport"):
        write_connection_file(str(tmp_path / "a.json"), transport="udp")
    with pytest.raises(ConnectionFileError, match="signature_scheme") as caught:
        write_connection_file(str(tmp_path / "b.json"), 1, 2, 3, 4, 5, signature_scheme="hmac-nope")
    assert caught.value.field == "signature_scheme"
    with pytest.raises(ConnectionFileError, match="shell_port") as caught:
        write_connection_file(str(tmp_path / "c.json"), shell_port=70000)
    assert caught.value.field == "shell_port"
    assert list(tmp_path.iterdir()) == []


def test_every_hashlib_digest_jupyter_accepts_is_accepted() -> None:
    import hashlib
    import hmac

    usable = set()
    for name in hashlib.algorithms_guaranteed:
        try:
            hmac.new(b"k", digestmod=getattr(hashlib, name)).hexdigest()
        except (AttributeError, TypeError, ValueError):
            continue
        usable.add(name)
    assert set(_native.signature_digests()) == usable
    for name in usable:
        _native.parse_connection_info(json.dumps({"signature_scheme": f"hmac-{name}"}))


special_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    # Python reads at most 4300 digits (sys.get_int_max_str_digits()).
    | st.integers(min_value=4290, max_value=4300).map(lambda n: 10**n - 1)
    | st.floats()  # NaN and the infinities included: json.dumps writes them
    | any_text(20)
)
json_with_specials = st.recursive(
    special_scalars
    # Objects with many keys, as leaves so that max_leaves does not starve them.
    | st.dictionaries(
        st.integers(0, 10**6).map(str) | any_text(3),
        special_scalars,
        min_size=20,
        max_size=200,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text(8), inner, max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(value=json_with_specials, indent=st.sampled_from([None, 0, 2]))
def test_reader_agrees_with_json_loads(value: Any, indent: int | None) -> None:
    text = json.dumps({"extra": value}, indent=indent)
    ours = _native.parse_connection_info(text)
    # Compare through json.dumps so that NaN == NaN.
    assert json.dumps(ours) == json.dumps(json.loads(text))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='{}[]":,0123456789.eE+-tfnaulrsINy \n\\ubcdD', max_size=24))
def test_reader_rejects_exactly_what_json_loads_rejects(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        expected = ValueError
    if expected is not ValueError and not isinstance(expected, dict):
        expected = ValueError  # valid JSON, but a connection file must be an object
    if isinstance(expected, dict):
        refused: ConnectionFileError | None = None
        try:
            ours = _native.parse_connection_info(text)
        except ConnectionFileError as err:
            refused = err
        if refused is not None:
            # Valid JSON may only be refused for a standard field's value.
            assert refused.field is not None, refused
        else:
            assert json.dumps(ours) == json.dumps(expected)
    else:
        with pytest.raises(ConnectionFileError):
            _native.parse_connection_info(text)


# Raw JSON text that json.dumps never writes: repeated keys, escapes of lone
# surrogates and of pairs, \u escapes that are not four hex digits, integers on
# both sides of Python's 4300-digit limit.
string_escapes = st.sampled_from(
    [
        "\\ud800",
        "\\udbff",
        "\\udc00",
        "\\udfff",
        "\\ud83d\\ude00",
        "\\ude00\\ud83d",
        "\\ud800\\ud800",
        "\\ud800\\u0041",
        "\\u00e9",
        "\\u00AF",
        "\\n",
        "\\/",
        "\\u+041",
        "\\u-041",
        "\\u 041",
        "\\u041",
        "\\ud800\\u+c00",
        "\\ud800\\uzzzz",
        "\\x41",
    ]
)
raw_strings = st.lists(
    string_escapes | st.lists(any_char.filter(lambda c: c not in '"\\'), max_size=3).map("".join),
    max_size=4,
).map(lambda parts: '"' + "".join(parts) + '"')
raw_ints = st.builds(
    lambda sign, digits: sign + "1" * digits,
    st.sampled_from(["", "-"]),
    st.integers(1, 20) | st.integers(4295, 4305),
)
raw_scalars = (
    raw_strings | raw_ints | st.sampled_from(["null", "true", "NaN", "-Infinity", "1.5e3"])
)
raw_keys = raw_strings | st.sampled_from(['"a"', '"b"', '"\\u0061"', '"\\ud800"', '"\\udc00"'])


@st.composite
def raw_objects(draw: st.DrawFn) -> str:
    entries = draw(st.lists(st.tuples(raw_keys, raw_scalars | raw_objects()), max_size=6))
    return "{" + ", ".join(f"{key}: {value}" for key, value in entries) + "}"


@settings(max_examples=400, deadline=None)
@given(text=raw_objects())
def test_reader_agrees_with_json_loads_on_raw_text(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:  # JSONDecodeError, or more digits than int() reads
        with pytest.raises(ConnectionFileError) as caught:
            _native.parse_connection_info(text)
        assert len(str(caught.value)) < 200
        return
    assert json.dumps(_native.parse_connection_info(text)) == json.dumps(expected)


# Direct tests of the reader's bounds (issue 9).


def _best_of(runs: int, fn: Any) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_many_distinct_keys_read_in_linear_time(tmp_path: Path) -> None:
    # 100,000 keys in 0.99 MB: under the size bound, and 7 s for a reader that
    # searches the keys read so far for each new one.
    text = json.dumps(dict.fromkeys(map(str, range(100_000)), 0), separators=(",", ":"))
    assert len(text) < _native.MAX_CONNECTION_FILE_BYTES
    path = tmp_path / "keys.json"
    path.write_text(text)
    assert read_connection_file(path) == json.loads(text)
    theirs = _best_of(3, lambda: json.loads(text))
    ours = _best_of(3, lambda: read_connection_file(path))
    # A generous factor: linear readers differ by a small constant, a
    # quadratic one by hundreds.
    assert ours < 25 * theirs + 0.1, (ours, theirs)


def test_duplicate_keys_keep_first_position_and_last_value() -> None:
    text = '{"x": 1, "y": 2, "x": 3, "\\u0078": 4, "z": 5, "y": 6}'
    ours = _native.parse_connection_info(text)
    assert list(ours.items()) == list(json.loads(text).items()) == [("x", 4), ("y", 6), ("z", 5)]


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    bound = _native.MAX_CONNECTION_FILE_BYTES
    assert bound == 1 << 20
    # 2 MiB of distinct keys (slow for a quadratic reader), broken at the end:
    # the size is refused before any of it is parsed.
    entries = []
    size = 0
    i = 0
    while size < 2 * bound:
        entry = f'"{i}":{i},'
        entries.append(entry)
        size += len(entry)
        i += 1
    path = tmp_path / "big.json"
    path.write_text("{" + "".join(entries) + "broken")
    total = path.stat().st_size
    with pytest.raises(ConnectionFileError) as caught:
        read_connection_file(path)
    message = str(caught.value)
    assert f"{total} bytes" in message
    assert "not valid JSON" not in message
    assert caught.value.path == str(path)
    assert len(message) < 200 + len(str(path))

    # Sparse: 64 MiB that would all be read before a parser saw its first byte.
    sparse = tmp_path / "sparse.json"
    with sparse.open("wb") as f:
        f.truncate(64 << 20)
    with pytest.raises(ConnectionFileError, match=f"{64 << 20} bytes"):
        read_connection_file(sparse)

    # Text handed over from Python is held to the same bound.
    text = json.dumps({"extra": "x" * (2 * bound)})
    with pytest.raises(ConnectionFileError, match=f"{len(text)} bytes"):
        _native.parse_connection_info(text)
    at_bound = json.dumps({"extra": "x" * (bound - 13)})
    assert len(at_bound) == bound
    assert _native.parse_connection_info(at_bound) == json.loads(at_bound)


def test_huge_port_gives_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "port.json"
    path.write_text('{"shell_port": ' + "1" * 10**7 + "}")
    with pytest.raises(ConnectionFileError) as caught:
        read_connection_file(path)
    assert len(str(caught.value)) < 200 + len(str(path))
    # Within the size bound: a port of 4,300 digits (the most Python reads).
    with pytest.raises(ConnectionFileError) as caught:
        _native.parse_connection_info('{"shell_port": ' + "1" * 4300 + "}")
    assert caught.value.field == "shell_port"
    assert "(4300 digits)" in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("escape", ["\\u+041", "\\u-041", "\\u 041", "\\u004", "\\ud800\\u+c00"])
def test_unicode_escapes_need_four_hex_digits(escape: str) -> None:
    text = '{"a": "' + escape + '"}'
    with pytest.raises(ValueError, match="Invalid"):
        json.loads(text)
    with pytest.raises(ConnectionFileError, match="escape"):
        _native.parse_connection_info(text)


def test_lone_surrogates_are_read_and_round_trip(tmp_path: Path) -> None:
    text = '{"a": "\\ud800", "\\udc00k": ["x\\udfff\\ud83d\\ude00", "\\ud800\\u0041"]}'
    expected = json.loads(text)
    assert expected == {"a": "\ud800", "\udc00k": ["x\udfff\U0001f600", "\ud800A"]}
    assert _native.parse_connection_info(text) == expected
    # Literal surrogates in the text, as json.loads also takes them.
    literal = '{"a": "\ud800", "\udc00": 1}'
    assert _native.parse_connection_info(literal) == json.loads(literal)
    # Written back exactly as json.dumps writes them, and read again.
    fname, info = write_connection_file(str(tmp_path / "k.json"), **expected)
    written = Path(fname).read_text()
    assert '"a": "\\ud800"' in written
    assert '"\\udc00k": [\n    "x\\udfff\\ud83d\\ude00"' in written
    assert read_connection_file(fname) == info
    assert {k: info[k] for k in expected} == expected


@pytest.mark.parametrize("digits", [4301, 5000])
def test_integers_beyond_pythons_limit_are_connection_file_errors(digits: int) -> None:
    text = '{"extra": [1, -' + "7" * digits + "]}"
    with pytest.raises(ValueError, match="4300"):
        json.loads(text)
    with pytest.raises(ConnectionFileError) as caught:
        _native.parse_connection_info(text)
    assert f"{digits} digits" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_a_lower_interpreter_int_limit_is_a_connection_file_error(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text('{"extra": ' + "7" * 1000 + "}")
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        with pytest.raises(ValueError, match="640"):
            json.loads(path.read_text())
        with pytest.raises(ConnectionFileError, match="1000 digits") as caught:
            read_connection_file(path)
        assert caught.value.path == str(path)
    finally:
        sys.set_int_max_str_digits(before)
