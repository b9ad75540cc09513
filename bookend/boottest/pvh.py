"""The uncompressed kernel inside an xz-compressed x86 bzImage, which QEMU boots directly.

Given a bzImage, the kernel's own decompressor runs in the guest; for an xz-compressed
one (Debian 12's kernels) that took 13-19 s of every boot under TCG with an initrd.
Given the ELF vmlinux inside, QEMU loads it itself and enters it at its PVH entry
point: the same kernel code and command line, the initrd passed as before, the guest's
time to userspace unchanged, and no decompression. The vmlinux is unpacked once per
kernel file into a cache directory the caller names (the tests' cache, or bookend's
own for `bookend boot-test`). Other kernels are booted as given: a zstd bzImage
(Debian 13's) decompresses in about a second, while QEMU's loading of its much larger
vmlinux cost ~8 s more than that; and another architecture's kernel image is no bzImage.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

# The bzImage header (the kernel's Documentation/arch/x86/boot.rst): "HdrS" at 0x202;
# setup_sects at 0x1f1; payload_offset and payload_length at 0x248, counted from the
# protected-mode code, which starts after the (setup_sects + 1) 512-byte sectors.
HEADER_MAGIC = (0x202, b"HdrS")
SETUP_SECTS = 0x1F1
PAYLOAD = 0x248
# ELF note of a kernel with a PVH entry point: owner "Xen", XEN_ELFNOTE_PHYS32_ENTRY.
PHYS32_ENTRY = 18
PT_NOTE = 4
XZ_MAGIC = b"\xfd7zXZ\x00"


def direct_kernel(
    kernel: Path,
    cache_dir: Path,
    once: Callable[[Path, str, Callable[[], None]], None] | None = None,
) -> Path:
    """The vmlinux to give QEMU for kernel (cached in cache_dir), or kernel itself if it
    has none. once(result, key, make) makes result at most once (the tests' lock across
    processes); without it, make runs when result is missing (it writes atomically)."""
    data = kernel.read_bytes()
    payload = bzimage_payload(data)
    if payload is None or not payload.startswith(XZ_MAGIC):
        return kernel
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(data).hexdigest()[:16]
    result = cache_dir / f"vmlinux-{key}"
    skipped = cache_dir / f"vmlinux-{key}.no-pvh"
    if not skipped.exists():

        def make() -> None:
            write_vmlinux(payload, result, skipped)

        if once is not None:
            once(result, key, make)
        elif not result.exists():
            make()
    return result if result.exists() else kernel


def bzimage_payload(data: bytes) -> bytes | None:
    """The compressed kernel in a bzImage (protocol 2.08 or later), or None."""
    offset, magic = HEADER_MAGIC
    if data[offset : offset + len(magic)] != magic or len(data) < PAYLOAD + 8:
        return None
    start = (data[SETUP_SECTS] + 1) * 512
    payload_offset, payload_length = struct.unpack_from("<II", data, PAYLOAD)
    begin = start + payload_offset
    return data[begin : begin + payload_length] or None


def decompress(payload: bytes) -> bytes:
    # The kernel's build appends the uncompressed size after the stream, which the
    # decompressor leaves: it stops at the stream's end.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the Xen PHYS32_ENTRY note."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)  # fmt: skip
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        header = phoff + index * phentsize
        kind, _flags, offset, _vaddr, _paddr, size = struct.unpack_from("<IIQQQQ", elf, header)
        if kind == PT_NOTE and note_present(elf[offset : offset + size]):
            return True
    return False


def note_present(notes: bytes) -> bool:
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name = notes[at + 12 : at + 12 + namesz].rstrip(b"\x00")
        if name == b"Xen" and kind == PHYS32_ENTRY:
            return True
        at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def write_vmlinux(payload: bytes, result: Path, skipped: Path) -> None:
    """Write the vmlinux to result, whole or not at all; mark skipped if it has no PVH entry."""
    elf = decompress(payload)
    if not has_pvh_entry(elf):
        skipped.touch()
        return
    handle, name = tempfile.mkstemp(prefix=f".{result.name}-", dir=result.parent)
    with os.fdopen(handle, "wb") as out:
        out.write(elf)
    os.replace(name, result)
