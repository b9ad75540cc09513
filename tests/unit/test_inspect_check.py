"""`bookend check` on small images packed from fixture trees with real ELF files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor, write_cpio
from bookend.inspect.check import check_image, remove_dead_scratch, scratch_parent
from tests.unit.elftree import compile_c, install_libc, shared_library
from tests.unit.newcfile import archive, newc
from tests.unit.nobody import as_nobody, shared_directory

ROOT = Path(__file__).resolve().parents[2]
KVER = "6.1.0-test"
MODULE_DIR = f"/lib/modules/{KVER}"
MAIN = "int foo(void); int main(void) { return foo(); }"


def pack(tree: Path, image: Path, drop: Iterable[str] = ()) -> Path:
    """The tree as a zstd-compressed newc image, without the paths in drop."""
    dropped = set(drop)
    entries = []
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(directory, name)
            image_path = "/" + str(path.relative_to(tree))
            if image_path in dropped:
                continue
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(ArchiveEntry(image_path, EntryKind.SYMLINK, 0o777,
                                            target=os.readlink(path)))  # fmt: skip
            elif stat.S_ISDIR(st.st_mode):
                entries.append(ArchiveEntry(image_path, EntryKind.DIRECTORY, mode))
            else:
                entries.append(ArchiveEntry(image_path, EntryKind.FILE, mode, source=path))
    with image.open("wb") as out, open_compressor(Compression.ZSTD, out) as stream:
        write_cpio(entries, stream, epoch=0)
    return image


def make_tree(root: Path) -> Path:
    """An initrd tree that passes every check: systemd needing libfoo, a unit, modules."""
    for directory in ("usr/lib/systemd/system", "usr/bin", "usr/sbin", "etc"):
        (root / directory).mkdir(parents=True)
    for name in ("lib", "bin", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    install_libc(root)
    libfoo = shared_library(root, "/usr/lib/x86_64-linux-gnu", "libfoo.so.1",
                            "int foo(void) { return 0; }")  # fmt: skip
    compile_c(MAIN, root / "usr/lib/systemd/systemd", str(libfoo))
    compile_c("int main(void) { return 0; }", root / "usr/bin/tool")
    (root / "init").symlink_to("usr/lib/systemd/systemd")
    (root / "etc/initrd-release").write_text("ID=fixture\n")
    (root / "usr/lib/systemd/system/tool.service").write_text(
        "[Service]\nExecStartPre=-/usr/bin/optional\nExecStart=/usr/bin/tool --flag\n"
        "ExecStop=tool\nExecStopPost=/usr/libexec/%N-helper\n"
    )
    moddir = root / f"usr/lib/modules/{KVER}"
    for module in ("kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko"):
        (moddir / module).parent.mkdir(parents=True)
        (moddir / module).write_bytes(b"not really a module")
    (moddir / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n"
    )
    (moddir / "modules.alias").write_text("alias fs-ext4 ext4\nalias ext3 ext4\n")
    (root / "etc/fstab").write_text("/dev/vda /sysroot ext4 defaults 0 1\n")
    return root


@pytest.fixture(scope="module")
def fixture_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("check") / "tree")


@pytest.fixture
def tree(fixture_tree: Path, tmp_path: Path) -> Path:
    """A copy the test may change."""
    copy = tmp_path / "tree"
    shutil.copytree(fixture_tree, copy, symlinks=True)
    return copy


def problems(tree: Path, tmp_path: Path, drop: Iterable[str] = (), **kwargs: str) -> list[str]:
    result = check_image(pack(tree, tmp_path / "image.img", drop), **kwargs)
    return result.problems


def test_a_complete_image_passes(tree: Path, tmp_path: Path) -> None:
    result = check_image(pack(tree, tmp_path / "image.img"))
    assert result.problems == []
    assert result.kind == "initrd"
    assert result.counts == {"elf": 5, "units": 1, "modules": 2}


def test_a_missing_library(tree: Path, tmp_path: Path) -> None:
    lib = "/usr/lib/x86_64-linux-gnu"
    assert problems(tree, tmp_path, [f"{lib}/libfoo.so.1", f"{lib}/libfoo.so.1.0"]) == [
        "/usr/lib/systemd/systemd: needs libfoo.so.1, which is not in the image"
    ]


def test_a_missing_interpreter(tree: Path, tmp_path: Path) -> None:
    loader = "/lib64/ld-linux-x86-64.so.2"
    missing = f"its interpreter {loader} is not in the image"
    assert problems(tree, tmp_path, ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]) == [
        f"/usr/bin/tool: {missing}",
        f"/usr/lib/systemd/systemd: {missing}",
        # libc names the loader as its interpreter and as a library.
        f"/usr/lib/x86_64-linux-gnu/libc.so.6: {missing}",
        "/usr/lib/x86_64-linux-gnu/libc.so.6: needs ld-linux-x86-64.so.2, "
        "which is not in the image",
    ]


def test_a_unit_whose_programs_are_missing(tree: Path, tmp_path: Path) -> None:
    unit = "/usr/lib/systemd/system/tool.service"
    # ExecStartPre=-... may fail; ExecStopPost's %N is known only at run time.
    assert problems(tree, tmp_path, ["/usr/bin/tool"]) == [
        f"{unit}: ExecStart= runs /usr/bin/tool, which is not in the image",
        f"{unit}: ExecStop= runs tool, which is not in the image",
    ]


def test_a_unit_in_etc_and_a_drop_in(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/systemd/system/tool.service.d").mkdir(parents=True)
    (tree / "etc/systemd/system/tool.service.d/x.conf").write_text(
        "[Service]\nExecReload=/usr/sbin/reloader\n"
    )
    (tree / "etc/systemd/system/other.socket").write_text("[Socket]\nExecStartPre=/bin/tool\n")
    assert problems(tree, tmp_path) == [
        "/etc/systemd/system/tool.service.d/x.conf: ExecReload= runs /usr/sbin/reloader, "
        "which is not in the image"
    ]


def test_a_unit_running_a_script_without_its_interpreter(tree: Path, tmp_path: Path) -> None:
    script = tree / "usr/bin/tool"
    script.unlink()
    script.write_text("#!/usr/bin/python3\nprint('hello')\n")
    script.chmod(0o755)
    assert problems(tree, tmp_path) == [
        f"/usr/lib/systemd/system/tool.service: {key}=: /usr/bin/tool: its interpreter "
        "/usr/bin/python3 is not in the image"
        for key in ("ExecStart", "ExecStop")
    ]


def test_a_missing_root_filesystem_module(tree: Path, tmp_path: Path) -> None:
    drop = [f"/usr/lib/modules/{KVER}/kernel/fs/ext4/ext4.ko"]
    assert problems(tree, tmp_path, drop) == [
        f"root filesystem ext4: its module is not in {MODULE_DIR} and modules.builtin "
        "does not list it"
    ]


def test_a_built_in_root_filesystem_needs_no_module(tree: Path, tmp_path: Path) -> None:
    moddir = tree / f"usr/lib/modules/{KVER}"
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    drop = [f"/usr/lib/modules/{KVER}/kernel/fs/ext4/ext4.ko"]
    assert problems(tree, tmp_path, drop) == []
    # ext3 is ext4's: modules.builtin.modinfo says the built-in ext4 answers to fs-ext3.
    (moddir / "modules.builtin.modinfo").write_bytes(b"ext4.alias=fs-ext3\0ext4.license=GPL\0")
    assert problems(tree, tmp_path, drop, root_fstype="ext3") == []


def test_the_root_filesystem_type_from_the_command_line(tree: Path, tmp_path: Path) -> None:
    assert problems(tree, tmp_path, root_fstype="xfs") == [
        f"root filesystem xfs: its module is not in {MODULE_DIR} and modules.builtin "
        "does not list it"
    ]
    # The kernel loads "fs-ext4", which modules.alias maps to ext4.
    assert problems(tree, tmp_path, root_fstype="ext4") == []
    assert problems(tree, tmp_path, root_fstype="tmpfs") == []


def test_no_modules_at_all_for_a_root_filesystem(tree: Path, tmp_path: Path) -> None:
    shutil.rmtree(tree / "usr/lib/modules")
    assert problems(tree, tmp_path) == [
        "root filesystem ext4: the image has no /lib/modules/KVER, so neither a module for "
        "it nor a modules.builtin that lists it"
    ]


def test_a_directory_of_keys_is_no_kernels_module_directory(tree: Path, tmp_path: Path) -> None:
    # dracut's modsign module (with keyutils installed) adds an empty /lib/modules/keys.
    (tree / "usr/lib/modules/keys").mkdir()
    assert problems(tree, tmp_path) == []


def test_a_module_whose_dependency_is_missing(tree: Path, tmp_path: Path) -> None:
    drop = [f"/usr/lib/modules/{KVER}/kernel/fs/jbd2/jbd2.ko"]
    assert problems(tree, tmp_path, drop) == [
        f"{MODULE_DIR}/kernel/fs/ext4/ext4.ko: needs module jbd2, which is not in the image"
    ]


def test_a_module_modules_dep_does_not_know(tree: Path, tmp_path: Path) -> None:
    extra = tree / f"usr/lib/modules/{KVER}/kernel/drivers/x.ko.zst"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"x")
    assert problems(tree, tmp_path) == [
        f"{MODULE_DIR}/kernel/drivers/x.ko.zst: not in modules.dep, so modprobe cannot load it"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("not executable", "/init: not executable (mode 0644)"),
        ("dangling", "/init -> /usr/lib/systemd/nothing: missing"),
        ("script", "/init: its interpreter /bin/busybox is not in the image"),
        ("absent", "/init: missing"),
    ],
)
def test_init_must_be_an_executable_inside_the_image(
    tree: Path, tmp_path: Path, change: str, expected: str
) -> None:
    init = tree / "init"
    init.unlink()
    if change == "not executable":
        init.write_text("")
        init.chmod(0o644)
    elif change == "dangling":
        init.symlink_to("usr/lib/systemd/nothing")
    elif change == "script":
        init.write_text("#!/bin/busybox sh\nexec switch_root /root /sbin/init\n")
        init.chmod(0o755)
    assert problems(tree, tmp_path) == [expected]


def test_initrd_release_is_required(tree: Path, tmp_path: Path) -> None:
    assert problems(tree, tmp_path, ["/etc/initrd-release"]) == [
        "/etc/initrd-release: missing (systemd runs as an initrd only when it is there)"
    ]


def test_an_exitrd_is_checked_by_its_shutdown(tree: Path, tmp_path: Path) -> None:
    (tree / "init").rename(tree / "shutdown")
    result = check_image(pack(tree, tmp_path / "exitrd.img"))
    assert result.kind == "exitrd" and result.problems == []
    (tree / "shutdown").unlink()
    (tree / "shutdown").symlink_to("usr/lib/systemd/systemd-shutdown")
    result = check_image(pack(tree, tmp_path / "exitrd.img"))
    assert result.problems == ["/shutdown -> /usr/lib/systemd/systemd-shutdown: missing"]


def test_a_library_found_through_ld_so_cache_alone(tree: Path, tmp_path: Path) -> None:
    # The loader reads ld.so.cache, not ld.so.conf: an image may carry only the cache.
    libbar = shared_library(tree, "/opt/bar/lib", "libbar.so.2", "int bar(void) { return 0; }")
    compile_c("int bar(void); int main(void) { return bar(); }", tree / "usr/bin/bar",
              str(libbar))  # fmt: skip
    (tree / "etc/ld.so.conf").write_text("/opt/bar/lib\n")
    subprocess.run(["ldconfig", "-r", str(tree)], check=True)
    assert (tree / "etc/ld.so.cache").exists()
    assert problems(tree, tmp_path, ["/etc/ld.so.conf"]) == []
    assert problems(tree, tmp_path, ["/etc/ld.so.cache"]) == []
    assert problems(tree, tmp_path, ["/etc/ld.so.conf", "/etc/ld.so.cache"]) == [
        "/usr/bin/bar: needs libbar.so.2, which is not in the image"
    ]


def test_a_library_found_through_runpath_with_origin(tree: Path, tmp_path: Path) -> None:
    libbaz = shared_library(tree, "/usr/lib/baz", "libbaz.so.3", "int baz(void) { return 0; }")
    compile_c("int baz(void); int main(void) { return baz(); }", tree / "usr/bin/baz",
              str(libbaz), "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib/baz")  # fmt: skip
    assert problems(tree, tmp_path) == []
    assert problems(tree, tmp_path, ["/usr/lib/baz/libbaz.so.3"]) == [
        "/usr/bin/baz: needs libbaz.so.3, which is not in the image"
    ]


def test_a_corrupt_elf_file(tree: Path, tmp_path: Path) -> None:
    (tree / "usr/bin/broken").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    found = problems(tree, tmp_path)
    assert len(found) == 1 and found[0].startswith("/usr/bin/broken: ")
    assert "truncated or corrupt" in found[0]


def bookend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bookend", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT)  # fmt: skip


def test_cli_ok_and_problems(tree: Path, tmp_path: Path) -> None:
    good = pack(tree, tmp_path / "good.img")
    result = bookend("check", str(good))
    assert (result.returncode, result.stdout) == (0, "OK\n")
    bad = pack(tree, tmp_path / "bad.img", ["/usr/bin/tool", "/etc/initrd-release"])
    result = bookend("check", str(bad), "--root-fstype", "btrfs")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("/etc/initrd-release: missing")
    assert len(lines) == 4 and lines[-1].startswith("root filesystem btrfs:")
    report = json.loads(bookend("check", "--json", str(bad)).stdout)
    assert report["ok"] is False and report["kind"] == "initrd" and len(report["problems"]) == 3


def test_cli_a_refused_entry_is_a_problem(tmp_path: Path) -> None:
    image = tmp_path / "hostile.img"
    image.write_bytes(archive(newc("../escape", data=b"x")))
    result = bookend("check", str(image))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "entry '../escape': refused: its name climbs out of the directory with '..'"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an ordinary user")
def test_as_an_ordinary_user_unreadable_directories_are_still_checked(tree: Path) -> None:
    (tree / "usr/bin").chmod(0o000)  # nobody could not look in, were it not for check
    with shared_directory() as shared:
        image = pack(tree, shared / "image.img", ["/usr/bin/tool"])
        image.chmod(0o644)
        result = as_nobody(lambda: check_image(image).problems)
    assert result == [
        "/usr/lib/systemd/system/tool.service: ExecStart= runs /usr/bin/tool, "
        "which is not in the image",
        "/usr/lib/systemd/system/tool.service: ExecStop= runs tool, which is not in the image",
    ]


def test_a_symlink_loop_is_a_problem_not_a_crash(tree: Path, tmp_path: Path) -> None:
    (tree / "init").unlink()
    (tree / "init").symlink_to("init")
    (tree / "usr/lib/systemd/system/loop.service").symlink_to("loop.service")
    found = problems(tree, tmp_path)
    assert len(found) == 2
    assert found[0].startswith("units: ") and "too many levels of symbolic links" in found[0]
    assert found[1].startswith("/init: ") and "too many levels of symbolic links" in found[1]


def test_the_image_is_unpacked_in_ram_only_when_it_fits(tmp_path: Path) -> None:
    fs = os.statvfs(tmp_path)
    free = fs.f_bavail * fs.f_frsize
    small, huge = 1 << 20, free  # unpacked, an image of `free` bytes would not fit
    missing = tmp_path / "missing"
    assert scratch_parent(small, (missing, tmp_path)) == str(tmp_path)
    assert scratch_parent(huge, (missing, tmp_path)) is None
    assert scratch_parent(small, (missing,)) is None


def test_scratch_left_by_a_killed_check_is_removed_by_the_next(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process
    left = tmp_path / f"bookend-check-{gone.pid}-abc"
    (left / "image/usr").mkdir(parents=True)
    (left / "image/usr/big").write_bytes(b"x" * 1000)
    alive = tmp_path / f"bookend-check-{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "bookend-check-oldstyle"
    other.mkdir()
    remove_dead_scratch(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
