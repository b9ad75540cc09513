"""Module modes on real hardware models: a generic image boots whatever the disk sits on
(AHCI and NVMe here; virtio in the boot that builds the hostonly image), and a hostonly
image built inside the guest boots that guest.

No test here names a module: generic mode and hostonly detection must find them.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import bookend
from harness.guestjob import make_job_disk, read_job_output, run_job
from harness.qemu import BootOptions, Bus, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.token import boot_to_token, failed_units

# Booting, building an image under emulation, and powering off.
JOB_LIMIT = 900
MICROCODE_DIR = "kernel/x86/microcode"

# Build a hostonly image for this guest with the guest's own tools and libraries,
# keeping what -v prints (the detected set) and which CPU the guest has.
HOSTONLY_JOB = """\
#!/bin/sh
set -eu
sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -n 1 > /job/out/vendor
PYTHONPATH=/job/src python3 -m bookend -v build -o /job/out/hostonly.img 2>&1 \
    | tee /job/out/build.log
test -s /job/out/hostonly.img
"""


# On virtio: the hostonly test's first boot, which runs the generic image too.
@pytest.mark.parametrize("bus", [Bus.AHCI, Bus.NVME], ids=lambda b: b.value)
def test_generic_image_boots_the_root_disk_on_ahci_and_nvme(
    root_boot: BootOptions, root_disk: RootDisk, generic_initrd: Path, bus: Bus
) -> None:
    options = replace(root_boot, initrd=generic_initrd, disks=(Disk(root_disk.image, bus),))
    booted = boot_to_token(options)
    assert not booted.failed_units, f"units failed; see {root_boot.log_path}"


def first_archive_names(image: Path) -> list[str]:
    """What GNU cpio, which stops at the first trailer, lists at the head of the image."""
    listed = subprocess.run(["cpio", "-it", "--quiet"], stdin=image.open("rb"),
                            capture_output=True, check=True, text=True)  # fmt: skip
    return listed.stdout.splitlines()


def main_archive_names(image: Path) -> set[str]:
    """The compressed archive after the early segment, read by zstd and GNU cpio."""
    data = image.read_bytes()
    trailer = data.index(b"TRAILER!!!\0") + len("TRAILER!!!\0")
    rest = data[(trailer + 3) // 4 * 4 :].lstrip(b"\0")
    assert rest[:4] == b"\x28\xb5\x2f\xfd", "no zstd stream right after the early segment"
    unpacked = subprocess.run(["zstd", "-dc"], input=rest, capture_output=True, check=True)
    listed = subprocess.run(["cpio", "-it", "--quiet"], input=unpacked.stdout,
                            capture_output=True, check=True)  # fmt: skip
    return set(listed.stdout.decode().splitlines())


def test_generic_image_boots_on_virtio_and_a_hostonly_image_it_builds_boots_the_guest(
    kernel: Kernel, root_boot: BootOptions, generic_initrd: Path, tmp_path: Path
) -> None:
    source = Path(bookend.__file__).parent
    job = make_job_disk(tmp_path / "job.img", HOSTONLY_JOB, files={"src/bookend": source},
                        modules_kver=kernel.version)  # fmt: skip
    build_log_path = tmp_path / "build-console.log"
    options = replace(root_boot, initrd=generic_initrd, disks=(*root_boot.disks, job),
                      timeout=JOB_LIMIT, log_path=build_log_path)  # fmt: skip
    built = run_job(options)
    assert built.status == 0, f"the build in the guest failed; see {build_log_path}"
    # That boot was the generic image's on the root disk on virtio, proven by its token.
    assert not failed_units(built.text), f"units failed; see {build_log_path}"
    build_log = read_job_output(job.path, "build.log", tmp_path / "build.log").read_text()
    image = read_job_output(job.path, "hostonly.img", tmp_path / "hostonly.img")
    vendor = read_job_output(job.path, "vendor", tmp_path / "vendor").read_text().strip()

    # -v printed what detection found: the guest's virtio disk and its ext4 root.
    assert "hostonly detection:" in build_log
    for detected in ("module virtio_blk", "module ext4", "filesystem ext4"):
        assert detected in build_log, build_log

    # The early microcode segment leads, uncompressed, with only this CPU's vendor,
    # from the guest's microcode package.
    assert vendor in ("AuthenticAMD", "GenuineIntel")
    early = [name for name in first_archive_names(image) if name.endswith(".bin")]
    assert early == [f"{MICROCODE_DIR}/{vendor}.bin"]

    # The main archive holds the detected drivers, the record, and no other disk driver.
    names = main_archive_names(image)
    modules = {Path(n).name.split(".ko")[0] for n in names if ".ko" in n}
    assert {"virtio_blk", "ext4"} <= modules
    assert not {"nvme", "ahci", "xfs", "btrfs"} & modules
    assert "usr/lib/bookend/hostonly-modules.txt" in names

    booted = boot_to_token(replace(root_boot, initrd=image))
    assert not booted.failed_units, f"units failed; see {root_boot.log_path}"
    print(f"hostonly image built in the guest: {image.stat().st_size} bytes")
