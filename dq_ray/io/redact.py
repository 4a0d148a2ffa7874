"""One place that hides credentials in paths before they are stored, logged or shown."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

_SECRET_QUERY = re.compile(r"(key|secret|token|password|passwd|pwd|signature|sig|credential|auth)", re.I)


def redact_url(value: str) -> str:
    """``value`` with any password in the URL's user info and secret-looking query values replaced by ``***``.

    Credentials belong in the environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``...); this keeps the
    manifest and logs clean when someone puts them in a path anyway.
    """
    if "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"***@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if _SECRET_QUERY.search(k) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(data: Any) -> Any:
    """A copy of plain data (dicts, lists, strings) with every URL passed through :func:`redact_url`."""
    if isinstance(data, str):
        return redact_url(data)
    if isinstance(data, dict):
        return {k: redact(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return data
