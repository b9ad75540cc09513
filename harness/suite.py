"""A whole test run: its tiers, the slow disks it starts making early, where its time went.

tests/conftest.py calls these from pytest's hooks. With pytest-xdist the hooks that
matter here run in the controller: it learns what the workers collected, makes the
disks their tests need in a background thread while they run the quick tiers, and
sums up the phase times of every report the workers send back.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from harness.timings import Timing

TIERS = ("unit", "image", "vm")
# The guests a VM test may boot (harness/guests.py), named in its parameter ids.
DEBIAN12 = "debian12"
DEBIAN13 = "debian13"


def tier_of(nodeid: str) -> str:
    """The tier a test belongs to, from its directory (tests/unit, tests/image, tests/vm).

    Tests directly under tests/ (the linters) count as unit tests.
    """
    parts = PurePosixPath(nodeid.split("::", 1)[0]).parts
    if len(parts) >= 3 and parts[0] == "tests" and parts[1] in TIERS:
        return parts[1]
    return "unit"


@dataclass(frozen=True)
class DiskNeeds:
    """Which of the slow cached things the selected tests need."""

    root_disk: bool = False
    stacks: bool = False
    exit_stacks: bool = False  # stackdisks.EXIT_SCENARIOS (made after the stacks)
    resume_stacks: bool = False  # stackdisks.RESUME_SCENARIOS (made after those)
    trixie_tree: bool = False  # images built from Debian 13 (UKI, the Debian 13 guest)
    trixie_root: bool = False  # the Debian 13 guest's root disk
    dracut: bool = False
    nfs_server: bool = False
    arm64_root: bool = False  # the arm64 tree and root disk (harness/arm64root.py)
    # Debian 13 and testing trees with their root disks, and their LVM-on-LUKS2 stacks
    # (harness/newersystemd.py, harness/stackdisks.py ensure_suite_stacks).
    newer_systems: bool = False
    usr_disk: bool = False  # /usr and first-boot disk, cut from the root disk (harness/usrdisk.py)

    @property
    def any(self) -> bool:
        return (self.root_disk or self.stacks or self.resume_stacks or self.trixie_tree
                or self.trixie_root
                or self.dracut or self.nfs_server or self.arm64_root
                or self.newer_systems or self.usr_disk)  # fmt: skip


# Test modules whose fixtures need the storage stacks, the trixie tree, or dracut.
STACK_MODULES = (
    "test_storage.py",
    "test_stackdisks.py",
    "test_ssh.py",
    "test_keymap.py",
    "test_splash.py",
    "test_boot_test.py",  # bookend boot-test on the LVM-on-LUKS2 set
)
# Modules that boot the exitrd's own stacks (stackdisks.EXIT_SCENARIOS, a set of its
# own), made right after the first set.
EXIT_STACK_MODULES = ("test_exitrd_stacks.py",)
# ... and the hibernation stack (stackdisks.RESUME_SCENARIOS), made after those.
RESUME_STACK_MODULES = ("test_resume.py",)
# Images built from the trixie tree (in any tier).
TRIXIE_TREE_MODULES = (
    "test_uki.py",
    "test_signed_uki.py",
    "test_sysroot_additions.py",
    "test_credentials_extensions.py",
    "test_boot_test_shared_root.py",
)
DRACUT_MODULES = ("test_inspect_images.py",)
# ... and the NFS server guest's disk (harness/serverguest.py).
NFS_SERVER_MODULES = ("test_nfs.py",)
# ... and the Debian 13 and testing trees, root disks and stacks (issue 16's proof 2).
NEWER_SYSTEMD_MODULES = ("test_newer_systemd.py",)
# ... and the TPM2 disks and TPM state, made in their own maker guest (harness/tpmdisks.py)
# by the test that first needs them.
TPM_MODULES = ("test_tpm2.py",)
# ... and the arm64 tree and root disk (harness/arm64root.py): a debootstrap, no guest.
ARM64_MODULES = ("test_arm64.py",)
# ... and the /usr and first-boot disk (harness/usrdisk.py): cut from the root disk on the
# host in under a minute, no guest.
USR_DISK_MODULES = ("test_usr_firstboot.py",)
# The boots that wait for the slowest disks, run last.
SLOW_MODULES = (*STACK_MODULES, *EXIT_STACK_MODULES, *RESUME_STACK_MODULES,
                *TRIXIE_TREE_MODULES,
                *NFS_SERVER_MODULES, *TPM_MODULES, *NEWER_SYSTEMD_MODULES,
                *ARM64_MODULES)  # fmt: skip


def boots_debian13(nodeid: str) -> bool:
    """Whether a test boots the Debian 13 guest: its parameter id names it
    (harness/guests.py), e.g. tests/vm/test_iscsi.py::test_x[debian13]."""
    _, _, params = nodeid.partition("[")
    return DEBIAN13 in params.rstrip("]").split("-")


def run_order(nodeid: str) -> tuple[int, bool]:
    """Sort key: quick tiers first, and last the boots that wait for the slowest disks
    (the stacks, the trixie tree and root disk, the NFS server's disk), so those are
    made while the other boots run."""
    name = PurePosixPath(nodeid.split("::", 1)[0]).name
    slow = name in SLOW_MODULES or boots_debian13(nodeid)
    return TIERS.index(tier_of(nodeid)), slow


def disk_needs(nodeids: Iterable[str]) -> DiskNeeds:
    root = stacks = exit_stacks = tree = trixie_root = dracut = nfs_server = False
    arm64 = newer = usr_disk = resume = False
    for nodeid in nodeids:
        path = PurePosixPath(nodeid.split("::", 1)[0])
        if tier_of(nodeid) == "vm":
            debian13 = boots_debian13(nodeid)
            root = root or not (debian13 or path.name in ARM64_MODULES)
            stacks = stacks or path.name in STACK_MODULES + EXIT_STACK_MODULES
            exit_stacks = exit_stacks or path.name in EXIT_STACK_MODULES
            resume = resume or path.name in RESUME_STACK_MODULES
            tree = tree or path.name in TRIXIE_TREE_MODULES or debian13
            trixie_root = trixie_root or debian13
            nfs_server = nfs_server or path.name in NFS_SERVER_MODULES
            arm64 = arm64 or path.name in ARM64_MODULES
            newer = newer or path.name in NEWER_SYSTEMD_MODULES
            usr_disk = usr_disk or path.name in USR_DISK_MODULES
            # Their stacks are made by booting the bookworm root disk.
            root = root or path.name in NEWER_SYSTEMD_MODULES
        dracut = dracut or path.name in DRACUT_MODULES
        # The signed UKI image test builds from the tree too, without a boot.
        tree = tree or path.name in TRIXIE_TREE_MODULES
    return DiskNeeds(root_disk=root, stacks=stacks, exit_stacks=exit_stacks, trixie_tree=tree,
                     trixie_root=trixie_root, dracut=dracut, nfs_server=nfs_server,
                     arm64_root=arm64, newer_systems=newer, usr_disk=usr_disk,
                     resume_stacks=resume)  # fmt: skip


@dataclass
class EarlyBuilds:
    """Disks made in background threads while the first tests run.

    The tests still ask for each disk themselves; the cache's locks make them wait
    for these builds instead of building again. A failure here is only reported:
    the test that needs the disk tries again and fails with the real error.
    """

    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def start(self, name: str, steps: list[Callable[[], object]]) -> None:
        thread = threading.Thread(target=self._run, args=(name, steps), name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, name: str, steps: list[Callable[[], object]]) -> None:
        for step in steps:
            try:
                step()
            except Exception:
                lines = traceback.format_exc().strip().splitlines()
                self.errors.append(f"{name}: {lines[-1]}")
                return

    def wait(self) -> None:
        for thread in self.threads:
            thread.join()


def start_early_builds(needs: DiskNeeds) -> EarlyBuilds:
    """Start making what needs names: the root disk then the stacks in one thread (the
    stacks are made by booting the root disk); the trixie tree, dracut and the trixie
    root disk in another (debootstraps and unpacking: no guest); the NFS server's disk
    (a debootstrap of its own) in a third; the Debian 13 and testing trees and root disks
    in a fourth, whose LVM-on-LUKS2 stacks the first thread makes last, one guest at a
    time."""
    # Imported here: collecting the unit tier alone needs none of this.
    from harness.arm64root import ensure_arm64_root
    from harness.foreign import ensure_dracut
    from harness.newersystemd import (
        NEWER_SUITES,
        TRIXIE,
        ensure_newer_system,
        standalone_shutdown,
    )
    from harness.qemu import installed_kernels
    from harness.rootdisk import cache_dir_default, ensure_root_disk, trixie_recipe
    from harness.serverguest import ensure_server_disk
    from harness.stackdisks import (
        ensure_exit_stack_disks,
        ensure_resume_stack_disks,
        ensure_stack_disks,
        ensure_suite_stacks,
    )
    from harness.ukisysroot import ensure_trixie_sysroot
    from harness.usrdisk import ensure_usr_disk

    builds = EarlyBuilds()
    kernels = installed_kernels()
    guest_steps: list[Callable[[], object]] = []
    if needs.root_disk or needs.stacks or needs.resume_stacks:
        guest_steps.append(ensure_root_disk)
    if needs.stacks and kernels:
        guest_steps.append(lambda: ensure_stack_disks(kernels[-1], ensure_root_disk()))
    if needs.newer_systems and kernels:
        guest_steps.append(lambda: ensure_suite_stacks(kernels[-1], ensure_root_disk(), {
            suite: ensure_newer_system(suite).root for suite in NEWER_SUITES}))  # fmt: skip
    if needs.exit_stacks and kernels:
        guest_steps.append(lambda: ensure_exit_stack_disks(kernels[-1], ensure_root_disk()))
    if needs.resume_stacks and kernels:
        guest_steps.append(lambda: ensure_resume_stack_disks(kernels[-1], ensure_root_disk()))
    if guest_steps:
        builds.start("root disk and stacks", guest_steps)
    tree_steps: list[Callable[[], object]] = []
    if needs.trixie_tree:
        tree_steps.append(ensure_trixie_sysroot)
    if needs.dracut:
        tree_steps.append(lambda: ensure_dracut(cache_dir_default()))
    if needs.trixie_root:  # after dracut: the image tests want that first
        tree_steps.append(lambda: ensure_root_disk(recipe=trixie_recipe()))
    if tree_steps:
        builds.start("trixie tree, dracut, trixie root disk", tree_steps)
    if needs.nfs_server:
        builds.start("NFS server disk", [ensure_server_disk])
    if needs.arm64_root:
        builds.start("arm64 tree and root disk", [ensure_arm64_root])
    if needs.usr_disk:
        # Waits for the root disk the first thread makes, then cuts it up on the host.
        usr_steps: list[Callable[[], object]] = [
            lambda: ensure_usr_disk(ensure_root_disk(), verity=True),
            lambda: ensure_usr_disk(ensure_root_disk(), fstab_usr=True),
        ]
        builds.start("usr disks", usr_steps)
    if needs.newer_systems:
        newer_steps: list[Callable[[], object]] = [
            functools.partial(ensure_newer_system, suite) for suite in NEWER_SUITES
        ]
        # The standalone systemd-shutdown the trixie exitrd is built with.
        newer_steps.append(lambda: standalone_shutdown(ensure_newer_system(TRIXIE)))
        builds.start("Debian 13 and testing trees and root disks", newer_steps)
    return builds


@dataclass(frozen=True)
class Phase:
    """One phase (setup, call or teardown) of one test, as its report gives it."""

    nodeid: str
    start: float  # time.time()
    stop: float
    duration: float


def time_summary(phases: list[Phase], timings: list[Timing], wall: float) -> list[str]:
    """Lines saying where a run's time went: disks, each tier, VM tests in a row."""
    lines = [f"whole run: {wall:.0f} s wall time"]
    lines += disk_lines(timings)
    for tier in TIERS:
        mine = [p for p in phases if tier_of(p.nodeid) == tier]
        if not mine:
            continue
        tests = len({p.nodeid for p in mine})
        span = max(p.stop for p in mine) - min(p.start for p in mine)
        total = sum(p.duration for p in mine)
        lines.append(f"{tier}: {tests} tests, {span:.0f} s wall (first start to last end), "
                     f"{total:.0f} s summed over tests")  # fmt: skip
        if tier == "vm" and span > 0:
            lines.append(one_guest_at_a_time(total, span, timings))
            lines += slowest_modules(mine)
    return lines


def slowest_modules(phases: list[Phase], count: int = 12) -> list[str]:
    """The test modules whose phases took longest in all: where a cut in boots pays."""
    seconds: dict[str, float] = {}
    for phase in phases:
        module = phase.nodeid.split("::", 1)[0]
        seconds[module] = seconds.get(module, 0.0) + phase.duration
    ranked = sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:count]
    return [f"  {total:5.0f} s  {module}" for module, total in ranked]


def one_guest_at_a_time(total: float, span: float, timings: list[Timing]) -> str:
    """The VM tests one after another: their durations, less the time they spent waiting
    for a disk another process was making (one at a time, a test would make it itself,
    and that time is counted where it was made)."""
    waited = sum(t.seconds for t in timings if t.how == "waited" and tier_of(t.nodeid) == "vm")
    alone = total - waited
    return (f"vm: one guest at a time would have taken {alone:.0f} s ({total:.0f} s less "
            f"{waited:.0f} s spent waiting for disks); side by side they took {span:.0f} s "
            f"({alone / span:.1f}x)")  # fmt: skip


def disk_lines(timings: list[Timing]) -> list[str]:
    lines = []
    for what in sorted({t.what for t in timings}):
        mine = [t for t in timings if t.what == what]
        made = [t.seconds for t in mine if t.how == "made"]
        waited = [t.seconds for t in mine if t.how == "waited"]
        parts = [f"made in {sum(made):.0f} s" if made else "cached"]
        if waited:
            parts.append(f"{len(waited)} waits for it, {sum(waited):.0f} s in all")
        lines.append(f"{what}: {', '.join(parts)}")
    return lines
