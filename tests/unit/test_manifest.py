"""The manifest carries the why-chains into the image and back out of it."""

from __future__ import annotations

import json

import pytest

from bookend.archive import ArchiveEntry, EntryKind
from bookend.closure import Closure, ClosureEntry
from bookend.errors import ArchiveError
from bookend.manifest import MANIFEST_PATH, closure_from_manifest, with_manifest


def entry(path: str, reason: str, parent: str | None) -> tuple[str, ClosureEntry]:
    return path, ClosureEntry(ArchiveEntry(path, EntryKind.FILE, 0o644), reason, parent)


CLOSURE = Closure(
    dict(
        [
            entry("/usr/sbin/cryptsetup", "feature luks", None),
            entry("/usr/lib/libcrypt.so.1", "DT_NEEDED of", "/usr/sbin/cryptsetup"),
        ]
    )
)


def test_manifest_round_trip_keeps_the_why_chain() -> None:
    recorded = with_manifest(CLOSURE)
    data = recorded.entries[MANIFEST_PATH].entry.data
    assert data is not None
    assert {"/usr", "/usr/lib", "/usr/lib/bookend"} <= set(recorded.entries)
    back = closure_from_manifest(data, "initrd.img")
    assert (
        back.format_why("/usr/lib/libcrypt.so.1")
        == CLOSURE.format_why("/usr/lib/libcrypt.so.1")
        == "/usr/lib/libcrypt.so.1 <- DT_NEEDED of /usr/sbin/cryptsetup <- feature luks"
    )
    assert with_manifest(CLOSURE).entries[MANIFEST_PATH].entry.data == data  # reproducible


@pytest.mark.parametrize("data", [b"not json", b'{"format": 99}', b'{"format": 1}', b"[]"])
def test_foreign_manifest_is_a_clean_error(data: bytes) -> None:
    with pytest.raises(ArchiveError, match=r"initrd\.img: "):
        closure_from_manifest(data, "initrd.img")


def test_manifest_is_json_of_reason_and_parent() -> None:
    data = with_manifest(CLOSURE).entries[MANIFEST_PATH].entry.data or b""
    document = json.loads(data)
    assert document["entries"]["/usr/lib/libcrypt.so.1"] == ["DT_NEEDED of", "/usr/sbin/cryptsetup"]
