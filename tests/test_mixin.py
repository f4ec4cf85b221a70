"""ConnectionFileMixin without a kernel: traits, files, reserved ports, sockets, CurveZMQ."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zmq
from traitlets import TraitError

from kernel_connect.connect import ConnectionFileError
from kernel_connect.mixin import ConnectionFileMixin
from kernel_connect.session import Session
from kernel_fixtures import file_mode, ports_held


def test_defaults_and_ip_rules(tmp_path: Path) -> None:
    m = ConnectionFileMixin()
    assert m.transport == "tcp" and m.ip == "127.0.0.1"
    assert m.ports == [0, 0, 0, 0, 0]
    assert isinstance(m.session, Session)
    m.ip = "*"
    assert m.ip == "0.0.0.0"
    m2 = ConnectionFileMixin(transport="IPC", connection_file=str(tmp_path / "kernel-7.json"))
    assert m2.transport == "ipc"
    assert m2.ip == str(tmp_path / "kernel-7-ipc")
    with pytest.raises(TraitError):
        ConnectionFileMixin(transport="udp")


def test_write_reserves_ports_and_cleanup_returns_them(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-w.json"
    m = ConnectionFileMixin(connection_file=str(conn), shell_port=0)
    m.write_connection_file()
    assert conn.exists() and file_mode(conn) == 0o600
    ports = m.ports
    assert all(p > 0 for p in ports) and len(set(ports)) == 5
    assert all(ports_held(ports))
    on_disk = json.loads(conn.read_text())
    assert on_disk["key"].encode() == m.session.key
    for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"):
        assert on_disk[name] == getattr(m, name)
    m.write_connection_file()  # already written: same file, same ports
    assert m.ports == ports
    m.cleanup_random_ports()
    assert not conn.exists()
    assert m.ports == [0, 0, 0, 0, 0]
    assert not any(ports_held(ports))


def test_explicit_ports_are_kept_and_not_returned(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-e.json"
    m = ConnectionFileMixin(connection_file=str(conn), hb_port=54321)
    m.write_connection_file()
    assert m.hb_port == 54321
    m.cleanup_random_ports()
    assert m.hb_port == 54321 and m.shell_port == 0
    assert not conn.exists()


def test_load_file_and_info_roundtrip(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-l.json"
    writer = ConnectionFileMixin(connection_file=str(conn))
    writer.session.signature_scheme = "hmac-sha512"
    writer.curve_publickey, writer.curve_secretkey = zmq.curve_keypair()
    writer.write_connection_file()
    reader = ConnectionFileMixin()
    reader.load_connection_file(str(conn))
    assert reader.get_connection_info() == writer.get_connection_info()
    assert reader.session.signature_scheme == "hmac-sha512"
    assert reader.curve_publickey == writer.curve_publickey
    # Loading does not make the file ours: cleanup leaves it alone.
    reader.cleanup_connection_file()
    assert conn.exists()
    writer.cleanup_random_ports()
    assert not conn.exists()


def test_config_ports_win_over_loaded_ones() -> None:
    m = ConnectionFileMixin(shell_port=1111)
    m.load_connection_info({"shell_port": 2222, "iopub_port": 3333, "key": "k"})
    assert (m.shell_port, m.iopub_port, m.session.key) == (1111, 3333, b"k")


def test_bad_file_is_a_clear_error_without_the_key(tmp_path: Path) -> None:
    conn = tmp_path / "kernel-bad.json"
    conn.write_text(json.dumps({"shell_port": "x", "key": "sekrit-value"}))
    with pytest.raises(ConnectionFileError) as info:
        ConnectionFileMixin().load_connection_file(str(conn))
    assert "sekrit-value" not in str(info.value)


def test_connect_sockets_have_the_right_types_and_linger() -> None:
    m = ConnectionFileMixin()
    m.load_connection_info(
        {"shell_port": 40001, "iopub_port": 40002, "stdin_port": 40003, "hb_port": 40004}
    )
    m.control_port = 40005
    expected = {
        "shell": zmq.DEALER,
        "iopub": zmq.SUB,
        "stdin": zmq.DEALER,
        "hb": zmq.REQ,
        "control": zmq.DEALER,
    }
    for channel, kind in expected.items():
        sock = getattr(m, f"connect_{channel}")(identity=b"me")
        try:
            assert sock.type == kind
            assert sock.linger == 1000
            assert sock.identity == b"me"
            assert sock.last_endpoint.decode().endswith(f":{getattr(m, f'{channel}_port')}")
        finally:
            sock.close(0)


def test_curve_keys_are_applied_to_client_sockets() -> None:
    m = ConnectionFileMixin()
    public, secret = zmq.curve_keypair()
    m.load_connection_info(
        {
            "shell_port": 40011,
            "curve_publickey": public.decode(),
            "curve_secretkey": secret.decode(),
        }
    )
    sock = m.connect_shell()
    try:
        # The keys are write-only in libzmq; the mechanism shows they were set,
        # and the encrypted-kernel test shows they are the right ones.
        assert sock.mechanism == zmq.CURVE
        assert not sock.curve_server
    finally:
        sock.close(0)
    info = m.get_connection_info()
    assert info["curve_publickey"] == public.decode()


def test_ipc_cleanup_removes_socket_files(tmp_path: Path) -> None:
    m = ConnectionFileMixin(transport="ipc", connection_file=str(tmp_path / "kernel-i.json"))
    m.write_connection_file()
    paths = [f"{m.ip}-{p}" for p in m.ports]
    for p in paths:
        Path(p).touch()
    m.cleanup_ipc_files()
    assert not any(os.path.exists(p) for p in paths)
    m.cleanup_connection_file()
    assert not (tmp_path / "kernel-i.json").exists()


def test_load_connection_info_uses_the_one_validator() -> None:
    """Info a connection file could not hold is refused as the file would be,
    and nothing of it is loaded (it used to go straight into the traits)."""
    from kernel_connect import ConnectionFileError
    from kernel_connect.mixin import ConnectionFileMixin

    mixin = ConnectionFileMixin()
    before = mixin.get_connection_info()
    for bad, field in [
        ({"transport": "udp", "shell_port": 5}, "transport"),
        ({"shell_port": 70000}, "shell_port"),
        ({"hb_port": "80"}, "hb_port"),
        ({"signature_scheme": "hmac-nosuchhash"}, "signature_scheme"),
    ]:
        with pytest.raises(ConnectionFileError) as err:
            mixin.load_connection_info(bad)
        assert err.value.field == field
        assert mixin.get_connection_info() == before
