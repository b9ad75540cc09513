"""Reading whole images: segments, every compression the kernel knows, and damage.

The compressed segments are made by the real tools (gzip, xz, zstd, lz4 -l, bzip2,
lzma) and the archives by GNU cpio, so the reader is held to what other programs write,
not to bookend's own writer. The small newc crafter that writes archives no honest
tool would is in newcfile.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from bookend.archive.reader import read_image
from bookend.errors import ArchiveError
from bookend.inspect.image import scan_image
from tests.unit.newcfile import S_IFDIR, S_IFLNK, archive, newc, trailer


def listing(image: Path) -> list[tuple[int, str, str]]:
    """(segment, compression, path) of every entry."""
    scan = scan_image(image)
    return [(e.segment.index, e.segment.compression, e.path) for e in scan.entries]


def gnu_cpio(tree: Path, names: list[str]) -> bytes:
    result = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, check=True,
                            input="\n".join(names).encode(), capture_output=True)  # fmt: skip
    return result.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(os.urandom(3000) + b"tool" * 20000)
    (root / "usr/bin/tool").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("fixture\n")
    return root


TREE_NAMES = ["bin", "etc", "etc/hostname", "usr", "usr/bin", "usr/bin/tool"]

# (tool command line, compression name); each must write what the kernel unpacks.
COMPRESSORS = [
    (["gzip", "-n", "-c"], "gzip"),
    (["xz", "--check=crc32", "-c"], "xz"),
    (["zstd", "-q", "-c"], "zstd"),
    (["lz4", "-l", "-q", "-c"], "lz4"),
    (["bzip2", "-c"], "bzip2"),
    (["lzma", "-c"], "lzma"),
]


def compress(tool: list[str], data: bytes) -> bytes:
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed")
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize(("tool", "kind"), COMPRESSORS, ids=[c[1] for c in COMPRESSORS])
def test_early_cpio_then_each_compression(
    tool: list[str], kind: str, tree: Path, tmp_path: Path
) -> None:
    early = archive(newc("kernel", S_IFDIR | 0o755), newc("kernel/x86", S_IFDIR | 0o755),
                    newc("kernel/x86/microcode", S_IFDIR | 0o755),
                    newc("kernel/x86/microcode/GenuineIntel.bin", data=b"\x01" * 1000))  # fmt: skip
    main = compress(tool, gnu_cpio(tree, TREE_NAMES))
    image = tmp_path / "initrd.img"
    # Padding between segments, as mkinitramfs and dracut leave it.
    image.write_bytes(early + b"\0" * 512 + main)
    scan = scan_image(image)
    assert [(s.index, s.compression, s.offset) for s in scan.segments] == [
        (0, "none", 0),
        (1, kind, len(early) + 512),
    ]
    entries = scan.final()
    assert entries["kernel/x86/microcode/GenuineIntel.bin"].size == 1000
    assert entries["bin"].target == "usr/bin"
    assert entries["usr/bin/tool"].mode == 0o755
    assert entries["usr/bin/tool"].size == (tree / "usr/bin/tool").stat().st_size
    assert [e.path for e in scan.entries if e.segment.index == 1] == TREE_NAMES


@pytest.mark.parametrize(("tool", "kind"), COMPRESSORS, ids=[c[1] for c in COMPRESSORS])
def test_content_read_back_is_the_content_written(
    tool: list[str], kind: str, tree: Path, tmp_path: Path
) -> None:
    image = tmp_path / "initrd.img"
    image.write_bytes(compress(tool, gnu_cpio(tree, TREE_NAMES)))
    with image.open("rb") as raw:
        contents = {h.path: b.read() for h, b in read_image(raw, str(image))}
    assert contents["usr/bin/tool"] == (tree / "usr/bin/tool").read_bytes()
    assert contents["etc/hostname"] == b"fixture\n"


def test_compressed_segments_one_after_another(tree: Path, tmp_path: Path) -> None:
    first = compress(["zstd", "-q", "-c"], gnu_cpio(tree, ["etc", "etc/hostname"]))
    second = compress(["xz", "--check=crc32", "-c"], gnu_cpio(tree, ["usr", "usr/bin"]))
    third = compress(["gzip", "-n", "-c"], gnu_cpio(tree, ["bin"]))
    image = tmp_path / "initrd.img"
    image.write_bytes(first + second + b"\0" * 3 + third)
    assert listing(image) == [
        (0, "zstd", "etc"),
        (0, "zstd", "etc/hostname"),
        (1, "xz", "usr"),
        (1, "xz", "usr/bin"),
        (2, "gzip", "bin"),
    ]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz"])
def test_an_archive_split_across_frames_is_one_segment(
    kind: str, tree: Path, tmp_path: Path
) -> None:
    # pigz, zstd -T and xz -T may write several frames; the kernel reads across them.
    tool = {"gzip": ["gzip", "-n", "-c"], "zstd": ["zstd", "-q", "-c"],
            "xz": ["xz", "--check=crc32", "-c"]}[kind]  # fmt: skip
    data = gnu_cpio(tree, TREE_NAMES)
    middle = len(data) // 2
    image = tmp_path / "initrd.img"
    image.write_bytes(compress(tool, data[:middle]) + compress(tool, data[middle:]))
    assert listing(image) == [(0, kind, name) for name in TREE_NAMES]


def test_a_large_zstd_segment_then_another(tmp_path: Path) -> None:
    # Far more than one raw read of compressed input, so the decoder's leftover input
    # (fed a step at a time) must carry over reads and end exactly where gzip starts.
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(300_000)
    (tree / "big").write_bytes(big)
    (tree / "etc").mkdir()
    first = compress(["zstd", "-q", "-c"], gnu_cpio(tree, ["big"]))
    second = compress(["gzip", "-n", "-c"], gnu_cpio(tree, ["etc"]))
    assert len(first) > 4 * (1 << 16)
    image = tmp_path / "initrd.img"
    image.write_bytes(first + second)
    with image.open("rb") as raw:
        contents = {h.path: b.read() for h, b in read_image(raw, str(image))}
    assert contents["big"] == big
    assert listing(image) == [(0, "zstd", "big"), (1, "gzip", "etc")]


def test_several_archives_inside_one_compressed_segment(tree: Path, tmp_path: Path) -> None:
    data = gnu_cpio(tree, ["etc", "etc/hostname"]) + gnu_cpio(tree, ["bin"])
    image = tmp_path / "initrd.img"
    image.write_bytes(compress(["zstd", "-q", "-c"], data))
    assert listing(image) == [(0, "zstd", "etc"), (0, "zstd", "etc/hostname"), (0, "zstd", "bin")]


def test_gnu_cpio_hard_links_share_their_content(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"shared content")
    os.link(tree / "a", tree / "b")
    image = tmp_path / "initrd.img"
    image.write_bytes(gnu_cpio(tree, ["a", "b"]))
    entries = scan_image(image, digests=True).final()
    # GNU cpio writes the content with the last link only.
    assert entries["a"].size == entries["b"].size == len(b"shared content")
    assert entries["a"].digest == entries["b"].digest
    assert entries["b"].hardlink == "a"


# --- damaged and hostile images --------------------------------------------------------

GOOD = newc("etc", S_IFDIR | 0o755) + newc("etc/x", data=b"hello")


def damaged_cases() -> dict[str, tuple[bytes, str]]:
    """Name -> (image bytes, what the one-line error must say)."""
    whole = archive(newc("etc", S_IFDIR | 0o755), newc("etc/x", data=b"hello"))
    return {
        "empty": (b"", "empty image"),
        "only padding": (b"\0" * 64, "empty image"),
        "odc cpio": (b"070707" + whole[6:], "magic b'070707': the kernel reads only newc"),
        "bad magic": (whole[:116] + b"07X701" + whole[122:], "bad magic b'07X701' at offset 116"),
        "garbage": (b"MZ\x90\x00" + b"x" * 200, "unrecognised data at offset 0"),
        "truncated header": (whole[:50], "entry header at offset 0 of the file is cut short"),
        "truncated second header": (
            whole[: len(newc("etc", S_IFDIR | 0o755)) + 20],
            "entry header at offset 116 of the file is cut short",
        ),
        "truncated body": (whole[:234], "the body of 'etc/x' at offset 232 of the file"),
        "no trailer": (GOOD, "entry header at offset 240 of the file is cut short"),
        "name without NUL": (
            archive(newc("etc", S_IFDIR | 0o755, nul=False)),
            "the name does not end in a NUL byte in the entry header at offset 0",
        ),
        "absurd name size": (
            archive(newc("etc", namesize=0xFFFFFFFF)),
            "a name of 4294967295 bytes",
        ),
        "zero name size": (archive(newc("etc", namesize=0)), "a name of 0 bytes"),
        "absurd file size": (
            archive(newc("etc/x", data=b"hello", filesize=0xFFFFFFFF)),
            "the body of 'etc/x' at offset 116 of the file is cut short",
        ),
        "absurd symlink size": (
            archive(newc("l", S_IFLNK | 0o777, b"t", filesize=0x7FFFFFFF)),
            "symlink 'l' has a target of 2147483647 bytes",
        ),
        "not hexadecimal": (
            whole[:10] + b"+1 2" + whole[14:],
            "a field that is not hexadecimal in the entry header at offset 0",
        ),
        "bad checksum": (
            archive(newc("etc/x", data=b"hello", magic=b"070702", check=1)),
            "does not match its checksum",
        ),
        "junk after a segment": (whole + b"JUNK", "unrecognised data at offset 364"),
        "lzo": (b"\x89LZO\x00" + b"\0" * 40, "lzo is not supported"),
    }


@pytest.mark.parametrize("case", sorted(damaged_cases()))
def test_damaged_images_raise_one_line_errors_naming_the_place(case: str, tmp_path: Path) -> None:
    data, expected = damaged_cases()[case]
    image = tmp_path / "bad.img"
    image.write_bytes(data)
    with pytest.raises(ArchiveError) as error:
        scan_image(image, digests=True)
    message = str(error.value)
    assert expected in message
    assert message.startswith(f"{image}: ") and "\n" not in message


def test_a_good_checksum_passes(tmp_path: Path) -> None:
    image = tmp_path / "crc.img"
    image.write_bytes(archive(newc("x", data=b"hello", magic=b"070702", check=sum(b"hello"))))
    assert scan_image(image).final()["x"].size == 5


@pytest.mark.parametrize(("tool", "kind"), COMPRESSORS, ids=[c[1] for c in COMPRESSORS])
def test_truncated_compressed_data_is_an_error(
    tool: list[str], kind: str, tree: Path, tmp_path: Path
) -> None:
    whole = compress(tool, gnu_cpio(tree, TREE_NAMES))
    image = tmp_path / "cut.img"
    image.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ArchiveError) as error:
        scan_image(image)
    assert str(error.value).startswith(f"{image}: ")
    assert "segment 0" in str(error.value) or f"{kind} data" in str(error.value)


def test_corrupt_compressed_data_names_the_segment(tree: Path, tmp_path: Path) -> None:
    early = archive(newc("early", data=b"e"))
    good = compress(["gzip", "-n", "-c"], gnu_cpio(tree, TREE_NAMES))
    image = tmp_path / "corrupt.img"
    image.write_bytes(early + good[:20] + bytes(b ^ 0x5A for b in good[20:200]) + good[200:])
    with pytest.raises(ArchiveError, match=f"gzip data in the segment at offset {len(early)}"):
        scan_image(image)


def test_junk_inside_a_compressed_segment_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "junk.img"
    inner = archive(newc("a"))
    image.write_bytes(compress(["zstd", "-q", "-c"], inner + b"\0\0\0\0JUNK"))
    at = len(inner) + 4
    with pytest.raises(ArchiveError, match=f"junk in the archive at offset {at} of segment 0"):
        scan_image(image)


def test_a_compressed_segment_of_padding_only(tmp_path: Path) -> None:
    image = tmp_path / "padded.img"
    image.write_bytes(archive(newc("a")) + compress(["gzip", "-n", "-c"], b"\0" * 4096)
                      + compress(["zstd", "-q", "-c"], b"\0" * 8 + archive(newc("b"))))  # fmt: skip
    assert listing(image) == [(0, "none", "a"), (2, "zstd", "b")]


def test_a_decompression_bomb_is_read_in_bounded_memory(tmp_path: Path) -> None:
    # 1 GiB of zeros as one member compresses to a few kilobytes; listing it must stream
    # it through, never hold it whole.
    size = 1 << 30
    image = tmp_path / "bomb.img"
    with image.open("wb") as out, zstandard.ZstdCompressor(level=3).stream_writer(out) as zstd:
        zstd.write(newc("zeros", filesize=size))
        zero = bytes(1 << 20)
        for _ in range(size >> 20):
            zstd.write(zero)
        zstd.write(trailer())
    assert image.stat().st_size < 1 << 20
    # VmHWM, not getrusage's ru_maxrss: that one carries over the peak of the forking
    # parent (pytest, large by then) across exec.
    script = (
        "import sys; from pathlib import Path;"
        "from bookend.inspect.image import scan_image;"
        "print(scan_image(Path(sys.argv[1])).final()['zeros'].size);"
        "status = Path('/proc/self/status').read_text().splitlines();"
        "print(next(line.split()[1] for line in status if line.startswith('VmHWM:')))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(image)], capture_output=True,
                            text=True, check=True)  # fmt: skip
    listed, peak_kib = (int(line) for line in result.stdout.split())
    assert listed == size
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"
