"""Secrets in connection info: which fields they are, and keeping them unseen.

The HMAC key and the CurveZMQ secret key must never appear in an error, a log
line or a repr. This module is their one home: :data:`SECRET_FIELDS` names
them and :func:`redacted` is how anything that shows connection info shows it.
The traitlets type that holds them is :class:`kernel_connect.secret_trait.SecretBytes`
(a module of its own so that this one imports nothing heavy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Connection-info fields whose values are secrets.
SECRET_FIELDS = ("key", "curve_secretkey")
#: What a secret is shown as.
REDACTED = "<redacted>"


def redacted(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of connection ``info`` fit to show: every secret replaced by
    :data:`REDACTED` (an empty key stays empty: that it is empty is no secret)."""
    if info is None:
        return None
    return {k: (REDACTED if k in SECRET_FIELDS and v else v) for k, v in info.items()}
