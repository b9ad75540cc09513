from __future__ import annotations

import json
from pathlib import Path

import pytest

from bookend.archive import EntryKind
from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.errors import ConfigError, ElfError, SysrootError
from bookend.features.base import Request, RequestKind
from bookend.plan import Plan
from tests.unit.conftest import load_config

from .elftree import compile_c, dlopen_note_c, install_libc, shared_library

MAIN = "int foo(void); int main(void) { return foo(); }\n"
FOO = "int foo(void) { return 0; }\n"


def closure_of(root: Path, *requests: Request) -> Closure:
    config: Config = load_config(None, {"sysroot": str(root)})
    return build_closure(config, Plan(features=(), requests=requests, generated=()))


def executable(name: str) -> Request:
    return Request(RequestKind.EXECUTABLE, name, "test")


@pytest.fixture
def elf_root(root_tree: Path) -> Path:
    install_libc(root_tree)
    return root_tree


def build_prog(root: Path, *link_flags: str) -> None:
    lib = shared_library(root, "/usr/lib/private", "libfoo.so.1", FOO)
    compile_c(MAIN, root / "usr/bin/prog", f"-L{lib.parent}", "-l:libfoo.so.1.0", *link_flags)


@pytest.mark.parametrize("dtags", ["--enable-new-dtags", "--disable-new-dtags"])
def test_origin_runpath_and_rpath_followed(elf_root: Path, dtags: str) -> None:
    build_prog(elf_root, "-Wl,-rpath,$ORIGIN/../lib/private", f"-Wl,{dtags}")
    closure = closure_of(elf_root, executable("prog"))
    entries = closure.entries
    assert entries["/usr/bin/prog"].entry.kind is EntryKind.FILE
    # The soname link is kept as a link, and its target comes too.
    assert entries["/usr/lib/private/libfoo.so.1"].entry.target == "libfoo.so.1.0"
    assert entries["/usr/lib/private/libfoo.so.1.0"].entry.kind is EntryKind.FILE
    # The interpreter is reached through the /lib64 directory link, kept as a link.
    assert entries["/lib64"].entry.target == "usr/lib64"
    assert entries["/usr/lib64/ld-linux-x86-64.so.2"].entry.kind is EntryKind.SYMLINK
    assert "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in entries
    assert closure.format_why("/usr/lib/x86_64-linux-gnu/libc.so.6") == (
        "/usr/lib/x86_64-linux-gnu/libc.so.6 <- DT_NEEDED of /usr/bin/prog <- test"
    )
    assert closure.format_why("/lib64") == (
        "/lib64 <- link on the way to /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        " <- PT_INTERP of /usr/bin/prog <- test"
    )


def test_why_chain_reaches_the_request(elf_root: Path) -> None:
    build_prog(elf_root, "-Wl,-rpath,$ORIGIN/../lib/private")
    closure = closure_of(elf_root, executable("prog"))
    assert closure.format_why("/usr/lib/private/libfoo.so.1.0") == (
        "/usr/lib/private/libfoo.so.1.0 <- DT_NEEDED of /usr/bin/prog <- test"
    )
    assert closure.format_why("/usr/lib/private/libfoo.so.1") == (
        "/usr/lib/private/libfoo.so.1 <- link on the way to /usr/lib/private/libfoo.so.1.0"
        " <- DT_NEEDED of /usr/bin/prog <- test"
    )


def test_missing_library_names_binary_and_soname(elf_root: Path) -> None:
    build_prog(elf_root)  # no RUNPATH: libfoo is in no directory the loader searches
    with pytest.raises(ElfError, match=r"usr/bin/prog: needs libfoo\.so\.1, which is not in"):
        closure_of(elf_root, executable("prog"))


def test_ld_so_conf_directory_brings_the_cache(elf_root: Path) -> None:
    build_prog(elf_root)
    (elf_root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (elf_root / "etc/ld.so.conf.d").mkdir()
    (elf_root / "etc/ld.so.conf.d/private.conf").write_text("/usr/lib/private\n")
    (elf_root / "etc/ld.so.cache").write_bytes(b"cache")
    closure = closure_of(elf_root, executable("prog"))
    assert "/usr/lib/private/libfoo.so.1.0" in closure.entries
    assert "/etc/ld.so.cache" in closure.entries


def test_non_elf_named_like_the_library_is_skipped(elf_root: Path) -> None:
    build_prog(elf_root, "-Wl,-rpath,/usr/lib/decoy:/usr/lib/private")
    (elf_root / "usr/lib/decoy").mkdir()
    (elf_root / "usr/lib/decoy/libfoo.so.1").write_text("INPUT(-lfoo)\n")
    closure = closure_of(elf_root, executable("prog"))
    assert "/usr/lib/decoy/libfoo.so.1" not in closure.entries
    assert "/usr/lib/private/libfoo.so.1" in closure.entries


def test_library_cycle_terminates(elf_root: Path) -> None:
    libdir = "/usr/lib/x86_64-linux-gnu"
    # libb first without its need of liba, so liba can link; then libb again with it.
    shared_library(elf_root, libdir, "libb.so.1", "int b(void){return 0;}\n")
    lib_dir = elf_root / libdir.lstrip("/")
    shared_library(
        elf_root,
        libdir,
        "liba.so.1",
        "int b(void); int a(void){return b();}\n",
        f"-L{lib_dir}",
        "-l:libb.so.1",
    )
    (lib_dir / "libb.so.1").unlink()
    shared_library(
        elf_root,
        libdir,
        "libb.so.1",
        "int a(void); int b(void){return a();}\n",
        f"-L{lib_dir}",
        "-l:liba.so.1",
    )
    compile_c(
        "int a(void); int main(void){return a();}\n",
        elf_root / "usr/bin/cyc",
        f"-L{lib_dir}",
        "-l:liba.so.1",
        f"-Wl,-rpath-link,{lib_dir}",
    )
    closure = closure_of(elf_root, executable("cyc"))
    assert f"{libdir}/liba.so.1.0" in closure.entries
    assert f"{libdir}/libb.so.1.0" in closure.entries


def test_shebang_interpreter_followed(elf_root: Path) -> None:
    compile_c("int main(void){return 0;}\n", elf_root / "usr/bin/dash")
    (elf_root / "usr/bin/sh").symlink_to("dash")
    script = elf_root / "usr/bin/hello"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    closure = closure_of(elf_root, executable("/usr/bin/hello"))
    assert closure.entries["/bin"].entry.target == "usr/bin"
    assert closure.entries["/usr/bin/sh"].entry.target == "dash"
    assert closure.format_why("/usr/bin/dash") == (
        "/usr/bin/dash <- #! interpreter of /usr/bin/hello <- test"
    )


def write_unit(root: Path, name: str, text: str) -> None:
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    (units / name).write_text(text)


def test_unit_exec_programs_followed(elf_root: Path) -> None:
    compile_c("int main(void){return 0;}\n", elf_root / "usr/bin/tool")
    write_unit(
        elf_root,
        "a.service",
        "[Service]\nExecStartPre=-/usr/bin/absent\nExecStart=tool --x \\\n  --y\n",
    )
    closure = closure_of(elf_root, Request(RequestKind.UNIT, "a.service", "test"))
    assert "/usr/bin/tool" in closure.entries
    assert closure.format_why("/usr/bin/tool") == (
        "/usr/bin/tool <- Exec of /usr/lib/systemd/system/a.service <- test"
    )
    assert "/usr/bin/absent" not in closure.entries


def test_unit_with_missing_program_is_an_error_naming_the_unit(elf_root: Path) -> None:
    write_unit(elf_root, "b.service", "[Service]\nExecStart=/usr/bin/nowhere\n")
    with pytest.raises(SysrootError, match=r"b\.service: ExecStart=/usr/bin/nowhere: .* not found"):
        closure_of(elf_root, Request(RequestKind.UNIT, "b.service", "test"))


def test_wants_links_between_included_units_only(elf_root: Path) -> None:
    write_unit(elf_root, "t.target", "[Unit]\n")
    write_unit(elf_root, "in.service", "[Service]\nExecStart=\n")
    write_unit(elf_root, "out.service", "[Service]\nExecStart=\n")
    wants = elf_root / "usr/lib/systemd/system/t.target.wants"
    wants.mkdir()
    (wants / "in.service").symlink_to("../in.service")
    (wants / "out.service").symlink_to("../out.service")
    closure = closure_of(
        elf_root,
        Request(RequestKind.UNIT, "t.target", "test"),
        Request(RequestKind.UNIT, "in.service", "test"),
    )
    assert "/usr/lib/systemd/system/t.target.wants/in.service" in closure.entries
    assert "/usr/lib/systemd/system/t.target.wants/out.service" not in closure.entries


def test_udev_rule_programs_followed_builtins_not(elf_root: Path) -> None:
    compile_c("int main(void){return 0;}\n", elf_root / "usr/lib/udev/helper_id")
    rules = elf_root / "usr/lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "60-x.rules").write_text(
        'KERNEL=="vd*", IMPORT{program}="helper_id --export $devnode"\n'
        'ACTION=="add", RUN{builtin}+="kmod load $env{MODALIAS}"\n'
        'RUN+="$env{HOOK}"\n'
    )
    closure = closure_of(elf_root, Request(RequestKind.UDEV_RULES, "60-x.rules", "test"))
    assert closure.format_why("/usr/lib/udev/helper_id") == (
        "/usr/lib/udev/helper_id <- program run by udev rules /usr/lib/udev/rules.d/60-x.rules"
        " <- test"
    )


def test_directory_request_recursed_with_links(elf_root: Path) -> None:
    conf = elf_root / "etc/modprobe.d"
    conf.mkdir()
    (conf / "a.conf").write_text("options a b=1\n")
    (conf / "sub").mkdir()
    (conf / "sub/b.conf").write_text("")
    (conf / "link.conf").symlink_to("a.conf")
    closure = closure_of(elf_root, Request(RequestKind.PATH, "/etc/modprobe.d", "test"))
    assert {"/etc/modprobe.d/a.conf", "/etc/modprobe.d/sub/b.conf"} <= set(closure.entries)
    assert closure.entries["/etc/modprobe.d/link.conf"].entry.target == "a.conf"


def test_dangling_link_in_a_whole_directory_is_a_warning_not_a_failure(root_tree: Path) -> None:
    # A debootstrap minbase tree: procps is not there, its sysctl.d link dangles.
    conf = root_tree / "etc/sysctl.d"
    conf.mkdir()
    (conf / "10-ok.conf").write_text("kernel.printk = 4\n")
    (conf / "99-sysctl.conf").symlink_to("../sysctl.conf")
    closure = closure_of(root_tree, Request(RequestKind.PATH, "/etc/sysctl.d", "test"))
    assert "/etc/sysctl.d/10-ok.conf" in closure.entries
    assert "/etc/sysctl.d/99-sysctl.conf" not in closure.entries
    assert closure.warnings == (
        f"{root_tree}/etc/sysctl.d/99-sysctl.conf: dangling link to ../sysctl.conf; left out "
        "(in /etc/sysctl.d, which the image takes whole)",
    )
    # Named on its own, the same link is something the image was asked for: an error.
    with pytest.raises(ConfigError, match=r"99-sysctl\.conf: no such file or directory"):
        closure_of(root_tree, Request(RequestKind.PATH, "/etc/sysctl.d/99-sysctl.conf", "test"))


FIRMWARE_MODULE_C = r"""
static const char a[] __attribute__((section(".modinfo"), used)) = "firmware=vendor/a.bin";
static const char b[] __attribute__((section(".modinfo"), used)) = "firmware=vendor/gone.bin";
static const char c[] __attribute__((section(".modinfo"), used)) = "firmware=fam/chip-*.bin";
int placeholder(void) { return 0; }
"""


def test_module_firmware_found_compressed_globbed_or_warned(root_tree: Path) -> None:
    moddir = root_tree / "usr/lib/modules/6.1.0-test"
    compile_c(FIRMWARE_MODULE_C, moddir / "kernel/drivers/fwdev.ko", "-c")
    (moddir / "modules.dep").write_text("kernel/drivers/fwdev.ko:\n")
    firmware = root_tree / "usr/lib/firmware"
    for name in ("vendor/a.bin.xz", "fam/chip-1.bin", "fam/chip-2.bin.zst", "fam/other.bin"):
        (firmware / name).parent.mkdir(parents=True, exist_ok=True)
        (firmware / name).write_bytes(b"blob")
    closure = closure_of(root_tree, Request(RequestKind.MODULE, "fwdev", "test"))
    found = sorted(p for p in closure.entries if p.startswith("/usr/lib/firmware/"))
    assert [p for p in found if closure.entries[p].entry.kind is EntryKind.FILE] == [
        "/usr/lib/firmware/fam/chip-1.bin",
        "/usr/lib/firmware/fam/chip-2.bin.zst",
        "/usr/lib/firmware/vendor/a.bin.xz",
    ]
    assert closure.format_why("/usr/lib/firmware/vendor/a.bin.xz").endswith(
        "firmware of module /usr/lib/modules/6.1.0-test/kernel/drivers/fwdev.ko"
        " <- module fwdev <- test"
    )
    assert closure.warnings == ("module fwdev: firmware not in the sysroot: vendor/gone.bin",)


MISSING = (
    (RequestKind.EXECUTABLE, "nowhere", "executable nowhere not found [test]"),
    (RequestKind.EXECUTABLE, "/usr/bin/nowhere", "executable /usr/bin/nowhere not found [test]"),
    (
        RequestKind.UNIT,
        "nowhere.service",
        "unit nowhere.service not found in /etc/systemd/system, /usr/local/lib/systemd/system, "
        "/usr/lib/systemd/system, /lib/systemd/system [test]",
    ),
    (RequestKind.GENERATOR, "nowhere-generator", "generator nowhere-generator not found [test]"),
    (
        RequestKind.UDEV_RULES,
        "99-nowhere.rules",
        "udev rules 99-nowhere.rules not found in /etc/udev/rules.d, /usr/lib/udev/rules.d, "
        "/lib/udev/rules.d [test]",
    ),
)


@pytest.mark.parametrize(("kind", "name", "message"), MISSING)
def test_a_missing_name_fails_saying_where_it_was_looked_for(
    root_tree: Path, kind: RequestKind, name: str, message: str
) -> None:
    with pytest.raises(SysrootError) as failure:
        closure_of(root_tree, Request(kind, name, "test"))
    assert str(failure.value) == f"{root_tree}: {message}"
    # The same name, optional: left out without a word.
    closure = closure_of(root_tree, Request(kind, name, "test", optional=True))
    assert not closure.warnings
    assert not [path for path in closure.entries if "nowhere" in path]


def test_each_named_kind_is_found_where_it_lives(root_tree: Path) -> None:
    found = {
        "usr/sbin/tool": "#!/usr/sbin/helper\n",
        "usr/sbin/helper": "",
        "usr/lib/systemd/system-generators/x-generator": "",
        "usr/lib/systemd/system/x.service": "[Service]\nExecStart=/usr/sbin/tool\n",
        "usr/lib/udev/rules.d/60-x.rules": 'RUN+="/usr/sbin/helper"\n',
    }
    for path, text in found.items():
        (root_tree / path).parent.mkdir(parents=True, exist_ok=True)
        (root_tree / path).write_text(text)
    requests = (
        Request(RequestKind.EXECUTABLE, "tool", "test"),
        Request(RequestKind.GENERATOR, "x-generator", "test"),
        Request(RequestKind.UNIT, "x.service", "test"),
        Request(RequestKind.UDEV_RULES, "60-x.rules", "test"),
    )
    closure = closure_of(root_tree, *requests)
    assert {"/" + path for path in found} <= set(closure.entries)
    # What the unit and the rules run came with them.
    assert closure.entries["/usr/lib/udev/rules.d/60-x.rules"].reason == "test"
    assert closure.format_why("/usr/sbin/tool") == "/usr/sbin/tool <- test"


DLOPEN_NOTES = [
    {"feature": "compress", "priority": "required", "soname": ["libreq.so.1"]},
    # Alternatives, best first: the first one the sysroot has is taken, and only that one.
    {"feature": "fallback", "priority": "recommended", "soname": ["libalt.so.2", "libalt.so.1"]},
    {"feature": "pick", "priority": "recommended", "soname": ["libpick.so.2", "libpick.so.1"]},
    {"feature": "tpm", "priority": "suggested", "soname": ["libsug.so.1"]},
    {"feature": "gone", "priority": "required", "soname": ["libgone.so.1"]},
]


def build_dlopen_prog(root: Path) -> None:
    """usr/bin/prog carrying DLOPEN_NOTES, and every library they name but libgone and
    libalt.so.2 in /usr/lib; libreq needs libreqdep."""
    shared_library(root, "/usr/lib", "libreqdep.so.1", "int dep(void) { return 0; }\n")
    shared_library(
        root, "/usr/lib", "libreq.so.1", "int dep(void); int req(void) { return dep(); }\n",
        f"-L{root / 'usr/lib'}", "-l:libreqdep.so.1",
    )  # fmt: skip
    for soname in ("libalt.so.1", "libpick.so.2", "libpick.so.1", "libsug.so.1"):
        shared_library(root, "/usr/lib", soname, "int f(void) { return 0; }\n")
    program = dlopen_note_c(json.dumps(DLOPEN_NOTES)) + "int main(void) { return 0; }\n"
    compile_c(program, root / "usr/bin/prog")


def test_dlopen_note_brings_the_libraries_it_names(elf_root: Path) -> None:
    build_dlopen_prog(elf_root)
    closure = closure_of(elf_root, executable("prog"))
    assert closure.format_why("/usr/lib/libreq.so.1.0") == (
        "/usr/lib/libreq.so.1.0 <- dlopen (compress, required) of /usr/bin/prog <- test"
    )
    assert closure.entries["/usr/lib/libreq.so.1"].entry.target == "libreq.so.1.0"
    # A dlopen()ed library is scanned like any other: what it needs comes too.
    assert closure.format_why("/usr/lib/libreqdep.so.1.0") == (
        "/usr/lib/libreqdep.so.1.0 <- DT_NEEDED of /usr/lib/libreq.so.1.0"
        " <- dlopen (compress, required) of /usr/bin/prog <- test"
    )
    assert closure.format_why("/usr/lib/libalt.so.1.0") == (
        "/usr/lib/libalt.so.1.0 <- dlopen (fallback, recommended) of /usr/bin/prog <- test"
    )
    assert "/usr/lib/libpick.so.2.0" in closure.entries
    assert "/usr/lib/libpick.so.1" not in closure.entries
    assert "/usr/lib/libpick.so.1.0" not in closure.entries


def test_dlopen_note_suggested_left_out_and_missing_warned(elf_root: Path) -> None:
    build_dlopen_prog(elf_root)
    closure = closure_of(elf_root, executable("prog"))
    # "suggested" is for a feature the program does without: not taken, nothing said.
    assert "/usr/lib/libsug.so.1" not in closure.entries
    assert not any("libsug" in warning for warning in closure.warnings)
    # A library the sysroot does not have is named in a warning, not a failed build.
    assert [w for w in closure.warnings if "dlopen" in w] == [
        "/usr/bin/prog: dlopen gone (required): none of libgone.so.1 found; left out"
    ]


# Debian's file names, then lvm2's own (Fedora, Arch), then a name no table knows.
@pytest.mark.parametrize(
    ("name", "found_as"),
    [("55-dm.rules", "55-dm.rules"), ("10-dm.rules", "10-dm.rules"), ("42-my-dm.rules", None)],
)
def test_udev_rules_by_purpose_by_name_or_content(
    root_tree: Path, name: str, found_as: str | None
) -> None:
    rules = root_tree / "usr/lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "50-udev-default.rules").write_text("# dmsetup udevflags only in a comment\n")
    (rules / name).write_text('ENV{DM_COOKIE}=="?*", IMPORT{program}="dmsetup udevflags $env{X}"\n')
    closure = closure_of(root_tree, Request(RequestKind.UDEV_RULES, "@dm", "test"))
    taken = [path for path in closure.entries if path.endswith(".rules")]
    assert taken == [f"/usr/lib/udev/rules.d/{found_as or name}"]


def test_udev_rules_purpose_missing_names_what_was_looked_for(root_tree: Path) -> None:
    (root_tree / "usr/lib/udev/rules.d").mkdir(parents=True)
    with pytest.raises(SysrootError) as failure:
        closure_of(root_tree, Request(RequestKind.UDEV_RULES, "@lvm-activation", "feature lvm"))
    assert str(failure.value) == (
        f"{root_tree}: udev rules @lvm-activation not found in /etc/udev/rules.d, "
        "/usr/lib/udev/rules.d, /lib/udev/rules.d (LVM event activation: pvscan on each "
        "physical volume): no file named 69-lvm.rules or 69-dm-lvm.rules or 69-lvm-metad.rules"
        r" or 69-dm-lvm-metad.rules, none matching /lvm\s+pvscan|pvscan\s+--cache/ [feature lvm]"
    )
