"""A separate /usr, and the first boot of an image that grows into its disk, on
harness/usrdisk.py's disks: a 1 GiB image (/usr on partition 1, a 510 MiB root on
partition 2, the GPT's backup header in its last sector) on a 4 GiB disk. The initrd
mounts /usr before switch-root (the root has no init without it) and checks the root and
/usr with fsck, its verdicts on the console. The first boot gives /usr by mount.usr=:
systemd-repart grows the root partition by the /usr partition's repart.d into the disk
past the image's end (its libfdisk moves the GPT's end there), and the real root's
systemd-growfs grows the filesystem (its fstab says x-systemd.growfs). The second gives
/usr by a line of the root's fstab alone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.token import boot_to_token
from harness.usrdisk import (
    CHECK_LINE,
    DISK_MIB,
    IMAGE_MIB,
    MARKER_TEXT,
    ROOT_MIB,
    UsrDisk,
    ensure_usr_disk,
    gpt_ends,
)
from tests.vm.conftest import BOOT_LIMIT

GIB = 1024**3


@pytest.fixture(scope="module")
def usr_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("usr") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4,
                       "--add-feature", "usr", "--add-feature", "repart")  # fmt: skip


@dataclass(frozen=True)
class FirstBoot:
    checked: dict[str, str]  # what the root's check unit printed
    initrd: str  # the console up to the real root's greeting
    root: str  # and from there
    failed_units: list[str]


def boot_usr_disk(kernel: Kernel, initrd: Path, disk: UsrDisk, console_log: Path) -> FirstBoot:
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(disk.image),),
        append=f"{disk.cmdline} rw",
        timeout=BOOT_LIMIT,
        log_path=console_log,
    )
    checked: dict[str, str] = {}

    def on_the_way(vm: Boot) -> None:
        # In the initrd, before the root's systemd greets.
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(r"Mounted .*/sysroot/usr\b", timeout=240)
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=240)
        line = vm.expect(rf"{CHECK_LINE} (.*) end", timeout=BOOT_LIMIT)
        for field in line.group(1).split():
            key, _, value = field.partition("=")
            checked[key] = value

    booted = boot_to_token(options, on_the_way=on_the_way)
    # The real root's greeting parts the console: the initrd's says "bookend initrd".
    welcomes = re.finditer(r"Welcome to [^\n]*!", booted.text)
    switch = next(m.start() for m in welcomes if "bookend initrd" not in m.group(0))
    return FirstBoot(checked, booted.text[:switch], booted.text[switch:], booted.failed_units)


def assert_usr_from_its_partition(boot: FirstBoot) -> None:
    checked = boot.checked
    # fsck's verdicts for the root and /usr (e2fsck names them by label), from the initrd.
    for label in ("root", "usr"):
        assert re.search(rf"systemd-fsck\[\d+\]: {label}: clean, \d+/\d+ files", boot.initrd)
    # The real root mounted no /usr of its own: it found it mounted.
    assert not re.search(r"Mount(ing|ed) .*usr\.mount|Mount(ing|ed) /usr\b", boot.root)
    assert checked["root-usr-mounts"] == "0", checked
    assert int(checked["initrd-usr-mounts"]) >= 1, checked
    assert checked["usr-source"] == "/dev/vda1", checked
    # mount.usrflags= or the fstab line's options.
    assert "noatime" in checked["usr-options"].split(","), checked
    assert checked["marker"] == MARKER_TEXT.replace(" ", "_"), checked
    assert checked["root"] == "/dev/vda2", checked
    assert not boot.failed_units, boot.failed_units


def test_usr_by_mount_usr_and_first_boot_growth(
    kernel: Kernel, root_disk: RootDisk, usr_initrd: Path, console_log: Path
) -> None:
    disk = ensure_usr_disk(root_disk)
    # A genuine 1 GiB image on a 4 GiB disk: its GPT ends at 1 GiB (the backup header in
    # the image's last sector), the disk goes on for 3 GiB more.
    backup, last_usable = gpt_ends(disk.image)
    assert backup == IMAGE_MIB * 2048 - 1, backup
    assert last_usable < IMAGE_MIB * 2048, last_usable
    assert disk.image.stat().st_size == DISK_MIB * 1024**2
    boot = boot_usr_disk(kernel, usr_initrd, disk, console_log)
    assert_usr_from_its_partition(boot)
    assert re.search(r"Mounted .*/sysusr/usr\b", boot.initrd)
    assert re.search(r"Finished .*systemd-repart\.service", boot.initrd)
    # The partition table now spans the disk: its last usable sector is the disk's last
    # but the backup table's (33 sectors).
    sectors = int(boot.checked["disk-sectors"])
    assert sectors == DISK_MIB * 2048, boot.checked
    assert int(boot.checked["last-lba"]) == sectors - 34, boot.checked
    # 510 MiB written; the disk has 3.5 GiB for the root once grown.
    assert ROOT_MIB * 1024**2 < 3 * GIB
    assert int(boot.checked["part-bytes"]) > 3 * GIB, boot.checked
    assert int(boot.checked["fs-bytes"]) > 3 * GIB, boot.checked


def test_usr_by_the_root_fstab(
    kernel: Kernel, root_disk: RootDisk, usr_initrd: Path, console_log: Path
) -> None:
    disk = ensure_usr_disk(root_disk, fstab_usr=True)
    assert "mount.usr" not in disk.cmdline
    boot = boot_usr_disk(kernel, usr_initrd, disk, console_log)
    assert_usr_from_its_partition(boot)
    # initrd-parse-etc read the line: no /sysusr step.
    assert "/sysusr/usr" not in boot.initrd
