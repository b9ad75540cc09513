"""Odd things inside a sysroot, each handled on purpose: taken in right, or a clear error."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path

import pytest

from bookend.archive import write_cpio
from bookend.archive.cpio import MAX_FILE_SIZE
from bookend.closure import Closure, build_closure
from bookend.errors import ElfError, SysrootError
from bookend.features.base import Request, RequestKind
from bookend.inspect.image import scan_image
from bookend.plan import Plan
from tests.unit.conftest import load_config

from .elftree import compile_c, install_libc, shared_library

EM_AARCH64 = 183
MAIN = "int foo(void); int main(void) { return foo(); }\n"
FOO = "int foo(void) { return 0; }\n"


def closure_of(root: Path, *requests: Request) -> Closure:
    config = load_config(None, {"sysroot": str(root)})
    return build_closure(config, Plan(features=(), requests=requests, generated=()))


def path_request(path: str) -> Request:
    return Request(RequestKind.PATH, path, "files (test)")


@pytest.fixture
def elf_root(root_tree: Path) -> Path:
    install_libc(root_tree)
    return root_tree


def prog_with_decoy(root: Path) -> Path:
    """prog needs libfoo.so.1; its RPATH looks in /usr/lib/decoy before the real one."""
    lib = shared_library(root, "/usr/lib/private", "libfoo.so.1", FOO)
    compile_c(MAIN, root / "usr/bin/prog", f"-L{lib.parent}", "-l:libfoo.so.1.0",
              "-Wl,--disable-new-dtags,-rpath,/usr/lib/decoy:/usr/lib/private")  # fmt: skip
    (root / "usr/lib/decoy").mkdir()
    return lib


def test_symlink_loop_in_a_requested_directory_is_an_error_naming_it(root_tree: Path) -> None:
    (root_tree / "etc/conf.d").mkdir()
    (root_tree / "etc/conf.d/a").symlink_to("b")
    (root_tree / "etc/conf.d/b").symlink_to("a")
    with pytest.raises(SysrootError) as error:
        closure_of(root_tree, path_request("/etc/conf.d"))
    assert str(error.value) == f"{root_tree}/etc/conf.d/a: too many levels of symbolic links"


def test_absolute_link_out_of_the_tree_is_resolved_inside_it(root_tree: Path) -> None:
    """/usr/lib/x -> /opt/y means the sysroot's /opt/y, as under chroot; never the host's."""
    (root_tree / "opt").mkdir()
    (root_tree / "opt/y").write_text("inside the sysroot\n")
    (root_tree / "usr/lib/x").symlink_to("/opt/y")
    (root_tree / "usr/lib/up").symlink_to("../../../../../../opt/y")
    closure = closure_of(root_tree, path_request("/usr/lib/x"), path_request("/usr/lib/up"))
    assert closure.entries["/usr/lib/x"].entry.target == "/opt/y"
    assert closure.entries["/opt/y"].entry.source == root_tree / "opt/y"
    assert closure.format_why("/opt/y") == "/opt/y <- files (test)"
    assert "/usr/lib/up" in closure.entries


def test_truncated_elf_named_like_the_library_is_an_error_naming_it(elf_root: Path) -> None:
    """ld.so would stop on it too ('file too short'); better to hear of it at build time."""
    real = prog_with_decoy(elf_root)
    decoy = elf_root / "usr/lib/decoy/libfoo.so.1"
    decoy.write_bytes(real.read_bytes()[:60])
    with pytest.raises(ElfError, match=rf"^{decoy}: "):
        closure_of(elf_root, Request(RequestKind.EXECUTABLE, "prog", "test"))


def test_text_file_named_like_a_library_is_data_not_a_library(elf_root: Path) -> None:
    prog_with_decoy(elf_root)
    (elf_root / "usr/lib/decoy/libfoo.so.1").write_text("GROUP ( libfoo.so.1.0 )\n")
    closure = closure_of(
        elf_root,
        Request(RequestKind.EXECUTABLE, "prog", "test"),
        path_request("/usr/lib/decoy/libfoo.so.1"),
    )
    assert closure.format_why("/usr/lib/private/libfoo.so.1.0") == (
        "/usr/lib/private/libfoo.so.1.0 <- DT_NEEDED of /usr/bin/prog <- test"
    )
    assert closure.format_why("/usr/lib/decoy/libfoo.so.1") == (
        "/usr/lib/decoy/libfoo.so.1 <- files (test)"
    )


def test_library_of_another_architecture_is_passed_over(elf_root: Path) -> None:
    """An aarch64 libfoo.so.1 first in the path is skipped, as ld.so skips it."""
    real = prog_with_decoy(elf_root)
    data = bytearray(real.read_bytes())
    struct.pack_into("<H", data, 18, EM_AARCH64)  # e_machine
    (elf_root / "usr/lib/decoy/libfoo.so.1").write_bytes(bytes(data))
    closure = closure_of(elf_root, Request(RequestKind.EXECUTABLE, "prog", "test"))
    assert "/usr/lib/private/libfoo.so.1" in closure.entries
    assert "/usr/lib/decoy/libfoo.so.1" not in closure.entries


def test_library_only_for_another_architecture_is_an_error(elf_root: Path) -> None:
    real = prog_with_decoy(elf_root)
    data = bytearray(real.read_bytes())
    struct.pack_into("<H", data, 18, EM_AARCH64)
    real.write_bytes(bytes(data))
    with pytest.raises(ElfError, match=r"/usr/bin/prog: needs libfoo\.so\.1, which is not in"):
        closure_of(elf_root, Request(RequestKind.EXECUTABLE, "prog", "test"))


def test_unit_running_a_missing_program_fails_the_build_naming_both(elf_root: Path) -> None:
    """An initrd whose unit cannot start its program fails at boot: say so now instead.
    (A `-` prefix, which systemd lets fail, is followed only if the program is there.)"""
    units = elf_root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "x.service").write_text("[Service]\nExecStart=/usr/bin/absent --now\n")
    with pytest.raises(SysrootError) as error:
        closure_of(elf_root, Request(RequestKind.UNIT, "x.service", "test"))
    assert str(error.value) == (
        f"{units}/x.service: ExecStart=/usr/bin/absent --now: /usr/bin/absent not found in the "
        "sysroot"
    )


ODD_NAMES = [b"with space", b"new\nline", b"latin1-\xe9t\xe9", b"\xff\xfe"]


def test_odd_names_round_trip_through_our_reader_gnu_cpio_and_bsdtar(
    root_tree: Path, tmp_path: Path
) -> None:
    odd = os.fsencode(root_tree / "etc/odd")
    os.mkdir(odd)
    for n, name in enumerate(ODD_NAMES):
        Path(os.fsdecode(odd + b"/" + name)).write_bytes(b"content %d\n" % n)
    os.symlink(b"\xff\xfe", odd + b"/link \xe9")
    closure = closure_of(root_tree, path_request("/etc/odd"))
    image = tmp_path / "odd.cpio"
    buffer = io.BytesIO()
    write_cpio(closure.archive_entries(), buffer, epoch=0)
    image.write_bytes(buffer.getvalue())

    wanted = {b"etc/odd/" + name: b"content %d\n" % n for n, name in enumerate(ODD_NAMES)}
    ours = {os.fsencode(e.path): e for e in scan_image(image).entries}
    assert set(wanted) | {b"etc/odd/link \xe9"} <= set(ours)
    assert ours[b"etc/odd/link \xe9"].target == os.fsdecode(b"\xff\xfe")
    for tool, argv in (("cpio", ["cpio", "-idm", "--quiet"]), ("bsdtar", ["bsdtar", "-xf", "-"])):
        out = os.fsencode(tmp_path / tool)
        os.mkdir(out)
        subprocess.run(argv, input=image.read_bytes(), cwd=out, check=True)
        for name, content in wanted.items():
            assert Path(os.fsdecode(out + b"/" + name)).read_bytes() == content, (tool, name)
        assert os.readlink(out + b"/etc/odd/link \xe9") == b"\xff\xfe", tool


def test_a_file_too_big_for_newc_is_an_error_before_anything_is_written(root_tree: Path) -> None:
    big = root_tree / "usr/lib/huge.img"
    with big.open("wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)  # sparse: no disk space used
    with pytest.raises(SysrootError) as error:
        closure_of(root_tree, path_request("/usr/lib/huge.img"))
    assert str(error.value) == (
        f"{big}: 4294967296 bytes is too big for a cpio (newc) entry, whose size field "
        "holds at most 4294967295 bytes"
    )
