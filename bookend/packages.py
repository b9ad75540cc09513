"""Which package owns a file of a sysroot, as its dpkg, rpm or pacman database says.

One interface for the three: find_databases(sysroot) names the databases a tree holds
(none is fine: a hand-made tree has none), and load_package_index(sysroot) reads them
into one PackageIndex, path -> Package(name, version). `bookend size` groups an image's
files by it.

Where each database lists its files:
- dpkg: /var/lib/dpkg/info/PACKAGE.list, one absolute path a line; the versions from
  /var/lib/dpkg/status.
- rpm: the header of every installed package, one blob a row of the Packages table of
  the sqlite rpmdb (/usr/lib/sysimage/rpm/rpmdb.sqlite; /var/lib/rpm/rpmdb.sqlite before
  rpm 4.17). The paths are DIRNAMES[DIRINDEXES[i]] + BASENAMES[i] (OLDFILENAMES in
  headers older than rpm 4.0). The file is opened read-only and immutable, so sqlite
  writes nothing into the sysroot (no -shm or -journal file, no checkpoint).
  openSUSE's ndb (Packages.db) and the BerkeleyDB Packages file are not read: a tree
  with only those gets a warning that names them.
- pacman: /var/lib/pacman/local/NAME-VERSION/desc (%NAME%, %VERSION%) and its files
  (%FILES%, paths relative to / with directories ending in "/").

The rpm header is parsed here, not by a library: the only Python bindings that read
one are rpm's own (`import rpm`, which needs librpm built for the host, and reads a
foreign sysroot's database only through an rpm configured for it); PyPI's rpmfile reads
.rpm package files (lead, signature, then a header it finds by its magic, which the
headers in an rpmdb do not carry) and pyrpmdb wraps a Go binary. The format is small
and fixed (rpm's docs/manual/format_header.md): a count of index entries and the size
of the data, then the entries (tag, type, offset, count; big-endian), then the data.
Only five tags are read, every offset and count is checked against the blob, and a bad
header is a warning naming the database and the row, never a traceback.

Merged /usr: databases list a file by the path its package ships it under (Debian 12's
libc6 lists /lib/<triplet>/libc.so.6, Arch's and Fedora's /usr/bin/x), and an
image or a sysroot may reach it by the other. Every path, listed or asked about, is
named the canonical way: through the top-level links the sysroot has (/bin -> usr/bin,
/sbin -> usr/bin on Arch, /usr/sbin -> bin on Fedora 42), so both names find one owner.
"""

from __future__ import annotations

import logging
import posixpath
import sqlite3
import struct
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bookend.errors import SysrootError

log = logging.getLogger(__name__)

DPKG_DIR = "var/lib/dpkg"
RPMDB_SQLITE = ("usr/lib/sysimage/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite")
RPMDB_UNREAD = ("Packages.db", "Packages")  # ndb and BerkeleyDB, next to where sqlite's is
PACMAN_LOCAL = "var/lib/pacman/local"

# Links that merge a top-level directory (or /usr/sbin) into another under /usr.
MERGED_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr/sbin", "usr/lib64")


@dataclass(frozen=True)
class Package:
    name: str
    version: str  # as the database writes it; "" where it says none


@dataclass(frozen=True)
class Database:
    kind: str  # "dpkg", "rpm" or "pacman"
    path: Path  # what is read: a directory or the rpmdb file


@dataclass
class PackageIndex:
    """Which package owns which path, from every database a sysroot holds."""

    aliases: dict[str, str]  # "/bin" -> "/usr/bin": the sysroot's merged-/usr links
    databases: tuple[Database, ...] = ()
    owners: dict[str, Package] = field(default_factory=dict)  # canonical path -> package

    def canonical(self, path: str) -> str:
        """path named through the sysroot's merged-/usr links: /lib/x is /usr/lib/x."""
        if not path.startswith("/") or path.endswith("/"):
            path = "/" + path.strip("/")
        for _ in range(3):  # /sbin -> /usr/sbin -> /usr/bin at most
            # Links are at the top or in /usr: look up "/top", then "/usr/second".
            parts = path.split("/", 3)
            link = "/" + parts[1] if len(parts) > 2 else ""
            if link == "/usr" and len(parts) > 3:
                link = "/usr/" + parts[2]
            target = self.aliases.get(link)
            if target is None:
                return path
            path = target + path[len(link) :]
        return path

    def add(self, path: str, package: Package) -> None:
        # A path two packages list (a shared directory, mostly) keeps its first.
        self.owners.setdefault(self.canonical(path), package)

    def owner(self, path: str) -> Package | None:
        return self.owners.get(self.canonical(path))


def merged_usr_links(sysroot: Path) -> dict[str, str]:
    """/bin -> /usr/bin for each of MERGED_LINKS that is a symlink into /usr."""
    aliases = {}
    for name in MERGED_LINKS:
        link = sysroot / name
        if not link.is_symlink():
            continue
        target = str(link.readlink())
        if not target.startswith("/"):
            target = posixpath.join("/", posixpath.dirname(name), target)
        target = posixpath.normpath(target)
        if target.startswith("/usr/") and target != f"/{name}":
            aliases[f"/{name}"] = target
    return aliases


def find_databases(sysroot: Path) -> list[Database]:
    """The package databases sysroot holds, in the order their owners are taken."""
    found = []
    if (sysroot / DPKG_DIR / "info").is_dir():
        found.append(Database("dpkg", sysroot / DPKG_DIR))
    for name in RPMDB_SQLITE:
        if (sysroot / name).is_file():
            found.append(Database("rpm", sysroot / name))
            break
    else:
        for name in RPMDB_SQLITE:
            for other in RPMDB_UNREAD:
                unread = sysroot / posixpath.dirname(name) / other
                if unread.is_file():
                    log.warning("%s: an rpm database bookend cannot read (only rpmdb.sqlite); "
                                "its packages are not named", unread)  # fmt: skip
    if (sysroot / PACMAN_LOCAL).is_dir():
        found.append(Database("pacman", sysroot / PACMAN_LOCAL))
    return found


def load_package_index(sysroot: Path) -> PackageIndex:
    """Read every database of sysroot; an empty index if it has none."""
    databases = tuple(find_databases(sysroot))
    index = PackageIndex(merged_usr_links(sysroot), databases)
    readers = {"dpkg": read_dpkg, "rpm": read_rpmdb, "pacman": read_pacman}
    for database in databases:
        for path, package in readers[database.kind](database.path):
            index.add(path, package)
    return index


# --- dpkg -------------------------------------------------------------------------------


def read_dpkg(database: Path) -> Iterator[tuple[str, Package]]:
    """(path, package) from database/info/*.list, versions from database/status."""
    versions = dpkg_versions(database / "status")
    try:
        lists = sorted((database / "info").glob("*.list"))
    except OSError:
        lists = []
    for listing in lists:
        name = listing.name.removesuffix(".list")
        package = Package(name, versions.get(name) or versions.get(name.partition(":")[0], ""))
        for line in _read_text(listing).splitlines():
            if line.startswith("/") and line != "/.":
                yield line, package


def dpkg_versions(status: Path) -> dict[str, str]:
    """Package and package:arch -> version, from dpkg's status file; {} without one."""
    if not status.is_file():
        return {}
    versions: dict[str, str] = {}
    for paragraph in _read_text(status).split("\n\n"):
        fields = {}
        for line in paragraph.splitlines():
            key, colon, value = line.partition(":")
            if colon and not key.startswith((" ", "\t")):
                fields[key] = value.strip()
        name, version = fields.get("Package"), fields.get("Version", "")
        if name:
            versions.setdefault(name, version)
            if "Architecture" in fields:
                versions[f"{name}:{fields['Architecture']}"] = version
    return versions


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="surrogateescape")
    except OSError as exc:
        raise SysrootError(f"{path}: cannot read: {exc.strerror}") from None


# --- pacman -----------------------------------------------------------------------------


def pacman_sections(text: str) -> dict[str, list[str]]:
    """A desc or files file: "%NAME%" lines, each followed by its values up to a blank."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            current = sections.setdefault(line[1:-1], [])
        elif not line:
            current = None
        elif current is not None:
            current.append(line)
    return sections


def read_pacman(local: Path) -> Iterator[tuple[str, Package]]:
    """(path, package) from local/*/desc and files."""
    for entry in sorted(local.iterdir()):
        desc, files = entry / "desc", entry / "files"
        if not desc.is_file():
            continue  # ALPM_DB_VERSION, or a half-removed package
        fields = pacman_sections(_read_text(desc))
        if not fields.get("NAME"):
            log.warning("%s: no %%NAME%%; its files are not named", desc)
            continue
        package = Package(fields["NAME"][0], (fields.get("VERSION") or [""])[0])
        if files.is_file():
            for path in pacman_sections(_read_text(files)).get("FILES", []):
                if not path.endswith("/"):
                    yield "/" + path, package


# --- rpm --------------------------------------------------------------------------------

TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH = 1000, 1001, 1002, 1003, 1022
TAG_OLDFILENAMES, TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1027, 1116, 1117, 1118
TYPE_INT32, TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING = 4, 6, 8, 9
STRING_TYPES = (TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING)
WANTED_TAGS = {TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH,
               TAG_OLDFILENAMES, TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES}  # fmt: skip
# rpm's own limits on a header (lib/header.c): more is not a header rpm wrote.
MAX_ENTRIES = 0xFFFF
MAX_DATA = 256 << 20
ENTRY = struct.Struct(">IIiI")  # tag, type, offset, count


class HeaderError(Exception):
    """A header blob that does not hold what its index says; the message says where."""


TagValue = list[str] | list[int]


def parse_rpm_header(blob: bytes) -> dict[int, TagValue]:
    """The values of WANTED_TAGS in an rpmdb header blob (no magic: il, dl, index, data)."""
    if len(blob) < 8:
        raise HeaderError(f"{len(blob)} bytes, shorter than a header's counts")
    entries, data_size = struct.unpack_from(">II", blob)
    if not 0 < entries <= MAX_ENTRIES or data_size > MAX_DATA:
        raise HeaderError(f"{entries} entries and {data_size} bytes of data: not a header")
    data_start = 8 + entries * ENTRY.size
    if data_start + data_size > len(blob):
        need = data_start + data_size
        raise HeaderError(f"{entries} entries and {data_size} bytes of data need {need} "
                          f"bytes, the blob has {len(blob)}")  # fmt: skip
    data = blob[data_start : data_start + data_size]
    values: dict[int, TagValue] = {}
    for number in range(entries):
        tag, kind, offset, count = ENTRY.unpack_from(blob, 8 + number * ENTRY.size)
        if tag in WANTED_TAGS:
            # An entry outside the immutable region (a "dribble") replaces one inside.
            values[tag] = _tag_value(data, tag, kind, offset, count)
    return values


def _tag_value(data: bytes, tag: int, kind: int, offset: int, count: int) -> TagValue:
    if not 0 <= offset < len(data) or count < 1:
        raise HeaderError(f"tag {tag}: offset {offset}, count {count} outside the data")
    if kind == TYPE_INT32:
        end = offset + 4 * count
        if offset % 4 or end > len(data):
            raise HeaderError(f"tag {tag}: {count} int32 at offset {offset} do not fit")
        return list(struct.unpack_from(f">{count}i", data, offset))
    if kind not in STRING_TYPES or (kind == TYPE_STRING and count != 1):
        raise HeaderError(f"tag {tag}: type {kind} with count {count}, not strings")
    strings = []
    for _ in range(count):
        end = data.find(b"\0", offset)
        if end < 0:
            raise HeaderError(f"tag {tag}: a string at offset {offset} runs past the data")
        strings.append(data[offset:end].decode(errors="surrogateescape"))
        offset = end + 1
    return strings[:1] if kind == TYPE_I18NSTRING else strings  # the first locale's


def rpm_package(values: Mapping[int, TagValue]) -> Package:
    """NAME and [EPOCH:]VERSION-RELEASE (.ARCH where the header has one)."""
    name = _one_string(values, TAG_NAME)
    if not name:
        raise HeaderError("no NAME")
    version = _one_string(values, TAG_VERSION)
    release = _one_string(values, TAG_RELEASE)
    if release:
        version = f"{version}-{release}"
    epoch = values.get(TAG_EPOCH)
    if epoch and isinstance(epoch[0], int):
        version = f"{epoch[0]}:{version}"
    arch = _one_string(values, TAG_ARCH)
    return Package(name, f"{version}.{arch}" if arch else version)


def _one_string(values: Mapping[int, TagValue], tag: int) -> str:
    value = values.get(tag)
    if value and isinstance(value[0], str):
        return value[0]
    if value:
        raise HeaderError(f"tag {tag} holds numbers, not a string")
    return ""


def rpm_paths(values: Mapping[int, TagValue]) -> list[str]:
    """The package's files: dirnames[dirindexes[i]] + basenames[i], or OLDFILENAMES."""
    basenames, dirnames = values.get(TAG_BASENAMES), values.get(TAG_DIRNAMES)
    indexes = values.get(TAG_DIRINDEXES)
    if basenames is None:
        old = values.get(TAG_OLDFILENAMES, [])
        return [str(path) for path in old]
    if dirnames is None or indexes is None or len(indexes) != len(basenames):
        raise HeaderError(f"{len(basenames)} BASENAMES without as many DIRINDEXES and DIRNAMES")
    paths = []
    for base, index in zip(basenames, indexes, strict=True):
        if not isinstance(index, int) or not 0 <= index < len(dirnames):
            raise HeaderError(f"DIRINDEXES names directory {index} of {len(dirnames)}")
        paths.append(f"{dirnames[index]}{base}")
    return paths


def read_rpmdb(rpmdb: Path) -> Iterator[tuple[str, Package]]:
    """(path, package) from each header in rpmdb's Packages table."""
    wal = rpmdb.with_name(rpmdb.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        # rpm checkpoints and truncates its log when it closes the database; a log left
        # over is a crashed rpm's, which an immutable open does not read.
        log.warning("%s: %d bytes rpm never wrote into the database; changes in them are "
                    "not read", wal, wal.stat().st_size)  # fmt: skip
    uri = f"file:{urllib.parse.quote(str(rpmdb.absolute()))}?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            rows = connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise SysrootError(f"{rpmdb}: not an rpm database bookend can read: {exc}") from None
    for hnum, blob in rows:
        try:
            if not isinstance(blob, bytes):
                raise HeaderError(f"a {type(blob).__name__}, not a header blob")
            values = parse_rpm_header(blob)
            package, paths = rpm_package(values), rpm_paths(values)
        except HeaderError as exc:
            log.warning("%s: package %s: bad header (%s); its files are not named",
                        rpmdb, hnum, exc)  # fmt: skip
            continue
        for path in paths:
            yield path, package
