"""The traitlets type for secrets (the HMAC key, CurveZMQ secret keys).

traitlets' own error messages quote the rejected value, and jupyter_client's
``CBytes`` turns an int into that many zero bytes. A secret must never appear
in an error, and an int is never a key: this type takes bytes, or str (UTF-8
encoded, as a key read from a connection file is), and names only the type of
anything else. Which fields are secrets: :mod:`kernel_connect.secrets`.
"""

from __future__ import annotations

from typing import Any

from traitlets import TraitError, TraitType


class SecretBytes(TraitType[bytes | None, bytes | str | None]):
    """Bytes (or str, encoded as UTF-8) whose value is never shown in errors."""

    info_text = "bytes or str (not shown: a secret)"

    def __init__(
        self, default_value: bytes | None = b"", allow_none: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(default_value=default_value, allow_none=allow_none, **kwargs)

    def validate(self, obj: Any, value: Any) -> bytes | None:
        if value is None and self.allow_none:
            return None
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        raise TraitError(
            f"The {self.name!r} trait of {type(obj).__name__} must be bytes or str, "
            f"not {type(value).__name__} (the value is a secret and is not shown)"
        )
