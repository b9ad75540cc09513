"""The cpio writer, compressors and atomic replace, checked with independent tools."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from bookend.archive import (
    ArchiveEntry,
    Compression,
    EntryKind,
    open_compressor,
    source_date_epoch,
    write_atomically,
    write_cpio,
)
from bookend.archive.compress import ZSTD_JOB_SIZE
from bookend.errors import ArchiveError

# What each compressor's own command line tool needs to decompress to stdout.
DECOMPRESS = {
    Compression.ZSTD: ["zstd", "-dc"],
    Compression.XZ: ["xz", "-dc"],
    Compression.GZIP: ["gzip", "-dc"],
    Compression.LZ4: ["lz4", "-dc"],
}


def sample_entries(tree: Path) -> list[ArchiveEntry]:
    """A little image: dirs, a streamed file, generated data, links and device nodes."""
    (tree / "bin").mkdir(parents=True)
    big = tree / "bin/tool"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 3))  # not a multiple of 4 or of a chunk
    (tree / "empty").write_bytes(b"")
    return [
        ArchiveEntry("/usr/bin/tool", EntryKind.FILE, 0o755, source=big, mtime=2_000_000_000),
        ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755, mtime=5),
        ArchiveEntry("/usr/bin", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/usr-bin-sibling", EntryKind.FILE, 0o600, source=tree / "empty"),
        ArchiveEntry("/etc", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/etc/hostname", EntryKind.FILE, 0o644, data=b"bookend\n"),
        ArchiveEntry("/bin", EntryKind.SYMLINK, 0o777, target="usr/bin"),
        ArchiveEntry("/init", EntryKind.SYMLINK, 0o777, target="usr/bin/tool"),
        ArchiveEntry("/dev", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=os.makedev(5, 1)),
        ArchiveEntry("/dev/sda", EntryKind.BLOCK_DEVICE, 0o660, rdev=os.makedev(8, 0)),
    ]


def cpio_bytes(entries: list[ArchiveEntry], epoch: int = 0) -> bytes:
    buffer = io.BytesIO()
    write_cpio(entries, buffer, epoch=epoch)
    return buffer.getvalue()


def test_bsdtar_lists_every_entry_with_type_owner_and_target(tmp_path: Path) -> None:
    image = tmp_path / "image.cpio"
    image.write_bytes(cpio_bytes(sample_entries(tmp_path / "src")))
    listing = subprocess.run(
        ["bsdtar", "-tvf", str(image)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing]
    assert names == [
        "bin",
        "dev",
        "dev/console",
        "dev/sda",
        "etc",
        "etc/hostname",
        "init",
        "usr",
        "usr/bin",
        "usr/bin/tool",
        "usr-bin-sibling",
    ]
    by_name = dict(zip(names, listing, strict=True))
    assert by_name["bin"].startswith("lrwxrwxrwx") and by_name["bin"].endswith("bin -> usr/bin")
    assert by_name["dev/console"].startswith("crw-------")
    assert by_name["dev/sda"].startswith("brw-rw----")
    assert by_name["usr/bin/tool"].startswith("-rwxr-xr-x")
    assert all(" root " in line or " 0 " in line for line in listing)


def test_gnu_cpio_extracts_identical_contents(tmp_path: Path) -> None:
    source = tmp_path / "src"
    entries = sample_entries(source)
    files = [
        e
        for e in entries
        if e.kind is not EntryKind.CHAR_DEVICE and e.kind is not EntryKind.BLOCK_DEVICE
    ]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        cwd=out,
        check=True,
        input=cpio_bytes(files),
    )
    assert (out / "usr/bin/tool").read_bytes() == (source / "bin/tool").read_bytes()
    assert (out / "etc/hostname").read_bytes() == b"bookend\n"
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "usr-bin-sibling").stat().st_size == 0


def test_mtimes_are_clamped_to_the_epoch_and_owners_are_root(tmp_path: Path) -> None:
    data = cpio_bytes(sample_entries(tmp_path / "src"), epoch=1000)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True
    ).stdout.decode()
    # cpio -tv prints owner names; mtimes: 1000 (clamped) or 5 (older, kept), both in 1970.
    for line in listing.splitlines():
        assert line.split()[2:4] == ["root", "root"], line
        assert "1970" in line, line
    for entry in (ArchiveEntry("/x", EntryKind.DIRECTORY, 0o755, mtime=5),):
        header = cpio_bytes([entry], epoch=1000)
        assert header[6 + 5 * 8 : 6 + 6 * 8] == b"%08X" % 5


def test_two_writes_are_byte_identical_and_order_independent(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path / "src")
    first = cpio_bytes(entries)
    assert cpio_bytes(list(reversed(entries))) == first
    assert len(first) % 4 == 0


def test_headers_follow_newc_layout(tmp_path: Path) -> None:
    data = cpio_bytes([ArchiveEntry("/a", EntryKind.FILE, 0o644, data=b"xyz")])
    assert data[:6] == b"070701"
    fields = [int(data[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    inode, mode, uid, gid, nlink, mtime, size, *_, namesize, check = fields
    assert (inode, mode, uid, gid, nlink, mtime, size, namesize, check) == (
        1,
        0o100644,
        0,
        0,
        1,
        0,
        3,
        2,
        0,
    )
    assert data[110:112] == b"a\0"
    assert data[112:115] == b"xyz"  # header + name = 112, already 4-aligned
    assert b"TRAILER!!!\0" in data[116:]


@pytest.mark.parametrize("problem", ["duplicate", "missing", "grows", "no-target", "no-rdev"])
def test_bad_entries_raise_a_one_line_error_naming_the_path(tmp_path: Path, problem: str) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"1234")
    entry = ArchiveEntry("/f", EntryKind.FILE, 0o644, source=source)
    entries = {
        "duplicate": [entry, ArchiveEntry("/f/", EntryKind.DIRECTORY, 0o755)],
        "missing": [ArchiveEntry("/g", EntryKind.FILE, 0o644, source=tmp_path / "gone")],
        "grows": [entry],
        "no-target": [ArchiveEntry("/l", EntryKind.SYMLINK, 0o777)],
        "no-rdev": [ArchiveEntry("/c", EntryKind.CHAR_DEVICE, 0o600)],
    }[problem]

    class GrowingSink(io.BytesIO):
        """Appends to the source after its header is written, as a concurrent writer would."""

        def write(self, data: bytes, /) -> int:  # type: ignore[override]
            if problem == "grows" and data.startswith(b"070701") and b"f\0" in data:
                with open(source, "ab") as grow:
                    grow.write(b"more")
            return super().write(data)

    with pytest.raises(ArchiveError) as raised:
        write_cpio(entries, GrowingSink(), epoch=0)
    message = str(raised.value)
    assert "\n" not in message
    assert {
        "duplicate": "/f",
        "missing": "gone",
        "grows": str(source),
        "no-target": "/l",
        "no-rdev": "/c",
    }[problem] in message


@pytest.mark.parametrize("compression", list(DECOMPRESS))
def test_each_compressor_round_trips_through_its_own_tool(
    tmp_path: Path, compression: Compression
) -> None:
    raw = cpio_bytes(sample_entries(tmp_path / "src"))
    packed = io.BytesIO()
    with open_compressor(compression, packed, None) as stream:
        stream.write(raw)
    decompressed = subprocess.run(
        DECOMPRESS[compression], input=packed.getvalue(), capture_output=True, check=True
    ).stdout
    assert decompressed == raw


def test_xz_uses_the_crc32_check_the_kernel_requires() -> None:
    packed = io.BytesIO()
    with open_compressor(Compression.XZ, packed, 0) as stream:
        stream.write(b"x" * 1000)
    # Stream flags (bytes 6-7 of the header): check type 0x01 is CRC32.
    assert packed.getvalue()[:8] == b"\xfd7zXZ\x00\x00\x01"


def test_lz4_writes_the_legacy_frame_in_8_mib_blocks() -> None:
    packed = io.BytesIO()
    with open_compressor(Compression.LZ4, packed, 1) as stream:
        stream.write(os.urandom(9 << 20))
    data = packed.getvalue()
    assert data[:4] == bytes.fromhex("02214c18")
    first_block = int.from_bytes(data[4:8], "little")
    second_block = int.from_bytes(data[8 + first_block : 12 + first_block], "little")
    assert first_block >= 8 << 20  # random input does not shrink
    assert 8 + first_block + 4 + second_block == len(data)


def test_lz4_threads_change_the_speed_not_the_bytes() -> None:
    # Four blocks and a short one, compressed by 1, 3 and one-per-CPU workers.
    rng = random.Random(9)
    raw = b"".join(rng.randbytes(1 << 16) + bytes(range(256)) * 256 for _ in range(270))
    images = {}
    for threads in (1, 3, 0):
        packed = io.BytesIO()
        with open_compressor(Compression.LZ4, packed, 1, threads) as stream:
            for at in range(0, len(raw), 1 << 20):
                stream.write(raw[at : at + (1 << 20)])
        images[threads] = packed.getvalue()
    assert images[1] == images[3] == images[0]
    unpacked = subprocess.run(["lz4", "-dc"], input=images[3], capture_output=True, check=True)
    assert unpacked.stdout == raw


def test_none_passes_bytes_through() -> None:
    packed = io.BytesIO()
    with open_compressor(Compression.NONE, packed, None) as stream:
        stream.write(b"070701")
    assert packed.getvalue() == b"070701"


def test_source_date_epoch() -> None:
    assert source_date_epoch({}) == 0
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1700000000
    with pytest.raises(ArchiveError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old image")

    def fail_halfway(out: BinaryIO) -> None:
        out.write(b"half a new ima")
        raise ArchiveError("/usr/bin/tool: changed size while it was being archived")

    # The writer's own error comes through as it was raised.
    with pytest.raises(ArchiveError) as error:
        write_atomically(target, fail_halfway)
    assert str(error.value) == "/usr/bin/tool: changed size while it was being archived"
    assert target.read_bytes() == b"old image"
    assert os.listdir(tmp_path) == ["initrd.img"]  # no temporary left behind

    def write_new_image(out: BinaryIO) -> None:
        out.write(b"new image")

    write_atomically(target, write_new_image, mode=0o600)
    assert target.read_bytes() == b"new image"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["initrd.img"]


def test_atomic_write_interrupted_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"

    def interrupted(out: BinaryIO) -> None:
        out.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing-dir", "is-dir"])
def test_atomic_write_bad_target_names_it(tmp_path: Path, where: str) -> None:
    target = tmp_path / "nowhere/initrd.img" if where == "missing-dir" else tmp_path
    with pytest.raises(ArchiveError, match=str(target)):
        write_atomically(target, lambda out: None)


def test_zstd_threads_change_the_speed_not_the_bytes() -> None:
    # Several of zstd's jobs (ZSTD_JOB_SIZE each), half incompressible.
    rng = random.Random(7)
    raw = b"".join(rng.randbytes(1 << 16) + bytes(range(256)) * 256 for _ in range(320))
    images = {}
    for threads in (1, 3, 0):  # 0: one per CPU core
        packed = io.BytesIO()
        with open_compressor(Compression.ZSTD, packed, None, threads) as stream:
            for at in range(0, len(raw), 1 << 20):  # as write_cpio copies files
                stream.write(raw[at : at + (1 << 20)])
        images[threads] = packed.getvalue()
    assert images[1] == images[3] == images[0]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(images[1]) == raw
    # zstd's single-threaded mode would write other bytes: the count is never 0 there.
    single = zstandard.ZstdCompressor(level=9, threads=0, write_checksum=True)
    assert single.compress(raw) != images[1]


def test_zstd_jobs_are_small_enough_for_every_core() -> None:
    # zstd's own job size (16 MiB at level 9) would make this one job, for one core.
    rng = random.Random(8)
    raw = b"".join(rng.randbytes(1 << 12) * 4 for _ in range(2 * ZSTD_JOB_SIZE >> 14))
    packed = io.BytesIO()
    with open_compressor(Compression.ZSTD, packed, 9, 2) as stream:
        stream.write(raw)
    default_jobs = zstandard.ZstdCompressor(level=9, threads=2, write_checksum=True)
    assert packed.getvalue() != default_jobs.compress(raw)  # the job size is ours
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed.getvalue()) == raw
