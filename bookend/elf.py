"""What an ELF file needs at run time: its loader, its libraries and where to look for them.

Only what the dynamic loader reads is looked at (the ELF header, the program headers and
the dynamic segment), plus the notes and section headers that hold systemd's .note.dlopen
(https://systemd.io/ELF_DLOPEN_METADATA). Nothing is relocated or executed.

Why `struct` and not pyelftools' ELFFile: the closure reads every program and library it
pulls in and libsearch every candidate it probes, so this is the inner loop of a build.
Over the 1,104 distinct ELF files in /usr/lib/<multiarch>/*.so* and /usr/bin/* of a
Debian 12 host (warm cache, best of five), ELFFile with its segment objects took 2.3 ms a
file and ELFFile with only its struct definitions 0.95 ms, half of that in ELFFile()
building its parsers for each file; this reader takes 0.075 ms, 12 to 30 times less.
What is read here is fixed by the gABI and small: four records in two classes and two
byte orders. pyelftools still names e_machine, so names match what other tools print,
and the tests hold this reader to pyelftools' answers on host files. Reads checked
against the file size before they are made also mean that no parser exception can
escape as a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import posixpath
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from bookend.errors import ElfError

ELF_MAGIC = b"\x7fELF"

DLOPEN_NOTE_OWNER = b"FDO"
DLOPEN_NOTE_TYPE = 0x407C0C0A
DLOPEN_PRIORITIES = ("required", "recommended", "suggested")
DLOPEN_DEFAULT_PRIORITY = "recommended"  # what the specification says to assume

# Constants from the gABI (elf.h).
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP, _PT_NOTE = 1, 2, 3, 4
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29
_SHT_NOTE = 7
_PN_XNUM = 0xFFFF  # e_phnum when the real count is in section 0's sh_info
_NOTE_HEADER = 12  # n_namesz, n_descsz, n_type: three 32-bit words in both classes


@functools.cache
def _machine_names() -> dict[int, str]:
    """e_machine numbers to the names pyelftools gives them ("EM_X86_64"), so ours match.

    Imported when first needed: pyelftools' import (it brings pdb along) took a fifth of
    a build that finds every ELF file in the scan cache and reads none.
    """
    from elftools.elf.enums import ENUM_E_MACHINE

    return {number: name for name, number in ENUM_E_MACHINE.items() if isinstance(number, int)}


@dataclass(frozen=True)
class DlopenNote:
    """One entry of a .note.dlopen: libraries a program may dlopen() for a feature."""

    feature: str  # "" when the note names none
    priority: str  # one of DLOPEN_PRIORITIES
    sonames: tuple[str, ...]  # alternatives, any one of which provides the feature


@dataclass(frozen=True)
class ElfInfo:
    """What the loader needs to start an ELF file, and what it may dlopen() later."""

    elf_class: int  # 32 or 64
    machine: str  # e_machine as pyelftools names it, e.g. "EM_X86_64"; "EM_<n>" if unknown
    interpreter: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED, in order
    rpath: tuple[str, ...]  # DT_RPATH split on ":", unexpanded
    runpath: tuple[str, ...]  # DT_RUNPATH split on ":", unexpanded
    dlopen: tuple[DlopenNote, ...]


def info_to_json(info: ElfInfo) -> dict[str, Any]:
    """info as JSON data, for the scan cache."""
    return dataclasses.asdict(info)


def info_from_json(data: dict[str, Any]) -> ElfInfo:
    """The ElfInfo info_to_json gave data for."""
    notes = tuple(
        DlopenNote(note["feature"], note["priority"], tuple(note["sonames"]))
        for note in data["dlopen"]
    )
    return ElfInfo(
        elf_class=data["elf_class"],
        machine=data["machine"],
        interpreter=data["interpreter"],
        needed=tuple(data["needed"]),
        rpath=tuple(data["rpath"]),
        runpath=tuple(data["runpath"]),
        dlopen=notes,
    )


def is_elf(path: Path) -> bool:
    """Whether path starts with the ELF magic; an unreadable file is not one.

    Like ld.so, which moves on to the next directory when a candidate cannot be opened.
    Callers pass regular files: opening a FIFO would wait for a writer.
    """
    try:
        with path.open("rb") as stream:
            return stream.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfInfo:
    """The run-time needs of the ELF file at path; ElfError if it is not a sound ELF file."""
    try:
        with path.open("rb") as stream:
            return _read_info(_Reader(stream))
    except OSError as exc:
        raise ElfError(f"{path}: cannot read: {exc.strerror}") from None
    # struct.error cannot happen as every read is checked first; caught so that a slip
    # in those checks still reads as a bad file rather than a traceback.
    except (_Corrupt, struct.error) as exc:
        raise ElfError(f"{path}: {exc}") from None


def compatible(a: ElfInfo, b: ElfInfo) -> bool:
    """Whether a and b can share a process: ld.so skips a library of another class or machine."""
    return a.elf_class == b.elf_class and a.machine == b.machine


# Unbraced, the name must end where an identifier would (glibc's rule), so "$ORIGINAL"
# is left alone; braced, the brace ends it.
_ORIGIN = re.compile(r"\$(?:\{ORIGIN\}|ORIGIN(?![A-Za-z0-9_]))")


def expand_origin(entry: str, origin_dir: str) -> str:
    """An RPATH/RUNPATH entry with $ORIGIN and ${ORIGIN} replaced by origin_dir.

    origin_dir is the directory of the object, as an absolute path inside the image.
    $LIB and $PLATFORM are left as they are: their values come from the loader's build
    and the CPU at boot, so an entry holding one is simply not found by the search.
    """
    return _ORIGIN.sub(lambda _: origin_dir, entry)


def parse_ld_so_conf(
    read_text: Callable[[str], str | None],
    glob: Callable[[str], list[str]],
    path: str = "/etc/ld.so.conf",
) -> list[str]:
    """The library directories ld.so.conf names, in order, as ldconfig reads them.

    read_text and glob work on image paths (the caller maps them into its sysroot);
    read_text returns None for a missing file.
    """
    directories: list[str] = []
    _read_ld_so_conf(path, read_text, glob, directories, set())
    return directories


def _read_ld_so_conf(
    path: str,
    read_text: Callable[[str], str | None],
    glob: Callable[[str], list[str]],
    directories: list[str],
    seen: set[str],
) -> None:
    # Reading a file a second time could only repeat directories already listed, so
    # skipping it costs nothing and ends include cycles.
    key = posixpath.normpath(path)
    if key in seen:
        return
    seen.add(key)
    text = read_text(path)
    if text is None:
        return
    for raw_line in text.splitlines():
        line = raw_line.partition("#")[0].strip()
        words = line.split(maxsplit=1)
        if not words or words[0].lower() == "hwcap":
            continue
        if words[0] == "include" and len(words) == 2:
            for pattern in words[1].split():
                # ldconfig takes a relative pattern from the including file's directory.
                pattern = posixpath.join(posixpath.dirname(path), pattern)
                for included in sorted(glob(pattern)):  # sorted, as glob(3) returns them
                    _read_ld_so_conf(included, read_text, glob, directories, seen)
            continue
        directory = _conf_directory(line)
        if directory is not None and directory not in directories:
            directories.append(directory)


def _conf_directory(line: str) -> str | None:
    """The directory of an ld.so.conf line, or None for one the image cannot use."""
    # "=TYPE" after a directory is libc5-era syntax that ldconfig still ignores.
    directory = line.partition("=")[0].strip()
    if len(directory) > 1:
        directory = directory.rstrip("/") or "/"
    # A relative directory is relative to wherever ldconfig ran, which means nothing
    # in the image.
    return directory if directory.startswith("/") else None


# --- reading the file ----------------------------------------------------------------


class _Corrupt(Exception):
    """Raised inside the reader; read_elf adds the file name and turns it into ElfError."""


@dataclass(frozen=True)
class _Layout:
    """Struct formats of one ELF class and byte order, and where phdr fields sit."""

    order: str  # "<" or ">"
    header: struct.Struct  # e_type .. e_shstrndx, after the 16 bytes of e_ident
    phdr: struct.Struct
    phdr_fields: tuple[int, int, int, int, int]  # p_type, p_offset, p_vaddr, p_filesz, p_align
    dyn: struct.Struct
    shdr: struct.Struct  # same field order in both classes


def _layout(elf_class: int, order: str) -> _Layout:
    if elf_class == 32:
        return _Layout(
            order=order,
            header=struct.Struct(order + "HHIIIIIHHHHHH"),
            phdr=struct.Struct(order + "IIIIIIII"),
            phdr_fields=(0, 1, 2, 4, 7),
            dyn=struct.Struct(order + "iI"),
            shdr=struct.Struct(order + "IIIIIIIIII"),
        )
    # Elf64_Phdr moves p_flags up to keep the 64-bit fields aligned.
    return _Layout(
        order=order,
        header=struct.Struct(order + "HHIQQQIHHHHHH"),
        phdr=struct.Struct(order + "IIQQQQQQ"),
        phdr_fields=(0, 2, 3, 5, 7),
        dyn=struct.Struct(order + "qQ"),
        shdr=struct.Struct(order + "IIQQQQIIQQ"),
    )


# Keyed by the EI_CLASS and EI_DATA bytes of e_ident.
_LAYOUTS = {
    (1, 1): (32, _layout(32, "<")),
    (1, 2): (32, _layout(32, ">")),
    (2, 1): (64, _layout(64, "<")),
    (2, 2): (64, _layout(64, ">")),
}


# Named tuples, not frozen dataclasses: a file has dozens of these and a frozen
# dataclass takes five times as long to build, which showed in the timings.
class _Segment(NamedTuple):
    type: int
    offset: int
    vaddr: int
    filesz: int
    align: int


class _Section(NamedTuple):
    type: int
    offset: int
    size: int
    info: int
    align: int


class _Header(NamedTuple):
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int


class _Reader:
    """Bounds-checked reads from one open ELF file."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.size = os.fstat(stream.fileno()).st_size
        ident = stream.read(16)
        if ident[:4] != ELF_MAGIC:
            raise _Corrupt("not an ELF file")
        if len(ident) < 16:
            raise _Corrupt("truncated: the ELF identification is cut short")
        known = _LAYOUTS.get((ident[4], ident[5]))
        if known is None:
            raise _Corrupt(f"corrupt: unknown ELF class {ident[4]} or byte order {ident[5]}")
        self.elf_class, self.layout = known

    def read(self, offset: int, size: int, what: str) -> bytes:
        # Checked against the file size first, so a corrupt size cannot become a huge read.
        if offset < 0 or size < 0 or offset + size > self.size:
            raise _Corrupt(f"truncated or corrupt: {what} runs past the end of the file")
        self.stream.seek(offset)
        return self.stream.read(size)

    def table(
        self, offset: int, count: int, entsize: int, entry: struct.Struct, what: str
    ) -> list[tuple[int, ...]]:
        """count entries of entsize bytes at offset, each decoded with entry."""
        if count == 0:
            return []
        if entsize == entry.size:  # always, in files from real linkers; and faster
            return list(entry.iter_unpack(self.read(offset, count * entsize, what)))
        if entsize < entry.size:
            raise _Corrupt(f"corrupt: {what} entries are {entsize} bytes, fewer than {entry.size}")
        data = self.read(offset, count * entsize, what)
        return [entry.unpack_from(data, i * entsize) for i in range(count)]


def _read_info(reader: _Reader) -> ElfInfo:
    header = _read_header(reader)
    sections = _read_sections(reader, header)
    segments = _read_segments(reader, header, sections)
    needed, rpath, runpath = _read_dynamic(reader, segments)
    return ElfInfo(
        elf_class=reader.elf_class,
        machine=_machine_names().get(header.machine, f"EM_{header.machine}"),
        interpreter=_read_interpreter(reader, segments),
        needed=needed,
        rpath=rpath,
        runpath=runpath,
        dlopen=_read_dlopen_notes(reader, segments, sections),
    )


def _read_header(reader: _Reader) -> _Header:
    fields = reader.layout.header.unpack(reader.read(16, reader.layout.header.size, "ELF header"))
    # e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, then:
    phentsize, phnum, shentsize, shnum = fields[8:12]
    return _Header(fields[1], fields[4], fields[5], phentsize, phnum, shentsize, shnum)


def _read_sections(reader: _Reader, header: _Header) -> list[_Section]:
    if header.shoff == 0:
        return []
    shdr = reader.layout.shdr
    count = header.shnum
    if count == 0:  # 0xff00 sections or more: the count is section 0's sh_size
        count = reader.table(header.shoff, 1, header.shentsize, shdr, "section headers")[0][5]
    rows = reader.table(header.shoff, count, header.shentsize, shdr, "section headers")
    # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign
    return [_Section(r[1], r[4], r[5], r[7], r[8]) for r in rows]


def _read_segments(reader: _Reader, header: _Header, sections: list[_Section]) -> list[_Segment]:
    count = header.phnum
    if count == _PN_XNUM:
        if not sections:
            raise _Corrupt("corrupt: e_phnum is PN_XNUM but there is no section 0")
        count = sections[0].info
    layout = reader.layout
    rows = reader.table(header.phoff, count, header.phentsize, layout.phdr, "program headers")
    type_, offset, vaddr, filesz, align = layout.phdr_fields
    return [_Segment(r[type_], r[offset], r[vaddr], r[filesz], r[align]) for r in rows]


def _read_interpreter(reader: _Reader, segments: list[_Segment]) -> str | None:
    for segment in segments:
        if segment.type == _PT_INTERP:
            data = reader.read(segment.offset, segment.filesz, "PT_INTERP")
            return os.fsdecode(data.partition(b"\0")[0])
    return None


def _read_dynamic(
    reader: _Reader, segments: list[_Segment]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH; empty for a static or relocatable file."""
    dynamic = next((s for s in segments if s.type == _PT_DYNAMIC), None)
    if dynamic is None:
        return (), (), ()
    data = reader.read(dynamic.offset, dynamic.filesz, "PT_DYNAMIC")
    entries: list[tuple[int, int]] = []
    entry = reader.layout.dyn
    for tag, value in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    wanted = (_DT_NEEDED, _DT_RPATH, _DT_RUNPATH)
    if not any(tag in wanted for tag, _ in entries):
        return (), (), ()
    strings = _dynamic_strings(reader, segments, dict(entries))

    def values(wanted_tag: int) -> list[str]:
        return [_string_at(strings, value) for tag, value in entries if tag == wanted_tag]

    return (
        tuple(values(_DT_NEEDED)),
        _split_path(values(_DT_RPATH)),
        _split_path(values(_DT_RUNPATH)),
    )


def _dynamic_strings(reader: _Reader, segments: list[_Segment], tags: dict[int, int]) -> bytes:
    """The dynamic string table, found as ld.so finds it: DT_STRTAB through PT_LOAD."""
    address = tags.get(_DT_STRTAB)
    if address is None:
        raise _Corrupt("corrupt: the dynamic segment names strings but has no DT_STRTAB")
    for segment in segments:
        if segment.type == _PT_LOAD and segment.vaddr <= address < segment.vaddr + segment.filesz:
            size = segment.vaddr + segment.filesz - address
            if _DT_STRSZ in tags:
                size = min(size, tags[_DT_STRSZ])
            offset = address - segment.vaddr + segment.offset
            return reader.read(offset, size, "dynamic string table")
    raise _Corrupt(f"corrupt: DT_STRTAB {address:#x} is in no PT_LOAD segment")


def _string_at(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    if offset >= len(strings) or end < 0:
        raise _Corrupt(f"corrupt: dynamic string {offset:#x} lies outside its table")
    # fsdecode, as these are file names: bytes that are not UTF-8 survive the round trip.
    return os.fsdecode(strings[offset:end])


def _split_path(values: list[str]) -> tuple[str, ...]:
    # ld.so reads an empty entry as the process's working directory, which an image
    # cannot know, so empty entries are dropped.
    return tuple(entry for value in values for entry in value.split(":") if entry)


# --- .note.dlopen ------------------------------------------------------------------


def _read_dlopen_notes(
    reader: _Reader, segments: list[_Segment], sections: list[_Section]
) -> tuple[DlopenNote, ...]:
    found: list[DlopenNote] = []
    seen: set[int] = set()  # note offsets: a section is usually also inside a PT_NOTE
    for offset, size, align in _note_regions(segments, sections):
        data = reader.read(offset, size, "notes")
        for at, name, note_type, desc in _split_notes(data, offset, align, reader.layout.order):
            if at in seen:
                continue
            seen.add(at)
            if note_type == DLOPEN_NOTE_TYPE and name.rstrip(b"\0") == DLOPEN_NOTE_OWNER:
                found += _parse_dlopen_payload(desc, at)
    return tuple(found)


def _note_regions(segments: list[_Segment], sections: list[_Section]) -> list[tuple[int, int, int]]:
    """(offset, size, alignment) of every PT_NOTE, then of every note section outside them.

    Sections count too because a note added after linking (objcopy --add-section) or in
    a relocatable object is in no PT_NOTE. They are told by type, SHT_NOTE, not by name,
    as the specification asks; assemblers and objcopy give ".note*" sections that type.
    """
    regions = [(s.offset, s.filesz, s.align) for s in segments if s.type == _PT_NOTE]
    for section in sections:
        if section.type != _SHT_NOTE:
            continue
        end = section.offset + section.size
        if not any(start <= section.offset and end <= start + size for start, size, _ in regions):
            regions.append((section.offset, section.size, section.align))
    return regions


def _split_notes(
    data: bytes, base: int, align: int, order: str
) -> list[tuple[int, bytes, int, bytes]]:
    """(file offset, name, type, desc) of each note in data, read from offset base."""
    # An 8-aligned PT_NOTE or section (.note.gnu.property) pads to 8, as ld.so reads it.
    step = 8 if align == 8 else 4
    notes = []
    at = 0
    while at + _NOTE_HEADER <= len(data):
        namesz, descsz, note_type = struct.unpack_from(order + "III", data, at)
        desc_at = _align_up(at + _NOTE_HEADER + namesz, step)
        end = desc_at + descsz
        if end > len(data):
            raise _Corrupt(f"corrupt: the note at {base + at:#x} runs past the end of its notes")
        name = data[at + _NOTE_HEADER : at + _NOTE_HEADER + namesz]
        notes.append((base + at, name, note_type, data[desc_at:end]))
        at = _align_up(end, step)
    return notes


def _align_up(value: int, step: int) -> int:
    return (value + step - 1) // step * step


def _parse_dlopen_payload(desc: bytes, offset: int) -> list[DlopenNote]:
    """The entries of one note: a JSON array of objects, or (as the first version of the
    specification had it) a single object."""
    text = desc.partition(b"\0")[0]  # the JSON is NUL-terminated and NUL-padded
    try:
        payload: object = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _Corrupt(f"malformed .note.dlopen JSON at {offset:#x}: {exc}") from None
    entries = payload if isinstance(payload, list) else [payload]
    return [_dlopen_entry(entry, offset) for entry in entries]


def _dlopen_entry(entry: object, offset: int) -> DlopenNote:
    where = f".note.dlopen at {offset:#x}"
    if not isinstance(entry, dict):
        raise _Corrupt(f"malformed {where}: an entry is not a JSON object")
    sonames = entry.get("soname")
    if isinstance(sonames, str):
        sonames = [sonames]
    if (
        not isinstance(sonames, list)
        or not sonames
        or not all(isinstance(s, str) and s for s in sonames)
    ):
        raise _Corrupt(f'malformed {where}: "soname" must be a name or a list of names')
    priority = entry.get("priority", DLOPEN_DEFAULT_PRIORITY)
    if priority not in DLOPEN_PRIORITIES:
        choices = ", ".join(DLOPEN_PRIORITIES)
        raise _Corrupt(f'malformed {where}: "priority" {priority!r} is not one of {choices}')
    feature = entry.get("feature", "")
    if not isinstance(feature, str):
        raise _Corrupt(f'malformed {where}: "feature" must be a string')
    return DlopenNote(feature=feature, priority=priority, sonames=tuple(sonames))
