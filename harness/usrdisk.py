"""A cached first-boot image: /usr on a partition of its own, a small root after it.

The disk holds the cached root disk's tree (rootdisk.py) split in two GPT partitions, the
way an image builder writes a disk image: partition 1 is /usr (the root disk's /usr and
the repart.d definitions of the image), partition 2 the root with an empty /usr, whose
fstab grows it (x-systemd.growfs). The image is made as an image builder makes one: a 1 GiB
file whose GPT (its backup header and last usable LBA) ends at 1 GiB, then made a 4 GiB
disk (truncated up, as `dd` of the image onto a bigger disk leaves it). On its first
boot systemd-repart in the initrd must grow the root partition into the 3 GiB past the
image's end and the real root's systemd-growfs its filesystem.
Everything is made on the host: the root disk's tree by debugfs (unmounted), the
filesystems by mkfs.ext4 -d, the partition table by systemd-repart:

    disk = ensure_usr_disk(root_disk)
    options = replace(root_boot, disks=(Disk(disk.image),), append=disk.cmdline + " ...")

A unit of the root prints what the test checks on the console (CHECK_LINE), before the
root disk's report of the token.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from bookend.proc import run
from harness.rootdisk import RootDisk, building, cache_dir_default, made_once

MIB = 1024 * 1024
IMAGE_MIB = 1024  # what the partition table is written for
DISK_MIB = 4096  # the disk it is copied onto
USR_MIB = 512
# The root partition takes the rest of the image, less GPT's backup table at its end.
ROOT_MIB = IMAGE_MIB - 1 - USR_MIB - 1

USR_UUID = "b00ce4d0-7e57-4b00-8007-000000000001"
ROOT_UUID = "b00ce4d0-7e57-4b00-8007-000000000002"
# The discoverable partitions' types (the x86-64 ones).
USR_TYPE = "8484680C-9521-48C6-9C11-B0720656F69E"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
# In the /usr partition only: the guest reads it back through /usr.
MARKER = "/usr/share/bookend/usr-partition"
MARKER_TEXT = "bookend /usr partition"
CHECK_LINE = "BOOKEND-USRGROW"

# The image's definitions: the root partition takes whatever the disk has left.
REPART_ROOT = """\
[Partition]
Type=root-x86-64
"""

CHECK_SCRIPT = f"""\
#!/bin/sh
# What the first boot did, for the host: where /usr came from, how big the root's
# partition and filesystem are now, and who mounted /usr.
set -u
token=
for word in $(cat /proc/cmdline); do
    case "$word" in bookend.token=*) token=${{word#bookend.token=}} ;; esac
done
root=$(findmnt -no SOURCE /)
part=$(basename "$root")
part_bytes=$(( $(cat /sys/class/block/$part/size) * 512 ))
fs_bytes=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')
# The partition table as the first boot left it: its last usable sector, and the disk's.
disk=/dev/$(lsblk -no PKNAME "$root")
last_lba=$(sfdisk --dump "$disk" 2>/dev/null | sed -n 's/^last-lba: *//p')
disk_sectors=$(cat /sys/class/block/${{disk#/dev/}}/size)
marker=$(tr ' ' _ < {MARKER} 2>/dev/null || echo none)
# The real root's systemd would log the mount of /usr as usr.mount; the initrd's are
# sysusr-usr.mount and sysroot-usr.mount, in the same journal (/run/log/journal).
own=$(journalctl -b -q -o cat -u usr.mount | grep -c Mount)
initrd=$(journalctl -b -q -o cat -u sysusr-usr.mount -u sysroot-usr.mount | grep -c Mounted)
line="{CHECK_LINE} token=$token usr-source=$(findmnt -no SOURCE /usr)"
line="$line usr-options=$(findmnt -no OPTIONS /usr) marker=$marker"
line="$line root=$root part-bytes=$part_bytes fs-bytes=$fs_bytes"
line="$line last-lba=${{last_lba:-none}} disk-sectors=$disk_sectors"
line="$line root-usr-mounts=$own initrd-usr-mounts=$initrd end"
echo "$line" > /dev/ttyS0
"""

CHECK_UNIT = """\
[Unit]
Description=Report the first boot's /usr and root sizes to the host
After=multi-user.target systemd-growfs-root.service
Before=bookend-test-report.service
ConditionKernelCommandLine=bookend.token

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/bookend-usrgrow-check

[Install]
WantedBy=multi-user.target
"""

FSTAB = f"UUID={ROOT_UUID} / ext4 errors=remount-ro,x-systemd.growfs 0 1\n"
# The other way to a separate /usr: the root's fstab names it (fstab_usr=True).
FSTAB_USR = f"UUID={USR_UUID} /usr ext4 noatime 0 2\n"


@dataclass(frozen=True)
class UsrDisk:
    image: Path
    # root=, and /usr by mount.usr=; the test adds rw and its token.
    cmdline: str


def recipe_key(root: RootDisk, fstab: str) -> str:
    """The disk's name: the root disk it is cut from and everything written here."""
    parts = (
        root.image.name,
        CHECK_SCRIPT,
        CHECK_UNIT,
        fstab,
        REPART_ROOT,
        str(ROOT_MIB),
        str(IMAGE_MIB),
        str(DISK_MIB),
        "3",
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def ensure_usr_disk(
    root: RootDisk, cache_dir: Path | None = None, *, fstab_usr: bool = False
) -> UsrDisk:
    """The disk whose /usr the kernel command line gives (mount.usr=), or with
    fstab_usr, the one whose root's fstab has a /usr line (and the command line none)."""
    cache_dir = cache_dir or cache_dir_default()
    fstab = FSTAB + (FSTAB_USR if fstab_usr else "")
    key = recipe_key(root, fstab)
    result = cache_dir / f"usrgrow-{key}"
    what = "usr (fstab) disk" if fstab_usr else "usr and first-boot disk"
    made_once(what, result, cache_dir / f"usrgrow-{key}.lock", key,
              lambda: make_usr_disk(root, result, key, fstab))  # fmt: skip
    cmdline = f"root=UUID={ROOT_UUID}"
    if not fstab_usr:
        cmdline += f" mount.usr=UUID={USR_UUID} mount.usrfstype=ext4 mount.usrflags=noatime"
    return UsrDisk(image=result / "disk.img", cmdline=cmdline)


def make_usr_disk(root: RootDisk, result: Path, key: str, fstab: str) -> None:
    with building(result, key) as work:
        tree = work / "tree"
        tree.mkdir()
        # debugfs copies the tree out of the image with owners and modes, unmounted.
        run(["debugfs", "-R", f"rdump / {tree}", root.image])
        (tree / "lost+found").rmdir()
        usr = work / "usr"
        (tree / "usr").rename(usr)
        (tree / "usr").mkdir(mode=0o755)
        _write(usr, MARKER.removeprefix("/usr/"), MARKER_TEXT + "\n", 0o644)
        _write(usr, "lib/repart.d/50-root.conf", REPART_ROOT, 0o644)
        _write(usr, "local/sbin/bookend-usrgrow-check", CHECK_SCRIPT, 0o755)
        _write(tree, "etc/systemd/system/bookend-usrgrow-check.service", CHECK_UNIT, 0o644)
        wants = tree / "etc/systemd/system/multi-user.target.wants/bookend-usrgrow-check.service"
        wants.symlink_to("/etc/systemd/system/bookend-usrgrow-check.service")
        _write(tree, "etc/fstab", fstab, 0o644)
        _mkfs(usr, work / "usr.img", USR_MIB, USR_UUID, "usr")
        _mkfs(tree, work / "root.img", ROOT_MIB, ROOT_UUID, "root")
        shutil.rmtree(tree)
        shutil.rmtree(usr)
        disk = work / "disk.img"
        _partition(disk, work / "usr.img", work / "root.img")
        (work / "usr.img").unlink()
        (work / "root.img").unlink()


def gpt_ends(image: Path) -> tuple[int, int]:
    """The primary GPT header's backup-header LBA and last usable LBA (512-byte sectors)."""
    with image.open("rb") as disk:
        disk.seek(512)
        header = disk.read(92)
    if header[:8] != b"EFI PART":
        raise ValueError(f"{image}: no GPT header at LBA 1")
    backup, _first, last = struct.unpack_from("<QQQ", header, 32)
    return backup, last


def _write(tree: Path, relative: str, content: str, mode: int) -> None:
    path = tree / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def _mkfs(tree: Path, image: Path, mib: int, uuid: str, label: str) -> None:
    with image.open("wb") as sparse:
        sparse.truncate(mib * MIB)
    run(["mkfs.ext4", "-q", "-d", tree, "-U", uuid, "-L", label,
         "-E", "lazy_itable_init=0,lazy_journal_init=0", image])  # fmt: skip


def _partition(disk: Path, usr: Path, root: Path) -> None:
    """An IMAGE_MIB image whose GPT holds usr then root, written by the host's
    systemd-repart (regular files need no loop device for CopyBlocks=), then grown to a
    DISK_MIB disk with its partition table left as written: the backup header and the
    last usable LBA stay at IMAGE_MIB."""
    definitions = disk.parent / "image-repart.d"
    for name, kind, image, mib in (("10-usr", "usr-x86-64", usr, USR_MIB),
                                   ("20-root", "root-x86-64", root, ROOT_MIB)):  # fmt: skip
        _write(definitions, f"{name}.conf", (
            f"[Partition]\nType={kind}\nLabel={name[3:]}\nCopyBlocks={image}\n"
            f"SizeMinBytes={mib}M\nSizeMaxBytes={mib}M\n"
        ), 0o644)  # fmt: skip
    run(["systemd-repart", "--empty=create", f"--size={IMAGE_MIB}M", "--dry-run=no",
         "--no-pager", f"--definitions={definitions}", "--seed=b00ce4d07e574b008007000000000000",
         disk])  # fmt: skip
    shutil.rmtree(definitions)
    with disk.open("r+b") as written:
        written.truncate(DISK_MIB * MIB)
