"""Issue 16, proof 2: images built from a Debian 13 (systemd 257) and a Debian testing
(the archive's newest systemd) sysroot boot that release's kernel into its own root on
LVM on LUKS2, and end through their exitrd.

One boot per release. The passphrase is typed at the console prompt, the initrd mounts
the root (a copy of the same release's root disk, harness/stackdisks.py
ensure_suite_stacks), switches root, the root reports the token and a job records from
inside it what it runs on. The shutdown pivots into the exitrd, whose systemd-shutdown
unmounts the old root and detaches the device-mapper stack. That exitrd's /shutdown is
the standalone systemd-shutdown of the package systemd-standalone-shutdown of the tree's
version (no libsystemd-shared in the exitrd at all; on 262 libmount, which it dlopens,
with what libmount links). The root ends with `systemctl exit N` (systemd >= 254 passes
--exit-code=N on to /shutdown): the exitrd's hook (harness/exitstatus.py) writes N+1 to
QEMU's isa-debug-exit port, so QEMU's status shows that the exitrd's systemd-shutdown ran
its hooks. systemd 262 runs the hooks with an empty verb; the hook takes it from PID 1's
command line instead. (A plain root is this boot without the storage stack; a Debian 13
tree's image also boots a plain root through its exitrd in test_boot_test_shared_root.py.)
Run with `-rP` to see the measured figures.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bookend.archive.reader import compression_of
from bookend.features.storage_daemons import systemd_version
from bookend.sysroot import Sysroot
from harness.exitrdjob import install_exitrd_job, shutdown_through, split_at_pivot
from harness.exitstatus import (
    DEBUG_EXIT,
    EXIT_INSTEAD,
    console_line,
    exit_hook_extension,
    new_status,
    qemu_status,
)
from harness.guestjob import read_job_output
from harness.images import QEMU_VIRTIO_EXT4, build_image, content_by_bsdtar
from harness.newersystemd import (
    NEWER_SUITES,
    NewerSystem,
    ensure_newer_system,
    standalone_shutdown,
)
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.stackdisks import StackDisks, ensure_suite_stacks
from tests.vm.test_exitrd_trust import LOADED

BOOT_LIMIT = 900

# What the root records about itself, in the LVM-on-LUKS2 boot.
WHERE_AM_I = """
systemctl --version | head -n 1 > /job/out/systemctl
findmnt -no SOURCE / > /job/out/root-source
dmsetup ls --target crypt > /job/out/crypt
. /etc/os-release && echo "$PRETTY_NAME" > /job/out/release
"""


@pytest.fixture(scope="module", params=NEWER_SUITES)
def system(request: pytest.FixtureRequest) -> NewerSystem:
    return ensure_newer_system(request.param)


def tree_systemd(system: NewerSystem) -> int:
    version = systemd_version(Sysroot(system.tree))
    assert version is not None, f"{system.tree}: no systemd version"
    return version


def build_images(system: NewerSystem, directory: Path, *args: str) -> Path:
    """An initrd (and its exitrd beside it) from the release's tree, for its kernel."""
    directory.mkdir()
    return build_image(directory / "initrd.img", system.kernel.version, "--sysroot",
                       str(system.tree), *QEMU_VIRTIO_EXT4, *args)  # fmt: skip


def options(system: NewerSystem, initrd: Path, disks: tuple[Disk, ...], append: str,
            log: Path, devices: tuple[str, ...] = ()) -> BootOptions:  # fmt: skip
    return BootOptions(kernel=system.kernel.path, initrd=initrd, disks=disks, append=append,
                       timeout=BOOT_LIMIT, log_path=log, plain_devices=devices)  # fmt: skip


def test_lvm_on_luks2_root_unlocks_boots_and_exits_through_the_standalone_exitrd(
    system: NewerSystem, kernel: Kernel, root_disk: RootDisk, tmp_path: Path
) -> None:
    roots = {suite: ensure_newer_system(suite).root for suite in NEWER_SUITES}
    stack: StackDisks = ensure_suite_stacks(kernel, root_disk, roots)[system.suite]
    assert stack.passphrase and stack.luks_uuid
    # The exitrd runs the package systemd-standalone-shutdown; the root ends with
    # `systemctl exit N`, which the exitrd's hook turns into QEMU's status.
    standalone = standalone_shutdown(system)
    extension = exit_hook_extension(tmp_path / "extensions")
    status = new_status()
    initrd = build_images(system, tmp_path / "images", "--add-feature", "lvm",
                          "--add-feature", "luks", "--exitrd-shutdown", str(standalone),
                          "--exitrd-sysext", str(extension))  # fmt: skip
    job = install_exitrd_job(tmp_path / "job.img", initrd.parent,
                             then=WHERE_AM_I + EXIT_INSTEAD.format(status=status))  # fmt: skip
    append = f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} rw"
    started = time.monotonic()
    text = shutdown_through(options(system, initrd, (Disk(stack.disks[0]), job), append,
                                    tmp_path / "console.log", DEBUG_EXIT),
                            stack.passphrase, exit_status=qemu_status(status))  # fmt: skip
    seconds = time.monotonic() - started
    running, pivoted = split_at_pivot(text)
    loaded = LOADED.search(running)
    assert loaded, running[-3000:]
    # The initrd's systemd is the tree's (it names its version as it starts).
    assert re.search(
        rf"systemd {tree_systemd(system)}([.~-]\S*)? running in system mode", running
    ), running[:4000]
    assert "systemd-initrd=yes" in running

    def recorded(name: str) -> str:
        return read_job_output(job.path, name, tmp_path / name).read_text().strip()

    # The root that ran is the release's, on the LV inside the LUKS2 volume.
    assert recorded("systemctl").startswith(f"systemd {tree_systemd(system)} ")
    assert recorded("root-source") == f"/dev/mapper/{stack.vg}-{stack.lv}"
    assert recorded("crypt").split()[0] == stack.luks_name
    release = recorded("release")
    assert release == os_release(system.tree)["PRETTY_NAME"]

    exitrd = initrd.parent / "exitrd.img"
    tree = tmp_path / "exitrd-tree"
    tree.mkdir()
    unpacked = content_by_bsdtar(exitrd, tree)
    # The exitrd's /shutdown is the package's program, and nothing of libsystemd-shared
    # came with it: the exitrd that ran could only have run the standalone one.
    program = tree / "usr/lib/systemd/systemd-shutdown"
    assert program.read_bytes() == standalone.read_bytes()
    assert not list(tree.rglob("libsystemd-shared*")), sorted(tree.rglob("*"))
    # The exitrd's systemd-shutdown itself unmounted the old root (with libmount, which
    # systemd >= 256 dlopens: the standalone 262 links only libc and libm) and detached
    # the device-mapper stack, then ran its hooks.
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted), pivoted[-2000:]
    assert re.search(r"shutdown\[1\]: All filesystems unmounted", pivoted), pivoted[-2000:]
    assert "shutdown[1]: All DM devices detached." in pivoted, pivoted[-3000:]
    assert console_line(status) in pivoted, pivoted[-2000:]
    print(f"{system.suite} ({release}, {recorded('systemctl')}, kernel "
          f"{system.kernel.version}): initrd {initrd.stat().st_size / 1e6:.1f} MB, exitrd "
          f"(standalone systemd-shutdown) "
          f"{exitrd.stat().st_size / 1e6:.2f} MB {compression_of(exitrd.read_bytes()[:8])}, "
          f"{unpacked / 1e6:.2f} MB unpacked, "
          f"loaded at shutdown in {int(loaded.group(3)) / 1000:.2f} s "
          f"({loaded.group(2)} entries); LVM on LUKS2 boot and exitrd exit (status "
          f"{status} -> {status + 1}) in {seconds:.0f} s")  # fmt: skip


def os_release(tree: Path) -> dict[str, str]:
    fields = {}
    for line in (tree / "usr/lib/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    return fields


def test_trees_are_the_releases_named(system: NewerSystem) -> None:
    """What the boots above prove is about these releases: trixie's tree is Debian 13
    with systemd 257, testing's a later Debian with a systemd no older."""
    release = os_release(system.tree)
    if system.suite == "trixie":
        assert (release["VERSION_ID"], tree_systemd(system)) == ("13", 257)
    else:
        assert "VERSION_ID" not in release, release  # testing and unstable have none
        assert tree_systemd(system) >= 257
    print(
        f"{system.suite}: {release['PRETTY_NAME']}, systemd {tree_systemd(system)}, "
        f"kernel {system.kernel.version}"
    )
