"""BlockingKernelClient against a real ipykernel: requests, replies, output, stdin, heartbeat."""

from __future__ import annotations

import os
from queue import Empty
from typing import Any

import pytest

from kernel_connect.client import BlockingKernelClient
from kernel_fixtures import (
    pid_alive,
    result_text,
    run_code,
    start_ready_kernel,
    stop_kernel,
    stream_text,
    wait_until,
)

pytestmark = pytest.mark.kernel


def _reply(kc: BlockingKernelClient, msg_id: str) -> dict[str, Any]:
    return kc._recv_reply(msg_id, timeout=30)


def test_wait_for_ready_recorded_kernel_info(kernel: tuple) -> None:
    _, kc = kernel
    assert kc.kernel_info_reply is not None
    assert kc.kernel_info_reply["content"]["language_info"]["name"] == "python"
    # No leftovers of the readiness handshake are waiting on shell.
    with pytest.raises(Empty):
        kc.get_shell_msg(timeout=0.2)


def test_execute_returns_msg_id_and_reply_and_output_follow(kernel: tuple) -> None:
    _, kc = kernel
    msg_id = kc.execute("print('hi there'); 40 + 2")
    assert isinstance(msg_id, str)
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    seen: list[dict[str, Any]] = []
    while not any(
        m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in seen
    ):
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id:
            seen.append(msg)
    assert stream_text(seen) == "hi there\n"
    assert result_text(seen) == "42"


def test_execute_interactive_forwards_output_and_errors(kernel: tuple) -> None:
    _, kc = kernel
    reply, outputs = run_code(kc, "import sys; print('out'); print('err', file=sys.stderr); 'r'")
    assert reply["content"]["status"] == "ok"
    assert stream_text(outputs) == "out\n"
    assert stream_text(outputs, "stderr") == "err\n"
    assert result_text(outputs) == "'r'"
    reply, outputs = run_code(kc, "1/0")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert any(m["msg_type"] == "error" for m in outputs)


def test_execute_interactive_default_hook_prints(
    kernel: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    _, kc = kernel
    reply = kc.execute_interactive("print('printed by hook'); 7", timeout=30)
    assert reply["content"]["status"] == "ok"
    assert capsys.readouterr().out == "printed by hook\n7\n"


def test_execute_interactive_times_out(kernel: tuple) -> None:
    km, kc = kernel
    with pytest.raises(TimeoutError):
        kc.execute_interactive(
            "import time; time.sleep(3)", timeout=0.3, output_hook=lambda m: None
        )
    km.interrupt_kernel()
    # The interrupted request still replies; drain it so later tests start clean.
    assert wait_until(lambda: kc.shell_channel.msg_ready(), 10)
    kc.get_shell_msg(timeout=1)


def test_input_answers_stdin_requests(kernel: tuple) -> None:
    _, kc = kernel
    prompts: list[str] = []

    def answer(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"]["prompt"])
        kc.input("Ada")

    reply = kc.execute_interactive(
        "name = input('name? ')", timeout=30, stdin_hook=answer, output_hook=lambda m: None
    )
    assert reply["content"]["status"] == "ok"
    assert prompts == ["name? "]
    assert result_text(run_code(kc, "name")[1]) == "'Ada'"


def test_other_requests_get_their_replies(kernel: tuple) -> None:
    _, kc = kernel
    run_code(kc, "alpha_beta = 1")
    complete = _reply(kc, kc.complete("alpha_b"))
    assert "alpha_beta" in complete["content"]["matches"]
    inspect = _reply(kc, kc.inspect("len"))
    assert inspect["content"]["found"]
    assert _reply(kc, kc.is_complete("for x in y:"))["content"]["status"] == "incomplete"
    assert _reply(kc, kc.history(hist_access_type="tail", n=3))["msg_type"] == "history_reply"
    assert _reply(kc, kc.comm_info())["content"]["status"] == "ok"
    assert _reply(kc, kc.kernel_info())["content"]["protocol_version"].startswith("5.")


def test_execute_rejects_bad_arguments(kernel: tuple) -> None:
    _, kc = kernel
    with pytest.raises(ValueError, match="string"):
        kc.execute(b"1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_expressions"):
        kc.execute("1", user_expressions={"a": 1})


def test_client_from_connection_file_uses_heartbeat(kernel: tuple) -> None:
    km, _ = kernel
    kc = BlockingKernelClient()
    kc.load_connection_file(km.connection_file)
    assert kc.session.key == km.session.key
    assert kc.ports == km.ports
    with kc:
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        assert kc.is_alive()  # no manager: answered by the heartbeat
        assert result_text(run_code(kc, "3 * 3")[1]) == "9"
    assert not kc.channels_running


def test_blocking_client_of_the_mixin(kernel: tuple) -> None:
    km, _ = kernel
    kc = km.blocking_client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        assert result_text(run_code(kc, "'bc'")[1]) == "'bc'"
    finally:
        kc.stop_channels()


def test_shutdown_request_from_the_client_stops_the_kernel() -> None:
    km, kc = start_ready_kernel()
    assert km.kernel is not None
    pid = km.kernel.pid
    msg_id = kc.shutdown()
    reply = kc._recv_reply(msg_id, timeout=30, channel="control")
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["restart"] is False
    assert wait_until(lambda: not km.is_alive(), 15)
    assert not kc.is_alive()
    conn = km.connection_file
    stop_kernel(km, kc)
    assert not pid_alive(pid)
    assert not os.path.exists(conn)


def test_wait_for_ready_keeps_replies_to_other_requests(kernel: tuple) -> None:
    km, _ = kernel
    kc = km.client()
    try:
        kc.start_channels()
        msg_id = kc.execute("5")
        kc.wait_for_ready(timeout=30)
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["msg_type"] == "execute_reply"
    finally:
        kc.stop_channels()


def test_every_request_method_takes_reply_and_timeout(kernel: tuple) -> None:
    _, kc = kernel
    run_code(kc, "gamma_delta = 1")
    replies = {
        "execute_reply": kc.execute("1 + 1", reply=True, timeout=30),
        "kernel_info_reply": kc.kernel_info(reply=True, timeout=30),
        "complete_reply": kc.complete("gamma_d", reply=True, timeout=30),
        "inspect_reply": kc.inspect("len", reply=True, timeout=30),
        "history_reply": kc.history(hist_access_type="tail", n=3, reply=True, timeout=30),
        "comm_info_reply": kc.comm_info(reply=True, timeout=30),
        "is_complete_reply": kc.is_complete("for x in y:", reply=True, timeout=30),
    }
    for msg_type, reply in replies.items():
        assert isinstance(reply, dict), msg_type  # history(reply=True) once gave a msg_id
        assert reply["msg_type"] == msg_type
    assert "gamma_delta" in replies["complete_reply"]["content"]["matches"]
    assert replies["is_complete_reply"]["content"]["status"] == "incomplete"
    assert replies["execute_reply"]["content"]["status"] == "ok"
    # Without a timeout: until the reply comes.
    assert kc.kernel_info(reply=True)["msg_type"] == "kernel_info_reply"


def test_reply_timeout_raises_timeout_error(kernel: tuple) -> None:
    km, kc = kernel
    with pytest.raises(TimeoutError):
        kc.execute("import time; time.sleep(30)", reply=True, timeout=0.2)
    km.interrupt_kernel()
    # The interrupted request still replies; drain it so later tests start clean.
    reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["ename"] == "KeyboardInterrupt"


def test_shutdown_with_reply_waits_on_control() -> None:
    km, kc = start_ready_kernel()
    try:
        reply = kc.shutdown(reply=True, timeout=30)
        assert reply["msg_type"] == "shutdown_reply"
        assert reply["content"]["restart"] is False
        assert wait_until(lambda: not km.is_alive(), 15)
    finally:
        stop_kernel(km, kc)


def test_blocking_client_is_a_kernel_client_with_no_thread(kernel: tuple) -> None:
    import threading

    from kernel_connect.client import KernelClient

    km, _ = kernel
    before = threading.active_count()
    kc = km.client()
    assert isinstance(kc, KernelClient)
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        assert result_text(run_code(kc, "'still none'")[1]) == "'still none'"
        assert threading.active_count() == before
    finally:
        kc.stop_channels()
