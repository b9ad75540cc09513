"""Compressors the kernel can unpack, run in-process on the cpio stream.

Each is a context manager yielding a writable sink over `out`; leaving it flushes the
last frame. The output is a pure function of the input and the level (gzip stores no
name or time), which keeps images reproducible.
"""

from __future__ import annotations

import enum
import gzip
import lzma
import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO

import lz4.block
import zstandard

from bookend.archive.cpio import Sink


class Compression(enum.Enum):
    ZSTD = "zstd"
    XZ = "xz"
    GZIP = "gzip"
    LZ4 = "lz4"
    NONE = "none"


# The levels each compressor accepts, and the one used when none is asked for.
LEVELS = {
    Compression.ZSTD: (1, 19),
    Compression.XZ: (0, 9),
    Compression.GZIP: (1, 9),
    Compression.LZ4: (1, 12),
    Compression.NONE: (0, 0),
}
# zstd 9, as Debian's mkinitramfs uses (dracut uses 15): on this project's host images
# level 15 made them 1.1-1.2% smaller for 7 times the CPU (26 MB of cpio: 0.7 s at 9,
# 5 s at 15), and zstd unpacks as fast at either level, so a boot gains nothing.
DEFAULT_LEVELS = {
    Compression.ZSTD: 9,
    Compression.XZ: 6,
    Compression.GZIP: 9,
    Compression.LZ4: 9,
    Compression.NONE: 0,
}

# The exitrd is never unpacked by the kernel: `install-exitrd` unpacks it once into a tree
# and shutdown copies the tree, so its compressor costs build time, install time and
# space in /boot, never shutdown time (bench/results/2026-12-03-exitrd-size.md). zstd 3,
# the default, takes 0.04 s of CPU for Debian 13's standalone exitrd (2.10 MB) and 0.2 s
# for Debian 12's (7.0 MB); xz 6 with the sysroot's branch filter writes the smallest
# images, 1.53 MB and 5.1 MB, for 2.5 s and 9.4 s more on this host, which every build
# would pay (kernel installs, and the builds the VM tests run inside emulated guests,
# where CPU costs several times more), while the image's size costs only /boot space.
EXITRD_DEFAULT_LEVELS = {**DEFAULT_LEVELS, Compression.ZSTD: 3}

# The kernel's unlz4 reads the legacy format: this magic, then blocks of at most 8 MiB
# of input, each preceded by its compressed size.
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20

# zstd's workers each compress one job of this much input. Left to zstd, a job is four
# windows (16 MiB at level 9), so a 26 MB initrd made two jobs and a 16 MB exitrd one:
# one core worked while the other waited. 4 MiB jobs keep two cores busy for 0.5% more
# bytes (this project's hostonly pair at load 1, median of 4: 1.01 s -> 0.79 s, 16.15 ->
# 16.23 MB).
# Fixed, never derived from the thread count: the bytes must not depend on the machine.
ZSTD_JOB_SIZE = 4 << 20


@contextmanager
def open_compressor(
    compression: Compression,
    out: BinaryIO,
    level: int | None = None,
    threads: int = 0,
    branch_filter: int | None = None,
) -> Iterator[Sink]:
    """threads: zstd's and lz4's workers, 0 for one per CPU; Python's lzma and gzip have one.
    branch_filter: xz only, a branch converter (lzma.FILTER_X86...) before LZMA2: only for
    what Python unpacks, since the kernel's xz has only those its configuration chose."""
    chosen = DEFAULT_LEVELS[compression] if level is None else level
    if compression is Compression.ZSTD:
        # Always workers (-1: one per CPU), never zstd's single-threaded mode: its output
        # differs, while with workers it is the same whatever their number.
        workers = threads or -1
        parameters = zstandard.ZstdCompressionParameters.from_level(
            chosen, threads=workers, job_size=ZSTD_JOB_SIZE, write_checksum=True
        )
        compressor = zstandard.ZstdCompressor(compression_params=parameters)
        with compressor.stream_writer(out, closefd=False) as zstd_stream:
            yield zstd_stream
    elif compression is Compression.XZ:
        # The kernel's xz decoder checks CRC32 only, not the default CRC64.
        filters = None
        if branch_filter is not None:
            filters = [{"id": branch_filter}, {"id": lzma.FILTER_LZMA2, "preset": chosen}]
        with lzma.LZMAFile(
            out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
            preset=None if filters else chosen, filters=filters,
        ) as xz_stream:  # fmt: skip
            yield xz_stream
    elif compression is Compression.GZIP:
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=chosen, fileobj=out, mtime=0
        ) as gzip_stream:
            yield gzip_stream
    elif compression is Compression.LZ4:
        count = threads or os.cpu_count() or 1
        with ThreadPoolExecutor(count) as pool:
            lz4_stream = Lz4LegacyWriter(out, chosen, pool, count)
            yield lz4_stream
            lz4_stream.close()
    else:
        yield out


class Lz4LegacyWriter:
    """The lz4 legacy frame (what `lz4 -l` writes), the only lz4 format Linux unpacks.

    Its blocks are independent, so workers compress them side by side (lz4 lets go of
    the GIL), at most one block per worker waiting; they are written in order, so the
    bytes are the same whatever the number of workers."""

    def __init__(
        self, out: BinaryIO, level: int, workers: Executor | None = None, limit: int = 1
    ) -> None:
        self.out = out
        self.level = level
        self.workers = workers
        self.limit = limit  # blocks waiting for a worker or to be written
        self.pending = bytearray()
        self.running: deque[Future[bytes]] = deque()
        out.write(struct.pack("<I", LZ4_LEGACY_MAGIC))

    def write(self, data: bytes, /) -> int:
        self.pending += data
        while len(self.pending) >= LZ4_LEGACY_BLOCK:
            self._flush_block(bytes(self.pending[:LZ4_LEGACY_BLOCK]))
            del self.pending[:LZ4_LEGACY_BLOCK]
        return len(data)

    def close(self) -> None:
        if self.pending:
            self._flush_block(bytes(self.pending))
            self.pending.clear()
        while self.running:
            self._write_oldest()

    def _flush_block(self, block: bytes) -> None:
        if self.workers is None:
            self._write_packed(_lz4_block(block, self.level))
            return
        self.running.append(self.workers.submit(_lz4_block, block, self.level))
        while len(self.running) > self.limit:
            self._write_oldest()

    def _write_oldest(self) -> None:
        self._write_packed(self.running.popleft().result())

    def _write_packed(self, packed: bytes) -> None:
        self.out.write(struct.pack("<I", len(packed)) + packed)


def _lz4_block(block: bytes, level: int) -> bytes:
    packed: bytes = lz4.block.compress(
        block, mode="high_compression", compression=level, store_size=False
    )
    return packed
