"""The uncompressed kernel inside an x86 bzImage, which QEMU boots directly (PVH).

Given a bzImage, QEMU's option ROM runs the kernel's own decompressor, which under TCG
takes 10-15 s of every boot (Debian's kernels are xz-compressed). Given the ELF
vmlinux inside, QEMU loads it itself and enters it at its PVH entry point: the same
kernel code and command line, the initrd passed as before, the guest's time to
userspace unchanged, and no decompression. The vmlinux is unpacked once per kernel
file into the test cache. A kernel that cannot be booted this way (another
compression, no PVH entry, not a bzImage, e.g. an arm64 Image) is booted as given.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

import zstandard

from harness.rootdisk import cache_dir_default, made_once

# The bzImage header (the kernel's Documentation/arch/x86/boot.rst): "HdrS" at 0x202;
# setup_sects at 0x1f1; payload_offset and payload_length at 0x248, counted from the
# protected-mode code, which starts after the (setup_sects + 1) 512-byte sectors.
HEADER_MAGIC = (0x202, b"HdrS")
SETUP_SECTS = 0x1F1
PAYLOAD = 0x248
# ELF note of a kernel with a PVH entry point: owner "Xen", XEN_ELFNOTE_PHYS32_ENTRY.
PHYS32_ENTRY = 18
PT_NOTE = 4


def direct_kernel(kernel: Path, cache_dir: Path | None = None) -> Path:
    """The vmlinux to give QEMU for kernel (cached), or kernel itself if it has none."""
    data = kernel.read_bytes()
    payload = bzimage_payload(data)
    if payload is None or unpack(payload[:6]) is None:
        return kernel
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(data).hexdigest()[:16]
    result = cache_dir / f"vmlinux-{key}"
    skipped = cache_dir / f"vmlinux-{key}.no-pvh"
    if not skipped.exists():
        made_once("unpacked kernel", result, cache_dir / f"vmlinux-{key}.lock",
                  key, lambda: write_vmlinux(payload, result, skipped))  # fmt: skip
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


def unpack(payload: bytes) -> str | None:
    """The compression of payload, by its magic, if this module can undo it."""
    if payload.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if payload.startswith(b"\x1f\x8b"):
        return "gzip"
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def decompress(payload: bytes) -> bytes:
    # The kernel's build appends the uncompressed size after the stream: each
    # decompressor below stops at the stream's end and leaves those bytes.
    kind = unpack(payload)
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(payload)
    if kind == "gzip":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16).decompress(payload)
    return zstandard.ZstdDecompressor().decompressobj().decompress(payload)


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
