"""Reading images back: the compression by its magic, then the newc members one by one.

`read_image` reads a whole image as the kernel does: segments one after another
(an uncompressed early cpio, then compressed ones, with NUL padding between), each in any
compression the kernel unpacks, and yields every member with the segment it came from.

Images are input we do not trust (`bookend ls` and `extract` read other tools' images
and whatever a user hands them), so every size is checked before it is used: a header
cannot make us allocate more than PATH_MAX for a name, a body is streamed in chunks
whatever size it claims, and decompression is fed in small steps so a small bomb cannot
produce gigabytes at once. Every failure is an ArchiveError naming the offset.
"""

from __future__ import annotations

import bz2
import lzma
import stat
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import lz4.block
import zstandard

from bookend.archive.compress import LZ4_LEGACY_BLOCK, LZ4_LEGACY_MAGIC
from bookend.archive.cpio import MAGIC, TRAILER
from bookend.errors import ArchiveError

HEADER_SIZE = 110
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip
CRC_MAGIC = b"070702"  # newc with a checksum of each body; the kernel accepts it too
PATH_MAX = 4096  # the kernel refuses longer names and symlink targets
CHUNK = 1 << 20  # bodies are streamed in pieces of this size

# The magic numbers the kernel's decompress_method() knows.
COMPRESSION_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO\x00", "lzo"),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
UNCOMPRESSED = "none"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Segment:
    """One piece of a concatenated image."""

    index: int  # 0 for the first
    compression: str  # "none", "gzip", "zstd", ...
    offset: int  # where it starts in the image file


@dataclass(frozen=True)
class Header:
    """A member's newc header, and where it was found."""

    path: str  # as stored, without its NUL (may start with "/" or "./")
    mode: int  # type and permission bits
    size: int  # bytes of body: file content or symlink target
    ino: int
    nlink: int
    uid: int
    gid: int
    mtime: int
    dev: tuple[int, int]
    rdev: tuple[int, int]
    segment: Segment
    archive: int  # which archive of the image (hard links are numbered within one)
    offset: int  # of the header within its segment's (decompressed) bytes


def compression_of(head: bytes) -> str | None:
    """'none' for a cpio header, the compression's name, or None for neither."""
    if head.startswith((MAGIC, CRC_MAGIC)):
        return UNCOMPRESSED
    return next((kind for magic, kind in COMPRESSION_MAGICS if head.startswith(magic)), None)


def read_image(raw: BinaryIO, name: str) -> Iterator[tuple[Header, Body]]:
    """Every member of every segment of a seekable image, in order.

    Each body must be read before the iterator moves on; whatever is left of it is
    skipped then.
    """
    position = 0
    index = 0
    archive = 0
    while (position := _skip_zeros(raw, position)) >= 0:
        raw.seek(position)
        head = raw.read(8)
        kind = compression_of(head)
        if kind is None and head.startswith(b"0707"):
            raise ArchiveError(
                f"{name}: a cpio archive at offset {position} of the file has magic "
                f"{head[:6]!r}: the kernel reads only newc (070701 or 070702)"
            )
        if kind is None:
            raise ArchiveError(
                f"{name}: unrecognised data at offset {position} of the file: neither a cpio "
                "header nor a compression the kernel knows"
            )
        if kind == "lzo":
            raise ArchiveError(
                f"{name}: segment {index} at offset {position}: lzo is not supported"
            )
        segment = Segment(index, kind, position)
        if kind == UNCOMPRESSED:
            cursor = _Cursor(_Plain(raw, position), name, _in_file(position))
            yield from _archive(cursor, segment, archive)
            archive += 1
            position += cursor.offset
        else:
            archive, position = yield from _compressed_segment(raw, segment, archive, name)
        index += 1
    if index == 0:
        raise ArchiveError(f"{name}: empty image: no cpio archive in it")


def _in_file(start: int) -> Callable[[int], str]:
    return lambda at: f"offset {start + at} of the file"


def _compressed_segment(
    raw: BinaryIO, segment: Segment, archive: int, name: str
) -> Generator[tuple[Header, Body], None, tuple[int, int]]:
    """The archives of one compressed segment; returns (next archive number, end offset)."""
    stream = _Decompressed(raw, segment.offset, segment.compression, name)

    def where(at: int) -> str:
        return (
            f"offset {at} of segment {segment.index} ({segment.compression}, "
            f"which starts at offset {segment.offset} of the file)"
        )

    cursor = _Cursor(stream, name, where)
    while True:
        # Archives may follow each other inside one compressed stream, with NUL padding
        # between them, as in the kernel; the stream may also hold nothing but padding.
        cursor.on_short = None
        head = stream.peek_nonzero(cursor)
        if not head:
            return archive, stream.end()
        if compression_of(head) != UNCOMPRESSED:
            raise ArchiveError(f"{name}: junk in the archive at {where(cursor.offset)}")
        # Inside an archive, running out of one frame means reading on into the next.
        cursor.on_short = stream.next_frame
        yield from _archive(cursor, segment, archive)
        archive += 1


def _skip_zeros(raw: BinaryIO, position: int) -> int:
    """The offset of the next non-NUL byte from position, or -1 at the end of the file."""
    raw.seek(position)
    while chunk := raw.read(1 << 16):
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return position + len(chunk) - len(stripped)
        position += len(chunk)
    return -1


# --- the newc archive ----------------------------------------------------------------


class _Cursor:
    """Exact reads from a stream, counting the offset for error messages."""

    def __init__(self, stream: Readable, name: str, where: Callable[[int], str]) -> None:
        self.stream = stream
        self.name = name
        self.where = where
        self.offset = 0
        # Called when the stream runs dry; True when more data became available (the
        # next frame of a multi-frame compressed stream).
        self.on_short: Callable[[], bool] | None = None

    def read(self, size: int, what: str, at: int) -> bytes:
        """Exactly size bytes, or an ArchiveError saying that `what` at `at` is cut short."""
        parts = []
        wanted = size
        while wanted > 0:
            chunk = self.stream.read(wanted)
            if not chunk:
                if self.on_short is not None and self.on_short():
                    continue
                raise ArchiveError(
                    f"{self.name}: truncated archive: {what} at {self.where(at)} is cut short"
                )
            parts.append(chunk)
            wanted -= len(chunk)
        self.offset += size
        return b"".join(parts)

    def align(self, what: str) -> None:
        """newc pads every header and body to 4 bytes."""
        padding = -self.offset % 4
        if padding:
            self.read(padding, what, self.offset)


class Body:
    """A member's body, read in pieces; its bytes are checked against a 070702 checksum."""

    def __init__(self, cursor: _Cursor, header: Header, checksum: int | None) -> None:
        self._cursor = cursor
        self._header = header
        self._left = header.size
        self._start = cursor.offset
        self._checksum = checksum
        self._sum = 0

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes (all that is left for -1); b"" once the body is done."""
        wanted = self._left if size < 0 else min(size, self._left)
        if wanted == 0:
            return b""
        data = self._cursor.read(wanted, f"the body of {self._header.path!r}", self._start)
        self._left -= wanted
        if self._checksum is not None:
            self._sum = (self._sum + sum(data)) & 0xFFFFFFFF
            if self._left == 0 and self._sum != self._checksum:
                where = self._cursor.where(self._start)
                raise ArchiveError(
                    f"{self._cursor.name}: corrupt archive: the body of {self._header.path!r} "
                    f"at {where} does not match its checksum"
                )
        return data

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk

    def skip(self) -> None:
        for _ in self.chunks():
            pass


def _archive(cursor: _Cursor, segment: Segment, archive: int) -> Iterator[tuple[Header, Body]]:
    """The members of one archive up to its trailer."""
    while True:
        at = cursor.offset
        fields, crc = _fields(cursor, at)
        path = _name(cursor, fields["namesize"], at)
        cursor.align("padding")
        if path == TRAILER:
            return
        header = Header(
            path=path,
            mode=fields["mode"],
            size=fields["filesize"],
            ino=fields["ino"],
            nlink=fields["nlink"],
            uid=fields["uid"],
            gid=fields["gid"],
            mtime=fields["mtime"],
            dev=(fields["devmajor"], fields["devminor"]),
            rdev=(fields["rdevmajor"], fields["rdevminor"]),
            segment=segment,
            archive=archive,
            offset=at,
        )
        if stat.S_ISLNK(header.mode) and not 0 < header.size <= PATH_MAX:
            raise _corrupt(cursor, at, f"symlink {path!r} has a target of {header.size} bytes")
        # 070702 sums the content of regular files only.
        checked = crc and stat.S_ISREG(header.mode)
        body = Body(cursor, header, fields["check"] if checked else None)
        yield header, body
        body.skip()
        cursor.align("padding")


def _fields(cursor: _Cursor, at: int) -> tuple[dict[str, int], bool]:
    raw = cursor.read(HEADER_SIZE, "the entry header", at)
    magic = raw[:6]
    if magic not in (MAGIC, CRC_MAGIC):
        raise ArchiveError(
            f"{cursor.name}: corrupt archive: bad magic {magic!r} at {cursor.where(at)} "
            "(a newc header starts with 070701)"
        )
    digits = raw[6:]
    if not all(chr(c) in "0123456789abcdefABCDEF" for c in digits):
        raise _corrupt(cursor, at, "the header has a field that is not hexadecimal")
    values = [int(digits[8 * i : 8 * i + 8], 16) for i in range(len(_FIELDS))]
    return dict(zip(_FIELDS, values, strict=True)), magic == CRC_MAGIC


def _name(cursor: _Cursor, size: int, at: int) -> str:
    if not 1 < size <= PATH_MAX:
        raise _corrupt(cursor, at, f"a name of {size} bytes")
    raw = cursor.read(size, "the entry name", at)
    if raw[-1] != 0:
        raise _corrupt(cursor, at, "the name does not end in a NUL byte")
    # The kernel reads the name as a C string: it ends at the first NUL.
    name = raw.partition(b"\0")[0]
    if not name:
        raise _corrupt(cursor, at, "an empty name")
    return name.decode("utf-8", "surrogateescape")


def _corrupt(cursor: _Cursor, at: int, problem: str) -> ArchiveError:
    return ArchiveError(
        f"{cursor.name}: corrupt archive: {problem} in the entry header at {cursor.where(at)}"
    )


# --- segments ------------------------------------------------------------------------


class _Plain:
    """An uncompressed segment: the file itself, from where the segment starts."""

    def __init__(self, raw: BinaryIO, start: int) -> None:
        self.raw = raw
        self.position = start

    def read(self, size: int = -1, /) -> bytes:
        self.raw.seek(self.position)
        data = self.raw.read(size)
        self.position += len(data)
        return data


RAW_CHUNK = 1 << 16
OUTPUT_LIMIT = 16 << 20  # at most this much decompressed output per step
ZSTD_STEP = 512  # zstd's decompressobj has no output limit; 512 bytes make at most ~16 MiB


class _Decoder(Protocol):
    eof: bool
    unused_data: bytes

    def decode(self, data: bytes) -> bytes: ...
    def wants_input(self) -> bool: ...
    def finish(self) -> None: ...


class _Decompressed:
    """The decompressed bytes of one segment, read from raw in steps.

    Knows where its compressed data ends (what the decoder left unused), which is where
    the next segment starts.
    """

    def __init__(self, raw: BinaryIO, start: int, compression: str, name: str) -> None:
        self.raw = raw
        self.compression = compression
        self.name = name
        self.buffer = bytearray()
        self._begin(start)

    def _begin(self, start: int) -> None:
        self.frame_start = start
        self.fed = 0  # raw bytes given to the decoder
        self.decoder = _decoder(self.compression)

    def read(self, size: int = -1, /) -> bytes:
        while (size < 0 or len(self.buffer) < size) and not self.decoder.eof:
            self._step()
        size = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def peek_nonzero(self, cursor: _Cursor) -> bytes:
        """Drop NUL padding; the next few bytes (not consumed), or b"" at the end."""
        while True:
            stripped = len(self.buffer) - len(self.buffer.lstrip(b"\0"))
            del self.buffer[:stripped]
            cursor.offset += stripped
            if len(self.buffer) >= 6 or (self.buffer and self.decoder.eof):
                return bytes(self.buffer[:6])
            if self.decoder.eof:
                return b""
            self._step()

    def end(self) -> int:
        """The file offset just past this segment's compressed data."""
        return self.frame_start + self.fed - len(self.decoder.unused_data)

    def next_frame(self) -> bool:
        """Continue into the next frame when it has the same compression (pigz, xz -T)."""
        if not self.decoder.eof:
            return False
        start = self.end()
        self.raw.seek(start)
        if compression_of(self.raw.read(8)) != self.compression:
            return False
        self._begin(start)
        return True

    def _step(self) -> None:
        data = b""
        if self.decoder.wants_input():
            self.raw.seek(self.frame_start + self.fed)
            data = self.raw.read(RAW_CHUNK)
            self.fed += len(data)
        try:
            if self.decoder.wants_input() and not data:
                self.decoder.finish()  # the file ends inside the compressed data
                return
            self.buffer += self.decoder.decode(data)
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error, lzma.LZMAError,
                zstandard.ZstdError) as exc:  # fmt: skip
            raise ArchiveError(
                f"{self.name}: corrupt {self.compression} data in the segment at offset "
                f"{self.frame_start} of the file: {exc}"
            ) from None


def _decoder(compression: str) -> _Decoder:
    if compression == "gzip":
        return _ZlibDecoder()
    if compression == "zstd":
        return _ZstdDecoder()
    if compression == "lz4":
        return _Lz4LegacyDecoder()
    if compression == "bzip2":
        return _LimitedDecoder(bz2.BZ2Decompressor(), compression)
    if compression == "xz":
        return _LimitedDecoder(lzma.LZMADecompressor(lzma.FORMAT_XZ), compression)
    return _LimitedDecoder(lzma.LZMADecompressor(lzma.FORMAT_ALONE), compression)


def _cut_short(compression: str) -> ValueError:
    return ValueError(f"truncated: the file ends inside the {compression} data")


class _LimitedDecoder:
    """lzma and bz2 decompressors, which take an output limit and keep the rest."""

    def __init__(self, decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor, kind: str):
        self.decompressor = decompressor
        self.kind = kind
        self.eof = False
        self.unused_data = b""

    def decode(self, data: bytes) -> bytes:
        out = self.decompressor.decompress(data, OUTPUT_LIMIT)
        self.eof = self.decompressor.eof
        self.unused_data = self.decompressor.unused_data
        return out

    def wants_input(self) -> bool:
        return self.decompressor.needs_input

    def finish(self) -> None:
        raise _cut_short(self.kind)


class _ZlibDecoder:
    def __init__(self) -> None:
        self.decompressor = zlib.decompressobj(wbits=31)  # gzip wrapper
        self.eof = False
        self.unused_data = b""

    def decode(self, data: bytes) -> bytes:
        out = self.decompressor.decompress(self.decompressor.unconsumed_tail + data, OUTPUT_LIMIT)
        self.eof = self.decompressor.eof
        self.unused_data = self.decompressor.unused_data
        return out

    def wants_input(self) -> bool:
        return not self.decompressor.unconsumed_tail

    def finish(self) -> None:
        raise _cut_short("gzip")


class _ZstdDecoder:
    """Feeds the decompressor ZSTD_STEP bytes at a time, from an offset into the pending
    input: slicing the rest off on every step copied it again each time (quadratic)."""

    def __init__(self) -> None:
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        self.pending = b""
        self.at = 0  # how much of pending the decompressor has had
        self.eof = False
        self.unused_data = b""

    def decode(self, data: bytes) -> bytes:
        if data:
            self.pending = self.pending[self.at :] + data
            self.at = 0
        step = self.pending[self.at : self.at + ZSTD_STEP]
        self.at += len(step)
        out = self.decompressor.decompress(step)
        if self.decompressor.eof:
            self.eof = True
            self.unused_data = self.decompressor.unused_data + self.pending[self.at :]
        return out

    def wants_input(self) -> bool:
        return self.at >= len(self.pending)

    def finish(self) -> None:
        raise _cut_short("zstd")


# The most a block of LZ4_LEGACY_BLOCK bytes can take compressed (LZ4_compressBound).
_LZ4_BOUND = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16


class _Lz4LegacyDecoder:
    """The legacy frame: the magic, then blocks each after its little-endian size.

    The format has no end marker. Like the kernel, the frame ends with the file; unlike
    it, also at a word that cannot be a block size (NUL padding, another magic), so a
    segment may follow it.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.eof = False
        self.unused_data = b""

    def decode(self, data: bytes) -> bytes:
        self.pending += data
        out = []
        while len(self.pending) >= 4:
            (size,) = struct.unpack_from("<I", self.pending)
            if size == LZ4_LEGACY_MAGIC:  # a new frame: the kernel reads on
                self.pending = self.pending[4:]
                continue
            if not 0 < size <= _LZ4_BOUND:
                self.eof = True
                self.unused_data, self.pending = self.pending, b""
                break
            if len(self.pending) < 4 + size:
                break
            block, self.pending = self.pending[4 : 4 + size], self.pending[4 + size :]
            try:
                out.append(lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK))
            except lz4.block.LZ4BlockError as exc:
                raise ValueError(f"bad lz4 block: {exc}") from None
        return b"".join(out)

    def wants_input(self) -> bool:
        return not self.eof

    def finish(self) -> None:
        if len(self.pending) >= 4:
            raise _cut_short("lz4")
        self.eof = True
        self.unused_data, self.pending = self.pending, b""
