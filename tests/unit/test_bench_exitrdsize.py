"""bench/exitrdsize.py's pure parts: the groups it accounts bytes to, read from the
image's manifest, and its compressor variants, read back by bookend's own reader."""

from __future__ import annotations

import json
from pathlib import Path

from bench.exitrdsize import FLOOR, MANIFEST, SMALLEST, VARIANTS, cpio, read_entries, root_causes
from bookend.archive import ArchiveEntry, EntryKind

PROGRAM = "/usr/lib/systemd/systemd-shutdown"
WHY = {
    PROGRAM: ["exitrd: systemd-shutdown executes /shutdown (exitrd_shutdown /x/y)", None],
    "/usr/lib/libc.so.6": ["DT_NEEDED of", "/usr/lib/libmount.so.1"],
    "/usr/lib/libmount.so.1": ["DT_NEEDED of", PROGRAM],
    "/usr/bin/sh": ["link on the way to", "/usr/bin/dash"],
    "/usr/bin/dash": ["feature exitrd", None],
}


def entries() -> list[ArchiveEntry]:
    files = [ArchiveEntry(path, EntryKind.FILE, 0o755, data=path.encode() * 50) for path in WHY
             if path != "/usr/bin/sh"]  # fmt: skip
    manifest = json.dumps({"entries": {**WHY, MANIFEST: ["bookend: why", None]}}).encode()
    return [
        *files,
        ArchiveEntry("/usr/bin/sh", EntryKind.SYMLINK, 0o777, target="dash"),
        ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),  # in no manifest: its own group
        ArchiveEntry(MANIFEST, EntryKind.FILE, 0o644, data=manifest),
    ]


def test_each_entry_is_counted_to_what_pulled_it_in() -> None:
    # The floor, read from the ELF files (on real images), and what leads to it: libmount
    # and libc by their manifest chains, here.
    groups = root_causes(entries(), {PROGRAM})
    assert {groups[p] for p in (PROGRAM, "/usr/lib/libc.so.6", "/usr/lib/libmount.so.1")} == {FLOOR}
    assert groups["/usr/bin/sh"] == groups["/usr/bin/dash"] == "feature exitrd"
    assert groups["/usr"] == "directory /usr"
    assert groups[MANIFEST] == "bookend: why"
    # Without a floor, the chain ends at the program's reason (without the file's name).
    program = "exitrd: systemd-shutdown executes /shutdown"
    assert root_causes(entries(), set())["/usr/lib/libc.so.6"] == program


def test_every_variant_writes_an_image_bookend_reads_back(tmp_path: Path) -> None:
    raw = cpio(entries())
    assert SMALLEST in VARIANTS
    for variant in VARIANTS:
        image = tmp_path / "exitrd.img"
        image.write_bytes(variant.compress(raw))
        assert cpio(read_entries(image)) == raw, variant.name
