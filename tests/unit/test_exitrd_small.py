"""The smallest exitrd that does the job: a standalone systemd-shutdown (one needing no
libsystemd-shared, by its DT_NEEDED) where the sysroot has one or exitrd_shutdown names
one, else systemd-shutdown and exactly its DT_NEEDED closure; storage stacks that
systemd-shutdown detaches itself (DM: LUKS, LVM) add only the hook that names what
still holds them, with its shell; a plain root's exitrd goes without it.

The fixture trees hold real ELF files (gcc), so the closure is the one bookend computes
from DT_NEEDED and RUNPATH, as on a distribution's tree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.cli import vocabularies
from bookend.closure import build_closure
from bookend.config import Config
from bookend.errors import BookendError
from bookend.exitrd import SHUTDOWN, STANDALONE, make_exitrd_plan, shutdown_program
from bookend.features import ALL
from bookend.plan import Plan
from bookend.resolve import configure
from tests.unit.conftest import make_root_tree
from tests.unit.elftree import compile_c, install_libc, shared_library

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
PRIVATE = f"{MULTIARCH}/systemd"
MAIN = "int main(void) { return 0; }\n"
# What every exitrd holds whichever program is /shutdown.
SKELETON = {
    "/dev", "/dev/console", "/dev/kmsg", "/dev/null", "/proc", "/sys", "/run", "/oldroot",
    "/etc", "/etc/initrd-release", "/etc/os-release", "/shutdown",
    "/lib", "/lib64", "/usr", "/usr/lib", "/usr/lib64", "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu", f"{MULTIARCH}/libc.so.6", f"{MULTIARCH}/ld-linux-x86-64.so.2",
    "/usr/lib/systemd",
}  # fmt: skip
# The hook that names what still holds the old root's storage, in an exitrd that takes
# storage down (its sh is optional: none here).
HOLDERS = {"/usr/lib/systemd/system-shutdown", "/usr/lib/systemd/system-shutdown/bookend-holders"}
SHARED = {
    PRIVATE, f"{PRIVATE}/libsystemd-shared-999.so",
    f"{MULTIARCH}/libcrypto.so.3", f"{MULTIARCH}/libcrypto.so.3.0",
}  # fmt: skip


def systemd_tree(root: Path, standalone: bool) -> Path:
    """A tree with systemd-shutdown linking libsystemd-shared-999.so (through RUNPATH, as
    Debian installs it), which links libcrypto; and the standalone build if asked."""
    make_root_tree(root)
    install_libc(root)
    libcrypto = shared_library(root, MULTIARCH, "libcrypto.so.3", "int c(void) { return 0; }\n")
    shared = root / PRIVATE.lstrip("/") / "libsystemd-shared-999.so"
    compile_c("int c(void); int s(void) { return c(); }\n", shared, "-shared", "-fPIC",
              f"-L{libcrypto.parent}", "-l:libcrypto.so.3")  # fmt: skip
    compile_c("int s(void); int main(void) { return s(); }\n", root / SHUTDOWN.lstrip("/"),
              f"-L{shared.parent}", "-l:libsystemd-shared-999.so",
              f"-Wl,-rpath,{PRIVATE}", f"-Wl,-rpath-link,{libcrypto.parent}")  # fmt: skip
    if standalone:
        compile_c(MAIN, root / STANDALONE.lstrip("/"))
    return root


def config_of(root: Path, shutdown: Path | None = None) -> Config:
    given = {} if shutdown is None else {"exitrd_shutdown": str(shutdown)}
    return configure(None, {"sysroot": str(root), **given}, vocabularies(ALL))


def exitrd_paths(config: Config, features: tuple[str, ...] = ()) -> set[str]:
    initrd = Plan(features=features, requests=(), generated=(), registry=ALL)
    closure = build_closure(config, make_exitrd_plan(config, initrd))
    return set(closure.entries) - {"/usr/lib/bookend/manifest.json", "/usr/lib/bookend"}


def test_standalone_shutdown_is_chosen_and_needs_only_libc(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    config = config_of(root)
    assert shutdown_program(config).path == STANDALONE
    paths = exitrd_paths(config)
    # Exactly the skeleton and the standalone program: no libsystemd-shared, no libcrypto,
    # not the other systemd-shutdown.
    assert paths == SKELETON | {STANDALONE}, paths ^ (SKELETON | {STANDALONE})
    initrd = Plan(features=(), requests=(), generated=(), registry=ALL)
    plan = make_exitrd_plan(config, initrd)
    link = next(g.entry for g in plan.generated if g.entry.path == "/shutdown")
    assert link.target == STANDALONE.lstrip("/")


def test_without_standalone_shutdown_brings_exactly_its_dt_needed_closure(
    tmp_path: Path,
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=False)
    assert shutdown_program(config_of(root)).path == SHUTDOWN
    expected = SKELETON | SHARED | {SHUTDOWN}
    paths = exitrd_paths(config_of(root))
    assert paths == expected, paths ^ expected


def test_a_standalone_that_is_not_executable_is_not_chosen(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    (root / STANDALONE.lstrip("/")).chmod(0o644)
    assert shutdown_program(config_of(root)).path == SHUTDOWN


def test_the_standalone_is_told_by_its_dt_needed_not_its_name(tmp_path: Path) -> None:
    # Debian's systemd-standalone-shutdown installs it as systemd-shutdown.
    root = systemd_tree(tmp_path / "root", standalone=False)
    compile_c(MAIN, root / SHUTDOWN.lstrip("/"))
    program = shutdown_program(config_of(root))
    assert (program.path, program.standalone) == (SHUTDOWN, True)
    # A systemd-shutdown.standalone that needs libsystemd-shared is no standalone.
    root = systemd_tree(tmp_path / "other", standalone=False)
    (root / STANDALONE.lstrip("/")).write_bytes((root / SHUTDOWN.lstrip("/")).read_bytes())
    (root / STANDALONE.lstrip("/")).chmod(0o755)
    program = shutdown_program(config_of(root))
    assert (program.path, program.standalone) == (SHUTDOWN, False)


def test_exitrd_shutdown_from_outside_the_sysroot_brings_only_its_libraries(
    tmp_path: Path,
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=False)
    given = tmp_path / "unpacked/usr/lib/systemd/systemd-shutdown"
    compile_c(MAIN, given)
    config = config_of(root, given)
    program = shutdown_program(config)
    assert (program.path, program.source) == (SHUTDOWN, given)
    paths = exitrd_paths(config)
    # Not the sysroot's systemd-shutdown and its libsystemd-shared closure: the given one.
    assert paths == SKELETON | {SHUTDOWN}, paths ^ (SKELETON | {SHUTDOWN})
    initrd = Plan(features=(), requests=(), generated=(), registry=ALL)
    closure = build_closure(config, make_exitrd_plan(config, initrd))
    assert closure.entries[SHUTDOWN].entry.source == given


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing", "exitrd_shutdown: .*systemd-shutdown: no such file"),
        ("script", "systemd-shutdown: exitrd_shutdown .*: not an ELF file"),
        ("shared", "needs libsystemd-shared-999.so: not a standalone systemd-shutdown"),
        ("library", "needs libgone.so.1, which is not in the sysroot's library path"),
        ("arch", "a EM_386 \\(32-bit\\) program, but the sysroot's systemd is EM_X86_64"),
    ],
)
def test_a_bad_exitrd_shutdown_is_refused_in_one_line(
    tmp_path: Path, fault: str, message: str
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=False)
    given = tmp_path / "given/systemd-shutdown"
    given.parent.mkdir()
    if fault == "script":
        given.write_text("#!/bin/sh\n")
        given.chmod(0o755)
    elif fault == "shared":
        given.write_bytes((root / SHUTDOWN.lstrip("/")).read_bytes())
        given.chmod(0o755)
    elif fault == "library":
        body = "int g(void) { return 0; }\n"
        gone = shared_library(tmp_path / "elsewhere", "/lib", "libgone.so.1", body)
        compile_c("int g(void); int main(void) { return g(); }\n", given,
                  f"-L{gone.parent}", "-l:libgone.so.1")  # fmt: skip
    elif fault == "arch":
        compile_c(MAIN, given, "-m32", "-nostdlib", "-static", "-e", "main")
    with pytest.raises(BookendError, match=message) as caught:
        exitrd_paths(config_of(root, given))
    assert "\n" not in str(caught.value)


def test_lvm_on_luks_adds_only_the_holders_hook_systemd_shutdown_detaches_dm_itself(
    tmp_path: Path,
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=False)
    config = config_of(root)
    plain = exitrd_paths(config)
    # The tools are in the sysroot (the initrd needs them); the exitrd runs none of them.
    for tool in ("/usr/sbin/lvm", "/usr/sbin/dmsetup", "/usr/sbin/cryptsetup",
                 "/usr/lib/systemd/systemd-cryptsetup", "/usr/bin/systemd-run"):  # fmt: skip
        compile_c(MAIN, root / tool.lstrip("/"))
    assert exitrd_paths(config, ("systemd", "dm", "luks", "lvm")) == plain | HOLDERS


@pytest.mark.parametrize("features", [(), ("systemd", "network")])
def test_a_plain_roots_exitrd_has_no_holders_hook_nor_shell(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    compile_c(MAIN, root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to("dash")
    paths = exitrd_paths(config_of(root), features)
    assert not paths & (HOLDERS | {"/usr/bin/sh", "/usr/bin/dash"}), sorted(paths)


@pytest.mark.parametrize("feature", ["dm", "luks"])
def test_the_holders_hook_gets_its_shell_where_the_sysroot_has_one(
    tmp_path: Path, feature: str
) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    compile_c(MAIN, root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to("dash")
    paths = exitrd_paths(config_of(root), (feature,))
    # The hook's #! interpreter: without it the hook cannot run at shutdown.
    assert HOLDERS | {"/usr/bin/sh", "/usr/bin/dash"} <= paths, sorted(paths)
