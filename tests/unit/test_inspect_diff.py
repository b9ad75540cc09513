"""`bookend diff`: files, modules and units that differ between two images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor, write_cpio
from bookend.inspect.diff import diff_images, format_diff

ROOT = Path(__file__).resolve().parents[2]
MODS = "/usr/lib/modules/6.1.0-test/kernel"
UNITS = "/usr/lib/systemd/system"


def file(path: str, data: bytes, mode: int = 0o644) -> ArchiveEntry:
    return ArchiveEntry(path, EntryKind.FILE, mode, data=data)


def link(path: str, target: str) -> ArchiveEntry:
    return ArchiveEntry(path, EntryKind.SYMLINK, 0o777, target=target)


def image(path: Path, entries: list[ArchiveEntry], compression: Compression) -> Path:
    with path.open("wb") as out, open_compressor(compression, out) as stream:
        write_cpio(entries, stream, epoch=0)
    return path


COMMON = [
    file("/etc/same", b"same"),
    link("/bin", "usr/bin"),
    file(f"{MODS}/fs/ext4/ext4.ko", b"ext4 v1"),
    file(f"{MODS}/drivers/virtio_blk.ko", b"virtio"),
    file(f"{UNITS}/kept.service", b"[Service]\nExecStart=/bin/true\n"),
]
OLD = [
    *COMMON,
    file("/etc/removed", b"12345"),
    file("/usr/bin/grows", b"x" * 10),
    file("/usr/bin/mode", b"m", 0o644),
    link("/init", "usr/lib/systemd/systemd"),
    file("/etc/becomes-link", b"f"),
    file(f"{MODS}/fs/xfs/xfs.ko", b"xfs"),
    file(f"{MODS}/drivers/changed.ko", b"old"),
    file(f"{UNITS}/gone.service", b"[Service]\n"),
    file(f"{UNITS}/tuned.service", b"[Service]\n"),
]
NEW = [
    *COMMON,
    file("/etc/added", b"1234567"),
    file("/usr/bin/grows", b"y" * 25),
    file("/usr/bin/mode", b"m", 0o755),
    link("/init", "sbin/init"),
    link("/etc/becomes-link", "same"),
    file(f"{MODS}/fs/btrfs/btrfs.ko.zst", b"btrfs"),
    file(f"{MODS}/drivers/changed.ko", b"new!"),
    file(f"{UNITS}/new.service", b"[Service]\n"),
    file(f"{UNITS}/tuned.service", b"[Service]\n"),
    file(f"{UNITS}/tuned.service.d/override.conf", b"[Service]\nNice=5\n"),
    link(f"{UNITS}/sysinit.target.wants/kept.service", "../kept.service"),
]


def test_files_modules_and_units(tmp_path: Path) -> None:
    old = image(tmp_path / "a.img", OLD, Compression.ZSTD)
    new = image(tmp_path / "b.img", NEW, Compression.XZ)
    diff = diff_images(old, new)
    changes = {c.path: (c.status, c.aspects, c.size_change) for c in diff.changes}
    assert changes == {
        "etc/added": ("added", (), 7),
        "etc/removed": ("removed", (), -5),
        "usr/bin/grows": ("changed", ("content",), 15),
        "usr/bin/mode": ("changed", ("mode",), 0),
        "init": ("changed", ("target",), 0),
        "etc/becomes-link": ("changed", ("type", "mode"), -1),
        f"{MODS[1:]}/fs/xfs/xfs.ko": ("removed", (), -3),
        f"{MODS[1:]}/fs/btrfs/btrfs.ko.zst": ("added", (), 5),
        f"{MODS[1:]}/drivers/changed.ko": ("changed", ("content",), 1),
        f"{UNITS[1:]}/gone.service": ("removed", (), -10),
        f"{UNITS[1:]}/new.service": ("added", (), 10),
        f"{UNITS[1:]}/tuned.service.d/override.conf": ("added", (), 17),
        f"{UNITS[1:]}/sysinit.target.wants/kept.service": ("added", (), 0),
    }
    assert (diff.modules.added, diff.modules.removed, diff.modules.changed) == (
        ["btrfs"], ["xfs"], ["changed"],
    )  # fmt: skip
    assert (diff.units.added, diff.units.removed, diff.units.changed) == (
        ["new.service", "sysinit.target"], ["gone.service"], ["tuned.service"],
    )  # fmt: skip
    assert diff.content_change == 7 - 5 + 15 - 1 - 3 + 5 + 1 - 10 + 10 + 17


def test_text_output(tmp_path: Path) -> None:
    diff = diff_images(image(tmp_path / "a.img", OLD, Compression.GZIP),
                       image(tmp_path / "b.img", NEW, Compression.NONE))  # fmt: skip
    lines = format_diff(diff).splitlines()
    assert "+ etc/added  +7 bytes" in lines
    assert "- etc/removed  -5 bytes" in lines
    assert "~ usr/bin/grows  content  +15 bytes" in lines
    assert "~ usr/bin/mode  mode 0644 -> 0755  +0 bytes" in lines
    assert "~ init  target usr/lib/systemd/systemd -> sbin/init" in lines
    assert "~ etc/becomes-link  type file -> link, mode 0644 -> 0777  -1 bytes" in lines
    assert "kernel modules: +btrfs -xfs ~changed" in lines
    assert "systemd units: +new.service +sysinit.target -gone.service ~tuned.service" in lines
    assert lines[-1].startswith(
        "total: 5 added, 3 removed, 5 changed; content +36 bytes (90 -> 126); "
    )


def test_identical_content_in_other_segments_is_no_change(tmp_path: Path) -> None:
    early = io.BytesIO()
    write_cpio([file("/etc/same", b"same")], early, epoch=0)
    split = tmp_path / "split.img"
    with split.open("wb") as out:
        out.write(early.getvalue())
        with open_compressor(Compression.LZ4, out) as stream:
            write_cpio([e for e in COMMON if e.path != "/etc/same"], stream, epoch=0)
    diff = diff_images(image(tmp_path / "whole.img", COMMON, Compression.ZSTD), split)
    assert diff.changes == [] and diff.content_change == 0
    assert len(diff.new.segments) == 2


def test_a_path_stored_twice_counts_with_its_later_entry(tmp_path: Path) -> None:
    first = io.BytesIO()
    write_cpio([file("/etc/x", b"early")], first, epoch=0)
    second = io.BytesIO()
    write_cpio([file("/etc/x", b"late")], second, epoch=0)
    twice = tmp_path / "twice.img"
    twice.write_bytes(first.getvalue() + second.getvalue())
    once = image(tmp_path / "once.img", [file("/etc/x", b"late")], Compression.NONE)
    assert diff_images(once, twice).changes == []


def test_cli_json(tmp_path: Path) -> None:
    old = image(tmp_path / "a.img", OLD, Compression.ZSTD)
    new = image(tmp_path / "b.img", NEW, Compression.ZSTD)
    result = subprocess.run([sys.executable, "-m", "bookend", "diff", "--json", str(old), str(new)],
                            capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    report = json.loads(result.stdout)
    grows = next(c for c in report["changes"] if c["path"] == "usr/bin/grows")
    assert grows == {
        "path": "usr/bin/grows", "status": "changed", "changed": ["content"],
        "old_size": 10, "new_size": 25, "size_change": 15, "old_mode": "0644",
        "new_mode": "0644", "old_target": None, "new_target": None,
        "old_type": "file", "new_type": "file",
    }  # fmt: skip
    assert report["modules"] == {"added": ["btrfs"], "removed": ["xfs"], "changed": ["changed"]}
    assert report["total"]["added"] == 5 and report["total"]["content_change"] == 36
    assert report["total"]["new_file_size"] == new.stat().st_size
