"""bookend.elf against programs compiled here, hand-made headers, and pyelftools as a referee."""

from __future__ import annotations

import glob
import json
import platform
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from bookend.elf import (
    DLOPEN_NOTE_TYPE,
    DlopenNote,
    ElfInfo,
    compatible,
    expand_origin,
    is_elf,
    parse_ld_so_conf,
    read_elf,
)
from bookend.errors import ElfError

from .elftree import dlopen_note_c

x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="expects the x86-64 loader path"
)

EM_386, EM_PPC64, EM_X86_64, EM_AARCH64 = 3, 21, 62, 183

LIBFOO_C = "int foo(void) { return 42; }\n"
PROG_C = "int foo(void);\nint main(void) { return foo(); }\n"


def gcc(tmp: Path, source: str, output: Path, *flags: str) -> Path:
    c_file = tmp / (output.name + ".c")
    c_file.write_text(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-o", str(output), str(c_file), *flags], check=True)
    return output


LIB_C = "int f(void) { return 0; }\n"


DLOPEN_PAYLOAD = [
    {"feature": "foo", "description": "Foo", "priority": "required", "soname": ["libfoo.so.1"]},
    {"soname": ["libbar.so.2", "libbar.so.1"]},
]
DLOPEN_EXPECTED = (
    DlopenNote("foo", "required", ("libfoo.so.1",)),
    DlopenNote("", "recommended", ("libbar.so.2", "libbar.so.1")),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/prog-runpath and bin/prog-rpath needing lib/libfoo.so; dlopen notes in lib/,
    and a malformed one in bad/."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    root = tmp_path_factory.mktemp("built")
    gcc(root, LIBFOO_C, root / "lib/libfoo.so", "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")
    for name, dtags in (
        ("prog-runpath", "--enable-new-dtags"),
        ("prog-rpath", "--disable-new-dtags"),
    ):
        gcc(root, PROG_C, root / "bin" / name, f"-L{root}/lib", "-lfoo",
            "-Wl,-rpath,$ORIGIN/../lib", f"-Wl,{dtags}")  # fmt: skip
    note = dlopen_note_c(json.dumps(DLOPEN_PAYLOAD)) + LIB_C
    gcc(root, note, root / "lib/libnote.so", "-shared", "-fPIC")
    gcc(root, note, root / "lib/note.o", "-c", "-fPIC")
    gcc(root, dlopen_note_c('[{"soname": ') + LIB_C, root / "bad/libbadnote.so", "-shared", "-fPIC")
    return root


# --- programs and libraries compiled here ---------------------------------------------


@x86_64_only
def test_runpath_executable(built: Path) -> None:
    assert read_elf(built / "bin/prog-runpath") == ElfInfo(
        elf_class=64,
        machine="EM_X86_64",
        interpreter="/lib64/ld-linux-x86-64.so.2",
        needed=("libfoo.so.1", "libc.so.6"),
        rpath=(),
        runpath=("$ORIGIN/../lib",),
        dlopen=(),
    )


@x86_64_only
def test_rpath_executable(built: Path) -> None:
    info = read_elf(built / "bin/prog-rpath")
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libfoo.so.1", "libc.so.6")
    assert info.rpath == ("$ORIGIN/../lib",)
    assert info.runpath == ()


def test_shared_library_has_no_interpreter(built: Path) -> None:
    info = read_elf(built / "lib/libfoo.so")
    assert info.interpreter is None
    assert (info.rpath, info.runpath, info.dlopen) == ((), (), ())


@pytest.mark.parametrize("name", ["libnote.so", "note.o"])
def test_dlopen_note_read_once(built: Path, name: str) -> None:
    # In the library the note is both a section and inside a PT_NOTE; in the object it is
    # only a section. Either way each entry is reported once.
    assert read_elf(built / "lib" / name).dlopen == DLOPEN_EXPECTED


def test_malformed_dlopen_json_names_the_file(built: Path) -> None:
    path = built / "bad/libbadnote.so"
    with pytest.raises(ElfError, match=r"libbadnote\.so: malformed \.note\.dlopen JSON"):
        read_elf(path)


def test_note_added_after_linking_is_found(built: Path, tmp_path: Path) -> None:
    if shutil.which("objcopy") is None:
        pytest.skip("needs objcopy")
    (tmp_path / "note.bin").write_bytes(dlopen_note(b'[{"soname": "libz.so.1"}]'))
    out = tmp_path / "libfoo.so"
    subprocess.run(
        ["objcopy", f"--add-section=.note.dlopen={tmp_path / 'note.bin'}",
         str(built / "lib/libfoo.so"), str(out)],
        check=True,
    )  # fmt: skip
    assert read_elf(out).dlopen == (DlopenNote("", "recommended", ("libz.so.1",)),)


@pytest.mark.parametrize("name", ["bin/prog-runpath", "lib/libnote.so"])
def test_section_table_is_not_needed(built: Path, tmp_path: Path, name: str) -> None:
    """With e_shoff, e_shnum and e_shstrndx zeroed (as sstrip does) the loader still
    runs the program, and what it needs is still found through the program headers."""
    data = bytearray((built / name).read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HH", data, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    stripped = tmp_path / "stripped"
    stripped.write_bytes(bytes(data))
    assert read_elf(stripped) == read_elf(built / name)


def pyelftools_view(path: Path) -> tuple[object, ...]:
    """What pyelftools' own segment objects say about the fields read_elf reads."""
    interpreter = None
    strings: dict[str, list[str]] = {"DT_NEEDED": [], "DT_RPATH": [], "DT_RUNPATH": []}
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        for segment in elf.iter_segments():
            if isinstance(segment, InterpSegment):
                interpreter = segment.get_interp_name()
            if isinstance(segment, DynamicSegment):
                for tag in segment.iter_tags():
                    if tag.entry.d_tag in strings:
                        # pyelftools sets the value as an attribute named after the tag.
                        strings[tag.entry.d_tag].append(getattr(tag, tag.entry.d_tag[3:].lower()))
        rpath, runpath = (
            tuple(e for value in strings[tag] for e in value.split(":") if e)
            for tag in ("DT_RPATH", "DT_RUNPATH")
        )
        needed = tuple(strings["DT_NEEDED"])
        return (elf.elfclass, elf["e_machine"], interpreter, needed, rpath, runpath)


def test_agrees_with_pyelftools(built: Path) -> None:
    host = (
        sorted(glob.glob("/usr/lib/x86_64-linux-gnu/*.so*"))[:15]
        + sorted(glob.glob("/usr/bin/*"))[:15]
    )
    paths = [*sorted(built.glob("bin/*")), *sorted(built.glob("lib/*")), *map(Path, host)]
    checked = 0
    for path in paths:
        if not path.is_file() or not is_elf(path):
            continue
        info = read_elf(path)
        view = (info.elf_class, info.machine, info.interpreter, info.needed, info.rpath)
        assert (*view, info.runpath) == pyelftools_view(path), path
        checked += 1
    assert checked >= 4


# --- bad input --------------------------------------------------------------------------


@x86_64_only
def test_name_cut_short_by_dt_strsz(built: Path, tmp_path: Path) -> None:
    """DT_STRSZ bounds the string table: a name running past it is corrupt, not read on."""
    data = bytearray((built / "bin/prog-runpath").read_bytes())
    with (built / "bin/prog-runpath").open("rb") as stream:
        dynamic = next(s for s in ELFFile(stream).iter_segments() if isinstance(s, DynamicSegment))
    start = dynamic["p_offset"]
    entries = list(struct.iter_unpack("<qQ", data[start : start + dynamic["p_filesz"]]))
    last = max(value for tag, value in entries if tag in (1, 29))  # DT_NEEDED, DT_RUNPATH
    strsz = next(i for i, (tag, _) in enumerate(entries) if tag == 10)  # DT_STRSZ
    struct.pack_into("<qQ", data, start + 16 * strsz, 10, last + 3)
    path = write(tmp_path, bytes(data))
    with pytest.raises(
        ElfError, match=f"^{re.escape(str(path))}: corrupt: dynamic string .* outside its table$"
    ):
        read_elf(path)


def test_truncated_elf(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated"
    path.write_bytes((built / "bin/prog-runpath").read_bytes()[:100])
    assert is_elf(path)
    with pytest.raises(ElfError, match=f"^{re.escape(str(path))}: truncated"):
        read_elf(path)


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho hello\n", b"\x7fEL"])
def test_not_elf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    assert not is_elf(path)
    with pytest.raises(ElfError, match=f"^{re.escape(str(path))}: not an ELF file$"):
        read_elf(path)


def test_missing_or_unreadable(tmp_path: Path) -> None:
    assert not is_elf(tmp_path / "absent")
    assert not is_elf(tmp_path)  # a directory
    with pytest.raises(ElfError, match="absent: cannot read"):
        read_elf(tmp_path / "absent")


def test_every_truncation_is_an_elf_error(built: Path, tmp_path: Path) -> None:
    data = (built / "lib/libnote.so").read_bytes()
    path = tmp_path / "cut"
    for size in [*range(0, 200), *range(200, len(data), 97)]:
        path.write_bytes(data[:size])
        with pytest.raises(ElfError, match=re.escape(str(path))):
            read_elf(path)


def test_corrupt_bytes_never_escape_as_other_errors(built: Path, tmp_path: Path) -> None:
    """Random bytes in the headers, the dynamic segment and the notes: read_elf either
    reads the file or raises ElfError, never anything else."""
    data = (built / "lib/libnote.so").read_bytes()
    with (built / "lib/libnote.so").open("rb") as stream:
        elf = ELFFile(stream)
        dynamic = next(s for s in elf.iter_segments() if s["p_type"] == "PT_DYNAMIC")
        regions = [
            range(4, 0x400),  # ELF header, program headers, notes
            range(dynamic["p_offset"], dynamic["p_offset"] + dynamic["p_filesz"]),
            range(elf["e_shoff"], len(data)),  # section headers
        ]
    path = tmp_path / "corrupt"
    rng = random.Random(20240601)
    for _ in range(600):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            corrupt[rng.choice(rng.choice(regions))] = rng.randrange(256)
        path.write_bytes(bytes(corrupt))
        try:
            read_elf(path)
        except ElfError as exc:
            assert str(exc).startswith(f"{path}: ")
            assert "\n" not in str(exc)


# --- hand-made files: other classes, machines, byte orders and notes -------------------


def pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def dlopen_note(desc: bytes, owner: bytes = b"FDO", note_type: int = DLOPEN_NOTE_TYPE) -> bytes:
    name, desc = owner + b"\0", desc + b"\0"
    return struct.pack("<III", len(name), len(desc), note_type) + pad4(name) + pad4(desc)


def tiny_elf(
    elf_class: int = 64,
    order: str = "<",
    machine: int = EM_X86_64,
    notes: bytes = b"",
    note_align: int = 4,
    note_segments: int = 1,
) -> bytes:
    """An ELF header, then note_segments PT_NOTE program headers all over the same notes."""
    ehsize, phentsize = (52, 32) if elf_class == 32 else (64, 56)
    notes_at = ehsize + phentsize * note_segments
    ident = b"\x7fELF" + bytes([elf_class // 32, 1 if order == "<" else 2, 1]) + bytes(9)
    size = len(notes)
    if elf_class == 32:
        header = struct.pack(order + "HHIIIIIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0,
                             ehsize, phentsize, note_segments, 40, 0, 0)  # fmt: skip
        phdr = struct.pack(order + "8I", 4, notes_at, 0, 0, size, size, 4, note_align)
    else:
        header = struct.pack(order + "HHIQQQIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0,
                             ehsize, phentsize, note_segments, 64, 0, 0)  # fmt: skip
        phdr = struct.pack(order + "IIQQQQQQ", 4, 4, notes_at, 0, 0, size, size, note_align)
    return ident + header + phdr * note_segments + notes


def write(tmp_path: Path, data: bytes, name: str = "tiny") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_hand_made_header_matches_pyelftools(tmp_path: Path) -> None:
    """The hand-made files below are what a referee reads them as, not just what we do."""
    path = write(tmp_path, tiny_elf(32, "<", EM_386))
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        assert (elf.elfclass, elf["e_machine"], elf.num_segments()) == (32, "EM_386", 1)
    assert read_elf(path) == ElfInfo(32, "EM_386", None, (), (), (), ())


def test_compatible_needs_same_class_and_machine(tmp_path: Path) -> None:
    x86_64 = read_elf(write(tmp_path, tiny_elf(64, "<", EM_X86_64), "a"))
    i386 = read_elf(write(tmp_path, tiny_elf(32, "<", EM_386), "b"))
    aarch64 = read_elf(write(tmp_path, tiny_elf(64, "<", EM_AARCH64), "c"))
    assert aarch64.machine == "EM_AARCH64"
    assert compatible(x86_64, read_elf(write(tmp_path, tiny_elf(64, "<", EM_X86_64), "d")))
    assert not compatible(x86_64, i386)
    assert not compatible(x86_64, aarch64)


def test_gcc_m32_library_is_not_compatible(built: Path, tmp_path: Path) -> None:
    lib32 = tmp_path / "lib32.so"
    try:
        gcc(tmp_path, LIBFOO_C, lib32, "-m32", "-shared", "-nostdlib")
    except subprocess.CalledProcessError:
        pytest.skip("gcc -m32 cannot build here; the hand-made 32-bit file covers this")
    info = read_elf(lib32)
    assert (info.elf_class, info.machine) == (32, "EM_386")
    assert not compatible(read_elf(built / "lib/libfoo.so"), info)


def test_unknown_machine_is_named_by_number(tmp_path: Path) -> None:
    assert read_elf(write(tmp_path, tiny_elf(machine=0xBEEF))).machine == f"EM_{0xBEEF}"


def test_big_endian_notes(tmp_path: Path) -> None:
    desc = b'[{"soname": "libz.so.1"}]\0'
    note = struct.pack(">III", 4, len(desc), DLOPEN_NOTE_TYPE) + b"FDO\0" + pad4(desc)
    info = read_elf(write(tmp_path, tiny_elf(64, ">", EM_PPC64, note)))
    assert (info.machine, info.dlopen) == (
        "EM_PPC64",
        (DlopenNote("", "recommended", ("libz.so.1",)),),
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"soname": "libz.so.1", "feature": "z", "priority": "suggested"},
            (DlopenNote("z", "suggested", ("libz.so.1",)),),
        ),
        (
            [{"soname": ["a.so"], "other": {"keys": "ignored"}}],
            (DlopenNote("", "recommended", ("a.so",)),),
        ),
        ([], ()),
    ],
)
def test_dlopen_payload_forms(
    tmp_path: Path, payload: object, expected: tuple[DlopenNote, ...]
) -> None:
    notes = dlopen_note(json.dumps(payload).encode())
    assert read_elf(write(tmp_path, tiny_elf(notes=notes))).dlopen == expected


def test_notes_in_two_segments_are_read_once(tmp_path: Path) -> None:
    notes = dlopen_note(b'{"soname": "libz.so.1"}')
    info = read_elf(write(tmp_path, tiny_elf(notes=notes, note_segments=2)))
    assert info.dlopen == (DlopenNote("", "recommended", ("libz.so.1",)),)


def test_notes_in_an_8_aligned_segment_pad_to_8(tmp_path: Path) -> None:
    # Like .note.gnu.property: a 4-byte desc is followed by 4 bytes of padding.
    property_note = struct.pack("<III", 4, 4, 5) + b"GNU\0" + b"\1\2\3\4" + bytes(4)
    dlopen = dlopen_note(b'{"soname": "libz.so.1"}')
    dlopen += bytes(-len(dlopen) % 8)
    info = read_elf(write(tmp_path, tiny_elf(notes=property_note + dlopen, note_align=8)))
    assert info.dlopen == (DlopenNote("", "recommended", ("libz.so.1",)),)


def test_other_notes_are_ignored(tmp_path: Path) -> None:
    notes = (
        dlopen_note(b"not json", owner=b"GNU")
        + dlopen_note(b"not json", note_type=3)
        + dlopen_note(b'{"soname": "libz.so.1"}')
    )
    assert read_elf(write(tmp_path, tiny_elf(notes=notes))).dlopen == (
        DlopenNote("", "recommended", ("libz.so.1",)),
    )


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        (b'[{"soname": ', "malformed .note.dlopen JSON"),
        (b"\xff\xfe", "malformed .note.dlopen JSON"),
        (b"[" * 100_000, "malformed .note.dlopen JSON"),
        (b"[1]", "an entry is not a JSON object"),
        (b'[{"feature": "x"}]', '"soname" must be'),
        (b'[{"soname": []}]', '"soname" must be'),
        (b'[{"soname": ["a.so", 3]}]', '"soname" must be'),
        (b'[{"soname": "a.so", "priority": "urgent"}]', "\"priority\" 'urgent' is not one of"),
        (b'[{"soname": "a.so", "feature": 3}]', '"feature" must be a string'),
    ],
)
def test_bad_dlopen_payload(tmp_path: Path, desc: bytes, message: str) -> None:
    path = write(tmp_path, tiny_elf(notes=dlopen_note(desc)))
    with pytest.raises(ElfError) as raised:
        read_elf(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_note_running_past_its_segment(tmp_path: Path) -> None:
    note = struct.pack("<III", 4, 1000, DLOPEN_NOTE_TYPE) + b"FDO\0" + b"[]\0\0"
    with pytest.raises(ElfError, match="runs past the end of its notes"):
        read_elf(write(tmp_path, tiny_elf(notes=note)))


def test_huge_sizes_are_not_read(tmp_path: Path) -> None:
    data = bytearray(tiny_elf())
    struct.pack_into("<Q", data, 64 + 32, 2**62)  # p_filesz of the PT_NOTE
    with pytest.raises(ElfError, match="runs past the end of the file"):
        read_elf(write(tmp_path, bytes(data)))


# --- $ORIGIN ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("$ORIGIN/../lib", "/usr/bin/../lib"),
        ("${ORIGIN}/../lib", "/usr/bin/../lib"),
        ("$ORIGIN", "/usr/bin"),
        ("$ORIGIN/a/$ORIGIN", "/usr/bin/a//usr/bin"),
        ("$ORIGINAL/lib", "$ORIGINAL/lib"),  # another name that starts the same
        ("/opt/$LIB/x", "/opt/$LIB/x"),
        ("/opt/${PLATFORM}", "/opt/${PLATFORM}"),
        ("/usr/lib/private", "/usr/lib/private"),
    ],
)
def test_expand_origin(entry: str, expected: str) -> None:
    assert expand_origin(entry, "/usr/bin") == expected


def test_expand_origin_takes_the_directory_literally() -> None:
    assert expand_origin("$ORIGIN/x", r"/odd\1dir") == r"/odd\1dir/x"


# --- ld.so.conf -------------------------------------------------------------------------


def conf_tree(
    root: Path, files: dict[str, str]
) -> tuple[Callable[[str], str | None], Callable[[str], list[str]]]:
    """read_text and glob over a tree written from files, as the sysroot gives them."""
    for name, text in files.items():
        (root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.lstrip("/")).write_text(text)

    def read_text(path: str) -> str | None:
        host = root / path.lstrip("/")
        return host.read_text() if host.is_file() else None

    def glob_in_root(pattern: str) -> list[str]:
        # Reversed, so that the order ld.so.conf gives is proven to be parse_ld_so_conf's.
        # Sliced, not made relative with pathlib, which would drop "." and hide whether
        # parse_ld_so_conf copes with it.
        found = glob.glob(str(root) + pattern)
        return sorted((match[len(str(root)) :] for match in found), reverse=True)

    return read_text, glob_in_root


def test_parse_ld_so_conf(tmp_path: Path) -> None:
    read_text, glob_in_root = conf_tree(
        tmp_path,
        {
            "/etc/ld.so.conf": (
                "# system libraries\n"
                "include /etc/ld.so.conf.d/*.conf\n"
                "/usr/local/lib   # after the includes\n"
                "hwcap 0 nosegneg\n"
                "HWCAP 1 other\n"
                "\n"
            ),
            "/etc/ld.so.conf.d/a.conf": "/opt/a/lib/\ninclude sub/*.conf\n",
            "/etc/ld.so.conf.d/sub/x.conf": "\t/opt/x\ninclude ../../ld.so.conf\n",  # a cycle
            "/etc/ld.so.conf.d/b.conf": "/opt/b\n/opt/a/lib\n/opt/old=libc5\nrelative/dir\n",
            "/etc/ld.so.conf.d/c.conf.disabled": "/opt/c\n",
        },
    )
    assert parse_ld_so_conf(read_text, glob_in_root) == [
        "/opt/a/lib",
        "/opt/x",
        "/opt/b",
        "/opt/old",
        "/usr/local/lib",
    ]


def test_parse_ld_so_conf_self_include_and_missing(tmp_path: Path) -> None:
    read_text, glob_in_root = conf_tree(
        tmp_path,
        {"/etc/ld.so.conf": "include ./ld.so.conf\ninclude /etc/absent.conf\n/lib/extra\n"},
    )
    assert parse_ld_so_conf(read_text, glob_in_root) == ["/lib/extra"]


def test_parse_ld_so_conf_without_a_file() -> None:
    assert parse_ld_so_conf(lambda _: None, lambda _: []) == []
