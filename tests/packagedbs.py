"""Writers of small, valid package databases into a fixture tree: dpkg, rpm and pacman.

Each takes {package name: [absolute paths]} and writes only the database (not the
files), the way the distribution's package manager lays it out, so a test of
bookend.packages, or a Fedora- or Arch-shaped fixture sysroot, can say who owns what.
Versions default to VERSION; pass {name: version} to choose them.

write_rpmdb encodes real rpm headers (an immutable region first, then the tags in tag
order, each value aligned as its type needs) into the Packages table of a sqlite
rpmdb with the schema rpm 4.16+ creates, so bookend's reader is tested against the
format and not against its own shortcuts.
"""

from __future__ import annotations

import posixpath
import sqlite3
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

VERSION = "1.0-1"
PackageFiles = Mapping[str, Sequence[str]]

# --- dpkg -------------------------------------------------------------------------------


def write_dpkg_db(
    root: Path, packages: PackageFiles, versions: Mapping[str, str] | None = None
) -> Path:
    """var/lib/dpkg/status and info/NAME.list; a NAME:ARCH key is a Multi-Arch package.

    Each list holds "/." and every parent directory before the files, as dpkg's do."""
    database = root / "var/lib/dpkg"
    (database / "info").mkdir(parents=True, exist_ok=True)
    status = []
    for key, paths in packages.items():
        name, _, arch = key.partition(":")
        status.append(
            f"Package: {name}\nStatus: install ok installed\n"
            f"Architecture: {arch or 'all'}\nVersion: {(versions or {}).get(key, VERSION)}\n"
        )
        listed = ["/."]
        for path in paths:
            for parent in _parents(path):
                if parent not in listed:
                    listed.append(parent)
            listed.append(path)
        (database / "info" / f"{key}.list").write_text("\n".join(listed) + "\n")
    (database / "status").write_text("\n".join(status))
    return database


def _parents(path: str) -> list[str]:
    parents: list[str] = []
    parent = posixpath.dirname(path)
    while parent != "/":
        parents.insert(0, parent)
        parent = posixpath.dirname(parent)
    return parents


# --- pacman -----------------------------------------------------------------------------


def write_pacman_db(
    root: Path, packages: PackageFiles, versions: Mapping[str, str] | None = None
) -> Path:
    """var/lib/pacman/local/NAME-VERSION/{desc,files} and ALPM_DB_VERSION."""
    local = root / "var/lib/pacman/local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "ALPM_DB_VERSION").write_text("9\n")
    for name, paths in packages.items():
        version = (versions or {}).get(name, VERSION)
        entry = local / f"{name}-{version}"
        entry.mkdir()
        (entry / "desc").write_text(
            f"%NAME%\n{name}\n\n%VERSION%\n{version}\n\n%BASE%\n{name}\n\n"
            f"%ARCH%\nx86_64\n\n%SIZE%\n0\n\n"
        )
        listed: list[str] = []
        for path in paths:
            for parent in _parents(path):
                if parent + "/" not in listed:
                    listed.append(parent + "/")
            listed.append(path)
        files = "".join(f"{path.lstrip('/')}\n" for path in listed)
        (entry / "files").write_text(f"%FILES%\n{files}\n%BACKUP%\n\n")
    return local


# --- rpm --------------------------------------------------------------------------------

RPMDB = "usr/lib/sysimage/rpm/rpmdb.sqlite"
REGION_TAG = 63  # HEADERIMMUTABLE
INT32, STRING, BIN, STRING_ARRAY = 4, 6, 7, 8
ALIGN = {INT32: 4}

TagValues = Mapping[int, tuple[int, list[str] | list[int] | bytes]]


def encode_rpm_header(tags: TagValues) -> bytes:
    """An rpmdb header blob (no magic): il, dl, the index, the data.

    tags: tag -> (type, value). The immutable region's entry comes first, its trailer
    (an index entry pointing back over the region's entries) last in the data."""
    index: list[tuple[int, int, int, int]] = []
    data = bytearray()
    for tag in sorted(tags):
        kind, value = tags[tag]
        data.extend(b"\0" * (-len(data) % ALIGN.get(kind, 1)))
        offset = len(data)
        if kind == INT32:
            assert isinstance(value, list)
            data.extend(struct.pack(f">{len(value)}i", *value))
            count = len(value)
        elif kind == BIN:
            assert isinstance(value, bytes)
            data.extend(value)
            count = len(value)
        else:
            assert isinstance(value, list)
            data.extend(b"".join(str(s).encode() + b"\0" for s in value))
            count = len(value)
        index.append((tag, kind, offset, count))
    entries = len(index) + 1
    trailer_offset = len(data)
    data.extend(struct.pack(">IIiI", REGION_TAG, BIN, -entries * 16, 16))
    index.insert(0, (REGION_TAG, BIN, trailer_offset, 16))
    blob = struct.pack(">II", entries, len(data))
    blob += b"".join(struct.pack(">IIiI", *entry) for entry in index)
    return blob + bytes(data)


def rpm_header(name: str, version: str, paths: Sequence[str], arch: str = "x86_64") -> bytes:
    """The header of an installed package owning paths, split into dirnames and basenames
    as rpm stores them."""
    ver, _, release = version.partition("-")
    dirnames: list[str] = []
    indexes: list[int] = []
    basenames: list[str] = []
    for path in paths:
        directory, base = posixpath.split(path)
        directory = directory.rstrip("/") + "/"
        if directory not in dirnames:
            dirnames.append(directory)
        indexes.append(dirnames.index(directory))
        basenames.append(base)
    tags: dict[int, tuple[int, list[str] | list[int] | bytes]] = {
        1000: (STRING, [name]),
        1001: (STRING, [ver]),
        1002: (STRING, [release or "1"]),
        1006: (INT32, [1700000000]),  # BUILDTIME: rpm --rebuilddb drops a header without
        1022: (STRING, [arch]),
        1044: (STRING, [f"{name}-{version}.src.rpm"]),  # SOURCERPM: else rpm sees a source rpm
    }
    if paths:
        tags |= {1116: (INT32, indexes), 1117: (STRING_ARRAY, basenames),
                 1118: (STRING_ARRAY, dirnames)}  # fmt: skip
    return encode_rpm_header(tags)


def write_rpmdb_blobs(root: Path, blobs: Sequence[bytes], where: str = RPMDB) -> Path:
    """A sqlite rpmdb with blobs as its Packages rows, numbered from 1 as rpm does."""
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS 'Packages' "
            "(hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS 'Name' (key 'TEXT' NOT NULL, hnum INTEGER NOT NULL, "
            "idx INTEGER NOT NULL, FOREIGN KEY (hnum) REFERENCES 'Packages'(hnum))"
        )
        connection.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    connection.close()
    return path


def write_rpmdb(
    root: Path,
    packages: PackageFiles,
    versions: Mapping[str, str] | None = None,
    where: str = RPMDB,
) -> Path:
    """root/usr/lib/sysimage/rpm/rpmdb.sqlite (or root/where) holding packages."""
    blobs = [rpm_header(name, (versions or {}).get(name, VERSION), paths)
             for name, paths in packages.items()]  # fmt: skip
    path = write_rpmdb_blobs(root, blobs, where)
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany("INSERT INTO Name VALUES (?, ?, 0)",
                               [(name, n) for n, name in enumerate(packages, 1)])  # fmt: skip
    connection.close()
    return path
