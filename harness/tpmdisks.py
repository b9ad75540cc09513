"""Cached LUKS2 roots enrolled with systemd-cryptenroll in a software TPM, and that TPM.

One boot of the cached root disk (rootdisk.py) with a fresh swtpm (tpm.py) attached runs
a job (guestjob.py) that makes a LUKS2 root on a blank disk, copies the running root onto
it, and enrolls the TPM: `systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=1`. A copy
of that disk then gets a TPM2+PIN token in place of the plain one. The TPM's state after
the job is cached with the disks; every test boots a private copy of it.

The shared root disk has systemd-cryptenroll but not the tss2 libraries it loads (and its
package list is not ours to change: every cached disk would be made again), so the job
disk carries the host's libtss2 files, and the job points LD_LIBRARY_PATH at them.

Why PCR 1: SeaBIOS measures the SMBIOS tables into it before the kernel starts, and
nothing else the boot varies (initrd, command line, disks) reaches it. QEMU's
`-smbios type=1,serial=...` changes those tables, so a test changes the PCR the volumes
are bound to from the QEMU command line alone. The tables also describe the memory and
the CPUs, so every boot of these disks uses TPM_MEMORY_MIB and TPM_CPUS.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bookend.errors import BookendError
from harness.guestjob import job_status, make_job_disk, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk, building, cache_dir_default, made_once
from harness.stackdisks import PASSPHRASE
from harness.tpm import software_tpm

LUKS_UUID = "b00ce4d0-7e57-4b00-8005-000000000001"
ROOT_UUID = "b00ce4d0-7e57-4b00-8005-000000000002"
LUKS_NAME = "root_crypt"
PIN = "2468"
PCRS = "1"
# What SMBIOS says at enrollment, and a serial of another length for a changed PCR 1.
ENROLLED_SMBIOS = ("-smbios", "type=1,serial=bookend-tpm")
CHANGED_SMBIOS = ("-smbios", "type=1,serial=bookend-tpm-moved-to-another-board")
TPM_MEMORY_MIB = 1024
TPM_CPUS = 1
DISK_MIB = 640
MAKER_LIMIT = 1200
# What systemd-cryptenroll (252 and 257) loads to talk to the TPM, and what those need.
TSS2_LIBRARIES = (
    "libtss2-esys.so.0",
    "libtss2-sys.so.1",
    "libtss2-mu.so.0",
    "libtss2-rc.so.0",
    "libtss2-tcti-device.so.0",
)
HOST_LIBRARY_DIRS = (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"))

# The guest sees the root disk at index 0, the job disk at 1, then the two blank disks.
MAKER_SCRIPT = r"""#!/bin/bash
# Make harness/tpmdisks.py's LUKS2 roots, enrolled in the TPM this guest has.
set -euxo pipefail
report=/job/out/report
export LD_LIBRARY_PATH=/job/lib
plain=/dev/disk/by-id/virtio-bookend2
with_pin=/dev/disk/by-id/virtio-bookend3
# Cheap key derivation: unlocking under emulation must take seconds, not minutes.
pbkdf=(--pbkdf argon2id --pbkdf-memory 32768 --pbkdf-force-iterations 4 --pbkdf-parallel 1)
src=/run/tpm/src
new=/run/tpm/new

udevadm settle
test -c /dev/tpmrm0
echo "PCR1 $(cat /sys/class/tpm/tpm0/pcr-sha256/1)" | tee -a "$report"
modprobe dm_crypt
mkdir -p "$src" "$new"
mount -o bind,ro / "$src"

printf %s "$passphrase" | cryptsetup luksFormat --batch-mode --type luks2 \
    --uuid "$luks_uuid" "${pbkdf[@]}" --key-file=- "$plain"
printf %s "$passphrase" | cryptsetup open --key-file=- "$plain" "$luks_name"
mkfs.ext4 -q -F -U "$root_uuid" -E lazy_itable_init=0,lazy_journal_init=0 "/dev/mapper/$luks_name"
mount "/dev/mapper/$luks_name" "$new"
tar -C "$src" --one-file-system --xattrs --xattrs-include='*' --acls --numeric-owner \
    --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
    --exclude='./usr/share/locale/*' --exclude='./var/cache/apt/*' \
    --exclude='./var/lib/apt/lists/*' --exclude='./var/log/journal/*' \
    --exclude='./tmp/*' --exclude='./var/tmp/*' --exclude='./lost+found' --exclude='./job/*' \
    -cf - . | tar -C "$new" --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -
printf '# made by harness/tpmdisks.py\nUUID=%s / ext4 errors=remount-ro 0 1\n' "$root_uuid" \
    > "$new/etc/fstab"
printf '%s UUID=%s none luks,tpm2-device=auto\n' "$luks_name" "$luks_uuid" > "$new/etc/crypttab"
umount "$new"
umount "$src"
cryptsetup close "$luks_name"

PASSWORD=$passphrase systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs="$pcrs" "$plain"
# The same volume (same UUIDs, so the root's crypttab fits) with a TPM2+PIN token instead.
dd if="$plain" of="$with_pin" bs=4M conv=sparse status=none
PASSWORD=$passphrase systemd-cryptenroll --wipe-slot=tpm2 "$with_pin"
PASSWORD=$passphrase NEWPIN=$pin systemd-cryptenroll --tpm2-device=auto \
    --tpm2-pcrs="$pcrs" --tpm2-with-pin=yes "$with_pin"
cryptsetup luksDump "$plain" >> "$report"
cryptsetup luksDump "$with_pin" >> "$report"
udevadm settle
sync
"""


@dataclass(frozen=True)
class TpmDisks:
    """The cached disks (attach as snapshots) and the TPM state they were enrolled in."""

    plain: Path  # a TPM2 token bound to PCR 1, and the passphrase
    with_pin: Path  # a TPM2+PIN token bound to PCR 1, and the passphrase
    tpm_state: Path  # copy it (tpm.copy_state) for each boot
    luks_uuid: str = LUKS_UUID
    luks_name: str = LUKS_NAME
    root_uuid: str = ROOT_UUID
    passphrase: str = PASSPHRASE
    pin: str = PIN

    @property
    def cmdline(self) -> str:
        """The root, unlocked under the crypttab name the real root uses."""
        return f"root=UUID={self.root_uuid} rd.luks.name={self.luks_uuid}={self.luks_name}"


def maker_script() -> str:
    values = {
        "luks_uuid": LUKS_UUID,
        "root_uuid": ROOT_UUID,
        "luks_name": LUKS_NAME,
        "passphrase": PASSPHRASE,
        "pin": PIN,
        "pcrs": PCRS,
    }
    assignments = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    first_line, rest = MAKER_SCRIPT.split("\n", 1)
    return f"{first_line}\n{assignments}{rest}"


def host_tss2_libraries() -> dict[str, Path]:
    """The host's tss2 libraries by job disk path (lib/SONAME), their real files."""
    found = {}
    for soname in TSS2_LIBRARIES:
        path = next((d / soname for d in HOST_LIBRARY_DIRS if (d / soname).exists()), None)
        if path is None:
            raise BookendError(f"the host has no {soname} (install libtss2-*; scripts/setup)")
        found[f"lib/{soname}"] = path.resolve()
    return found


def tpm_disks_key(root_disk: RootDisk) -> str:
    """Names the cached set: a new root disk, script or enrollment makes a new one."""
    recipe = {
        "root": [root_disk.image.name, root_disk.uuid],
        "script": maker_script(),
        "smbios": ENROLLED_SMBIOS,
        "machine": [TPM_MEMORY_MIB, TPM_CPUS, DISK_MIB],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tpm_disks(
    kernel: Kernel, root_disk: RootDisk, *, cache_dir: Path | None = None
) -> TpmDisks:
    """The cached TPM disks and state, made first if no finished set exists."""
    tpm_dir = (cache_dir or cache_dir_default()) / "tpm"
    tpm_dir.mkdir(parents=True, exist_ok=True)
    key = tpm_disks_key(root_disk)
    directory = tpm_dir / key
    made_once("tpm2 disks (maker guest)", directory, tpm_dir / f"{key}.lock", key,
              lambda: build_tpm_disks(kernel, root_disk, directory, key))  # fmt: skip
    return TpmDisks(directory / "plain.img", directory / "with-pin.img", directory / "state")


def build_tpm_disks(kernel: Kernel, root_disk: RootDisk, directory: Path, key: str) -> None:
    """Make the set in a private directory and rename it into place when complete."""
    started = time.monotonic()
    print(f"bookend tests: making TPM2 disks in {directory} (minutes)", flush=True)
    with building(directory, key) as work:
        disks = []
        for name in ("plain.img", "with-pin.img"):
            with (work / name).open("wb") as sparse:
                sparse.truncate(DISK_MIB * 2**20)
            disks.append(Disk(work / name, snapshot=False))
        initrd = build_image(work / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4)
        job = make_job_disk(
            work / "job.img",
            maker_script(),
            files=host_tss2_libraries(),
            modules_kver=kernel.version,
        )
        options = maker_options(kernel, root_disk, initrd, [job, *disks], directory)
        with software_tpm(work / "state") as tpm_devices:
            printed = run_job(replace(options, devices=(*options.devices, *tpm_devices))).status
        status = job_status(job.path)
        if status != 0 or printed != 0:
            raise BookendError(
                f"making the TPM2 disks failed (job status {status}); "
                f"see the console log {options.log_path}"
            )
        read_job_output(job.path, "report", work / "maker-report.txt")
        initrd.unlink()
        job.path.unlink()
    print(f"bookend tests: TPM2 disks made in {time.monotonic() - started:.0f} s", flush=True)


def maker_options(
    kernel: Kernel, root_disk: RootDisk, initrd: Path, disks: list[Disk], directory: Path
) -> BootOptions:
    return BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(root_disk.image), *disks),
        append=f"root=UUID={root_disk.uuid} rw",
        memory_mib=TPM_MEMORY_MIB,
        cpus=TPM_CPUS,
        devices=ENROLLED_SMBIOS,
        timeout=MAKER_LIMIT,
        log_path=directory.parent / f"{directory.name}.console.log",
    )
