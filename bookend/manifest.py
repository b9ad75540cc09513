"""The manifest: why each entry is in the image, recorded inside the image itself.

`bookend plan --why PATH` answers from the closure before a build; the manifest lets
`bookend why IMAGE PATH` answer from an image alone, long after the sysroot changed.
It is JSON: {"format": 1, "entries": {path: [reason, parent or null]}, "secret": [path...]};
"secret" lists the host secrets the configuration named (bookend.secrets).
"""

from __future__ import annotations

import json

from bookend.archive import ArchiveEntry, EntryKind
from bookend.closure import Closure, ClosureEntry
from bookend.errors import ArchiveError

MANIFEST_PATH = "/usr/lib/bookend/manifest.json"
FORMAT = 1
REASON = "bookend: why each entry is in the image"


def with_manifest(closure: Closure) -> Closure:
    """closure plus its manifest entry (and the manifest's own directories)."""
    reasons = {path: [item.reason, item.parent] for path, item in closure.entries.items()}
    reasons[MANIFEST_PATH] = [REASON, None]
    document = {"format": FORMAT, "entries": reasons, "secret": closure.secrets()}
    text = json.dumps(document, sort_keys=True, indent=0)
    entries = dict(closure.entries)
    entries[MANIFEST_PATH] = ClosureEntry(
        ArchiveEntry(MANIFEST_PATH, EntryKind.FILE, 0o644, data=text.encode()), REASON, None
    )
    for directory in ("/usr/lib/bookend", "/usr/lib", "/usr"):
        if directory not in entries:
            entry = ArchiveEntry(directory, EntryKind.DIRECTORY, 0o755)
            entries[directory] = ClosureEntry(entry, REASON, None)
    return Closure(dict(sorted(entries.items())), closure.warnings, closure.early)


def closure_from_manifest(data: bytes, image: str) -> Closure:
    """The reasons of a manifest read back, as a Closure whose why() works."""
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ArchiveError(f"{image}: manifest format {document.get('format')} unknown")
        reasons = document["entries"]
        secrets = set(document.get("secret", []))  # absent in images before it was added
        entries = {
            path: ClosureEntry(
                ArchiveEntry(path, EntryKind.FILE, 0o644),
                str(reason),
                parent or None,
                path in secrets,
            )
            for path, (reason, parent) in reasons.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{image}: {MANIFEST_PATH} is not a bookend manifest: {exc}") from None
    return Closure(entries)
