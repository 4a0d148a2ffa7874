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


_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def secrets_of(path: str) -> list[str]:
    """The credential strings of a URL: its user info and the query values :func:`redact_url` hides."""
    if "://" not in path:
        return []
    try:
        parts = urllib.parse.urlsplit(path)
        hidden = urllib.parse.urlsplit(redact_url(path))
    except ValueError:
        return []
    found = [parts.username or "", parts.password or ""] if "@" in parts.netloc else []
    raw_pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    red_pairs = urllib.parse.parse_qsl(hidden.query, keep_blank_values=True)
    found += [v for (_, v), (_, r) in zip(raw_pairs, red_pairs) if r == "***" and v != "***"]
    out: set[str] = set()
    for value in found:
        if len(value) >= 3:  # shorter ones would mangle every message and hide nothing
            out |= {value, urllib.parse.quote(value, safe=""), urllib.parse.unquote(value)}
    return sorted(out, key=len, reverse=True)


def scrub(message: str, path: str) -> str:
    """``message`` (an error text, say) with ``path`` and any URL in it passed through ``redact_url``.

    The raw ``path`` is replaced by its redacted form, then every credential of ``path`` (password, secret
    query values, also percent-encoded) by ``***``, then every URL-looking token by its redacted form.
    """
    if path and path in message:
        message = message.replace(path, redact_url(path))
    for secret in secrets_of(path):
        message = message.replace(secret, "***")
    return _URL_TOKEN.sub(lambda m: redact_url(m.group(0)), message)


def without_query(path: str) -> str:
    """A URL without its query string and fragment (a plain path as it is)."""
    if "://" not in path:
        return path
    return path.split("?", 1)[0].split("#", 1)[0]
