"""`bookend ls`: every entry of an image with its mode, size, link target and segment."""

from __future__ import annotations

import stat
from typing import Any

from bookend.inspect.image import Entry, Scan, printable

_TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "link": stat.S_IFLNK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}


def sorted_entries(scan: Scan, sort: str | None) -> list[Entry]:
    """Archive order, or by name, or biggest first (ties by name)."""
    entries = list(scan.entries)
    if sort == "name":
        entries.sort(key=lambda e: (e.path, e.segment.index))
    elif sort == "size":
        entries.sort(key=lambda e: (-e.size, e.path))
    return entries


def format_listing(scan: Scan, sort: str | None = None) -> str:
    lines = [
        f"# segment {s.index}: {describe_compression(s.compression)} at offset {s.offset}, "
        f"{scan.count(s)} entries"
        for s in scan.segments
    ]
    lines += [_line(entry) for entry in sorted_entries(scan, sort)]
    return "\n".join(lines) + "\n"


def describe_compression(compression: str) -> str:
    return "uncompressed" if compression == "none" else compression


def _line(entry: Entry) -> str:
    mode = stat.filemode(_TYPE_BITS.get(entry.kind, 0) | entry.mode)
    size = f"{entry.device[0]},{entry.device[1]}" if entry.device else str(entry.size)
    name = printable(entry.path)
    if entry.target is not None:
        name += f" -> {printable(entry.target)}"
    elif entry.hardlink is not None:
        name += f" link to {printable(entry.hardlink)}"
    if entry.secret:
        name += "  [secret]"
    return f"{mode} {entry.segment.index:>3} {size:>10}  {name}"


def listing_json(scan: Scan, sort: str | None = None) -> dict[str, Any]:
    return {
        "image": str(scan.image),
        "size": scan.file_size,
        "segments": [
            {
                "index": s.index,
                "compression": s.compression,
                "offset": s.offset,
                "entries": scan.count(s),
            }
            for s in scan.segments
        ],
        "entries": [entry_json(entry) for entry in sorted_entries(scan, sort)],
    }


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "type": entry.kind,
        "mode": f"{entry.mode:04o}",
        "size": entry.size,
        "target": entry.target,
        "device": list(entry.device) if entry.device else None,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime": entry.mtime,
        "segment": entry.segment.index,
        "hardlink": entry.hardlink,
        "secret": entry.secret,
    }
