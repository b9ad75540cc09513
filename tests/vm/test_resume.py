"""Hibernation and resume with the swap on LVM on LUKS2 (issue 17, proof 3).

Boot 1 of a copy of the cached disk (harness/stackdisks.py RESUME_SCENARIOS): the real
root's job makes a random value that only its own memory holds, turns the swap LV on
and hibernates; QEMU exits. Boot 2 of the same files: the initrd asks for the
passphrase, LVM brings the swap LV up, systemd-hibernate-resume hands it to the kernel,
and the job of boot 1 goes on and prints the same value. Boot 2 is given a token of its
own: the root reporting boot 1's token proves the running system is boot 1's.
Run with `-rP` to see the timings.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from bookend.proc import run
from harness.guestjob import job_status, make_job_disk
from harness.qemu import Boot, BootOptions, Disk, Kernel, boot
from harness.rootdisk import RootDisk
from harness.stackdisks import RESUME_SWAP_UUID, StackDisks, ensure_resume_stack_disks
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


def test_hibernate_to_swap_on_lvm_on_luks2_and_resume(
    root_boot: BootOptions, resume_stack: StackDisks, generic_initrd: Path, tmp_path: Path
) -> None:
    stack = resume_stack
    assert stack.passphrase and stack.luks_uuid
    # Both boots write to these files: the second must see what the first left.
    disk = tmp_path / "disk.img"
    run(["cp", "--sparse=always", "--reflink=auto", stack.disks[0], disk])
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
    first_token, second_token = new_token(), new_token()
    first = replace(options, append=f"{options.append} bookend.job bookend.token={first_token}",
                    log_path=tmp_path / "hibernate.log")  # fmt: skip
    with boot(first) as vm:
        unlock(vm, stack.passphrase)
        value = vm.expect(r"RESUME-HOLDING ([0-9a-f]{32})\s", timeout=600).group(1)
        assert vm.wait_exit(300) == 0, "QEMU did not end with the hibernation"
        hibernated = vm.text
        first_seconds = vm.elapsed
    assert "RESUME-VALUE" not in hibernated and "BOOKEND-TOKEN" not in hibernated
    assert re.search(r"PM: hibernation: hibernation entry", hibernated)

    second = replace(options, append=f"{options.append} bookend.token={second_token}",
                     log_path=tmp_path / "resume.log")  # fmt: skip
    with boot(second) as vm:
        unlock(vm, stack.passphrase)
        vm.expect(RESUMING, timeout=300)
        vm.expect(r"PM: hibernation: hibernation exit", timeout=300)
        vm.expect(rf"RESUME-VALUE {value}\s", timeout=300)
        # The report of the resumed system carries boot 1's command line.
        expect_token(vm, first_token, timeout=300)
        resumed = vm.text
        second_seconds = vm.elapsed
    before, after = resumed.split(RESUMING, 1)
    assert second_token not in after
    # The root was not checked (its journal replayed) before the resume (resume.py).
    assert "Starting systemd-fsck-root" not in before
    assert "ordering cycle" not in resumed.lower()
    assert job_status(job.path) == 0
    print(f"hibernate: {first_seconds:.0f} s, resume: {second_seconds:.0f} s")
