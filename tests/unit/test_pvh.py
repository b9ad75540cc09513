"""The unpacked kernel QEMU boots directly (harness/pvh.py), on fabricated bzImages and
on this machine's kernel."""

from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from harness.pvh import PHYS32_ENTRY, XZ_MAGIC, bzimage_payload, direct_kernel, has_pvh_entry
from harness.qemu import installed_kernels


def elf_with_note(kind: int) -> bytes:
    """A 64-bit ELF header, one PT_NOTE program header, and one note owned by Xen."""
    note = struct.pack("<III", 4, 4, kind) + b"Xen\x00" + struct.pack("<I", 0x1000000)
    phoff, note_at = 64, 64 + 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, 56, 1)
    program = struct.pack("<IIQQQQQQ", 4, 0, note_at, 0, 0, len(note), len(note), 4)
    return bytes(header) + program + note


def bzimage(payload: bytes) -> bytes:
    """A bzImage header with one setup sector and payload right after it, then the
    uncompressed size the kernel's build appends."""
    setup = bytearray(1024)
    setup[0x1F1] = 1
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0, len(payload) + 4)
    return bytes(setup) + payload + struct.pack("<I", 1234)


def test_an_xz_pvh_kernel_is_unpacked_once_into_the_cache(tmp_path: Path) -> None:
    elf = elf_with_note(PHYS32_ENTRY)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(lzma.compress(elf)))
    unpacked = direct_kernel(kernel, tmp_path / "cache")
    assert unpacked != kernel and unpacked.read_bytes() == elf
    assert direct_kernel(kernel, tmp_path / "cache") == unpacked


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.compress], ids=["gzip", "zstd"])
def test_a_kernel_that_decompresses_quickly_is_booted_as_given(
    tmp_path: Path, compress: Callable[[bytes], bytes]
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(compress(elf_with_note(PHYS32_ENTRY))))
    assert direct_kernel(kernel, tmp_path / "cache") == kernel


def test_a_kernel_without_a_pvh_entry_is_booted_as_given(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(lzma.compress(elf_with_note(PHYS32_ENTRY + 1))))
    assert direct_kernel(kernel, tmp_path / "cache") == kernel
    # The answer is kept: the next boot does not unpack it again.
    assert [p.suffix for p in (tmp_path / "cache").glob("vmlinux-*") if p.suffix != ".lock"] == [
        ".no-pvh"
    ]
    assert direct_kernel(kernel, tmp_path / "cache") == kernel


def test_what_is_not_a_bzimage_is_booted_as_given(tmp_path: Path) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"\x00" * 4096)
    assert direct_kernel(kernel, tmp_path / "cache") == kernel
    assert not (tmp_path / "cache").exists()


def test_this_machines_kernel_has_a_pvh_entry(tmp_path: Path) -> None:
    kernels = installed_kernels()
    payload = bzimage_payload(kernels[-1].path.read_bytes()) if kernels else None
    if payload is None or not payload.startswith(XZ_MAGIC):
        pytest.skip("no xz-compressed kernel in /boot")
    unpacked = direct_kernel(kernels[-1].path, tmp_path)
    assert unpacked != kernels[-1].path
    assert has_pvh_entry(unpacked.read_bytes())
