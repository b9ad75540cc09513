"""Reading images back: the compression by its magic, then the newc members one by one.

The exitrd loader unpacks with this, and it reads whole images: an early uncompressed
segment (microcode) followed by a compressed archive is read as one sequence.
"""

from __future__ import annotations

import gzip
import lzma
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import zstandard

from bookend.archive.cpio import MAGIC, TRAILER
from bookend.errors import ArchiveError

HEADER_SIZE = 110
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Member:
    path: str  # as stored, e.g. "usr/bin/mount" (no leading slash)
    mode: int  # type and permission bits
    data: bytes  # file content, or a symlink's target
    rdev: tuple[int, int]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def decompressed(raw: BinaryIO, name: str) -> Readable:
    """A reader of raw's archive bytes, whatever of zstd, xz, gzip or nothing it uses."""
    head = raw.peek(6)[:6] if hasattr(raw, "peek") else b""
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(raw)
    if head.startswith(MAGIC):
        return raw
    raise ArchiveError(f"{name}: neither a newc cpio nor zstd, xz or gzip compressed")


def read_members(stream: Readable, name: str) -> Iterator[Member]:
    """The members up to the trailer; a truncated or corrupt archive is an ArchiveError."""
    offset = 0
    while True:
        header = _read_exact(stream, HEADER_SIZE, name)
        if header[:6] != MAGIC:
            raise ArchiveError(f"{name}: no newc header at offset {offset}")
        try:
            values = dict(zip(_FIELDS, (int(header[6 + 8 * i : 14 + 8 * i], 16)
                                        for i in range(13)), strict=True))  # fmt: skip
        except ValueError:
            raise ArchiveError(f"{name}: corrupt newc header at offset {offset}") from None
        raw_name = _read_exact(stream, values["namesize"], name)
        offset += HEADER_SIZE + values["namesize"]
        _skip(stream, -offset % 4, name)
        offset += -offset % 4
        path = raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if path == TRAILER:
            return
        data = _read_exact(stream, values["filesize"], name)
        offset += values["filesize"]
        _skip(stream, -offset % 4, name)
        offset += -offset % 4
        yield Member(path, values["mode"], data, (values["rdevmajor"], values["rdevminor"]))


def _read_exact(stream: Readable, size: int, name: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise ArchiveError(f"{name}: truncated archive")
        data += chunk
    return data


def _skip(stream: Readable, size: int, name: str) -> None:
    if size:
        _read_exact(stream, size, name)
