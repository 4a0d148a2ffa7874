"""Raw input streams: compression recognised by content (magic bytes), decompressed chunk by chunk, hashed as
they are read, split into lines; a truncated stream raises :class:`TruncatedInput` after its last whole line."""

from __future__ import annotations

import bz2
import contextlib
import lzma
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec

from dq_ray.io.digest import HashingReader

READ_CHUNK = 1 << 20


class TruncatedInput(IOError):
    """A compressed stream ended in the middle of a frame (or member)."""


_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS),  # checks the CRC and length trailer
    "bz2": bz2.BZ2Decompressor,
    "xz": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
}


def _zstd_decompressor() -> Any:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


_DECOMPRESSORS["zstd"] = _zstd_decompressor

BOM = b"\xef\xbb\xbf"


def sniff_compression(head: bytes) -> str | None:
    """The compression of a stream from its first bytes: ``gzip``, ``zstd``, ``bz2``, ``xz`` or None."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) >= 4 and head.startswith(b"BZh") and head[3:4] in b"123456789":
        return "bz2"
    return None


def _decompress(chunks: Iterable[bytes], kind: str) -> Iterator[bytes]:
    """Decompress a (multi-member / multi-frame) stream; raises :class:`TruncatedInput` if it stops mid-way.

    (A stream reader would return a short read on a truncated file instead of failing, and would lose the
    data decompressed by its last call; this yields everything decompressed before the cut.) Zero bytes
    between or after members (padding) are skipped.
    """
    make = _DECOMPRESSORS[kind]
    dobj = make()
    in_stream = False
    for chunk in chunks:
        while chunk:
            if not in_stream:
                chunk = chunk.lstrip(b"\0")
                if not chunk:
                    break
            in_stream = True
            out = dobj.decompress(chunk)
            chunk = b""
            if out:
                yield out
            if dobj.eof:
                chunk = dobj.unused_data
                dobj = make()
                in_stream = False
    if in_stream:
        raise TruncatedInput(f"{kind} stream ends in the middle of a frame (truncated file?)")


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (each with its ``\\n``, the last one maybe without) of a stream of byte chunks."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if pending:
                pending.append(chunk[start : nl + 1])
                yield b"".join(pending)
                pending = []
            else:
                yield chunk[start : nl + 1]
            start = nl + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


def _strip_bom(lines: Iterator[bytes]) -> Iterator[bytes]:
    first = next(lines, None)
    if first is None:
        return
    yield first[len(BOM) :] if first.startswith(BOM) else first
    yield from lines


class RawStream:
    """One raw input file: its bytes are hashed as they are read, decompressed by what their content is."""

    def __init__(self, fh: Any) -> None:
        self.hashing = HashingReader(fh)
        self.head = self.hashing.read(8)
        self.compression = sniff_compression(self.head)

    def raw_chunks(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        while chunk := self.hashing.read(READ_CHUNK):
            yield chunk

    def chunks(self) -> Iterator[bytes]:
        """The decompressed content, in chunks."""
        if self.compression is None:
            return self.raw_chunks()
        return _decompress(self.raw_chunks(), self.compression)

    def lines(self) -> Iterator[bytes]:
        """The content's lines (raw bytes, a leading UTF-8 BOM removed)."""
        return _strip_bom(_split_lines(self.chunks()))

    def finish(self) -> tuple[int, str]:
        """Read the rest of the raw file; ``(bytes read, SHA-256 hex)`` of all of it."""
        digest = self.hashing.finish()
        return self.hashing.bytes_read, digest


@contextlib.contextmanager
def open_raw(path: str) -> Iterator[RawStream]:
    with fsspec.open(path, "rb") as fh:  # no compression here: the content says which
        yield RawStream(fh)


@contextlib.contextmanager
def open_lines(path: str) -> Iterator[Iterator[bytes]]:
    """Open a (possibly compressed) text file and give an iterator over its raw lines.

    The compression (gzip, zstd, bz2, xz or none) is told by the content, not by the name; a leading UTF-8
    byte order mark is removed. A truncated compressed stream raises at its end (:class:`TruncatedInput` or
    ``EOFError``-like errors) after its complete lines.
    """
    with open_raw(path) as stream:
        yield stream.lines()
