"""Hibernation and resume (issue 17, proof 3): through resume=, and through the
HibernateLocation EFI variable with no resume= at all.

Boot 1 of a copy of the cached disk (harness/stackdisks.py RESUME_SCENARIOS): the real
root's job makes a random value that only its own memory holds, turns the swap LV on
and hibernates; QEMU exits. Boot 2 of the same files: the initrd asks for the
passphrase, LVM brings the swap LV up, systemd-hibernate-resume hands it to the kernel,
and the job of boot 1 goes on and prints the same value. Boot 2 is given a token of its
own: the root reporting boot 1's token proves the running system is boot 1's.

The EFI variable's test does the same on the Debian 13 guest (systemd 257) under OVMF,
with a plain swap disk and no resume= on either command line: systemd-sleep names the
swap in HibernateLocation (OVMF's variables file keeps it), and in boot 2 the initrd's
generator reads it through efivarfs, and systemd-hibernate-resume resumes and clears it.
Run with `-rP` to see the timings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bookend.proc import run
from harness.guestjob import job_status, make_job_disk
from harness.guests import DEBIAN13, Guest
from harness.images import QEMU_VIRTIO_EXT4
from harness.netroot import INITRD_GREETING
from harness.qemu import OVMF_BLANK_VARS, Boot, BootOptions, Disk, Kernel, boot
from harness.rootdisk import RootDisk, copy_of
from harness.secureboot import virt_fw_vars
from harness.stackdisks import (
    RESUME_SWAP_MIB,
    RESUME_SWAP_UUID,
    StackDisks,
    ensure_resume_stack_disks,
)
from harness.token import expect_token, new_token

PROMPT = r"Please enter passphrase for disk"
# The kernel's line when systemd-hibernate-resume hands it the swap holding an image.
RESUMING = "PM: hibernation: resume from hibernation"
# Little RAM: the image the kernel writes and reads back under emulation stays small.
MEMORY_MIB = 512

# Holds a value nobody wrote to a disk, hibernates, and prints the value once resumed.
# `systemctl start` waits for hibernate.target's job, which ends only after the resume.
HIBERNATE_JOB = f"""#!/bin/bash
set -eu
value=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')
swapon /dev/disk/by-uuid/{RESUME_SWAP_UUID}
echo "RESUME-HOLDING $value" > /dev/ttyS0
# Less for the kernel to sort through and write under emulation: no page cache.
sync
echo 3 > /proc/sys/vm/drop_caches
systemctl start hibernate.target
echo "RESUME-VALUE $value" > /dev/ttyS0
"""


@pytest.fixture(scope="module")
def resume_stack(kernel: Kernel, root_disk: RootDisk) -> StackDisks:
    return ensure_resume_stack_disks(kernel, root_disk)


def unlock(vm: Boot, passphrase: str) -> None:
    vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
    vm.expect(PROMPT, timeout=300)
    vm.send(passphrase + "\n")


@dataclass(frozen=True)
class Hibernation:
    value: str  # what boot 1's job held in RAM only
    text: str
    seconds: float
    token: str  # boot 1's, which the resumed system reports


def hibernate(options: BootOptions, log: Path, on_the_way: Callable[[Boot], None]) -> Hibernation:
    """Boot 1: the job holds a value and hibernates, and QEMU ends with the hibernation.
    on_the_way runs first (the passphrase, the greeting)."""
    token = new_token()
    first = replace(options, append=f"{options.append} bookend.job bookend.token={token}",
                    log_path=log)  # fmt: skip
    with boot(first) as vm:
        on_the_way(vm)
        value = vm.expect(r"RESUME-HOLDING ([0-9a-f]{32})\s", timeout=600).group(1)
        assert vm.wait_exit(300) == 0, "QEMU did not end with the hibernation"
        text, seconds = vm.text, vm.elapsed
    assert "RESUME-VALUE" not in text and "BOOKEND-TOKEN" not in text
    assert re.search(r"PM: hibernation: hibernation entry", text)
    return Hibernation(value, text, seconds, token)


def resume(options: BootOptions, log: Path, on_the_way: Callable[[Boot], None],
           hibernated: Hibernation) -> tuple[str, float]:  # fmt: skip
    """Boot 2, of the same files, with a token of its own: the kernel resumes boot 1's
    image, whose job prints the value it held and whose root reports boot 1's token.
    Returns the console text and the boot's seconds."""
    token = new_token()
    second = replace(options, append=f"{options.append} bookend.token={token}", log_path=log)
    with boot(second) as vm:
        on_the_way(vm)
        vm.expect(RESUMING, timeout=300)
        vm.expect(r"PM: hibernation: hibernation exit", timeout=300)
        vm.expect(rf"RESUME-VALUE {hibernated.value}\s", timeout=300)
        expect_token(vm, hibernated.token, timeout=300)
        text, seconds = vm.text, vm.elapsed
    before, after = text.split(RESUMING, 1)
    assert token not in after
    # The root was not checked (its journal replayed) before the resume (resume.py).
    assert "Starting systemd-fsck-root" not in before
    assert "ordering cycle" not in text.lower()
    return text, seconds


def test_hibernate_to_swap_on_lvm_on_luks2_and_resume(
    root_boot: BootOptions, resume_stack: StackDisks, generic_initrd: Path, tmp_path: Path
) -> None:
    stack = resume_stack
    passphrase = stack.passphrase
    assert passphrase and stack.luks_uuid
    # Both boots write to these files: the second must see what the first left.
    disk = tmp_path / "disk.img"
    copy_of(stack.disks[0], disk)
    job = make_job_disk(tmp_path / "job.img", HIBERNATE_JOB)
    options = replace(
        root_boot,
        initrd=generic_initrd,
        disks=(Disk(disk, snapshot=False), job),
        memory_mib=MEMORY_MIB,
        # On a busy host the passphrase prompt alone may come a minute into the wait for
        # the root device; systemd 252's generator gives the swap the root's timeout too.
        append=f"{stack.cmdline} rw rootflags=x-systemd.device-timeout=300s",
    )

    def typed(vm: Boot) -> None:
        unlock(vm, passphrase)

    hibernated = hibernate(options, tmp_path / "hibernate.log", typed)
    _, seconds = resume(options, tmp_path / "resume.log", typed, hibernated)
    assert job_status(job.path) == 0
    print(f"hibernate: {hibernated.seconds:.0f} s, resume: {seconds:.0f} s")


# Seconds before QEMU is killed: OVMF's start under emulation comes on top of the boot.
EFI_BOOT_LIMIT = 900
# The swap disk of the EFI variable's test, whole (no partition table), made by mkswap.
EFI_SWAP_UUID = "b00ce4d0-7e57-4b00-8007-0000000000e1"
# systemd's vendor GUID, which its EFI variables are under.
SYSTEMD_VENDOR = "8cf2644b-4b0b-428f-9387-6d876050dc67"
EFI_HIBERNATE_JOB = HIBERNATE_JOB.replace(RESUME_SWAP_UUID, EFI_SWAP_UUID)


def hibernate_location(variables: Path, tmp_path: Path) -> dict[str, object] | None:
    """systemd's HibernateLocation in an OVMF variables file (its JSON), as virt-fw-vars
    reads the store; None when the store has no such variable."""
    tool = virt_fw_vars()
    assert tool is not None
    dump = tmp_path / "variables.json"
    subprocess.run([tool, "--input", variables, "--output-json", dump],
                   check=True, capture_output=True)  # fmt: skip
    for variable in json.loads(dump.read_text())["variables"]:
        if variable["name"] == "HibernateLocation" and variable["guid"] == SYSTEMD_VENDOR:
            # systemd writes the JSON as a UCS-2 string, NUL-terminated.
            text = bytes.fromhex(variable["data"]).decode("utf-16-le").rstrip("\0")
            found: dict[str, object] = json.loads(text)
            return found
    return None


@pytest.mark.parametrize("guest", [DEBIAN13], indirect=True)
def test_hibernate_and_resume_through_the_efi_variable(guest: Guest, tmp_path: Path) -> None:
    if virt_fw_vars() is None or not OVMF_BLANK_VARS.is_file():
        pytest.skip("needs virt-fw-vars and OVMF's variables store (scripts/setup)")
    initrd = guest.build_image(tmp_path / "initrd.img", *QEMU_VIRTIO_EXT4,
                               "--add-feature", "resume")  # fmt: skip
    swap = tmp_path / "swap.img"
    run(["truncate", "-s", f"{RESUME_SWAP_MIB}M", swap])
    run(["mkswap", "-U", EFI_SWAP_UUID, swap])
    # Both boots write to these files: the second must see what the first left (the
    # resumed kernel goes on with the root's filesystem as boot 1 left it).
    root = tmp_path / "root.img"
    copy_of(guest.root.image, root)
    variables = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_BLANK_VARS, variables)
    job = make_job_disk(tmp_path / "job.img", EFI_HIBERNATE_JOB)
    options = BootOptions(
        kernel=guest.kernel.path,
        initrd=initrd,
        disks=(Disk(root, snapshot=False), Disk(swap, snapshot=False), job),
        efi_vars=variables,
        memory_mib=MEMORY_MIB,
        append=f"root=UUID={guest.root.uuid} rw",
        timeout=EFI_BOOT_LIMIT,
    )

    def greeted(vm: Boot) -> None:
        vm.expect(INITRD_GREETING, timeout=300)

    hibernated = hibernate(options, tmp_path / "hibernate.log", greeted)
    # systemd-sleep named the swap in the firmware's store, which outlived QEMU.
    location = hibernate_location(variables, tmp_path)
    assert location is not None, "systemd-sleep wrote no HibernateLocation"
    assert location["uuid"] == EFI_SWAP_UUID and location["offset"] == 0, location
    assert location["kernelVersion"] == guest.kernel.version, location

    # The same files again, and no resume= either: only the variable names the swap.
    def reported(vm: Boot) -> None:
        greeted(vm)
        vm.expect(rf"Reported hibernation image:.* UUID={EFI_SWAP_UUID} offset=0", timeout=300)

    resumed, seconds = resume(options, tmp_path / "resume.log", reported, hibernated)
    for text in (hibernated.text, resumed):
        assert "resume=" not in re.findall(r"Kernel command line: (.*)", text)[0]
    # Cleared by the initrd's systemd-hibernate-resume before it resumed: the firmware's
    # store is asked, not the resumed system, which still read the variable through
    # efivarfs (Linux 6.12, Debian's OVMF): what it had before hibernating, not the store.
    assert hibernate_location(variables, tmp_path) is None
    assert job_status(job.path) == 0
    print(f"EFI variable: hibernate: {hibernated.seconds:.0f} s, resume: {seconds:.0f} s")
