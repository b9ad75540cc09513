"""An image as a list of entries, with the segment each came from: what ls and diff use."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from bookend.archive.reader import Body, Header, Segment, read_image
from bookend.errors import ArchiveError

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "link",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "unknown")


def clean_path(stored: str) -> str:
    """A member's name as a path relative to the image root: "/a//./b" -> "a/b".

    ".." is kept, so that whoever writes the entry can refuse it. The root itself is ".".
    """
    return "/".join(part for part in stored.split("/") if part not in ("", ".")) or "."


def printable(text: str) -> str:
    """text safe for a terminal line: bytes that are not UTF-8 and control characters
    (a newline in a name would forge a line of output) become escapes."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in raw)


@dataclass(frozen=True)
class Entry:
    """One member of an image."""

    path: str  # clean_path of the stored name
    kind: str  # "file", "dir", "link", "chardev", "blockdev", "fifo", "socket", "unknown"
    mode: int  # permission bits
    size: int  # bytes of content (a hard link: its group's); a symlink: its target's length
    target: str | None  # a symlink's target
    device: tuple[int, int] | None  # a device node's major and minor
    uid: int
    gid: int
    mtime: int
    segment: Segment
    digest: str | None = None  # SHA-256 of the content or target, when asked for
    hardlink: str | None = None  # the first path of its hard-link group, for later links
    secret: bool = False  # a host secret, by the manifest of a bookend image


@dataclass(frozen=True)
class Scan:
    """Everything an image holds, in archive order."""

    image: Path
    file_size: int
    segments: tuple[Segment, ...]
    entries: tuple[Entry, ...]

    def final(self) -> dict[str, Entry]:
        """What the kernel ends up with: for a path stored twice, the later entry."""
        return {entry.path: entry for entry in self.entries}

    def count(self, segment: Segment) -> int:
        return sum(1 for entry in self.entries if entry.segment == segment)


@contextmanager
def open_image(image: Path) -> Iterator[BinaryIO]:
    try:
        with image.open("rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                raise ArchiveError(f"{image}: not a regular file")
            yield raw
    except OSError as exc:
        raise ArchiveError(f"{image}: cannot read: {exc.strerror}") from None


def scan_image(image: Path, *, digests: bool = False) -> Scan:
    """Read every entry of the image; with digests, hash every content too."""
    entries: list[Entry] = []
    segments: dict[int, Segment] = {}
    groups: dict[HardlinkKey, list[int]] = {}
    secrets: set[str] = set()
    with open_image(image) as raw:
        size = os.fstat(raw.fileno()).st_size
        for header, body in read_image(raw, str(image)):
            segments.setdefault(header.segment.index, header.segment)
            key = hardlink_key(header)
            if key is not None:
                groups.setdefault(key, []).append(len(entries))
            if clean_path(header.path) == MANIFEST and stat.S_ISREG(header.mode):
                entry, secrets = _manifest_entry(header, body, digests)
                entries.append(entry)
                continue
            entries.append(_entry(header, body, digests))
    for members in groups.values():
        _join_hardlinks(entries, members)
    marked = [replace(e, secret=True) if e.path in secrets else e for e in entries]
    return Scan(image, size, tuple(segments.values()), tuple(marked))


# bookend.manifest.MANIFEST_PATH, relative as clean_path gives it; imported from there it
# would pull the whole build pipeline into every `bookend ls`.
MANIFEST = "usr/lib/bookend/manifest.json"


def _manifest_entry(header: Header, body: Body, digests: bool) -> tuple[Entry, set[str]]:
    data = body.read()
    entry = _entry(header, body, digests=False)
    if digests:
        entry = replace(entry, digest=hashlib.sha256(data).hexdigest())
    return entry, _manifest_secrets(data)


def _manifest_secrets(data: bytes) -> set[str]:
    """The secret paths a bookend manifest lists, as clean_path gives them; none if the
    manifest cannot be read: ls lists any image, and marks what it knows."""
    try:
        listed = json.loads(data).get("secret", [])
    except (ValueError, AttributeError):
        return set()
    return {clean_path(path) for path in listed if isinstance(path, str)}


def _entry(header: Header, body: Body, digests: bool) -> Entry:
    kind = kind_of(header.mode)
    target = None
    digest = hashlib.sha256() if digests else None
    if kind == "link":
        data = body.read()
        target = data.decode("utf-8", "surrogateescape")
        if digest:
            digest.update(data)
    elif digest and kind == "file":
        for chunk in body.chunks():
            digest.update(chunk)
    return Entry(
        path=clean_path(header.path),
        kind=kind,
        mode=stat.S_IMODE(header.mode),
        size=header.size,
        target=target,
        device=header.rdev if kind in ("chardev", "blockdev") else None,
        uid=header.uid,
        gid=header.gid,
        mtime=header.mtime,
        segment=header.segment,
        digest=digest.hexdigest() if digest else None,
    )


# The key the kernel finds hard links by, within one archive.
HardlinkKey = tuple[int, int, int, int]


def hardlink_key(header: Header) -> HardlinkKey | None:
    if not stat.S_ISREG(header.mode) or header.nlink < 2:
        return None
    return (header.archive, *header.dev, header.ino)


def _join_hardlinks(entries: list[Entry], members: list[int]) -> None:
    """Give every link of a group the group's content.

    cpio writes the content once, with one of the links (GNU cpio: the last), and the
    others with an empty body; the kernel writes each body into the shared file.
    """
    if len(members) < 2:
        return
    content = next((entries[i] for i in reversed(members) if entries[i].size), entries[members[0]])
    first = entries[members[0]].path
    for n, i in enumerate(members):
        entries[i] = replace(
            entries[i], size=content.size, digest=content.digest, hardlink=first if n else None
        )


def format_size(size: int) -> str:
    return f"{size:,}"


def size_change(change: int) -> str:
    return f"{change:+,} bytes"
