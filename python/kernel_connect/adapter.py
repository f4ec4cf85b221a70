"""Adapting messages between major versions 4 and 5 of the Jupyter messaging protocol.

The names and behaviour of jupyter_client's ``adapter`` module. A Session adapts
every message it receives to the current major version (a header without a
``version`` is a version 4 message), and adapts what it sends to
``Session.adapt_version`` when that is set. Adapters change the message in
place and return it.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timezone
from typing import Any, ClassVar

from kernel_connect import protocol_version_info

Msg = dict[str, Any]


def code_to_line(code: str, cursor_pos: int) -> tuple[str, int]:
    """The line of ``code`` the cursor is on, and the cursor's position in that line.

    Parameters
    ----------
    code : str
        A block of code, possibly of several lines.
    cursor_pos : int
        Cursor offset in ``code``.

    Returns
    -------
    (line, cursor_pos) : tuple of str and int
        The line keeps its line ending; ``('', 0)`` for empty code.
    """
    if not code:
        return "", 0
    line = ""
    for line in code.splitlines(keepends=True):
        if cursor_pos <= len(line):
            break
        cursor_pos -= len(line)
    return line, cursor_pos


_INNER_CALL = re.compile(r"\([^\(\)]+\)")
_OPEN_CALL = re.compile(r"\([^\(]*$")
_IDENTIFIER = re.compile(r"[a-z_][0-9a-z._]*", re.IGNORECASE)


def extract_oname_v4(code: str, cursor_pos: int) -> str:
    """The object name a version 4 ``object_info_request`` asks about.

    The name IPython 2's front end took: the last identifier on the cursor's
    line, once complete calls are removed and anything after the last open
    parenthesis is dropped (``f(a, b`` gives ``f``).
    """
    line, _ = code_to_line(code, cursor_pos)
    while True:
        reduced = _INNER_CALL.sub("", line)
        if reduced == line:
            break
        line = reduced
    names = _IDENTIFIER.findall(_OPEN_CALL.sub("", line))
    return names[-1] if names else ""


def _version_str_to_list(version: str) -> list[int]:
    """``'3.11.4rc1'`` -> ``[3, 11]``: the dot-separated parts that are integers."""
    return [int(part) for part in version.split(".") if _is_int(part)]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class Adapter:
    """Adapts one message to another protocol version.

    Subclasses rename message types with :attr:`msg_type_map` and define a
    method named after each (new) message type whose content changes. A reply
    whose status is ``error`` or ``aborted`` goes to
    :meth:`handle_reply_status_error` instead.
    """

    msg_type_map: ClassVar[dict[str, str]] = {}

    def update_header(self, msg: Msg) -> Msg:
        """Change the header (and parent header) for the target version."""
        return msg

    def update_metadata(self, msg: Msg) -> Msg:
        """Change the metadata for the target version."""
        return msg

    def update_msg_type(self, msg: Msg) -> Msg:
        """Rename the message type, in the header and the message, per :attr:`msg_type_map`."""
        header = msg["header"]
        new_type = self.msg_type_map.get(header["msg_type"])
        if new_type is not None:
            msg["msg_type"] = header["msg_type"] = new_type
        return msg

    def handle_reply_status_error(self, msg: Msg) -> Msg:
        """Adapt a reply whose status is not ok (left as it is)."""
        return msg

    def __call__(self, msg: Msg) -> Msg:
        msg = self.update_msg_type(self.update_metadata(self.update_header(msg)))
        handler = getattr(self, msg["header"]["msg_type"], None)
        content = msg.get("content")
        if handler is None or not isinstance(content, dict):
            # No change for this type, or content left packed (a peek): nothing to adapt.
            return msg
        if content.get("status") in ("error", "aborted"):
            return self.handle_reply_status_error(msg)
        result: Msg = handler(msg)
        return result


class V5toV4(Adapter):
    """Adapts a version 5 message to version 4."""

    version = "4.1"

    msg_type_map: ClassVar[dict[str, str]] = {
        "execute_result": "pyout",
        "execute_input": "pyin",
        "error": "pyerr",
        "inspect_request": "object_info_request",
        "inspect_reply": "object_info_reply",
    }

    def update_header(self, msg: Msg) -> Msg:
        """Version 4 headers carry no version."""
        msg["header"].pop("version", None)
        msg["parent_header"].pop("version", None)
        return msg

    # shell channel

    def kernel_info_reply(self, msg: Msg) -> Msg:
        """Versions become lists of ints; ``language_info`` becomes ``language``."""
        content = msg["content"]
        v4: dict[str, Any] = {}
        for key in ("language_version", "protocol_version"):
            if key in content:
                v4[key] = _version_str_to_list(content[key])
        if content.get("implementation", "") == "ipython" and "implementation_version" in content:
            v4["ipython_version"] = _version_str_to_list(content["implementation_version"])
        language_info = content.get("language_info", {})
        v4.setdefault("language", language_info.get("name", ""))
        if "version" in language_info:
            v4.setdefault("language_version", _version_str_to_list(language_info["version"]))
        msg["content"] = v4
        return msg

    def execute_request(self, msg: Msg) -> Msg:
        """Version 4 requests carry ``user_variables``."""
        msg["content"].setdefault("user_variables", [])
        return msg

    def execute_reply(self, msg: Msg) -> Msg:
        """Version 4 replies carry ``user_variables``."""
        msg["content"].setdefault("user_variables", {})
        return msg

    def complete_request(self, msg: Msg) -> Msg:
        """Code and cursor become the cursor's line and its position in it."""
        content = msg["content"]
        line, cursor_pos = code_to_line(content["code"], content["cursor_pos"])
        msg["content"] = {"text": "", "line": line, "block": None, "cursor_pos": cursor_pos}
        return msg

    def complete_reply(self, msg: Msg) -> Msg:
        """The cursor range becomes ``matched_text``."""
        content = msg["content"]
        cursor_start = content.pop("cursor_start")
        match_len = content.pop("cursor_end") - cursor_start
        content["matched_text"] = content["matches"][0][:match_len]
        content.pop("metadata", None)
        return msg

    def object_info_request(self, msg: Msg) -> Msg:
        """Code and cursor become the object name (``oname``)."""
        content = msg["content"]
        msg["content"] = {
            "oname": extract_oname_v4(content["code"], content["cursor_pos"]),
            "detail_level": content["detail_level"],
        }
        return msg

    def object_info_reply(self, msg: Msg) -> Msg:
        """A version 5 inspect reply has no version 4 form: reported as not found."""
        msg["content"] = {"found": False, "oname": "unknown"}
        return msg

    # iopub channel

    def stream(self, msg: Msg) -> Msg:
        """``text`` is called ``data`` in version 4."""
        content = msg["content"]
        content["data"] = content.pop("text")
        return msg

    def display_data(self, msg: Msg) -> Msg:
        """Version 4 needs a ``source`` and JSON output as text."""
        content = msg["content"]
        content.setdefault("source", "display")
        data = content["data"]
        if "application/json" in data:
            # Left as it is when that fails, as jupyter_client does.
            with contextlib.suppress(TypeError, ValueError):
                data["application/json"] = json.dumps(data["application/json"])
        return msg

    # stdin channel

    def input_request(self, msg: Msg) -> Msg:
        """Version 4 input requests have no ``password`` flag."""
        msg["content"].pop("password", None)
        return msg


class V4toV5(Adapter):
    """Adapts a version 4 message to version 5."""

    version = "5.0"

    msg_type_map: ClassVar[dict[str, str]] = {v: k for k, v in V5toV4.msg_type_map.items()}

    def update_header(self, msg: Msg) -> Msg:
        """Headers (and a non-empty parent header) say version 5.0."""
        msg["header"]["version"] = self.version
        if msg["parent_header"]:
            msg["parent_header"]["version"] = self.version
        return msg

    # shell channel

    def kernel_info_reply(self, msg: Msg) -> Msg:
        """Version lists become strings; ``language`` becomes ``language_info``."""
        content = msg["content"]
        for key in ("protocol_version", "ipython_version"):
            if key in content:
                content[key] = ".".join(str(part) for part in content[key])
        content.setdefault("protocol_version", "4.1")
        if content["language"].startswith("python") and "ipython_version" in content:
            content["implementation"] = "ipython"
            content["implementation_version"] = content.pop("ipython_version")
        language_info = content.setdefault("language_info", {})
        language_info.setdefault("name", content.pop("language"))
        if "language_version" in content:
            version = ".".join(str(part) for part in content.pop("language_version"))
            language_info.setdefault("version", version)
        content["banner"] = ""
        return msg

    def execute_request(self, msg: Msg) -> Msg:
        """``user_variables`` become ``user_expressions`` evaluating each name."""
        content = msg["content"]
        user_variables = content.pop("user_variables", [])
        user_expressions = content.setdefault("user_expressions", {})
        for name in user_variables:
            user_expressions[name] = name
        return msg

    def execute_reply(self, msg: Msg) -> Msg:
        """``user_variables`` join ``user_expressions``; pager payloads become bundles."""
        content = msg["content"]
        user_expressions = content.setdefault("user_expressions", {})
        user_variables = content.pop("user_variables", {})
        if user_variables:
            user_expressions.update(user_variables)
        for payload in content.get("payload", []):
            if payload.get("source", None) == "page" and "text" in payload:
                payload.setdefault("data", {})["text/plain"] = payload.pop("text")
        return msg

    def complete_request(self, msg: Msg) -> Msg:
        """The line and cursor become code and cursor."""
        content = msg["content"]
        msg["content"] = {"code": content["line"], "cursor_pos": content["cursor_pos"]}
        return msg

    def complete_reply(self, msg: Msg) -> Msg:
        """``matched_text`` becomes a cursor range relative to the cursor.

        The end is ``None`` (the cursor) and the start minus the matched length,
        or ``None`` when nothing matched (there is no -0).
        """
        content = msg["content"]
        matched = content["matched_text"]
        msg["content"] = {
            "status": "ok",
            "matches": content["matches"],
            "cursor_start": -len(matched) if matched else None,
            "cursor_end": None,
            "metadata": {},
        }
        return msg

    def inspect_request(self, msg: Msg) -> Msg:
        """The object name becomes code with the cursor at its end."""
        content = msg["content"]
        name = content["oname"]
        msg["content"] = {
            "code": name,
            "cursor_pos": len(name),
            "detail_level": content["detail_level"],
        }
        return msg

    def inspect_reply(self, msg: Msg) -> Msg:
        """The definition and docstring fields become one text/plain bundle."""
        content = msg["content"]
        found = content["found"]
        data: dict[str, str] = {}
        msg["content"] = {"status": "ok", "found": found, "data": data, "metadata": {}}
        if found:
            lines = []
            for group in (
                ("call_def", "init_definition", "definition"),
                ("call_docstring", "init_docstring", "docstring"),
            ):
                text = next((content[key] for key in group if content.get(key, False)), None)
                if text is not None:
                    lines.append(text)
            data["text/plain"] = "\n".join(lines or ["<empty docstring>"])
        return msg

    # iopub channel

    def stream(self, msg: Msg) -> Msg:
        """``data`` is called ``text`` in version 5."""
        content = msg["content"]
        content["text"] = content.pop("data")
        return msg

    def display_data(self, msg: Msg) -> Msg:
        """No ``source``; JSON output is parsed from its text."""
        content = msg["content"]
        content.pop("source", None)
        data = content["data"]
        if "application/json" in data:
            # Left as it is when that fails, as jupyter_client does.
            with contextlib.suppress(TypeError, ValueError):
                data["application/json"] = json.loads(data["application/json"])
        return msg

    # stdin channel

    def input_request(self, msg: Msg) -> Msg:
        """Version 5 input requests say whether the input is a password."""
        msg["content"].setdefault("password", False)
        return msg


#: One adapter per (from, to) pair of major versions.
adapters: dict[tuple[int, int], Adapter] = {
    (5, 4): V5toV4(),
    (4, 5): V4toV5(),
}


def adapt(msg: Msg, to_version: int = protocol_version_info[0]) -> Msg:
    """Adapt one message to major version ``to_version`` (in place).

    Parameters
    ----------
    msg : dict
        A Jupyter message (header, parent_header, content, ...). A header with
        no ``version`` is taken for version 4; one with no ``date`` is given
        the current time.
    to_version : int, optional
        The target major version (default: the current one, 5).

    Returns
    -------
    dict
        ``msg``, adapted; unchanged when no adapter goes from its version to
        ``to_version``.
    """
    header = msg["header"]
    if "date" not in header:
        header["date"] = datetime.now(timezone.utc)
    from_version = int(header["version"].split(".")[0]) if "version" in header else 4
    adapter = adapters.get((from_version, to_version))
    return msg if adapter is None else adapter(msg)


__all__ = ["Adapter", "V4toV5", "V5toV4", "adapt", "adapters", "code_to_line", "extract_oname_v4"]
