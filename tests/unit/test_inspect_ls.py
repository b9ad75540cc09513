"""`bookend ls`: entries with mode, size, target and segment, as text and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor, write_cpio
from bookend.inspect.image import scan_image
from bookend.inspect.listing import format_listing
from tests.unit.newcfile import S_IFREG, archive, newc

ROOT = Path(__file__).resolve().parents[2]


def two_segments(path: Path) -> Path:
    """An early uncompressed archive, then an lz4 one, as bookend writes them."""
    with path.open("wb") as out:
        write_cpio([ArchiveEntry("/kernel/x86/microcode/AuthenticAMD.bin", EntryKind.FILE,
                                 0o644, data=b"u" * 300)], out, epoch=0)  # fmt: skip
        with open_compressor(Compression.LZ4, out) as stream:
            write_cpio([
                ArchiveEntry("/usr/bin/big", EntryKind.FILE, 0o755, data=b"b" * 5000),
                ArchiveEntry("/etc/small", EntryKind.FILE, 0o600, data=b"s"),
                ArchiveEntry("/bin", EntryKind.SYMLINK, 0o777, target="usr/bin"),
                ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=0x501),
                ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),
            ], stream, epoch=0)  # fmt: skip
    return path


def test_text_listing_in_archive_order(tmp_path: Path) -> None:
    image = two_segments(tmp_path / "initrd.img")
    lz4_at = image.read_bytes().index(b"\x02\x21\x4c\x18")  # the legacy frame's magic
    assert format_listing(scan_image(image)).splitlines() == [
        "# segment 0: uncompressed at offset 0, 1 entries",
        f"# segment 1: lz4 at offset {lz4_at}, 5 entries",
        "-rw-r--r--   0        300  kernel/x86/microcode/AuthenticAMD.bin",
        "lrwxrwxrwx   1          7  bin -> usr/bin",
        "crw-------   1        5,1  dev/console",
        "-rw-------   1          1  etc/small",
        "drwxr-xr-x   1          0  usr",
        "-rwxr-xr-x   1       5000  usr/bin/big",
    ]


def test_sorted_by_size_and_by_name(tmp_path: Path) -> None:
    scan = scan_image(two_segments(tmp_path / "initrd.img"))
    by_size = [line.split()[-1] for line in format_listing(scan, "size").splitlines()[2:]]
    assert by_size[:3] == ["usr/bin/big", "kernel/x86/microcode/AuthenticAMD.bin", "usr/bin"]
    by_name = [line.split()[3] for line in format_listing(scan, "name").splitlines()[2:]]
    assert by_name == sorted(by_name)


def test_names_cannot_forge_lines(tmp_path: Path) -> None:
    image = tmp_path / "odd.img"
    image.write_bytes(archive(newc(b"evil\nroot-owned \xff", S_IFREG | 0o644, b"x")))
    lines = format_listing(scan_image(image)).splitlines()
    assert lines[1].endswith("evil\\x0aroot-owned \\xff")


def test_cli_json(tmp_path: Path) -> None:
    image = two_segments(tmp_path / "initrd.img")
    command = [sys.executable, "-m", "bookend", "ls", "--json", "--sort", "name", str(image)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    listing = json.loads(result.stdout)
    assert listing["size"] == image.stat().st_size
    assert [(s["index"], s["compression"], s["entries"]) for s in listing["segments"]] == [
        (0, "none", 1),
        (1, "lz4", 5),
    ]
    entries = {e["path"]: e for e in listing["entries"]}
    assert entries["bin"] == {
        "path": "bin", "type": "link", "mode": "0777", "size": 7, "target": "usr/bin",
        "device": None, "uid": 0, "gid": 0, "mtime": 0, "segment": 1, "hardlink": None,
        "secret": False,
    }  # fmt: skip
    assert entries["dev/console"]["device"] == [5, 1]
    assert entries["usr/bin/big"]["mode"] == "0755"


def test_cli_missing_image_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bookend", "ls", str(tmp_path / "none.img")],
                            capture_output=True, text=True, check=False, cwd=ROOT)  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr
        == f"bookend: {tmp_path / 'none.img'}: cannot read: No such file or directory\n"
    )
