"""JSON packing for Jupyter messages: ISO 8601 dates out, datetimes back in.

Mirrors what jupyter_client's jsonutil does for the wire format: datetimes are
written as ISO 8601 strings (UTC as a trailing ``Z``), and ISO 8601 strings in
headers come back as timezone-aware datetimes. A message that is not strict JSON
(NaN, infinities, non-string keys) is packed after :func:`json_clean` with a
warning, as jupyter_client 7+ does.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import types
import warnings
from binascii import b2a_base64
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

#: The ``strftime`` format :func:`json_clean` gives dates (no offset, as jupyter_client).
ISO8601 = "%Y-%m-%dT%H:%M:%S.%f"

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
    """Turn datetimes anywhere in ``obj`` into ISO 8601 strings (copying).

    ``datetime.isoformat()`` exactly (UTC as ``+00:00``), as jupyter_client
    squashes them for packers without date support (pickle): the same message
    packs to the same bytes with either library.
    """
    if isinstance(obj, dict):
        return {k: squash_dates(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [squash_dates(o) for o in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
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


def json_clean(obj: Any) -> Any:
    """Return a strict-JSON copy of ``obj``, as jupyter_client's ``json_clean``.

    NaN and infinities become the strings ``'nan'``, ``'inf'`` and ``'-inf'``;
    tuples, sets, generators and iterators become lists; dict keys become
    strings; bytes become base64 text; dates become ``ISO8601`` text.

    Raises
    ------
    ValueError
        For a dict whose keys collide once made strings (``1`` and ``'1'``),
        or a value with no JSON form.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        # repr of the float, as jupyter_client: 'nan', 'inf', '-inf'.
        return repr(value) if math.isnan(value) or math.isinf(value) else value
    if isinstance(obj, bytes):
        return b2a_base64(obj, newline=False).decode("ascii")
    if isinstance(obj, tuple | set | types.GeneratorType) or (
        hasattr(obj, "__iter__") and hasattr(obj, "__next__")
    ):
        obj = list(obj)
    if isinstance(obj, list):
        return [json_clean(x) for x in obj]
    if isinstance(obj, dict):
        if len(obj) != len({str(k) for k in obj}):
            raise ValueError(
                "dict cannot be safely converted to JSON: key collision would lead to "
                "dropped values"
            )
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, datetime | date):
        return obj.strftime(ISO8601)
    raise ValueError(f"Can't clean for JSON: a {type(obj).__name__} object")


def json_packer(obj: Any) -> bytes:
    """Pack ``obj`` as UTF-8 JSON bytes.

    A message that is not strict JSON (NaN or infinities, keys ``json`` cannot
    write) is packed after :func:`json_clean` (NaN as ``"nan"``) with a
    ``UserWarning``, as jupyter_client does: such messages are deprecated.

    Parameters
    ----------
    obj : object
        A JSON-compatible value; datetimes become ISO 8601 strings.

    Returns
    -------
    bytes
        The packed message part.

    Raises
    ------
    ValueError
        If ``obj`` holds something with no JSON form even after cleaning.
    """
    try:
        text = json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        text = json.dumps(
            json_clean(obj), default=json_default, ensure_ascii=False, allow_nan=False
        )
        warnings.warn(
            f"Message serialization failed with:\n{e}\nSupporting this message is "
            "deprecated in jupyter-client 7, please make sure your message is JSON-compliant",
            stacklevel=2,
        )
    return text.encode("utf8", errors="surrogateescape")


def json_unpacker(s: bytes | str) -> Any:
    """Unpack UTF-8 JSON bytes (or str) into Python objects."""
    if isinstance(s, bytes):
        s = s.decode("utf8", "replace")
    return json.loads(s)


def validate_string_dict(dct: Mapping[Any, Any]) -> None:
    """Check that ``dct`` maps strings to strings (``user_expressions``, for one).

    Raises
    ------
    ValueError
        Naming the first key, or the value, that is not a string.
    """
    for k, v in dct.items():
        if not isinstance(k, str):
            raise ValueError(f"key {k!r} in dict must be a string")
        if not isinstance(v, str):
            raise ValueError(f"value {v!r} in dict must be a string")
