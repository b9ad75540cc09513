"""A separate /usr, and the first boot of an image that grows into its disk, on
harness/usrdisk.py's disks: a 1 GiB image (/usr first, a 510 MiB root last, the GPT's
backup header in its last sector) on a 4 GiB disk. The initrd mounts /usr before
switch-root (the root has no init without it) and checks the root and /usr with fsck,
its verdicts on the console.

The first boot's /usr is protected by dm-verity, as a signed image's is: a squashfs on
partition 1, its hash tree on partition 2, and `usrhash=` on the command line. The host
initrd's (systemd 252) veritysetup generator finds both partitions by the UUIDs the root
hash gives and opens /dev/mapper/usr, which `mount.usr=` names (what the fstab generator
takes for usrhash= alone) and which is mounted at /sysusr/usr; the real root shows the
kernel's verity table for it with the same root hash, and cryptsetup's "verified". On
the same boot systemd-repart grows the root partition by the /usr partition's repart.d
into the disk past the image's end (its libfdisk moves the GPT's end there), and the
real root's systemd-growfs grows the filesystem (its fstab says x-systemd.growfs).

The same boot proves that systemd 252's PID 1 imports credentials from SMBIOS type 11
(`-smbios type=11,value=io.systemd.credential:NAME=VALUE`) and from QEMU's fw_cfg
(`-fw_cfg name=opt/io.systemd.credentials/NAME`): its import-creds.c has both (the
host's libsystemd-core-252.so holds "/sys/firmware/dmi/entries/11-%u/raw" and
"/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"), and the credentials
feature brings the qemu_fw_cfg module PID 1 loads before reading fw_cfg. A hook unit in
the initrd reads both random values from the system credentials
(/run/credentials/@system) and prints their SHA-256, which the test computes too.

The second boot gives /usr by a line of the root's fstab alone (an ext4 /usr)."""

from __future__ import annotations

import hashlib
import re
import secrets
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
    partition_uuids,
)
from tests.vm.conftest import BOOT_LIMIT

GIB = 1024**3


@pytest.fixture(scope="module")
def usr_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("usr") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4,
                       "--add-feature", "usr", "--add-feature", "repart",
                       "--add-feature", "verity", "--filesystem", "squashfs",
                       "--add-feature", "credentials", "--add-file", "/usr/bin/sha256sum",
                       "--hook", f"pre-mount={CREDENTIALS_HOOK}")  # fmt: skip


# The credentials PID 1 imported, read where it put them; "none" for one it did not.
CREDENTIALS_LINE = "BOOKEND-CRED252"
CREDENTIALS_HOOK = (
    "smb=none; fw=none; dir=/run/credentials/@system; "
    '{ read -r smb < "$dir/bookend.smb"; } 2>/dev/null; '
    '{ read -r fw < "$dir/bookend.fw"; } 2>/dev/null; '
    'sum=$(printf %s:%s "$smb" "$fw" | sha256sum); '
    f'echo "{CREDENTIALS_LINE} smb=$smb fw=$fw sum=${{sum%% *}}"'
)


@dataclass(frozen=True)
class FirstBoot:
    checked: dict[str, str]  # what the root's check unit printed
    initrd: str  # the console up to the real root's greeting
    root: str  # and from there
    failed_units: list[str]


def boot_usr_disk(
    kernel: Kernel, initrd: Path, disk: UsrDisk, console_log: Path, qemu_args: tuple[str, ...] = ()
) -> FirstBoot:
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(disk.image),),
        append=f"{disk.cmdline} rw",
        timeout=BOOT_LIMIT,
        log_path=console_log,
        plain_devices=qemu_args,
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


def assert_usr_from_its_partition(
    boot: FirstBoot, usr: str = "/dev/vda1", root: str = "/dev/vda2"
) -> None:
    checked = boot.checked
    # fsck's verdicts for the root and an ext4 /usr (e2fsck names them by label), from
    # the initrd; a squashfs has no fsck.
    labels = ("root", "usr") if usr == "/dev/vda1" else ("root",)
    for label in labels:
        assert re.search(rf"systemd-fsck\[\d+\]: {label}: clean, \d+/\d+ files", boot.initrd)
    # The real root mounted no /usr of its own: it found it mounted.
    assert not re.search(r"Mount(ing|ed) .*usr\.mount|Mount(ing|ed) /usr\b", boot.root)
    assert checked["root-usr-mounts"] == "0", checked
    assert int(checked["initrd-usr-mounts"]) >= 1, checked
    assert checked["usr-source"] == usr, checked
    # mount.usrflags= or the fstab line's options.
    assert "noatime" in checked["usr-options"].split(","), checked
    assert checked["marker"] == MARKER_TEXT.replace(" ", "_"), checked
    assert checked["root"] == root, checked
    assert not boot.failed_units, boot.failed_units


def test_verity_usr_by_usrhash_credentials_and_first_boot_growth(
    kernel: Kernel, root_disk: RootDisk, usr_initrd: Path, console_log: Path
) -> None:
    disk = ensure_usr_disk(root_disk, verity=True)
    assert disk.root_hash is not None and "mount.usr=/dev/mapper/usr" in disk.cmdline
    # A genuine 1 GiB image on a 4 GiB disk: its GPT ends at 1 GiB (the backup header in
    # the image's last sector), the disk goes on for 3 GiB more.
    backup, last_usable = gpt_ends(disk.image)
    assert backup == IMAGE_MIB * 2048 - 1, backup
    assert last_usable < IMAGE_MIB * 2048, last_usable
    assert disk.image.stat().st_size == DISK_MIB * 1024**2
    smb, fw = secrets.token_hex(8), secrets.token_hex(8)
    credentials = (
        *("-smbios", f"type=11,value=io.systemd.credential:bookend.smb={smb}"),
        *("-fw_cfg", f"name=opt/io.systemd.credentials/bookend.fw,string={fw}"),
    )
    boot = boot_usr_disk(kernel, usr_initrd, disk, console_log, credentials)
    assert_usr_from_its_partition(boot, usr="/dev/mapper/usr", root="/dev/vda3")
    assert re.search(r"Mounted .*/sysusr/usr\b", boot.initrd)
    assert_verity_usr(boot, disk.root_hash)
    # Both credentials reached the initrd's system credentials, read by a unit there.
    digest = hashlib.sha256(f"{smb}:{fw}".encode()).hexdigest()
    assert f"{CREDENTIALS_LINE} smb={smb} fw={fw} sum={digest}" in boot.initrd
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


def assert_verity_usr(boot: FirstBoot, root_hash: str) -> None:
    """/usr came through dm-verity: the generator's service opened it in the initrd on
    the partitions the root hash names (the disk's first two), and the real root's
    kernel checks /usr against that hash."""
    data_uuid, hash_uuid = partition_uuids(root_hash)
    found = (f"Using data device /dev/disk/by-partuuid/{data_uuid} and hash device "
             f"/dev/disk/by-partuuid/{hash_uuid} for usr.")  # fmt: skip
    assert found in boot.initrd
    assert re.search(r"Finished .*Verity Protection Setup for usr", boot.initrd)
    checked = boot.checked
    assert checked["usr-target"] == "verity", checked
    assert checked["usr-hash"] == root_hash, checked
    data, hashes = checked["usr-devices"].split(",")
    assert data.endswith(":1") and hashes == data.removesuffix("1") + "2", checked
    assert checked["usr-verity"] == "verified", checked
    # mount.usrflags=ro,noatime: the device is read-only.
    assert "ro" in checked["usr-options"].split(","), checked


def test_usr_by_the_root_fstab(
    kernel: Kernel, root_disk: RootDisk, usr_initrd: Path, console_log: Path
) -> None:
    disk = ensure_usr_disk(root_disk, fstab_usr=True)
    assert "mount.usr" not in disk.cmdline
    boot = boot_usr_disk(kernel, usr_initrd, disk, console_log)
    assert_usr_from_its_partition(boot)
    # initrd-parse-etc read the line: no /sysusr step.
    assert "/sysusr/usr" not in boot.initrd
