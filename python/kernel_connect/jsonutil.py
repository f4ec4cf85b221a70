"""JSON packing for Jupyter messages: ISO 8601 dates out, datetimes back in.

Mirrors what jupyter_client's jsonutil does for the wire format: datetimes are
written as ISO 8601 strings (UTC as a trailing ``Z``), and ISO 8601 strings in
headers come back as timezone-aware datetimes.
"""

from __future__ import annotations

import json
import numbers
import re
from binascii import b2a_base64
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any

# The date shapes jupyter_client accepts: seconds precision, optional fraction
# of up to six digits, optional 'Z' or +hh:mm / +hhmm offset.
ISO8601_PAT = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,6})?(Z|([\+\-])(\d{2}):?(\d{2}))?$"
)


def parse_date(s: str) -> str | datetime:
    """Parse an ISO 8601 timestamp, returning other strings unchanged.

    Parameters
    ----------
    s : str
        Candidate timestamp.

    Returns
    -------
    datetime or str
        A timezone-aware datetime (a naive timestamp is read as local time),
        or ``s`` itself when it is not a valid ISO 8601 timestamp.
    """
    m = ISO8601_PAT.match(s)
    if m is None:
        return s
    try:
        dt = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return s
    if m.group(2):
        dt = dt.replace(microsecond=int(m.group(2)[1:].ljust(6, "0")))
    if m.group(3) == "Z":
        return dt.replace(tzinfo=timezone.utc)
    if m.group(3):
        offset = timedelta(hours=int(m.group(5)), minutes=int(m.group(6)))
        if m.group(4) == "-":
            offset = -offset
        try:
            return dt.replace(tzinfo=timezone(offset))
        except ValueError:
            return s
    # Naive timestamps are local time, as jupyter_client assumes.
    return dt.astimezone()


def extract_dates(obj: Any) -> Any:
    """Turn ISO 8601 strings anywhere in unpacked JSON into datetimes (copying)."""
    if isinstance(obj, dict):
        return {k: extract_dates(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [extract_dates(o) for o in obj]
    if isinstance(obj, str):
        return parse_date(obj)
    return obj


def squash_dates(obj: Any) -> Any:
    """Turn datetimes anywhere in ``obj`` into ISO 8601 strings (copying)."""
    if isinstance(obj, dict):
        return {k: squash_dates(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [squash_dates(o) for o in obj]
    if isinstance(obj, datetime):
        return json_default(obj)
    return obj


def json_default(obj: Any) -> Any:
    """Encode the non-JSON types a message may carry (``json.dumps`` default hook).

    Parameters
    ----------
    obj : object
        Value ``json`` could not encode.

    Returns
    -------
    object
        A JSON-encodable replacement.

    Raises
    ------
    TypeError
        For values with no JSON form.
    """
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.astimezone()
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return b2a_base64(obj, newline=False).decode("ascii")
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, Iterable):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} object is not JSON serializable")


def json_packer(obj: Any) -> bytes:
    """Pack ``obj`` as UTF-8 JSON bytes (NaN refused: it is not JSON).

    Parameters
    ----------
    obj : object
        A JSON-compatible value; datetimes become ISO 8601 strings.

    Returns
    -------
    bytes
        The packed message part.
    """
    return json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False).encode(
        "utf8", errors="surrogateescape"
    )


def json_unpacker(s: bytes | str) -> Any:
    """Unpack UTF-8 JSON bytes (or str) into Python objects."""
    if isinstance(s, bytes):
        s = s.decode("utf8", "replace")
    return json.loads(s)
