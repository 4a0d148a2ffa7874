"""Content digests of input files: what a receipt records and what readers of a run check against.

A receipt (``RUN/_shards/<key>.json``) stores the size, modification time and SHA-256 of the bytes of its input
file as they were read. ``--resume`` uses them to refuse inputs that changed, and the map opens an input for
text snippets only when its bytes still hash to the receipt's digest, so a forged run directory cannot point
the server at a file that was never an input.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

CHUNK = 1 << 20


class HashingReader:
    """A read-only binary file wrapper that hashes every byte read through it (SHA-256)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def finish(self) -> str:
        """Read what is left (so the digest covers the whole file) and return the hex digest."""
        while self.read(CHUNK):
            pass
        return self._hash.hexdigest()


def file_sha256(path: str) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the raw bytes of ``path`` (any fsspec URL), read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with fsspec.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
