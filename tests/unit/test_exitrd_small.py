"""The smallest exitrd that does the job: systemd-shutdown.standalone where the sysroot
has it, else systemd-shutdown and exactly its DT_NEEDED closure; storage stacks that
systemd-shutdown detaches itself (DM: LUKS, LVM) add nothing.

The fixture trees hold real ELF files (gcc), so the closure is the one bookend computes
from DT_NEEDED and RUNPATH, as on a distribution's tree.
"""

from __future__ import annotations

from pathlib import Path

from bookend.cli import vocabularies
from bookend.closure import build_closure
from bookend.config import Config
from bookend.exitrd import SHUTDOWN, STANDALONE, make_exitrd_plan, shutdown_program
from bookend.features import ALL
from bookend.plan import Plan
from bookend.resolve import configure
from bookend.sysroot import Sysroot
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
    # The hook that names what still holds the old root (its sh is optional: none here).
    "/usr/lib/systemd/system-shutdown", "/usr/lib/systemd/system-shutdown/bookend-holders",
}  # fmt: skip
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


def config_of(root: Path) -> Config:
    return configure(None, {"sysroot": str(root)}, vocabularies(ALL))


def exitrd_paths(config: Config, features: tuple[str, ...] = ()) -> set[str]:
    initrd = Plan(features=features, requests=(), generated=(), registry=ALL)
    closure = build_closure(config, make_exitrd_plan(config, initrd))
    return set(closure.entries) - {"/usr/lib/bookend/manifest.json", "/usr/lib/bookend"}


def test_standalone_shutdown_is_chosen_and_needs_only_libc(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    assert shutdown_program(Sysroot(root)) == STANDALONE
    config = config_of(root)
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
    assert shutdown_program(Sysroot(root)) == SHUTDOWN
    expected = SKELETON | SHARED | {SHUTDOWN}
    paths = exitrd_paths(config_of(root))
    assert paths == expected, paths ^ expected


def test_a_standalone_that_is_not_executable_is_not_chosen(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    (root / STANDALONE.lstrip("/")).chmod(0o644)
    assert shutdown_program(Sysroot(root)) == SHUTDOWN


def test_lvm_on_luks_adds_nothing_systemd_shutdown_detaches_dm_itself(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=False)
    config = config_of(root)
    plain = exitrd_paths(config)
    # The tools are in the sysroot (the initrd needs them); the exitrd runs none of them.
    for tool in ("/usr/sbin/lvm", "/usr/sbin/dmsetup", "/usr/sbin/cryptsetup",
                 "/usr/lib/systemd/systemd-cryptsetup", "/usr/bin/systemd-run"):  # fmt: skip
        compile_c(MAIN, root / tool.lstrip("/"))
    assert exitrd_paths(config, ("systemd", "dm", "luks", "lvm")) == plain


def test_the_holders_hook_gets_its_shell_where_the_sysroot_has_one(tmp_path: Path) -> None:
    root = systemd_tree(tmp_path / "root", standalone=True)
    compile_c(MAIN, root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to("dash")
    paths = exitrd_paths(config_of(root))
    # The hook's #! interpreter: without it the hook cannot run at shutdown.
    assert {"/usr/bin/sh", "/usr/bin/dash"} <= paths, sorted(paths)
