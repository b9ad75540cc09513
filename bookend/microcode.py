"""Early microcode for x86: the uncompressed cpio segment that leads the initrd.

Before it unpacks anything, the kernel scans the start of the initrd for
kernel/x86/microcode/GenuineIntel.bin or AuthenticAMD.bin (Documentation/arch/x86/
microcode.rst). That scan (lib/earlycpio.c) reads newc headers only: it skips NUL words
between archives and stops at the first thing that is not a header, such as compressed
data. So the microcode must sit in an uncompressed newc archive ahead of the compressed
one, with names exactly as above: no leading "/" or "./".

How the image is written, and what this module leaves to the caller:

    write_cpio(microcode_entries(sysroot, vendors), out, epoch=0)   # uncompressed
    with open_compressor(compression, out) as sink:                  # same file, right after
        write_cpio(main_entries, sink, epoch=epoch)

No padding is needed between the two: write_cpio ends on a 4-byte boundary, and the
kernel's unpacker skips NULs and then recognises a compressed stream at any offset.
The segment is unpacked into the rootfs like any other, so the files also show up
under /kernel in the running initrd, as they do with other generators.

Intel's update data must be 16-byte aligned for the WRMSR that applies it (Intel SDM
vol. 3, "microcode update must be aligned on a 16-byte boundary"), and the kernel
applies the boot CPU's update straight from the initrd. newc aligns data to 4 bytes
only, so an empty directory, whose name is as long as needed, goes before
GenuineIntel.bin to push its data onto a 16-byte boundary (iucode_tool does the same).
The segment starts the initrd, so offsets in it are offsets in memory from the
page-aligned start.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bookend.archive.cpio import ArchiveEntry, EntryKind, sort_key
from bookend.errors import SysrootError
from bookend.sysroot import Sysroot

EARLY_DIRS = ("/kernel", "/kernel/x86", "/kernel/x86/microcode")
INTEL = "GenuineIntel"
AMD = "AuthenticAMD"
UPDATE_ALIGNMENT = 16
_NEWC_HEADER = 110
# Sorts after AuthenticAMD.bin and before GenuineIntel.bin; dashes are added to its end.
_PAD_NAME = f"{EARLY_DIRS[-1]}/GenuineIntel.align"


@dataclass(frozen=True)
class _Source:
    directory: str  # image path of the vendor's microcode files
    pattern: str  # which files in it, as the kernel documentation's example globs them


SOURCES = {
    INTEL: _Source("/lib/firmware/intel-ucode", "*"),
    AMD: _Source("/lib/firmware/amd-ucode", "microcode_amd*.bin"),
}


def cpu_vendor(procfs: Path) -> str | None:
    """The vendor_id of the first CPU in <procfs>/cpuinfo; None where there is none (non-x86)."""
    cpuinfo = procfs / "cpuinfo"
    try:
        text = cpuinfo.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysrootError(f"{cpuinfo}: cannot read: {exc.strerror}") from None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id":
            return value.strip() or None
    return None


def microcode_blob(sysroot: Sysroot, vendor: str) -> bytes | None:
    """The vendor's microcode files concatenated in name order; None if it has none."""
    source = SOURCES.get(vendor)
    if source is None:
        return None  # a vendor the kernel loads no early microcode for
    parts = [
        sysroot.read_bytes(f"{source.directory}/{name}")
        for name in sysroot.listdir(source.directory)  # sorted, as the shell sorts a glob
        if not name.startswith(".") and fnmatch.fnmatchcase(name, source.pattern)
    ]
    blob = b"".join(part for part in parts if part)  # None: not a regular file
    return blob or None


def microcode_entries(sysroot: Sysroot, vendors: Iterable[str]) -> list[ArchiveEntry]:
    """The early segment's entries for these CPU vendors; [] when none has microcode.

    Vendors other than GenuineIntel and AuthenticAMD are ignored.
    """
    files = []
    for vendor in dict.fromkeys(vendors):  # each once, in the order given
        blob = microcode_blob(sysroot, vendor)
        if blob is not None:
            path = f"{EARLY_DIRS[-1]}/{vendor}.bin"
            files.append(ArchiveEntry(path, EntryKind.FILE, 0o644, data=blob))
    if not files:
        return []
    dirs = [ArchiveEntry(path, EntryKind.DIRECTORY, 0o755) for path in EARLY_DIRS]
    return _align_intel([*dirs, *files])


def _align_intel(entries: list[ArchiveEntry]) -> list[ArchiveEntry]:
    """entries, plus a padding directory if GenuineIntel.bin's data would be misaligned."""
    intel = f"{EARLY_DIRS[-1]}/{INTEL}.bin"
    if not any(entry.path == intel for entry in entries):
        return entries
    # Each dash moves the data by 0 or 4 bytes, so 16 tries cover every remainder.
    for dashes in range(-1, UPDATE_ALIGNMENT):
        padded = entries
        if dashes >= 0:
            pad = ArchiveEntry(_PAD_NAME + "-" * dashes, EntryKind.DIRECTORY, 0o755)
            padded = [*entries, pad]
        if _data_offset(padded, intel) % UPDATE_ALIGNMENT == 0:
            return padded
    raise AssertionError("no padding aligns the Intel microcode")  # arithmetic says never


def _data_offset(entries: list[ArchiveEntry], path: str) -> int:
    """Where path's data starts in write_cpio's output: newc pads name and data to 4."""
    offset = 0
    for entry in sorted(entries, key=sort_key):
        name_size = len(entry.path.strip("/").encode()) + 1
        data_at = _align4(offset + _NEWC_HEADER + name_size)
        if entry.path == path:
            return data_at
        offset = _align4(data_at + len(entry.data or b""))
    raise KeyError(path)


def _align4(value: int) -> int:
    return (value + 3) // 4 * 4
