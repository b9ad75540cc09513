"""The newc ("070701") cpio format the kernel unpacks, written entry by entry.

File contents are copied straight from the source tree while the archive is written;
nothing is staged. The output depends only on the entries and the epoch: entries are
sorted, inodes numbered in that order, owners are root and mtimes are clamped, so two
builds of the same inputs are identical byte for byte.
"""

from __future__ import annotations

import enum
import itertools
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from bookend.errors import ArchiveError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX_FILE_SIZE = 0xFFFFFFFF  # newc stores sizes in 8 hex digits
COPY_CHUNK = 1 << 20


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class EntryKind(enum.Enum):
    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "link"
    CHAR_DEVICE = "chardev"
    BLOCK_DEVICE = "blockdev"


FILE_TYPE_BITS = {
    EntryKind.FILE: stat.S_IFREG,
    EntryKind.DIRECTORY: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK,
    EntryKind.CHAR_DEVICE: stat.S_IFCHR,
    EntryKind.BLOCK_DEVICE: stat.S_IFBLK,
}


@dataclass(frozen=True)
class ArchiveEntry:
    """One path in the image. A file's bytes come from `source` or, if generated, `data`."""

    path: str  # absolute image path, e.g. "/usr/bin/mount"
    kind: EntryKind
    mode: int  # permission bits only; the type comes from kind
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None  # symlink target, as stored in the link
    rdev: int | None = None  # device number for device nodes
    mtime: int = 0


def source_date_epoch(environ: Mapping[str, str]) -> int:
    """The clamp for mtimes: $SOURCE_DATE_EPOCH (reproducible-builds.org), else 0."""
    value = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ArchiveError(f"SOURCE_DATE_EPOCH: {value!r} is not a number of seconds")
    return int(value)


def sort_key(entry: ArchiveEntry) -> tuple[str, ...]:
    """Component order puts every directory before what it holds ("a/b" before "a-b")."""
    return tuple(entry.path.strip("/").split("/"))


def write_cpio(entries: Iterable[ArchiveEntry], out: Sink, *, epoch: int) -> int:
    """Write entries as a complete newc archive to out; return the number of entries."""
    ordered = sorted(entries, key=sort_key)
    _reject_duplicates(ordered)
    offset = 0
    inode = 0
    for entry in ordered:
        if entry.path.strip("/") == "":
            continue  # the archive root is the kernel's rootfs itself
        inode += 1
        offset += _write_entry(out, entry, inode, min(entry.mtime, epoch), offset)
    offset += _write_header(out, TRAILER, inode=0, mode=0, nlink=1, mtime=0, size=0, offset=offset)
    return inode


def _reject_duplicates(ordered: list[ArchiveEntry]) -> None:
    for before, after in itertools.pairwise(ordered):
        if sort_key(before) == sort_key(after):
            raise ArchiveError(f"{after.path}: listed twice in the image")


def _write_entry(out: Sink, entry: ArchiveEntry, inode: int, mtime: int, offset: int) -> int:
    name = entry.path.strip("/")
    mode = FILE_TYPE_BITS[entry.kind] | (entry.mode & 0o7777)
    nlink = 2 if entry.kind is EntryKind.DIRECTORY else 1
    if entry.kind is EntryKind.SYMLINK:
        if not entry.target:
            raise ArchiveError(f"{entry.path}: symlink without a target")
        target = os.fsencode(entry.target)
        return _write_small(out, name, inode, mode, nlink, mtime, target, offset)
    if entry.kind is EntryKind.FILE and entry.data is not None:
        return _write_small(out, name, inode, mode, nlink, mtime, entry.data, offset)
    if entry.kind is EntryKind.FILE:
        return _write_file(out, entry, name, inode, mode, mtime, offset)
    rdev = entry.rdev or 0
    if entry.kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE) and entry.rdev is None:
        raise ArchiveError(f"{entry.path}: device node without a device number")
    return _write_header(
        out,
        name,
        inode=inode,
        mode=mode,
        nlink=nlink,
        mtime=mtime,
        size=0,
        rdev=rdev,
        offset=offset,
    )


def _write_small(
    out: Sink, name: str, inode: int, mode: int, nlink: int, mtime: int, data: bytes, offset: int
) -> int:
    written = _write_header(
        out, name, inode=inode, mode=mode, nlink=nlink, mtime=mtime, size=len(data), offset=offset
    )
    out.write(data)
    return written + len(data) + _pad(out, len(data))


def _write_file(
    out: Sink, entry: ArchiveEntry, name: str, inode: int, mode: int, mtime: int, offset: int
) -> int:
    if entry.source is None:
        raise ArchiveError(f"{entry.path}: file entry without a source or data")
    fd = _open_source(entry.source)
    with os.fdopen(fd, "rb") as source:
        size = os.fstat(fd).st_size
        if size > MAX_FILE_SIZE:
            raise ArchiveError(too_big(entry.source, size))
        written = _write_header(
            out, name, inode=inode, mode=mode, nlink=1, mtime=mtime, size=size, offset=offset
        )
        copied = _copy(entry.source, source, out, size)
        if copied != size or _read(entry.source, source, 1):
            raise ArchiveError(f"{entry.source}: changed size while it was being archived")
    return written + size + _pad(out, size)


def too_big(source: Path, size: int) -> str:
    return (
        f"{source}: {size} bytes is too big for a cpio (newc) entry, "
        f"whose size field holds at most {MAX_FILE_SIZE} bytes"
    )


def _open_source(source: Path) -> int:
    """An fd on source, which must still be a regular file.

    The closure saw a regular file, but the tree may have changed since: O_NONBLOCK keeps
    a FIFO put in its place from waiting forever for a writer, and a directory opens fine,
    so the type is checked on the open file.
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ArchiveError(f"{source}: cannot read: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArchiveError(f"{source}: no longer a regular file (changed during the build)")
    return fd


def _read(path: Path, source: BinaryIO, size: int) -> bytes:
    """Read errors name the source file; write errors (a full disk) pass as they are."""
    try:
        return source.read(size)
    except OSError as error:
        raise ArchiveError(f"{path}: cannot read: {error.strerror}") from None


def _copy(path: Path, source: BinaryIO, out: Sink, size: int) -> int:
    copied = 0
    while copied < size:
        chunk = _read(path, source, min(COPY_CHUNK, size - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def _write_header(
    out: Sink,
    name: str,
    *,
    inode: int,
    mode: int,
    nlink: int,
    mtime: int,
    size: int,
    offset: int,
    rdev: int = 0,
) -> int:
    # Names from the sysroot that are not UTF-8 arrive as surrogate escapes (os.listdir);
    # fsencode gives back their bytes, as the kernel stores them.
    encoded = os.fsencode(name) + b"\0"
    fields = (
        inode,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        os.major(rdev),
        os.minor(rdev),
        len(encoded),
        0,
    )
    header = MAGIC + b"".join(b"%08X" % value for value in fields) + encoded
    out.write(header)
    return len(header) + _pad(out, offset + len(header))


def _pad(out: Sink, length: int) -> int:
    """newc aligns every header and every file body to 4 bytes."""
    padding = -length % 4
    if padding:
        out.write(b"\0" * padding)
    return padding
