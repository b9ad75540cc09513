"""Cached disk sets with the root on LUKS2, LVM on LUKS2, MD RAID1 and btrfs raid1.

The host kernel has no device-mapper, so the stacks are made inside a guest: one
boot of the cached root disk (rootdisk.py) runs a job (guestjob.py) that formats
the blank disks attached after the job disk and copies the running root onto
each stack, so every set boots to multi-user and reports the test token like the
root disk does. Every UUID is fixed, so kernel command lines are known before
the disks exist:

    stacks = ensure_stack_disks(kernel, root_disk)
    luks = stacks["luks"]
    disks = [Disk(path) for path in luks.disks]   # snapshots: the cache stays as made
    append = f"{luks.cmdline} rw bookend.token={token}"

Making them takes minutes under emulation, so the sets are cached beside the
root disk, in a directory named after everything that decides their content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookend.errors import BookendError
from bookend.proc import run
from harness.guestjob import job_status, make_job_disk, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import (
    RootDisk,
    building,
    cache_dir_default,
    copy_of,
    made_once,
)

PASSPHRASE = "bookend-test-passphrase"
KEYFILE_BYTES = 64

# The 4th group says which stack, the last which layer: 1 the container
# (LUKS or MD), 2 the root filesystem.
LUKS_UUID = "b00ce4d0-7e57-4b00-8001-000000000001"
LUKS_ROOT_UUID = "b00ce4d0-7e57-4b00-8001-000000000002"
LVM_LUKS_UUID = "b00ce4d0-7e57-4b00-8002-000000000001"
LVM_ROOT_UUID = "b00ce4d0-7e57-4b00-8002-000000000002"
MD_UUID = "b00ce4d0-7e57-4b00-8003-000000000001"
MD_ROOT_UUID = "b00ce4d0-7e57-4b00-8003-000000000002"
BTRFS_ROOT_UUID = "b00ce4d0-7e57-4b00-8004-000000000002"
# The exitrd's stacks (EXIT_SCENARIOS, a set of their own).
MD_LUKS_MD_UUID = "b00ce4d0-7e57-4b00-8005-000000000001"
MD_LUKS_UUID = "b00ce4d0-7e57-4b00-8005-000000000003"
MD_LUKS_ROOT_UUID = "b00ce4d0-7e57-4b00-8005-000000000002"
LVM_MD_UUID = "b00ce4d0-7e57-4b00-8006-000000000001"
LVM_MD_ROOT_UUID = "b00ce4d0-7e57-4b00-8006-000000000002"
# The hibernation stack (RESUME_SCENARIOS): the 3rd layer is the swap LV's swap area.
RESUME_LUKS_UUID = "b00ce4d0-7e57-4b00-8007-000000000001"
RESUME_ROOT_UUID = "b00ce4d0-7e57-4b00-8007-000000000002"
RESUME_SWAP_UUID = "b00ce4d0-7e57-4b00-8007-000000000003"
# Room for the hibernation image of a 512 MiB guest (the kernel writes at most about
# 2/5 of RAM, compressed), with some to spare.
RESUME_SWAP_MIB = 384

# The guest sees the root disk at index 0 and the job disk at 1 (qemu.py names
# each disk's serial after its index); the stacks' disks follow in order.
FIRST_STACK_INDEX = 2
# The lean root copy takes about 250 MiB; the files are sparse, so the room
# left costs the host nothing.
DISK_MIB = 1024
MAKER_MEMORY_MIB = 2048
# Booting, making four stacks under emulation and powering off. The job unit
# itself gives up after 15 minutes (rootdisk.JOB_UNIT).
MAKER_LIMIT = 1200


@dataclass(frozen=True)
class Scenario:
    """One storage stack, as a test sees it: everything here is fixed in advance."""

    name: str
    # One entry per member disk, in the order they must be attached.
    disk_mib: tuple[int, ...]
    fs_type: str
    # The root filesystem's UUID (what root=UUID= names).
    root_uuid: str
    # A suggested kernel command-line fragment for the root; add rw, tokens etc.
    cmdline: str
    luks_uuid: str | None = None
    # The device-mapper name, as the root's /etc/crypttab gives it.
    luks_name: str | None = None
    # Unlocks keyslot 0.
    passphrase: str | None = None
    # Non-zero: a random key file of this many bytes unlocks keyslot 1.
    keyfile_bytes: int = 0
    md_uuid: str | None = None
    # The array is /dev/md/<md_name>.
    md_name: str | None = None
    vg: str | None = None
    lv: str | None = None
    # The root's btrfs subvolume; the top level stays the default subvolume.
    subvolume: str | None = None

    @property
    def fstab(self) -> str:
        """The root's line in the copy's /etc/fstab."""
        if self.fs_type == "btrfs":
            return f"UUID={self.root_uuid} / btrfs subvol={self.subvolume} 0 0"
        return f"UUID={self.root_uuid} / {self.fs_type} errors=remount-ro 0 1"

    @property
    def crypttab(self) -> str | None:
        """The line in the copy's /etc/crypttab, as an installer writes it."""
        if self.luks_uuid is None:
            return None
        return f"{self.luks_name} UUID={self.luks_uuid} none luks"


@dataclass(frozen=True, kw_only=True)
class StackDisks(Scenario):
    """A scenario's cached disks: attach them as snapshots, in this order."""

    disks: tuple[Path, ...]
    # Mode 0600, beside the disks; None when the scenario has no key file.
    keyfile: Path | None

    @classmethod
    def made_from(cls, scenario: Scenario, directory: Path) -> StackDisks:
        fields: dict[str, Any] = {
            field.name: getattr(scenario, field.name) for field in dataclasses.fields(Scenario)
        }
        return cls(
            **fields,
            disks=tuple(directory / name for name in disk_names(scenario)),
            keyfile=directory / keyfile_name(scenario) if scenario.keyfile_bytes else None,
        )


SCENARIOS = (
    Scenario(
        name="luks",
        disk_mib=(DISK_MIB,),
        fs_type="ext4",
        root_uuid=LUKS_ROOT_UUID,
        cmdline=f"root=UUID={LUKS_ROOT_UUID} rd.luks.uuid={LUKS_UUID}",
        luks_uuid=LUKS_UUID,
        luks_name="root_crypt",
        passphrase=PASSPHRASE,
        keyfile_bytes=KEYFILE_BYTES,
    ),
    Scenario(
        name="lvm-on-luks",
        disk_mib=(DISK_MIB,),
        fs_type="ext4",
        root_uuid=LVM_ROOT_UUID,
        cmdline=f"root=UUID={LVM_ROOT_UUID} rd.luks.uuid={LVM_LUKS_UUID}",
        luks_uuid=LVM_LUKS_UUID,
        luks_name="pv_crypt",
        passphrase=PASSPHRASE,
        vg="bookendvg",
        lv="root",
    ),
    Scenario(
        name="md-raid1",
        disk_mib=(DISK_MIB, DISK_MIB),
        fs_type="ext4",
        root_uuid=MD_ROOT_UUID,
        cmdline=f"root=UUID={MD_ROOT_UUID}",
        md_uuid=MD_UUID,
        md_name="root",
    ),
    Scenario(
        name="btrfs-raid1",
        disk_mib=(DISK_MIB, DISK_MIB),
        fs_type="btrfs",
        root_uuid=BTRFS_ROOT_UUID,
        cmdline=f"root=UUID={BTRFS_ROOT_UUID} rootflags=subvol=@root",
        subvolume="@root",
    ),
)

# Stacks the exitrd must take down layer by layer: LUKS2 on an MD RAID1 array and LVM on
# one. A set of their own, keyed apart (stacks_key): adding them to SCENARIOS would
# make every test's stacks again.
EXIT_SCENARIOS = (
    Scenario(
        name="luks-on-md",
        disk_mib=(DISK_MIB, DISK_MIB),
        fs_type="ext4",
        root_uuid=MD_LUKS_ROOT_UUID,
        cmdline=f"root=UUID={MD_LUKS_ROOT_UUID} rd.luks.uuid={MD_LUKS_UUID}",
        luks_uuid=MD_LUKS_UUID,
        luks_name="md_crypt",
        passphrase=PASSPHRASE,
        md_uuid=MD_LUKS_MD_UUID,
        md_name="cryptmd",
    ),
    Scenario(
        name="lvm-on-md",
        disk_mib=(DISK_MIB, DISK_MIB),
        fs_type="ext4",
        root_uuid=LVM_MD_ROOT_UUID,
        cmdline=f"root=UUID={LVM_MD_ROOT_UUID}",
        md_uuid=LVM_MD_UUID,
        md_name="lvmmd",
        vg="mdvg",
        lv="root",
    ),
)
# Hibernation and resume: a root LV and a swap LV in one VG on LUKS2 (issue 17's proof 3).
# A set of its own, as the exitrd's is; the swap LV and its UUID are fixed by the maker
# function, not by Scenario fields, so the other sets' keys stay as they were.
RESUME_SCENARIOS = (
    Scenario(
        name="swap-lvm-on-luks",
        disk_mib=(DISK_MIB,),
        fs_type="ext4",
        root_uuid=RESUME_ROOT_UUID,
        # The name the root's crypttab gives the volume, so the real root finds it open.
        cmdline=f"root=UUID={RESUME_ROOT_UUID} "
        f"rd.luks.name={RESUME_LUKS_UUID}=resume_crypt resume=UUID={RESUME_SWAP_UUID}",
        luks_uuid=RESUME_LUKS_UUID,
        luks_name="resume_crypt",
        passphrase=PASSPHRASE,
        vg="resumevg",
        lv="root",
    ),
)
# Each set: its directory under the cache's stacks/ names its key, its maker functions
# are MAKER_FUNCTIONS plus these.


def disk_names(scenario: Scenario) -> list[str]:
    return [f"{scenario.name}-{index}.img" for index in range(len(scenario.disk_mib))]


def keyfile_name(scenario: Scenario) -> str:
    return f"{scenario.name}.keyfile"


# The functions the generated part of the job calls, once per scenario with the
# scenario's fields in shell variables (see scenario_call).
MAKER_FUNCTIONS = r"""#!/bin/bash
# Make the storage stacks of harness/stackdisks.py on the blank disks attached
# after the job disk, each with a copy of this root, and close them all cleanly.
set -euxo pipefail
report=/job/out/report
# Cheap key derivation: unlocking under emulation must take seconds, not minutes.
pbkdf=(--pbkdf argon2id --pbkdf-memory 32768 --pbkdf-force-iterations 4 --pbkdf-parallel 1)

# LVM keeps metadata backups in /etc/lvm, which the copies of this root made
# after the VG would inherit: keep this root as it booted.
lvm_config=(--config 'backup { backup = 0 archive = 0 }')
# Mount points on /run, a tmpfs, so they stay out of the copies.
src=/run/stacks/src
new=/run/stacks/new

modprobe -a dm_crypt raid1 btrfs
mkdir -p "$src" "$new"
# The root as it is on its disk: a non-recursive bind mount leaves out /proc,
# /dev, /run, the job disk on /job and the modules bound from it, yet keeps
# their mount points.
mount -o bind,ro / "$src"

copy_root() {  # $1: the new root, mounted
    # A lean copy: what a test boot never reads stays behind, and so does
    # what this boot wrote (its journal, temporary files).
    tar -C "$src" --one-file-system --xattrs --xattrs-include='*' --acls --numeric-owner \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
        --exclude='./usr/share/locale/*' --exclude='./usr/share/info/*' \
        --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' \
        --exclude='./var/log/journal/*' --exclude='./tmp/*' --exclude='./var/tmp/*' \
        --exclude='./lost+found' --exclude='./job/*' \
        -cf - . |
        tar -C "$1" --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -
}

fill_root() {  # $1: the root device; $2: extra mount options
    mount ${2:+-o "$2"} "$1" "$new"
    copy_root "$new"
    printf '# made by harness/stackdisks.py\n%s\n' "$fstab" > "$new/etc/fstab"
    if [ -n "$crypttab" ]; then
        printf '# <target name> <source device> <key file> <options>\n%s\n' "$crypttab" \
            > "$new/etc/crypttab"
    fi
    if [ -n "$md_name" ]; then
        # What an installer appends to Debian's mdadm.conf.
        mdadm --detail --brief "/dev/md/$md_name" >> "$new/etc/mdadm/mdadm.conf"
    fi
    used=$(du -sxm "$new" | cut -f1)
    free=$(df -m --output=avail "$new" | tail -n 1)
    echo "ROOT-COPY $name: $used MiB copied, $free MiB left" | tee -a "$report"
    umount "$new"
}

make_ext4() {  # $1: device
    # Zero the inode tables and journal now, not in every test boot's lazyinit.
    mkfs.ext4 -q -F -U "$root_uuid" -E lazy_itable_init=0,lazy_journal_init=0 "$1"
}

luks_format() {  # $1: device
    # --key-file=- takes the passphrase byte for byte, as typed at a prompt.
    printf %s "$passphrase" | cryptsetup luksFormat --batch-mode --type luks2 \
        --uuid "$luks_uuid" "${pbkdf[@]}" --key-slot 0 --key-file=- "$1"
    if [ -n "$keyfile" ]; then
        printf %s "$passphrase" | cryptsetup luksAddKey --batch-mode "${pbkdf[@]}" \
            --key-slot 1 --key-file=- "$1" "$keyfile"
    fi
    printf %s "$passphrase" | cryptsetup open --key-file=- "$1" "$luks_name"
    cryptsetup luksDump "$1" >> "$report"
}

make_luks() {
    luks_format "$disks"
    make_ext4 "/dev/mapper/$luks_name"
    fill_root "/dev/mapper/$luks_name"
    e2fsck -fn "/dev/mapper/$luks_name"
    cryptsetup close "$luks_name"
}

make_lvm_on_luks() {
    luks_format "$disks"
    pvcreate "${lvm_config[@]}" "/dev/mapper/$luks_name"
    vgcreate "${lvm_config[@]}" "$vg" "/dev/mapper/$luks_name"
    lvcreate "${lvm_config[@]}" --yes -l 100%FREE -n "$lv" "$vg"
    make_ext4 "/dev/$vg/$lv"
    fill_root "/dev/$vg/$lv"
    e2fsck -fn "/dev/$vg/$lv"
    lvs -o lv_name,vg_name,lv_size,devices >> "$report"
    vgchange "${lvm_config[@]}" -an "$vg"
    cryptsetup close "$luks_name"
}

make_md_raid1() {
    # The blank disks are all zeros, so the halves already agree: no resync
    # of the whole disk under emulation.
    # shellcheck disable=SC2086  # $disks is a list
    mdadm --create "/dev/md/$md_name" --run --assume-clean --level=1 --raid-devices=2 \
        --metadata=1.2 --uuid="$md_uuid" --homehost=any $disks
    udevadm settle
    # Nothing to wait for after --assume-clean (exit status 1), unless a
    # later mdadm starts a resync anyway: a degraded boot needs it finished.
    mdadm --wait "/dev/md/$md_name" || true
    make_ext4 "/dev/md/$md_name"
    fill_root "/dev/md/$md_name"
    e2fsck -fn "/dev/md/$md_name"
    mdadm --detail "/dev/md/$md_name" >> "$report"
    mdadm --stop "/dev/md/$md_name"
    udevadm settle
}

make_btrfs_raid1() {
    # shellcheck disable=SC2086  # $disks is a list
    mkfs.btrfs -q -f -d raid1 -m raid1 -U "$root_uuid" $disks
    # Mounting one member finds the others only once they are registered.
    udevadm settle
    btrfs device scan
    set -- $disks
    mount "$1" "$new"
    btrfs subvolume create "$new/$subvolume"
    umount "$new"
    fill_root "$1" "subvol=$subvolume"
    btrfs check --readonly "$1"
    btrfs filesystem show "$root_uuid" >> "$report"
}

make_stack() {  # $1: the function that makes this scenario's stack
    started=$(date +%s)
    "$1"
    echo "STACK-TIME $name $(($(date +%s) - started)) s" | tee -a "$report"
}

"""

# The exitrd set's own stacks (EXIT_SCENARIOS), kept out of MAKER_FUNCTIONS so that
# the first set's key stays as it was.
EXIT_MAKER_FUNCTIONS = r"""
md_create() {  # a clean RAID1 of $disks, as make_md_raid1 makes it
    # shellcheck disable=SC2086  # $disks is a list
    mdadm --create "/dev/md/$md_name" --run --assume-clean --level=1 --raid-devices=2 \
        --metadata=1.2 --uuid="$md_uuid" --homehost=any $disks
    udevadm settle
    mdadm --wait "/dev/md/$md_name" || true
}

md_stop() {
    mdadm --detail "/dev/md/$md_name" >> "$report"
    mdadm --stop "/dev/md/$md_name"
    udevadm settle
}

make_luks_on_md() {
    md_create
    luks_format "/dev/md/$md_name"
    make_ext4 "/dev/mapper/$luks_name"
    fill_root "/dev/mapper/$luks_name"
    e2fsck -fn "/dev/mapper/$luks_name"
    cryptsetup close "$luks_name"
    md_stop
}

make_lvm_on_md() {
    md_create
    pvcreate "${lvm_config[@]}" "/dev/md/$md_name"
    vgcreate "${lvm_config[@]}" "$vg" "/dev/md/$md_name"
    lvcreate "${lvm_config[@]}" --yes -l 100%FREE -n "$lv" "$vg"
    make_ext4 "/dev/$vg/$lv"
    fill_root "/dev/$vg/$lv"
    e2fsck -fn "/dev/$vg/$lv"
    lvs -o lv_name,vg_name,lv_size,devices >> "$report"
    vgchange "${lvm_config[@]}" -an "$vg"
    md_stop
}

"""

# The hibernation set's stack: the swap LV first, the root LV takes the rest.
RESUME_MAKER_FUNCTIONS = rf"""
make_swap_lvm_on_luks() {{
    luks_format "$disks"
    pvcreate "${{lvm_config[@]}}" "/dev/mapper/$luks_name"
    vgcreate "${{lvm_config[@]}}" "$vg" "/dev/mapper/$luks_name"
    lvcreate "${{lvm_config[@]}}" --yes -L {RESUME_SWAP_MIB}M -n swap "$vg"
    lvcreate "${{lvm_config[@]}}" --yes -l 100%FREE -n "$lv" "$vg"
    mkswap -U {RESUME_SWAP_UUID} "/dev/$vg/swap"
    make_ext4 "/dev/$vg/$lv"
    fill_root "/dev/$vg/$lv"
    e2fsck -fn "/dev/$vg/$lv"
    lvs -o lv_name,vg_name,lv_size,devices >> "$report"
    vgchange "${{lvm_config[@]}}" -an "$vg"
    cryptsetup close "$luks_name"
}}

"""

MAKER_END = r"""
umount "$src"
# Nothing may stay open: the host caches these disks as they are now.
udevadm settle
if grep -q '^md' /proc/mdstat; then
    cat /proc/mdstat
    exit 1
fi
if [ "$(dmsetup ls)" != "No devices found" ]; then
    dmsetup ls
    exit 1
fi
sync
"""


def guest_disk(index: int) -> str:
    return f"/dev/disk/by-id/virtio-bookend{index}"


def scenario_call(scenario: Scenario, first_index: int) -> str:
    """Shell lines that set every variable the maker functions read, then make the stack."""
    count = len(scenario.disk_mib)
    values = {
        "name": scenario.name,
        "disks": " ".join(guest_disk(first_index + i) for i in range(count)),
        "root_uuid": scenario.root_uuid,
        "fstab": scenario.fstab,
        "crypttab": scenario.crypttab or "",
        "luks_uuid": scenario.luks_uuid or "",
        "luks_name": scenario.luks_name or "",
        "passphrase": scenario.passphrase or "",
        "keyfile": f"/job/{keyfile_name(scenario)}" if scenario.keyfile_bytes else "",
        "md_uuid": scenario.md_uuid or "",
        "md_name": scenario.md_name or "",
        "vg": scenario.vg or "",
        "lv": scenario.lv or "",
        "subvolume": scenario.subvolume or "",
    }
    assignments = [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    function = "make_" + scenario.name.replace("-", "_")
    return "\n".join([f"# {scenario.name}", *assignments, f"make_stack {function}", ""])


def maker_script(scenarios: tuple[Scenario, ...] = SCENARIOS) -> str:
    extra = {EXIT_SCENARIOS: EXIT_MAKER_FUNCTIONS, RESUME_SCENARIOS: RESUME_MAKER_FUNCTIONS}
    functions = MAKER_FUNCTIONS + extra.get(scenarios, "")
    calls, index = [], FIRST_STACK_INDEX
    for scenario in scenarios:
        calls.append(scenario_call(scenario, index))
        index += len(scenario.disk_mib)
    return functions + "\n".join(calls) + MAKER_END


def stacks_key(root_disk: RootDisk, scenarios: tuple[Scenario, ...] = SCENARIOS) -> str:
    """Names the cached sets: a new root disk, script or scenario makes new ones."""
    recipe = {
        # The root disk's image is named after its own recipe's key.
        "root": [root_disk.image.name, root_disk.uuid],
        "script": maker_script(scenarios),
        "scenarios": [dataclasses.asdict(s) for s in scenarios],
    }
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def ensure_stack_disks(
    kernel: Kernel,
    root_disk: RootDisk,
    *,
    cache_dir: Path | None = None,
    console_log: Path | None = None,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> dict[str, StackDisks]:
    """Every scenario's cached disks by name, made first if no finished set exists.

    scenarios: SCENARIOS, or EXIT_SCENARIOS (ensure_exit_stack_disks), a set of its own.
    The maker guest's console goes to console_log, or beside the cache when None.
    """
    stacks_dir = (cache_dir or cache_dir_default()) / "stacks"
    stacks_dir.mkdir(parents=True, exist_ok=True)
    key = stacks_key(root_disk, scenarios)
    directory = stacks_dir / key
    log = console_log or stacks_dir / f"{key}.console.log"
    what = {
        SCENARIOS: "storage stacks (maker guest)",
        RESUME_SCENARIOS: "hibernation stack (maker guest)",
    }.get(scenarios, "exitrd storage stacks")
    made_once(what, directory, stacks_dir / f"{key}.lock", key,
              lambda: build_stacks(kernel, root_disk, directory, key, log, scenarios))  # fmt: skip
    return {s.name: StackDisks.made_from(s, directory) for s in scenarios}


def ensure_exit_stack_disks(kernel: Kernel, root_disk: RootDisk) -> dict[str, StackDisks]:
    """The EXIT_SCENARIOS disks (LUKS2 on MD RAID1, LVM on MD RAID1) by name."""
    return ensure_stack_disks(kernel, root_disk, scenarios=EXIT_SCENARIOS)


def ensure_resume_stack_disks(kernel: Kernel, root_disk: RootDisk) -> StackDisks:
    """The RESUME_SCENARIOS disk: root and swap LVs on LUKS2."""
    return ensure_stack_disks(kernel, root_disk, scenarios=RESUME_SCENARIOS)[
        RESUME_SCENARIOS[0].name
    ]


def build_stacks(
    kernel: Kernel,
    root_disk: RootDisk,
    directory: Path,
    key: str,
    console_log: Path,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> None:
    """Make the sets in a private directory and rename it into place when complete."""
    started = time.monotonic()
    print(f"bookend tests: making storage stacks in {directory} (minutes)", flush=True)
    with building(directory, key) as work:
        disks = make_blank_disks(work, scenarios)
        keyfiles = make_keyfiles(work, scenarios)
        initrd = build_image(work / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4)
        job = make_job_disk(
            work / "job.img", maker_script(scenarios), files=keyfiles, modules_kver=kernel.version
        )
        run_maker(kernel, root_disk, initrd, [job, *disks], console_log)
        read_job_output(job.path, "report", work / "maker-report.txt")
        # Only the disks, key files and the report are worth keeping.
        initrd.unlink()
        job.path.unlink()
    elapsed = time.monotonic() - started
    print(f"bookend tests: storage stacks made in {elapsed:.0f} s", flush=True)


def make_blank_disks(work: Path, scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[Disk]:
    """Sparse, all-zero member disks for every scenario, in attach order."""
    disks = []
    for scenario in scenarios:
        for name, size_mib in zip(disk_names(scenario), scenario.disk_mib, strict=True):
            with (work / name).open("wb") as sparse:
                sparse.truncate(size_mib * 2**20)
            # The guest must write to the files themselves.
            disks.append(Disk(work / name, snapshot=False))
    return disks


def make_keyfiles(work: Path, scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[str, Path]:
    """A fresh random key file per scenario that has one: job disk path -> host path."""
    keyfiles = {}
    for scenario in scenarios:
        if scenario.keyfile_bytes:
            path = work / keyfile_name(scenario)
            # Created private: a key file readable by others is what a test
            # of the image's permissions would flag.
            path.touch(mode=0o600)
            path.write_bytes(secrets.token_bytes(scenario.keyfile_bytes))
            keyfiles[keyfile_name(scenario)] = path
    return keyfiles


def run_maker(
    kernel: Kernel, root_disk: RootDisk, initrd: Path, disks: list[Disk], console_log: Path
) -> None:
    """Boot the root disk with the job and the blank disks; raise if the job failed."""
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(root_disk.image), *disks),
        append=f"root=UUID={root_disk.uuid} rw",
        memory_mib=MAKER_MEMORY_MIB,
        timeout=MAKER_LIMIT,
        log_path=console_log,
    )
    # The report waits for the job, and the power-off flushes the disks.
    printed = run_job(options).status
    status = job_status(disks[0].path)
    if status != 0 or printed != 0:
        raise BookendError(
            f"making the storage stacks failed (job status {status}); "
            f"see the console log {console_log}"
        )


# The maker script's key derivation (argon2id, 32 MiB, 4 passes): an emulated guest
# opens the volume in seconds.
FAST_PBKDF = ("--pbkdf", "argon2id", "--pbkdf-memory", "32768",
              "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1")  # fmt: skip


def copy_with_passphrase(stack: StackDisks, passphrase: str, directory: Path) -> Path:
    """A copy of a LUKS stack's disk whose next free keyslot takes passphrase too.

    The cached disk and SCENARIOS stay as they are. The host's cryptsetup writes the
    keyslot into the copy's file itself: adding a key needs the kernel's crypto API, not
    device-mapper.
    """
    assert stack.passphrase is not None, f"stack {stack.name} has no LUKS passphrase"
    copy = directory / f"{stack.name}-extra-key.img"
    copy_of(stack.disks[0], copy)
    with tempfile.TemporaryDirectory(dir=directory) as private:
        new_key = Path(private, "new-key")
        new_key.touch(mode=0o600)
        new_key.write_text(passphrase)  # byte for byte, as typed: no newline
        run(["cryptsetup", "luksAddKey", "--batch-mode", *FAST_PBKDF, "--key-file=-",
             copy, new_key], input_bytes=stack.passphrase.encode())  # fmt: skip
    return copy


# The LVM-on-LUKS2 stack again, holding another release's root (ensure_suite_stacks).
SUITE_SCENARIO = next(s for s in SCENARIOS if s.name == "lvm-on-luks")


def suite_maker_script(suites: tuple[str, ...]) -> str:
    """Make SUITE_SCENARIO once per suite, each copying that suite's root disk (attached
    after the stack disks, in order) instead of the maker's own running root."""
    calls, index = [], FIRST_STACK_INDEX + len(suites)
    for offset, suite in enumerate(suites):
        named = dataclasses.replace(SUITE_SCENARIO, name=f"{SUITE_SCENARIO.name}-{suite}")
        call = scenario_call(named, FIRST_STACK_INDEX + offset)
        # make_stack names the function after the scenario: call the one for LVM on LUKS.
        call = call.replace(f"make_stack make_lvm_on_luks_{suite}", "make_stack make_lvm_on_luks")
        calls += [
            f'umount "$src"\n'
            # noload: the source is a snapshot; replaying its journal would be a write.
            f'mount -o ro,noload {guest_disk(index + offset)} "$src"\n',
            call,
        ]
    return MAKER_FUNCTIONS + "\n".join(calls) + MAKER_END


def ensure_suite_stacks(
    kernel: Kernel,
    maker_root: RootDisk,
    roots: dict[str, RootDisk],
    *,
    cache_dir: Path | None = None,
) -> dict[str, StackDisks]:
    """An LVM-on-LUKS2 disk per suite whose root filesystem is a copy of that suite's
    root disk (roots), made in one boot of maker_root (the bookworm disk, which has the
    tools); keyed apart from the bookworm stacks, whose key stays as it was."""
    suites = tuple(sorted(roots))
    script = suite_maker_script(suites)
    recipe = {
        "maker": [maker_root.image.name, maker_root.uuid],
        # A suite's root disk is named by the directory its recipe's key names.
        "roots": {s: [roots[s].image.parent.name, roots[s].uuid] for s in suites},
        "script": script,
        "scenario": dataclasses.asdict(SUITE_SCENARIO),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    stacks_dir = (cache_dir or cache_dir_default()) / "stacks"
    stacks_dir.mkdir(parents=True, exist_ok=True)
    directory = stacks_dir / f"suites-{key}"
    log = stacks_dir / f"suites-{key}.console.log"

    def make() -> None:
        started = time.monotonic()
        with building(directory, key) as work:
            disks = []
            for suite in suites:
                path = work / f"{SUITE_SCENARIO.name}-{suite}-0.img"
                with path.open("wb") as sparse:
                    sparse.truncate(SUITE_SCENARIO.disk_mib[0] * 2**20)
                disks.append(Disk(path, snapshot=False))
            initrd = build_image(work / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4)
            job = make_job_disk(work / "job.img", script, modules_kver=kernel.version)
            sources = [Disk(roots[s].image) for s in suites]
            run_maker(kernel, maker_root, initrd, [job, *disks, *sources], log)
            read_job_output(job.path, "report", work / "maker-report.txt")
            initrd.unlink()
            job.path.unlink()
        print(f"bookend tests: LVM-on-LUKS2 stacks of {', '.join(suites)} made in "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip

    made_once("LVM-on-LUKS2 stacks of newer suites (maker guest)", directory,
              stacks_dir / f"suites-{key}.lock", key, make)  # fmt: skip
    return {
        suite: dataclasses.replace(
            StackDisks.made_from(SUITE_SCENARIO, directory),
            disks=(directory / f"{SUITE_SCENARIO.name}-{suite}-0.img",),
        )
        for suite in suites
    }
