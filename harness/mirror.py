"""Which Debian mirror the test disks are made from: this machine's own.

apt already knows where this machine gets Debian from; `apt-get indextargets` lists
every index its sources give, one record per index. The mirror is the repository
that serves the main component of the host's own suite (not its -updates or
-security). BOOKEND_TEST_MIRROR overrides it, e.g. for a local mirror or a proxy.

Where the packages come from does not decide what the disks hold, so the mirror is
no part of a disk's cache key.
"""

from __future__ import annotations

import os
from pathlib import Path

from bookend.errors import BookendError
from bookend.proc import run

MIRROR_ENV = "BOOKEND_TEST_MIRROR"
OS_RELEASE = Path("/etc/os-release")


def debian_mirror() -> str:
    """BOOKEND_TEST_MIRROR, else the mirror apt uses for this machine's suite."""
    chosen = os.environ.get(MIRROR_ENV, "").strip()
    if chosen:
        return chosen
    suite = host_suite(OS_RELEASE.read_text())
    listing = run(["apt-get", "indextargets"]).stdout.decode(errors="replace")
    mirror = archive_for(parse_records(listing), suite)
    if mirror is None:
        raise BookendError(
            f"apt-get indextargets: no source serves {suite}/main; "
            f"set {MIRROR_ENV} to a Debian mirror's URL"
        )
    return mirror


def host_suite(os_release: str) -> str:
    """VERSION_CODENAME from os-release text (e.g. "bookworm")."""
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME" and value.strip().strip("\"'"):
            return value.strip().strip("\"'")
    raise BookendError(f"{OS_RELEASE}: no VERSION_CODENAME; set {MIRROR_ENV}")


def parse_records(listing: str) -> list[dict[str, str]]:
    """`apt-get indextargets` output: records of "Key: value" lines, apart by blank lines."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*listing.splitlines(), ""]:
        if not line.strip():
            if current:
                records.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    return records


def archive_for(records: list[dict[str, str]], suite: str) -> str | None:
    """The repository URI (no trailing slash) serving suite's main packages, if any."""
    for record in records:
        if (
            record.get("Release") == suite
            and record.get("Component") == "main"
            and record.get("Target-Of") == "deb"
            and record.get("Repo-URI")
        ):
            return record["Repo-URI"].rstrip("/")
    return None
