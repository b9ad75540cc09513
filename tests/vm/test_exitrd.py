"""The exitrd: the running system unpacks it at shutdown, systemd pivots into it, and its
/shutdown (systemd-shutdown) unmounts the old root and detaches the storage under it.

A job in the booted guest installs bookend into the root, copies the exitrd beside it
and installs the unit with `bookend install-exitrd`; then the root's report unit
powers the machine off, which is the shutdown under test. Both boots also prove the
exitrd's /shutdown ran the way systemd's TEST-08-INITRD does (harness/exitstatus.py):
the root leaves a random status N, the exitrd's hook writes N+1 to QEMU's
isa-debug-exit port, and QEMU exits with ((N+1) << 1) | 1. The plain root's disk is a
copy that the host checks afterwards (e2fsck, dumpe2fs); the LVM-on-LUKS2 stack is
checked from another boot.
Run with `-rP` to see the measured figures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from bookend.holders import ALL_DETACHED
from bookend.proc import run
from harness.exitrdjob import (
    SHUTDOWN_LIMIT,
    after,
    install_exitrd_job,
    shutdown_through,
    split_at_pivot,
)
from harness.exitstatus import DEBUG_EXIT, console_line, new_status, pass_status_job, qemu_status
from harness.guestjob import make_job_disk, read_job_output, run_job
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.stackdisks import StackDisks

# Opens the stack the exitrd took down, from another root, and checks its filesystem.
FSCK_JOB = """\
#!/bin/sh
set -ux
printf %s "$(cat /job/passphrase)" | cryptsetup open --key-file=- "$(cat /job/device)" check
vgchange -ay bookendvg
e2fsck -fn /dev/bookendvg/root > /job/out/fsck.log 2>&1
echo $? > /job/out/fsck-status
dumpe2fs -h /dev/bookendvg/root > /job/out/dumpe2fs.txt 2>&1
vgchange -an bookendvg
cryptsetup close check
"""


def test_exitrd_takes_down_plain_root(
    root_disk: RootDisk, root_boot: BootOptions, host_initrd: Path, tmp_path: Path
) -> None:
    exitrd = host_initrd.with_name("exitrd.img")
    status = new_status()
    job = install_exitrd_job(tmp_path / "job.img", exitrd.parent, then=pass_status_job(status))
    # The shutdown writes to the root, so it gets its own copy of the cached disk.
    root = tmp_path / "root.img"
    run(["cp", "--sparse=always", "--reflink=auto", str(root_disk.image), str(root)])
    text = shutdown_through(replace(root_boot, disks=(Disk(root, snapshot=False), job),
                                    plain_devices=DEBUG_EXIT),
                            exit_status=qemu_status(status))  # fmt: skip
    # A damaged exitrd is refused at install, a replaced one at shutdown: test_exitrd_trust.
    unpacked = re.search(r"bookend: exitrd \w{64} .*: \d+ entries copied .* in (\d+) ms", text)
    assert unpacked, "the unit did not copy the exitrd at shutdown"
    _, pivoted = split_at_pivot(text)
    # From here on the exitrd's /shutdown speaks: systemd-shutdown, named by argv[0].
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted), pivoted[-2000:]
    assert "shutdown[1]: All filesystems unmounted." in pivoted, pivoted[-3000:]
    # A plain root's exitrd has no storage to take down, so no holders hook to run.
    assert ALL_DETACHED not in pivoted and "bookend-holders" not in pivoted, pivoted[-3000:]
    assert console_line(status) in pivoted, pivoted[-2000:]
    assert read_job_output(job.path, "ram-kib", tmp_path / "ram").read_text().strip() == "0"
    # The root the exitrd unmounted is clean: no journal to replay, nothing for e2fsck.
    header = subprocess.run(["dumpe2fs", "-h", str(root)], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert re.search(r"Filesystem state:\s+clean", header), header
    assert "needs_recovery" not in header, header
    fsck = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    print(f"exitrd {exitrd.stat().st_size / 1e6:.1f} MB, copied at shutdown in "
          f"{int(unpacked.group(1)) / 1000:.2f} s; RAM while running: 0")  # fmt: skip


def test_exitrd_detaches_lvm_on_luks_and_leaves_ext4_clean(
    kernel: Kernel,
    root_disk: RootDisk,
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    generic_initrd: Path,
    tmp_path: Path,
) -> None:
    stack = stacks["lvm-on-luks"]
    assert stack.passphrase and stack.luks_uuid
    # The shutdown writes to the disk, so it gets its own copy of the cached one.
    disk = tmp_path / "stack.img"
    shutil.copyfile(stack.disks[0], disk)
    exitrd = generic_initrd.with_name("exitrd.img")
    status = new_status()
    job = install_exitrd_job(tmp_path / "job.img", exitrd.parent, then=pass_status_job(status))
    append = f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} rw"
    text = shutdown_through(replace(root_boot, initrd=generic_initrd, append=append,
                                    disks=(Disk(disk, snapshot=False), job),
                                    plain_devices=DEBUG_EXIT),
                            stack.passphrase, exit_status=qemu_status(status))  # fmt: skip
    pivoted = after(text, "Returning to initrd...")
    assert "shutdown[1]: All DM devices detached." in pivoted, pivoted[-3000:]
    assert ALL_DETACHED in pivoted, pivoted[-3000:]
    assert console_line(status) in pivoted, pivoted[-2000:]

    # Another boot, from the plain root, opens the stack and checks the filesystem.
    check = make_job_disk(tmp_path / "check.img", FSCK_JOB, modules_kver=kernel.version,
                          files={"passphrase": _write(tmp_path / "pass", stack.passphrase),
                                 "device": _write(tmp_path / "dev",
                                                  "/dev/disk/by-id/virtio-bookend1")})  # fmt: skip
    disks = (Disk(root_disk.image), Disk(disk, snapshot=False), check)
    run_job(replace(root_boot, disks=disks, log_path=tmp_path / "check-console.log"),
            exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip
    fsck = read_job_output(check.path, "fsck.log", tmp_path / "fsck.log").read_text()
    checked = read_job_output(check.path, "fsck-status", tmp_path / "status").read_text()
    header = read_job_output(check.path, "dumpe2fs.txt", tmp_path / "dumpe2fs").read_text()
    assert checked.strip() == "0", fsck
    assert re.search(r"Filesystem state:\s+clean", header), header
    assert "needs_recovery" not in header


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
