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

With verity=True /usr is protected by dm-verity, as a signed image ships it: partition 1
holds /usr as a read-only squashfs, partition 2 its hash tree (`veritysetup format` on
the files, no device-mapper on the host), the root comes third. The partitions' GPT UUIDs
are the root hash's first and last 128 bits, where systemd-veritysetup-generator looks
for them, so the command line names no partition: `usrhash=` and `mount.usr=/dev/mapper/usr`
(what the fstab generator would take for usrhash= alone; given, so mount.usr= stays
proven), with `ro` in mount.usrflags= (the device is read-only). squashfs rather than
ext4: systemd-fsck (252) checks every /usr device, and e2fsck cannot open a read-only
device; fsck.squashfs does not exist, so there is nothing to check. Uncompressed, so
TCG spends no time inflating /usr.
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
# The verity disk: its /usr hash tree's partition (4 MiB of SHA-256 for 500 MiB of /usr);
# the data partition has the rest of USR_MIB. A fixed salt and superblock UUID make the
# root hash the same for the same tree.
VERITY_HASH_MIB = 8
VERITY_SALT = "b00ce4d07e574b008007" * 3 + "b00c"
VERITY_SUPERBLOCK_UUID = "b00ce4d0-7e57-4b00-8007-0000000000a1"
SQUASHFS_OPTIONS = ("-noI", "-noD", "-noF", "-noX", "-noappend", "-quiet")
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
# The verity disk's /usr: the kernel's table of the usr device (its target type and the
# root hash it checks against) and cryptsetup's word on it; empty on the other disks.
set -- $(dmsetup table usr 2>/dev/null)
target=${{3:-none}} devices=${{5:-none}},${{6:-none}} hash=${{12:-none}}
verity=$(veritysetup status usr 2>/dev/null | sed -n 's/^ *status: *//p' | tr ' ' _)
line="{CHECK_LINE} token=$token usr-source=$(findmnt -no SOURCE /usr)"
line="$line usr-options=$(findmnt -no OPTIONS /usr) marker=$marker"
line="$line root=$root part-bytes=$part_bytes fs-bytes=$fs_bytes"
line="$line last-lba=${{last_lba:-none}} disk-sectors=$disk_sectors"
line="$line root-usr-mounts=$own initrd-usr-mounts=$initrd"
line="$line usr-target=$target usr-devices=$devices usr-hash=$hash usr-verity=${{verity:-none}} end"
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
    # root=, and /usr by mount.usr= or usrhash=; the test adds rw and its token.
    cmdline: str
    root_hash: str | None = None  # the verity disk's /usr root hash


def partition_uuids(root_hash: str) -> tuple[str, str]:
    """The GPT UUIDs of the data and hash partitions systemd-veritysetup-generator
    looks for: the root hash's first and last 16 bytes, in the order written."""

    def uuid(hex32: str) -> str:
        return "-".join((hex32[:8], hex32[8:12], hex32[12:16], hex32[16:20], hex32[20:]))

    return uuid(root_hash[:32]), uuid(root_hash[-32:])


def recipe_key(root: RootDisk, fstab: str, verity: bool = False) -> str:
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
        *(("verity", str(VERITY_HASH_MIB), VERITY_SALT, *SQUASHFS_OPTIONS) if verity else ()),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def ensure_usr_disk(
    root: RootDisk, cache_dir: Path | None = None, *, fstab_usr: bool = False, verity: bool = False
) -> UsrDisk:
    """The disk whose /usr the kernel command line gives (mount.usr=), or with
    fstab_usr, the one whose root's fstab has a /usr line (and the command line none),
    or with verity, the one whose /usr is on dm-verity (usrhash=)."""
    cache_dir = cache_dir or cache_dir_default()
    fstab = FSTAB + (FSTAB_USR if fstab_usr else "")
    key = recipe_key(root, fstab, verity)
    result = cache_dir / f"usrgrow-{key}"
    what = "usr (fstab) disk" if fstab_usr else "usr and first-boot disk"
    what = "usr (verity) and first-boot disk" if verity else what
    made_once(what, result, cache_dir / f"usrgrow-{key}.lock", key,
              lambda: make_usr_disk(root, result, key, fstab, verity))  # fmt: skip
    cmdline = f"root=UUID={ROOT_UUID}"
    if verity:
        root_hash = (result / "usr.roothash").read_text().strip()
        cmdline += f" usrhash={root_hash} mount.usr=/dev/mapper/usr mount.usrfstype=squashfs"
        cmdline += " mount.usrflags=ro,noatime"
        return UsrDisk(image=result / "disk.img", cmdline=cmdline, root_hash=root_hash)
    if not fstab_usr:
        cmdline += f" mount.usr=UUID={USR_UUID} mount.usrfstype=ext4 mount.usrflags=noatime"
    return UsrDisk(image=result / "disk.img", cmdline=cmdline)


def make_usr_disk(root: RootDisk, result: Path, key: str, fstab: str, verity: bool) -> None:
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
        _mkfs(tree, work / "root.img", ROOT_MIB, ROOT_UUID, "root")
        root_part = Part("root", "root-x86-64", work / "root.img", ROOT_MIB)
        if verity:
            usr_parts = _verity_usr(usr, work)
        else:
            _mkfs(usr, work / "usr.img", USR_MIB, USR_UUID, "usr")
            usr_parts = [Part("usr", "usr-x86-64", work / "usr.img", USR_MIB)]
        shutil.rmtree(tree)
        shutil.rmtree(usr)
        parts = [*usr_parts, root_part]
        _partition(work / "disk.img", parts)
        for part in parts:
            part.image.unlink()


@dataclass(frozen=True)
class Part:
    """A partition of the image: its label, repart type, content and size."""

    label: str
    kind: str
    image: Path
    mib: int
    uuid: str | None = None  # repart's own (from its seed) if None


def _verity_usr(usr: Path, work: Path) -> list[Part]:
    """/usr as a squashfs and its dm-verity hash tree, as the data and hash partitions
    named by the root hash (written to work/usr.roothash for the command line)."""
    data, hashes = work / "usr.img", work / "usr-verity.img"
    run(["mksquashfs", usr, data, *SQUASHFS_OPTIONS])
    if data.stat().st_size > (USR_MIB - VERITY_HASH_MIB) * MIB:
        raise ValueError(f"{data}: /usr does not fit its {USR_MIB - VERITY_HASH_MIB} MiB")
    run(["veritysetup", "format", f"--salt={VERITY_SALT}", f"--uuid={VERITY_SUPERBLOCK_UUID}",
         f"--root-hash-file={work / 'usr.roothash'}", data, hashes])  # fmt: skip
    data_uuid, hash_uuid = partition_uuids((work / "usr.roothash").read_text().strip())
    return [
        Part("usr", "usr-x86-64", data, USR_MIB - VERITY_HASH_MIB, data_uuid),
        Part("usr-verity", "usr-x86-64-verity", hashes, VERITY_HASH_MIB, hash_uuid),
    ]


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


def write_gpt(disk: Path, parts: list[Part], size_mib: int) -> None:
    """A size_mib disk image whose GPT holds parts in order, written by the host's
    systemd-repart (regular files need no loop device for CopyBlocks=)."""
    definitions = disk.parent / f"{disk.name}-repart.d"
    for number, part in enumerate(parts, start=1):
        uuid = f"UUID={part.uuid}\n" if part.uuid else ""
        _write(definitions, f"{number}0-{part.label}.conf", (
            f"[Partition]\nType={part.kind}\nLabel={part.label}\nCopyBlocks={part.image}\n"
            f"SizeMinBytes={part.mib}M\nSizeMaxBytes={part.mib}M\n{uuid}"
        ), 0o644)  # fmt: skip
    run(["systemd-repart", "--empty=create", f"--size={size_mib}M", "--dry-run=no",
         "--no-pager", f"--definitions={definitions}", "--seed=b00ce4d07e574b008007000000000000",
         disk])  # fmt: skip
    shutil.rmtree(definitions)


def _partition(disk: Path, parts: list[Part]) -> None:
    """An IMAGE_MIB image whose GPT holds parts in order (write_gpt), then grown to a
    DISK_MIB disk with its partition table left as written: the backup header and the
    last usable LBA stay at IMAGE_MIB."""
    write_gpt(disk, parts, IMAGE_MIB)
    with disk.open("r+b") as written:
        written.truncate(DISK_MIB * MIB)
