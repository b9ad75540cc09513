"""bookend.microcode: fixture microcode trees, the written segment read back by bsdtar and
GNU cpio, and the layout of an early segment followed by a compressed archive."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from bookend.archive.compress import Compression, open_compressor
from bookend.archive.cpio import TRAILER, ArchiveEntry, EntryKind, write_cpio
from bookend.build import write_image
from bookend.closure import Closure, ClosureEntry
from bookend.microcode import AMD, INTEL, cpu_vendor, microcode_blob, microcode_entries
from bookend.sysroot import Sysroot
from tests.unit.conftest import load_config

from .conftest import make_root_tree

INTEL_FILE = "kernel/x86/microcode/GenuineIntel.bin"
AMD_FILE = "kernel/x86/microcode/AuthenticAMD.bin"
DIRS = ["kernel", "kernel/x86", "kernel/x86/microcode"]

# Created out of order on purpose; the blob must follow name order. Debian ships some
# updates as NAME.initramfs, meant for the early segment only.
INTEL_FILES = {
    "06-9e-0a": b"I3" * 512,
    "06-0f-02": b"I1" * 512,
    "06-8e-0a.initramfs": b"I2" * 512,
}
AMD_FILES = {
    "microcode_amd_fam17h.bin": b"A2" * 100,
    "microcode_amd.bin": b"A1" * 100,
    "microcode_amd_fam19h.bin.asc": b"signature, not microcode",
    "README": b"not microcode",
}


def ucode_tree(tmp_path: Path, intel: bool = True, amd: bool = True) -> Sysroot:
    root = make_root_tree(tmp_path / "sysroot")
    firmware = root / "usr/lib/firmware"
    if intel:
        for name, content in INTEL_FILES.items():
            _write(firmware / "intel-ucode" / name, content)
        _write(firmware / "intel-ucode/.hidden", b"editor backup")
        (firmware / "intel-ucode/subdir").mkdir()
    if amd:
        for name, content in AMD_FILES.items():
            _write(firmware / "amd-ucode" / name, content)
    return Sysroot(root)


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


INTEL_BLOB = b"I1" * 512 + b"I2" * 512 + b"I3" * 512
AMD_BLOB = b"A1" * 100 + b"A2" * 100


def segment(entries: list[ArchiveEntry]) -> bytes:
    out = io.BytesIO()
    write_cpio(entries, out, epoch=0)
    return out.getvalue()


def newc_members(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, mode, data offset, size) of each member up to the trailer; written here,
    apart from bookend's writer, from the newc layout: a 110-byte header of hex fields,
    the name, then the data, each padded to 4 bytes."""
    members: list[tuple[str, int, int, int]] = []
    at = 0
    while True:
        assert data[at : at + 6] == b"070701", f"no newc header at {at}"
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name = data[at + 110 : at + 110 + name_size].rstrip(b"\0").decode()
        data_at = (at + 110 + name_size + 3) // 4 * 4
        if name == TRAILER:
            return members
        members.append((name, mode, data_at, size))
        at = (data_at + size + 3) // 4 * 4


def early_scan(initrd: bytes, path: str) -> bytes | None:
    """What the kernel's early scan (lib/earlycpio.c) finds for path: it walks newc
    headers from the start, skips NUL words between archives, and gives up at anything
    that is not a header."""
    at = 0
    while at + 110 < len(initrd):
        if initrd[at] == 0:
            at += 4
            continue
        if initrd[at : at + 6] not in (b"070701", b"070702"):
            return None
        fields = [int(initrd[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        data_at = (at + 110 + name_size + 3) // 4 * 4
        name = initrd[at + 110 : at + 110 + name_size]
        if mode & 0o170000 == 0o100000 and name.startswith(path.encode()):
            return initrd[data_at : data_at + size]
        at = (data_at + size + 3) // 4 * 4
    return None


# --- cpu vendor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\n"
         "processor\t: 1\nvendor_id\t: GenuineIntel\n", "GenuineIntel"),
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n", "AuthenticAMD"),
        ("processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\n", None),  # arm64
        ("", None),
    ],
)  # fmt: skip
def test_cpu_vendor(tmp_path: Path, cpuinfo: str, expected: str | None) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert cpu_vendor(tmp_path) == expected


def test_cpu_vendor_without_cpuinfo(tmp_path: Path) -> None:
    assert cpu_vendor(tmp_path) is None


def test_cpu_vendor_of_this_host() -> None:
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo")
    vendor = cpu_vendor(Path("/proc"))
    assert vendor is None or vendor in Path("/proc/cpuinfo").read_text()


# --- entries -------------------------------------------------------------------------------


def test_blobs_concatenate_in_name_order(tmp_path: Path) -> None:
    sysroot = ucode_tree(tmp_path)
    assert microcode_blob(sysroot, INTEL) == INTEL_BLOB
    # Only microcode_amd*.bin: the .asc signature and the README stay out.
    assert microcode_blob(sysroot, AMD) == AMD_BLOB


def test_no_microcode_no_entries(tmp_path: Path) -> None:
    sysroot = ucode_tree(tmp_path, intel=False, amd=False)
    assert microcode_entries(sysroot, [INTEL, AMD]) == []
    assert microcode_entries(ucode_tree(tmp_path / "x"), []) == []


def test_vendor_without_microcode_is_left_out(tmp_path: Path) -> None:
    sysroot = ucode_tree(tmp_path, intel=False)
    names = [entry.path for entry in microcode_entries(sysroot, [INTEL, AMD])]
    assert names == ["/kernel", "/kernel/x86", "/kernel/x86/microcode", "/" + AMD_FILE]


def test_unknown_and_repeated_vendors(tmp_path: Path) -> None:
    sysroot = ucode_tree(tmp_path)
    assert microcode_entries(sysroot, ["CentaurHauls"]) == []
    files = [e for e in microcode_entries(sysroot, [AMD, AMD, "HygonGenuine"]) if e.data]
    assert [(e.path, e.data) for e in files] == [("/" + AMD_FILE, AMD_BLOB)]


def test_entries_are_directories_and_generated_files(tmp_path: Path) -> None:
    entries = microcode_entries(ucode_tree(tmp_path), [INTEL, AMD])
    by_path = {entry.path: entry for entry in entries}
    for directory in DIRS:
        assert by_path["/" + directory].kind is EntryKind.DIRECTORY
    assert by_path["/" + INTEL_FILE].data == INTEL_BLOB
    assert by_path["/" + AMD_FILE].data == AMD_BLOB
    assert all(entry.source is None for entry in entries)
    # Nothing else but, perhaps, the one padding directory for alignment.
    extra = set(by_path) - {"/" + p for p in [*DIRS, INTEL_FILE, AMD_FILE]}
    assert len(extra) <= 1
    assert all(by_path[path].kind is EntryKind.DIRECTORY for path in extra)


@pytest.mark.parametrize("amd_size", range(16))
def test_intel_data_is_16_byte_aligned_in_the_written_segment(
    tmp_path: Path, amd_size: int
) -> None:
    # Every remainder of the AMD file's size moves the Intel file differently.
    sysroot = ucode_tree(tmp_path, amd=False)
    if amd_size:
        _write(sysroot.root / "usr/lib/firmware/amd-ucode/microcode_amd.bin", b"a" * amd_size)
    written = segment(microcode_entries(sysroot, [INTEL, AMD]))
    members = {name: (data_at, size) for name, _, data_at, size in newc_members(written)}
    data_at, size = members[INTEL_FILE]
    assert data_at % 16 == 0
    assert written[data_at : data_at + size] == INTEL_BLOB
    assert (AMD_FILE in members) == bool(amd_size)


# --- the segment read back by other tools --------------------------------------------------


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def _run(command: list[str], data: bytes) -> bytes:
    return subprocess.run(command, input=data, capture_output=True, check=True).stdout


@pytest.fixture
def both(tmp_path: Path) -> bytes:
    return segment(microcode_entries(ucode_tree(tmp_path), [INTEL, AMD]))


def test_bsdtar_lists_and_extracts_the_segment(both: bytes) -> None:
    _need("bsdtar")
    listing = _run(["bsdtar", "-tvf", "-"], both).decode().splitlines()
    names = [line.split()[-1] for line in listing]
    assert [n for n in names if "align" not in n] == [*DIRS, AMD_FILE, INTEL_FILE]
    assert all(line.split()[2:4] == ["0", "0"] for line in listing)  # uid and gid root
    assert _run(["bsdtar", "-xOf", "-", INTEL_FILE], both) == INTEL_BLOB
    assert _run(["bsdtar", "-xOf", "-", AMD_FILE], both) == AMD_BLOB


def test_gnu_cpio_lists_and_extracts_the_segment(both: bytes) -> None:
    _need("cpio")
    names = _run(["cpio", "-it", "--quiet"], both).decode().splitlines()
    assert [n for n in names if "align" not in n] == [*DIRS, AMD_FILE, INTEL_FILE]
    assert _run(["cpio", "-i", "--quiet", "--to-stdout", INTEL_FILE], both) == INTEL_BLOB
    assert _run(["cpio", "-i", "--quiet", "--to-stdout", AMD_FILE], both) == AMD_BLOB


def test_early_segment_then_zstd_archive_in_one_file(tmp_path: Path, both: bytes) -> None:
    """The initrd layout: the uncompressed segment, then the compressed main archive."""
    _need("cpio", "zstd")
    main = [
        ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/usr/lib", EntryKind.DIRECTORY, 0o755),
        ArchiveEntry("/usr/lib/os-release", EntryKind.FILE, 0o644, data=b"ID=fixture\n"),
    ]
    initrd = tmp_path / "initrd.img"
    sysroot = ucode_tree(tmp_path / "again")
    config = load_config(None, {"sysroot": str(sysroot.root), "output": str(initrd)})
    early = microcode_entries(sysroot, [INTEL, AMD])
    entries = {e.path: ClosureEntry(e, "test", None) for e in main}
    write_image(config, Closure(entries, early=tuple(early)))  # as `bookend build` writes
    image = initrd.read_bytes()
    assert image.startswith(both)

    # GNU cpio reads the first archive and stops at its trailer.
    names = _run(["cpio", "-it", "--quiet"], image).decode().splitlines()
    assert INTEL_FILE in names and AMD_FILE in names and "usr" not in names

    # Past the trailer and its padding comes the zstd stream, which holds the rest.
    trailer = image.index(b"TRAILER!!!\0")
    rest = image[(trailer + len("TRAILER!!!\0") + 3) // 4 * 4 :]
    assert rest[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic, nothing in between
    main_names = _run(["cpio", "-it", "--quiet"], _run(["zstd", "-dc"], rest)).decode()
    assert main_names.splitlines() == ["usr", "usr/lib", "usr/lib/os-release"]

    # And the kernel's early scan finds both files at the head of the whole image.
    assert early_scan(image, INTEL_FILE) == INTEL_BLOB
    assert early_scan(image, AMD_FILE) == AMD_BLOB


def test_early_scan_stops_at_compressed_data(tmp_path: Path) -> None:
    # The reason the segment must be uncompressed and first: behind a compressed
    # archive the kernel does not see it.
    with io.BytesIO() as out:
        with open_compressor(Compression.ZSTD, out, level=3) as sink:
            write_cpio([ArchiveEntry("/x", EntryKind.DIRECTORY, 0o755)], sink, epoch=0)
        write_cpio(microcode_entries(ucode_tree(tmp_path), [INTEL]), out, epoch=0)
        image = out.getvalue()
    assert early_scan(image, INTEL_FILE) is None
