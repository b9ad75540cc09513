"""What a kernel module says about itself: the key=value strings of its .modinfo section.

modules.dep and friends cover names, aliases and dependencies; what they leave out, the
firmware files a driver may request above all, is only in the module. The section is a
run of NUL-terminated "key=value" strings in which a key may repeat (firmware=, alias=,
softdep=), padded with extra NULs where the linker aligned the next string.

bookend.elf reads what the dynamic loader reads and has no lookup of sections by name,
and a module may first need decompressing, so the few section-header fields wanted here
are read from bytes in memory.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import zlib
from pathlib import Path

import zstandard

from bookend.errors import ElfError

MODINFO_SECTION = b".modinfo"
_ELF_MAGIC = b"\x7fELF"
_SHN_XINDEX = 0xFFFF  # e_shstrndx when the real index is in section 0's sh_link
_SHT_NOBITS = 8

# The format and offset of e_shoff, and the offset of e_shentsize (then e_shnum, e_shstrndx).
_HEADER_FIELDS = {32: ("I", 0x20, 0x2E), 64: ("Q", 0x28, 0x3A)}
# sh_name, sh_type, sh_offset, sh_size, sh_link: (format, offset) in each class.
_SHDR_FIELDS = {
    32: (("I", 0), ("I", 4), ("I", 16), ("I", 20), ("I", 24)),
    64: (("I", 0), ("I", 4), ("Q", 24), ("Q", 32), ("I", 40)),
}
_SHDR_SIZE = {32: 40, 64: 64}


class _Corrupt(Exception):
    """Raised while reading; turned into ElfError with the file's name added."""


def module_bytes(path: Path) -> bytes:
    """The plain ELF content of a module file, .ko.xz, .ko.zst and .ko.gz decompressed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ElfError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(raw)
        if path.name.endswith(".ko.zst"):
            return _zstd_decompress(raw)
        if path.name.endswith(".ko.gz"):
            return gzip.decompress(raw)
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
        raise ElfError(f"{path}: cannot decompress: {exc}") from None
    return raw


def _zstd_decompress(raw: bytes) -> bytes:
    # The streaming decompressor, not ZstdDecompressor.decompress(): that one refuses
    # frames whose header leaves out the content size, as zstd writes them from a pipe.
    # Frame by frame, so that a truncated last frame is an error and not a short result.
    parts: list[bytes] = []
    rest = raw
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        parts.append(frame.decompress(rest))
        if not frame.eof:
            raise zstandard.ZstdError("truncated: the last frame is cut short")
        rest = frame.unused_data
    if not parts:
        raise zstandard.ZstdError("empty file")
    return b"".join(parts)


def read_modinfo(data: bytes, *, source: str | os.PathLike[str] = "module") -> dict[str, list[str]]:
    """The .modinfo strings of a module's ELF bytes: key -> values in file order.

    depends= is split on commas, so its list holds module names. A module without a
    .modinfo section gives {}. source names the file in errors.
    """
    try:
        section = _section_bytes(data, MODINFO_SECTION)
    except (_Corrupt, struct.error) as exc:
        raise ElfError(f"{os.fspath(source)}: {exc}") from None
    return {} if section is None else parse_modinfo(section)


def module_info(path: Path) -> dict[str, list[str]]:
    """read_modinfo of the module file at path, compressed or not."""
    return read_modinfo(module_bytes(path), source=path)


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """The key=value strings of a raw .modinfo section."""
    info: dict[str, list[str]] = {}
    for raw in section.split(b"\0"):
        key, sep, value = raw.partition(b"=")
        if not sep or not key:
            continue  # alignment NULs between strings, or a string that is no assignment
        name = key.decode("utf-8", "surrogateescape")
        text = value.decode("utf-8", "surrogateescape")
        values = info.setdefault(name, [])
        if name == "depends":
            values += [dep for dep in text.split(",") if dep]
        else:
            values.append(text)
    return info


def _section_bytes(data: bytes, wanted: bytes) -> bytes | None:
    """The content of the first section named wanted, or None when there is none."""
    if data[:4] != _ELF_MAGIC:
        raise _Corrupt("not an ELF file")
    if len(data) < 16:
        raise _Corrupt("truncated: the ELF identification is cut short")
    elf_class = {1: 32, 2: 64}.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if elf_class is None or order is None:
        raise _Corrupt(f"corrupt: unknown ELF class {data[4]} or byte order {data[5]}")
    offset_format, shoff_at, tail_at = _HEADER_FIELDS[elf_class]
    _need(data, tail_at + 6, "ELF header")
    (shoff,) = struct.unpack_from(order + offset_format, data, shoff_at)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, tail_at)
    if shoff == 0:
        return None  # no section headers at all
    if shentsize < _SHDR_SIZE[elf_class]:
        raise _Corrupt(f"corrupt: section headers of {shentsize} bytes")
    headers = _SectionHeaders(data, order, elf_class, shoff, shentsize)
    first = headers.get(0)
    count = shnum or first[3]  # 0xff00 sections or more: the count is in section 0
    names_index = first[4] if shstrndx == _SHN_XINDEX else shstrndx
    if names_index == 0:
        return None  # SHN_UNDEF: the sections have no names, so none is .modinfo
    if names_index >= count:
        raise _Corrupt(f"corrupt: section name table {names_index} of {count} sections")
    names = headers.content(headers.get(names_index), "section name table")
    for index in range(1, count):
        header = headers.get(index)
        if _name_at(names, header[0]) == wanted:
            return headers.content(header, wanted.decode())
    return None


class _SectionHeaders:
    """Bounds-checked section headers of ELF bytes in memory."""

    def __init__(self, data: bytes, order: str, elf_class: int, shoff: int, entsize: int) -> None:
        self.data = data
        self.order = order
        self.fields = _SHDR_FIELDS[elf_class]
        self.shoff = shoff
        self.entsize = entsize

    def get(self, index: int) -> tuple[int, ...]:
        """sh_name, sh_type, sh_offset, sh_size, sh_link of section index."""
        at = self.shoff + index * self.entsize
        _need(self.data, at + self.entsize, "section headers")
        return tuple(
            struct.unpack_from(self.order + fmt, self.data, at + where)[0]
            for fmt, where in self.fields
        )

    def content(self, header: tuple[int, ...], what: str) -> bytes:
        _, sh_type, offset, size, _ = header
        if sh_type == _SHT_NOBITS:
            return b""  # occupies no space in the file
        _need(self.data, offset + size, what)
        return self.data[offset : offset + size]


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise _Corrupt(f"truncated or corrupt: {what} runs past the end of the file")


def _name_at(names: bytes, offset: int) -> bytes:
    end = names.find(b"\0", offset)
    if offset >= len(names) or end < 0:
        raise _Corrupt(f"corrupt: section name {offset:#x} lies outside its table")
    return names[offset:end]
