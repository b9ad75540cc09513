"""bookend.packages: who owns a file, from dpkg, rpm and pacman databases, and `size` by it.

The databases are written by tests/packagedbs.py as each package manager lays them out
(the rpmdb a real sqlite file holding encoded rpm headers); the trees link /bin, /sbin,
/lib... the way Debian 12, Fedora 42 and Arch do, and list each file the way that
distribution's packages do, so merged-/usr aliasing is tested on each.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor, write_cpio
from bookend.closure import Closure, ClosureEntry
from bookend.errors import SysrootError
from bookend.inspect.size import format_summary, size_report
from bookend.manifest import with_manifest
from bookend.packages import (
    HeaderError,
    Package,
    find_databases,
    load_package_index,
    parse_rpm_header,
    rpm_package,
    rpm_paths,
)
from tests.packagedbs import (
    BIN,
    INT32,
    STRING,
    STRING_ARRAY,
    encode_rpm_header,
    rpm_header,
    write_dpkg_db,
    write_pacman_db,
    write_rpmdb,
    write_rpmdb_blobs,
)

ROOT = Path(__file__).resolve().parents[2]

# The image every distribution's tree is asked about, and what each file takes.
IMAGE_FILES = {
    "/usr/bin/systemctl": 1000,
    "/usr/sbin/cryptsetup": 2000,  # as an initrd built on Debian names it
    "/usr/lib64/libc.so.6": 3000,
    "/etc/fstab": 40,  # generated: nobody's
}
EXPECTED = {"cryptsetup": 2000, "glibc": 3000, "systemd": 1000, "(no package)": 40}

Writer = Callable[..., Path]


def distribution_tree(root: Path, kind: str) -> Path:
    """A tree linked and listed as Debian 12 (dpkg), Fedora 42 (rpm) or Arch (pacman)."""
    links, writer, packages = {
        # Debian 12: /lib64 and /usr/sbin are directories; libc6 lists /lib64's loader path.
        "dpkg": ({"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"},
                 write_dpkg_db,
                 {"systemd": ["/bin/systemctl"], "cryptsetup": ["/sbin/cryptsetup"],
                  "glibc": ["/lib64/libc.so.6"]}),
        # Fedora 42: /usr/sbin is a link to bin; everything listed under /usr.
        "rpm": ({"bin": "usr/bin", "sbin": "usr/sbin", "usr/sbin": "bin", "lib64": "usr/lib64"},
                write_rpmdb,
                {"systemd": ["/usr/bin/systemctl"], "cryptsetup": ["/usr/bin/cryptsetup"],
                 "glibc": ["/usr/lib64/libc.so.6"]}),
        # Arch: one /usr/bin and one /usr/lib, the rest links to them, absolute or not.
        "pacman": ({"bin": "usr/bin", "sbin": "/usr/bin", "usr/sbin": "bin", "lib": "usr/lib",
                    "lib64": "usr/lib", "usr/lib64": "lib"},
                   write_pacman_db,
                   {"systemd": ["/usr/bin/systemctl"], "cryptsetup": ["/usr/bin/cryptsetup"],
                    "glibc": ["/usr/lib/libc.so.6"]}),
    }[kind]  # fmt: skip
    for name in ("usr/bin", "usr/lib", "usr/sbin", "usr/lib64"):
        if name not in links:
            (root / name).mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        (root / name).symlink_to(target)
    writer(root, packages, {"systemd": "257.7-1"})
    return root


def write_image(path: Path) -> Path:
    entries = [ArchiveEntry(name, EntryKind.FILE, 0o644, data=b"x" * size)
               for name, size in IMAGE_FILES.items()]  # fmt: skip
    with path.open("wb") as out, open_compressor(Compression.ZSTD, out) as stream:
        write_cpio(entries, stream, epoch=0)
    return path


def bookend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bookend", *args], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip


# --- size attributes files on every database --------------------------------------------


@pytest.mark.parametrize("kind", ["dpkg", "rpm", "pacman"])
def test_size_attributes_files_to_packages(kind: str, tmp_path: Path) -> None:
    root = distribution_tree(tmp_path / "root", kind)
    image = write_image(tmp_path / "initrd.img")
    result = bookend("size", "--json", str(image), "--sysroot", str(root))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    packages = data["views"]["package"]
    assert {group["name"]: group["size"] for group in packages["children"]} == EXPECTED
    (database,) = find_databases(root)
    assert data["notes"]["package"] == (
        f"the package owning each file, from {kind} {database.path}"
    )
    # The text summary names the database and the groups too.
    text = format_summary(size_report(image, root)).split("By package")[1]
    assert text.startswith(f" (the package owning each file, from {kind} {database.path}):")
    assert [line.split()[-1] for line in text.splitlines()[1:]] == [
        "glibc", "cryptsetup", "systemd", "package)"
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["dpkg", "rpm", "pacman"])
def test_each_database_names_versions(kind: str, tmp_path: Path) -> None:
    index = load_package_index(distribution_tree(tmp_path / "root", kind))
    version = "257.7-1.x86_64" if kind == "rpm" else "257.7-1"  # rpm's carries the arch
    assert index.owner("/usr/bin/systemctl") == Package("systemd", version)
    assert index.owner("/bin/systemctl") == Package("systemd", version)
    assert index.owner("/etc/fstab") is None


def test_merged_usr_aliases_follow_the_trees_links(tmp_path: Path) -> None:
    arch = load_package_index(distribution_tree(tmp_path / "arch", "pacman"))
    assert arch.aliases == {"/bin": "/usr/bin", "/sbin": "/usr/bin", "/lib": "/usr/lib",
                            "/lib64": "/usr/lib", "/usr/sbin": "/usr/bin",
                            "/usr/lib64": "/usr/lib"}  # fmt: skip
    assert arch.canonical("/sbin/cryptsetup") == "/usr/bin/cryptsetup"
    assert arch.canonical("/usr/lib64/libc.so.6") == "/usr/lib/libc.so.6"
    assert arch.canonical("/sbin") == "/sbin"  # the link itself is its own path
    fedora = load_package_index(distribution_tree(tmp_path / "fedora", "rpm"))
    assert fedora.canonical("/sbin/cryptsetup") == "/usr/bin/cryptsetup"  # two links
    assert fedora.owner("/sbin/cryptsetup") == fedora.owner("/usr/bin/cryptsetup")


def test_dpkg_multiarch_versions_from_status(tmp_path: Path) -> None:
    write_dpkg_db(tmp_path, {"libc6:amd64": ["/usr/lib/x86_64-linux-gnu/libc.so.6"],
                             "base-files": ["/etc/os-release"]},
                  {"libc6:amd64": "2.36-9+deb12u4"})  # fmt: skip
    index = load_package_index(tmp_path)
    assert index.owner("/usr/lib/x86_64-linux-gnu/libc.so.6") == Package(
        "libc6:amd64", "2.36-9+deb12u4"
    )
    assert index.owner("/etc/os-release") == Package("base-files", "1.0-1")


def test_every_database_of_a_tree_is_read(tmp_path: Path) -> None:
    write_dpkg_db(tmp_path, {"a": ["/usr/bin/a", "/usr/bin/both"]})
    write_rpmdb(tmp_path, {"b": ["/usr/bin/b", "/usr/bin/both"]}, where="var/lib/rpm/rpmdb.sqlite")
    write_pacman_db(tmp_path, {"c": ["/usr/bin/c"]})
    index = load_package_index(tmp_path)
    assert [db.kind for db in index.databases] == ["dpkg", "rpm", "pacman"]
    owners = [index.owner(f"/usr/bin/{name}") for name in "abc"]
    assert [owner.name if owner else None for owner in owners] == ["a", "b", "c"]
    assert index.owner("/usr/bin/both") == Package("a", "1.0-1")  # the first database's


def test_a_tree_without_databases_has_no_owners(tmp_path: Path) -> None:
    index = load_package_index(tmp_path)
    assert index.databases == () and index.owners == {}


# --- the rpm header ---------------------------------------------------------------------


def test_rpm_header_round_trip_with_epoch_dribble_and_old_filenames() -> None:
    blob = encode_rpm_header({
        1000: (STRING, ["kernel-core"]), 1001: (STRING, ["6.14.5"]),
        1002: (STRING, ["300.fc42"]), 1003: (INT32, [2]), 1022: (STRING, ["x86_64"]),
        1027: (STRING_ARRAY, ["/boot/vmlinuz", "/usr/lib/modules/6.14.5/vmlinuz"]),
        1004: (9, ["The kernel", "Der Kern"]),  # I18NSTRING (SUMMARY): not read
        1028: (INT32, [1, 2]),  # FILESIZES: an int32 array among strings, aligned
    })  # fmt: skip
    values = parse_rpm_header(blob)
    assert rpm_package(values) == Package("kernel-core", "2:6.14.5-300.fc42.x86_64")
    assert rpm_paths(values) == ["/boot/vmlinuz", "/usr/lib/modules/6.14.5/vmlinuz"]
    # An entry after the region (a dribble, as rpm adds at install) wins over one in it.
    entries, size = struct.unpack_from(">II", blob)
    dribble = struct.pack(">IIiI", 1001, STRING, size, 1)
    patched = (struct.pack(">II", entries + 1, size + 4) + blob[8 : 8 + 16 * entries]
               + dribble + blob[8 + 16 * entries :] + b"7.0\0")  # fmt: skip
    assert rpm_package(parse_rpm_header(patched)).version == "2:7.0-300.fc42.x86_64"


def test_rpm_paths_from_dirnames_and_basenames() -> None:
    values = parse_rpm_header(rpm_header("systemd", "257-1", [
        "/usr/bin/systemctl", "/usr/lib/systemd/systemd", "/usr/bin/udevadm"]))  # fmt: skip
    assert values[1118] == ["/usr/bin/", "/usr/lib/systemd/"]
    assert values[1116] == [0, 1, 0]
    assert rpm_paths(values) == ["/usr/bin/systemctl", "/usr/lib/systemd/systemd",
                                 "/usr/bin/udevadm"]  # fmt: skip
    # A package without files (gpg-pubkey) has no paths, and is no error.
    assert rpm_paths(parse_rpm_header(rpm_header("gpg-pubkey", "1-1", []))) == []


def _good() -> bytes:
    return rpm_header("systemd", "257-1", ["/usr/bin/systemctl"])


def _entry(blob: bytes, tag: int) -> int:
    """The byte offset of tag's index entry in blob."""
    entries = struct.unpack_from(">I", blob)[0]
    for n in range(entries):
        if struct.unpack_from(">I", blob, 8 + 16 * n)[0] == tag:
            return 8 + 16 * n
    raise AssertionError(tag)


def _set(blob: bytes, tag: int, field: int, value: int) -> bytes:
    """blob with field (0 tag, 1 type, 2 offset, 3 count) of tag's entry set to value."""
    at = _entry(blob, tag) + 4 * field
    return blob[:at] + struct.pack(">i" if field == 2 else ">I", value) + blob[at + 4 :]


BAD_HEADERS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "0 bytes, shorter than a header's counts"),
    "truncated": (lambda: _good()[:-5], "the blob has"),
    "no entries": (lambda: struct.pack(">II", 0, 0), "0 entries and 0 bytes of data: not a"),
    "huge count": (lambda: struct.pack(">II", 1 << 30, 0), "not a header"),
    "offset past data": (lambda: _set(_good(), 1000, 2, 1 << 20), "tag 1000: offset 1048576"),
    "negative offset": (lambda: _set(_good(), 1001, 2, -8), "tag 1001: offset -8"),
    "name is a number": (lambda: _set(_good(), 1000, 1, INT32), "tag 1000"),
    "string count": (lambda: _set(_good(), 1000, 3, 2), "type 6 with count 2"),
    "unterminated": (lambda: _good()[:-17] + b"\xff" * 17, "runs past the data"),
    "index too far": (lambda: _set(_good(), 1118, 3, 0), "count 0 outside the data"),
    "misaligned": (lambda: _set(_good(), 1116, 2, 1), "do not fit"),
    "unknown type": (lambda: _set(_good(), 1117, 1, BIN), "type 7 with count 1, not strings"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_bad_rpm_headers_are_header_errors(case: str) -> None:
    make, message = BAD_HEADERS[case]
    with pytest.raises(HeaderError, match=message):
        values = parse_rpm_header(make())
        rpm_package(values), rpm_paths(values)


def test_a_bad_header_is_one_warning_naming_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = rpm_header("glibc", "2.41-1", ["/usr/lib64/libc.so.6"])
    bad = _set(_good(), 1000, 2, 1 << 20)
    rpmdb = write_rpmdb_blobs(tmp_path, [good, bad, struct.pack(">II", 5, 0)])
    with caplog.at_level(logging.WARNING):
        index = load_package_index(tmp_path)
    assert index.owner("/usr/lib64/libc.so.6") == Package("glibc", "2.41-1.x86_64")
    assert index.owner("/usr/bin/systemctl") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{rpmdb}: package 2: bad header (tag 1000: offset 1048576, count 1 outside the "
        "data); its files are not named",
        f"{rpmdb}: package 3: bad header (5 entries and 0 bytes of data need 88 bytes, "
        "the blob has 8); its files are not named",
    ]


def test_size_with_a_bad_header_warns_in_one_line(tmp_path: Path) -> None:
    rpmdb = write_rpmdb_blobs(tmp_path / "root", [b"\0\0\0\1garbage"])
    result = bookend("size", "--json", str(write_image(tmp_path / "i.img")),
                     "--sysroot", str(tmp_path / "root"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    size = int.from_bytes(b"garb")
    assert result.stderr.splitlines() == [
        f"bookend: {rpmdb}: package 1: bad header (1 entries and {size} bytes of data: "
        "not a header); its files are not named"
    ]
    note = json.loads(result.stdout)["notes"]["package"]
    assert note == f"no package lists a file in rpm {rpmdb}"


@pytest.mark.parametrize("content", [b"not sqlite at all" * 100, b""])
def test_an_unreadable_rpmdb_is_a_one_line_error(content: bytes, tmp_path: Path) -> None:
    rpmdb = tmp_path / "root/var/lib/rpm/rpmdb.sqlite"
    rpmdb.parent.mkdir(parents=True)
    rpmdb.write_bytes(content)  # an empty file is a database without a Packages table
    with pytest.raises(SysrootError, match=f"^{rpmdb}: not an rpm database bookend can read"):
        load_package_index(tmp_path / "root")
    result = bookend("size", str(write_image(tmp_path / "i.img")), "--sysroot",
                     str(tmp_path / "root"))  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bookend: {rpmdb}: not an rpm database bookend can read: ")


def test_the_rpmdb_is_read_without_a_write(tmp_path: Path) -> None:
    rpmdb = write_rpmdb(tmp_path, {"glibc": ["/usr/lib64/libc.so.6"]})
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in rpmdb.parent.iterdir()}
    rpmdb.parent.chmod(0o555)
    try:
        assert load_package_index(tmp_path).owner("/usr/lib64/libc.so.6") is not None
    finally:
        rpmdb.parent.chmod(0o755)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in rpmdb.parent.iterdir()}
    assert after == before


def test_ndb_and_berkeley_rpmdbs_are_named_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ndb = tmp_path / "usr/lib/sysimage/rpm/Packages.db"
    ndb.parent.mkdir(parents=True)
    ndb.write_bytes(b"RpmP")
    with caplog.at_level(logging.WARNING):
        assert find_databases(tmp_path) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"{ndb}: an rpm database bookend cannot read (only rpmdb.sqlite); its packages are "
        "not named"
    ]


def test_a_left_over_write_ahead_log_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rpmdb = write_rpmdb(tmp_path, {"glibc": ["/usr/lib64/libc.so.6"]})
    wal = rpmdb.with_name("rpmdb.sqlite-wal")
    wal.write_bytes(b"\0" * 32)
    with caplog.at_level(logging.WARNING):
        assert load_package_index(tmp_path).owner("/usr/lib64/libc.so.6") is not None
    assert [r.getMessage() for r in caplog.records] == [
        f"{wal}: 32 bytes rpm never wrote into the database; changes in them are not read"
    ]


# --- pacman -----------------------------------------------------------------------------


def test_pacman_entry_without_a_name_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = write_pacman_db(tmp_path, {"bash": ["/usr/bin/bash"], "zstd": ["/usr/bin/zstd"]})
    (local / "zstd-1.0-1/desc").write_text("%VERSION%\n1.0-1\n\n")
    with caplog.at_level(logging.WARNING):
        index = load_package_index(tmp_path)
    assert index.owner("/usr/bin/bash") == Package("bash", "1.0-1")
    assert index.owner("/usr/bin/zstd") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{local}/zstd-1.0-1/desc: no %NAME%; its files are not named"
    ]


def test_writers_take_any_root(tmp_path: Path) -> None:
    """The fixture writers make their directories and return what they wrote."""
    writers: list[tuple[Writer, str]] = [
        (write_dpkg_db, "var/lib/dpkg"),
        (write_rpmdb, "usr/lib/sysimage/rpm/rpmdb.sqlite"),
        (write_pacman_db, "var/lib/pacman/local"),
    ]
    for writer, where in writers:
        root = tmp_path / writer.__name__ / "not/yet/made"
        assert writer(root, {"p": ["/x"]}) == root / where


# --- rpm itself agrees ------------------------------------------------------------------

PROBE_SPEC = """\
Name: bookend-probe
Version: 2.5
Release: 3
Epoch: 1
Summary: a package bookend's rpmdb reader reads
License: MIT
BuildArch: noarch
%description
Files in two directories, so the header splits them into dirnames and basenames.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib/probe
echo probe > %{buildroot}/usr/bin/probe
echo data > %{buildroot}/usr/lib/probe/data
%files
/usr/bin/probe
/usr/lib/probe/data
"""
needs_rpm = pytest.mark.skipif(
    not (shutil.which("rpm") and shutil.which("rpmbuild")), reason="no rpm here (scripts/setup)"
)


def rpm(*args: str) -> str:
    return subprocess.run(["rpm", *args], check=True, capture_output=True, text=True).stdout


@needs_rpm
def test_a_database_rpm_wrote_is_read(tmp_path: Path) -> None:
    """rpmbuild makes a package, rpm installs it into an empty rpmdb (--justdb), and
    bookend reads the header rpm stored."""
    (tmp_path / "probe.spec").write_text(PROBE_SPEC)
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path}/top",
                    "--define", "_build_id_links none", str(tmp_path / "probe.spec")],
                   check=True, capture_output=True)  # fmt: skip
    (package,) = (tmp_path / "top/RPMS/noarch").iterdir()
    dbpath = tmp_path / "root/var/lib/rpm"
    rpm("--dbpath", str(dbpath), "--initdb")
    rpm("--dbpath", str(dbpath), "-i", "--justdb", "--nodeps", "--noscripts", str(package))
    index = load_package_index(tmp_path / "root")
    probe = Package("bookend-probe", "1:2.5-3.noarch")
    assert index.owner("/usr/bin/probe") == probe
    assert index.owner("/usr/lib/probe/data") == probe


@needs_rpm
def test_rpm_reads_the_database_the_tests_write(tmp_path: Path) -> None:
    """rpm --rebuilddb checks every header and indexes it; rpm -qa and -qf then name the
    packages and owners bookend reads from the same file."""
    write_rpmdb(tmp_path, {"systemd": ["/usr/bin/systemctl", "/usr/lib/systemd/systemd"],
                           "glibc": ["/usr/lib64/libc.so.6"]}, {"systemd": "257.7-1"})  # fmt: skip
    dbpath = str(tmp_path / "usr/lib/sysimage/rpm")
    rebuilt = subprocess.run(["rpm", "--dbpath", dbpath, "--rebuilddb"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert rebuilt.stderr == ""  # a header rpm finds bad is "header #N ... is bad -- skipping"
    query = "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\\n"
    assert rpm("--dbpath", dbpath, "-qa", "--qf", query).splitlines() == [
        "systemd 0:257.7-1.x86_64", "glibc 0:1.0-1.x86_64"
    ]  # fmt: skip
    owners = rpm("--dbpath", dbpath, "-qf", "--qf", "%{NAME}\\n", "/usr/bin/systemctl",
                 "/usr/lib/systemd/systemd", "/usr/lib64/libc.so.6")  # fmt: skip
    assert owners.split() == ["systemd", "systemd", "glibc"]
    index = load_package_index(tmp_path)  # the rebuilt database, read as rpm left it
    assert index.owner("/usr/lib/systemd/systemd") == Package("systemd", "257.7-1.x86_64")


# --- why --sysroot ----------------------------------------------------------------------


def test_why_names_the_package_from_the_sysroot(tmp_path: Path) -> None:
    closure = with_manifest(Closure({"/usr/bin/systemctl": ClosureEntry(
        ArchiveEntry("/usr/bin/systemctl", EntryKind.FILE, 0o755, data=b"x"), "feature systemd",
        None)}))  # fmt: skip
    image = tmp_path / "initrd.img"
    with image.open("wb") as out:
        write_cpio([entry.entry for entry in closure.entries.values()], out, epoch=0)
    root = distribution_tree(tmp_path / "root", "pacman")
    local = root / "var/lib/pacman/local"
    result = bookend("why", str(image), "/usr/bin/systemctl", "--sysroot", str(root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "/usr/bin/systemctl <- feature systemd", f"package: systemd 257.7-1 (pacman {local})"
    ]  # fmt: skip
    alone = bookend("why", str(image), "/usr/bin/systemctl").stdout
    assert alone == "/usr/bin/systemctl <- feature systemd\n"  # no --sysroot, no package line
    empty = bookend("why", str(image), "/usr/bin/systemctl", "--sysroot", str(tmp_path / "no"))
    assert empty.stdout.splitlines()[-1] == (
        f"package: none known (no dpkg, rpm or pacman database in {tmp_path / 'no'})"
    )
