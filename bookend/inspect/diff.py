"""`bookend diff`: what changed from one image to another, file by file.

Each image is compared as the kernel leaves it unpacked: a path stored twice counts
with its later entry, and segments do not matter. Content is compared by SHA-256.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.inspect.image import Entry, Scan, printable, scan_image
from bookend.kmodules import MODULE_SUFFIX, module_name
from bookend.units import UNIT_DIRS

# Unit directories as image paths are stored ("usr/lib/systemd/system/").
_UNIT_PREFIXES = tuple(d.lstrip("/") + "/" for d in UNIT_DIRS)
# A drop-in or dependency directory belongs to its unit: "foo.service.d/x.conf".
_UNIT_SUBDIR = re.compile(r"\.(d|wants|requires|upholds)$")


@dataclass(frozen=True)
class Change:
    path: str
    status: str  # "added", "removed" or "changed"
    aspects: tuple[str, ...]  # what changed: "type", "content", "mode", "target"
    old: Entry | None
    new: Entry | None

    @property
    def size_change(self) -> int:
        return _file_size(self.new) - _file_size(self.old)


@dataclass(frozen=True)
class Summary:
    """Names that were added, removed or changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Diff:
    old: Scan
    new: Scan
    changes: list[Change]
    modules: Summary
    units: Summary

    @property
    def content_change(self) -> int:
        return _content_size(self.new) - _content_size(self.old)


def diff_images(old: Path, new: Path) -> Diff:
    before = scan_image(old, digests=True)
    after = scan_image(new, digests=True)
    a, b = before.final(), after.final()
    changes = [
        change
        for path in sorted(a.keys() | b.keys())
        if (change := _compare(path, a.get(path), b.get(path))) is not None
    ]
    return Diff(
        before,
        after,
        changes,
        _summary(_by_key(a, _module_key), _by_key(b, _module_key)),
        _summary(_by_key(a, _unit_key), _by_key(b, _unit_key)),
    )


def _compare(path: str, old: Entry | None, new: Entry | None) -> Change | None:
    if old is None or new is None:
        return Change(path, "removed" if new is None else "added", (), old, new)
    aspects = []
    if old.kind != new.kind:
        aspects.append("type")
    elif old.kind == "link" and old.target != new.target:
        aspects.append("target")
    elif old.digest != new.digest or old.device != new.device:
        aspects.append("content")
    if old.mode != new.mode and old.kind != "link":
        aspects.append("mode")
    if not aspects:
        return None
    return Change(path, "changed", tuple(aspects), old, new)


def _file_size(entry: Entry | None) -> int:
    """Bytes of content: a regular file's; a link, directory or node has none."""
    return entry.size if entry is not None and entry.kind == "file" else 0


def _content_size(scan: Scan) -> int:
    return sum(_file_size(entry) for entry in scan.final().values())


def _module_key(entry: Entry) -> str | None:
    if entry.kind != "file" or not MODULE_SUFFIX.search(entry.path):
        return None
    return module_name(entry.path)


def _unit_key(entry: Entry) -> str | None:
    """The unit a unit file, drop-in or .wants link belongs to."""
    if entry.kind == "dir":
        return None
    for prefix in _UNIT_PREFIXES:
        if entry.path.startswith(prefix):
            first = entry.path[len(prefix) :].split("/")[0]
            return _UNIT_SUBDIR.sub("", first)
    return None


def _by_key(
    entries: dict[str, Entry], key: Callable[[Entry], str | None]
) -> dict[str, set[tuple[str, str | None]]]:
    """Key (module or unit name) -> what makes it up: (path, digest) of each entry."""
    grouped: dict[str, set[tuple[str, str | None]]] = {}
    for entry in entries.values():
        name = key(entry)
        if name is not None:
            grouped.setdefault(name, set()).add((entry.path, entry.digest))
    return grouped


def _summary(
    old: dict[str, set[tuple[str, str | None]]], new: dict[str, set[tuple[str, str | None]]]
) -> Summary:
    return Summary(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        changed=sorted(name for name in old.keys() & new.keys() if old[name] != new[name]),
    )


# --- output ----------------------------------------------------------------------------

_MARKS = {"added": "+", "removed": "-", "changed": "~"}


def format_diff(diff: Diff) -> str:
    lines = [_change_line(change) for change in diff.changes]
    for title, summary in (("kernel modules", diff.modules), ("systemd units", diff.units)):
        names = [
            f"{_MARKS[status]}{printable(name)}"
            for status, group in (
                ("added", summary.added),
                ("removed", summary.removed),
                ("changed", summary.changed),
            )
            for name in group
        ]
        if names:
            lines.append(f"{title}: {' '.join(names)}")
    counts = {status: sum(1 for c in diff.changes if c.status == status) for status in _MARKS}
    file_change = diff.new.file_size - diff.old.file_size
    lines.append(
        f"total: {counts['added']} added, {counts['removed']} removed, "
        f"{counts['changed']} changed; content {diff.content_change:+,} bytes "
        f"({_content_size(diff.old):,} -> {_content_size(diff.new):,}); "
        f"image file {file_change:+,} bytes ({diff.old.file_size:,} -> {diff.new.file_size:,})"
    )
    return "\n".join(lines) + "\n"


def _change_line(change: Change) -> str:
    line = f"{_MARKS[change.status]} {printable(change.path)}"
    old, new = change.old, change.new
    if old is not None and new is not None:
        details = [_aspect(aspect, old, new) for aspect in change.aspects]
        line += "  " + ", ".join(details)
    if change.size_change or "file" in (old.kind if old else "", new.kind if new else ""):
        line += f"  {change.size_change:+,} bytes"
    return line


def _aspect(aspect: str, old: Entry, new: Entry) -> str:
    if aspect == "type":
        return f"type {old.kind} -> {new.kind}"
    if aspect == "target":
        return f"target {printable(old.target or '')} -> {printable(new.target or '')}"
    if aspect == "mode":
        return f"mode {old.mode:04o} -> {new.mode:04o}"
    return "content"


def diff_json(diff: Diff) -> dict[str, Any]:
    def summary(s: Summary) -> dict[str, list[str]]:
        return {"added": s.added, "removed": s.removed, "changed": s.changed}

    return {
        "old": str(diff.old.image),
        "new": str(diff.new.image),
        "changes": [_change_json(change) for change in diff.changes],
        "modules": summary(diff.modules),
        "units": summary(diff.units),
        "total": {status: sum(1 for c in diff.changes if c.status == status) for status in _MARKS}
        | {
            "content_change": diff.content_change,
            "old_content": _content_size(diff.old),
            "new_content": _content_size(diff.new),
            "old_file_size": diff.old.file_size,
            "new_file_size": diff.new.file_size,
        },
    }


def _change_json(change: Change) -> dict[str, Any]:
    old, new = change.old, change.new
    return {
        "path": change.path,
        "status": change.status,
        "changed": list(change.aspects),
        "old_size": old.size if old else None,
        "new_size": new.size if new else None,
        "size_change": change.size_change,
        "old_mode": f"{old.mode:04o}" if old else None,
        "new_mode": f"{new.mode:04o}" if new else None,
        "old_target": old.target if old else None,
        "new_target": new.target if new else None,
        "old_type": old.kind if old else None,
        "new_type": new.kind if new else None,
    }
