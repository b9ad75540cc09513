"""Fixtures the VM tests share: the kernel, the cached disks, the common images, and the
options for a boot of the root disk. Session-scoped ones are made once per test process
(each pytest-xdist worker); the disks themselves once per machine, in the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.exitstatus import exit_hook_extension
from harness.guests import DEBIAN12, DEBIAN13, Guest, debian12_guest, debian13_guest
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import BootOptions, Kernel, installed_kernels
from harness.rootdisk import RootDisk, ensure_root_disk
from harness.stackdisks import StackDisks, ensure_stack_disks

# Under TCG a boot takes 30-60 s alone, more with other guests beside it.
BOOT_LIMIT = 600


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    """The newest kernel in /boot; its modules are under /lib/modules/<version>."""
    kernels = installed_kernels()
    if not kernels:
        pytest.skip("no kernel in /boot (install one, e.g. linux-image-amd64)")
    return kernels[-1]


@pytest.fixture(scope="session")
def root_disk() -> RootDisk:
    return ensure_root_disk()


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest) -> Guest:
    """The Debian release a test boots, by name: parametrize a test with
    `@pytest.mark.parametrize("guest", GUESTS, indirect=True)` to run it on each. The
    Debian 13 one is made only for the tests that ask for it."""
    name = getattr(request, "param", DEBIAN12)
    if name == DEBIAN13:
        return debian13_guest()
    assert name == DEBIAN12, f"no guest named {name!r}"
    return debian12_guest(request.getfixturevalue("kernel"), request.getfixturevalue("root_disk"))


# Every guest, for a test parametrized over them (see `guest`).
GUESTS = (DEBIAN12, DEBIAN13)


@pytest.fixture(scope="session")
def stacks(kernel: Kernel, root_disk: RootDisk) -> dict[str, StackDisks]:
    """The LUKS, LVM-on-LUKS, MD RAID1 and btrfs RAID1 disk sets (harness/stackdisks.py)."""
    return ensure_stack_disks(kernel, root_disk)


@pytest.fixture(scope="session")
def exit_hook(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The build arguments that put the exit-status hook (harness/exitstatus.py) into an
    exitrd: it does nothing unless the root leaves a status, so every test can share it."""
    return ("--exitrd-sysext", str(exit_hook_extension(tmp_path_factory.mktemp("exit-hook"))))


@pytest.fixture(scope="session")
def host_initrd(
    kernel: Kernel, exit_hook: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An initrd for a virtio disk with an ext4 root, and its exitrd (with the exit-status
    hook) beside it."""
    output = tmp_path_factory.mktemp("host") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4, *exit_hook)


@pytest.fixture(scope="session")
def nbd_images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of an initrd (and its exitrd beside it) with the nbd feature and a
    virtio NIC driver, for the NBD root tests."""
    directory = tmp_path_factory.mktemp("nbd-images")
    build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                "--add-feature", "nbd", "--add-module", "virtio_net")  # fmt: skip
    return directory


@pytest.fixture(scope="session")
def generic_initrd(
    kernel: Kernel, exit_hook: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A generic initrd (every storage driver and feature), and its exitrd (with the
    exit-status hook) beside it."""
    output = tmp_path_factory.mktemp("generic") / "initrd.img"
    return build_image(output, kernel.version, "--generic", *exit_hook)


@pytest.fixture
def console_log(tmp_path: Path) -> Path:
    """Where a test's guest console goes; pytest keeps recent tmp_paths for a post-mortem."""
    return tmp_path / "console.log"


@pytest.fixture
def root_boot(
    kernel: Kernel, host_initrd: Path, root_disk: RootDisk, console_log: Path
) -> BootOptions:
    """A boot of the root disk through host_initrd; change what a test needs with replace()."""
    return BootOptions(
        kernel=kernel.path,
        initrd=host_initrd,
        disks=(root_disk.image,),
        append=f"root=UUID={root_disk.uuid} rw",
        timeout=BOOT_LIMIT,
        log_path=console_log,
    )
