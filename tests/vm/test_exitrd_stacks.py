"""Every storage stack booted and taken down by the exitrd, and what it says when one
cannot be.

LUKS2 on MD RAID1, LVM on MD RAID1 (stackdisks.EXIT_SCENARIOS), btrfs RAID1 in a
subvolume and ext4 on LVM on LUKS2 (stackdisks.SCENARIOS) roots each boot through the
generic initrd (the passphrase typed at the console, the arrays assembled from both
members) to their token with no unit failed, then power off through its exitrd: its
systemd-shutdown (252 on Debian 12) unmounts /oldroot, detaches the DM devices and
stops the arrays (the mdraid feature's hook stops what it leaves), and bookend.holders'
hook says that nothing is left. Each shutdown also proves that the exitrd's /shutdown
ran (harness/exitstatus.py, as systemd's TEST-08-INITRD): the root leaves a random status
N, the exitrd's hook writes N+1 to QEMU's isa-debug-exit port, QEMU exits with
((N+1) << 1) | 1. One more boot, of the plain root,
then looks at every disk: the MD superblocks say clean and assemble with no resync, the
file systems check clean.

A root with a "storage daemon" (argv[0] starting with "@": systemd-shutdown spares it)
that keeps a file on the root open cannot be detached: the exitrd names the holder,
and powers off within its bound all the same.
Run with `-rP` to see the measured figures.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bookend.archive.reader import compression_of
from bookend.holders import ALL_DETACHED, WAIT_SECONDS
from bookend.proc import run
from harness.exitrdjob import (
    PROMPT,
    SHUTDOWN_LIMIT,
    install_exitrd_job,
    shutdown_through,
    split_at_pivot,
)
from harness.exitstatus import DEBUG_EXIT, console_line, new_status, pass_status_job, qemu_status
from harness.guestjob import make_job_disk, read_job_output, run_job
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk, copy_of
from harness.stackdisks import StackDisks, ensure_exit_stack_disks
from harness.token import failed_units, in_order

# The initrd's systemd greets us first.
INITRD = r"Welcome to .*\(bookend initrd\)"
# The kernel's last line as QEMU powers off.
POWER_DOWN = "reboot: Power down"
# From the pivot into the exitrd to the power-off when the root cannot be detached:
# the hook's bound, and room for systemd-shutdown's own loop under emulation.
HELD_LIMIT = WAIT_SECONDS + 30

# In the check boot: the plain root at index 0, the members of each stack in order
# (CHECKED), the job disk last.
CHECKED = ("luks-on-md", "lvm-on-md", "btrfs-raid1", "lvm-on-luks")
CHECK_JOB = """\
#!/bin/sh
set -ux
out=/job/out
dev() { echo "/dev/disk/by-id/virtio-bookend$1"; }
# What the stop left in the superblocks, before anything here assembles or writes.
for i in 1 2 3 4; do
    mdadm --examine "$(dev "$i")" > "$out/examine-$i.txt" 2>&1
done
udevadm settle
mdadm --assemble --scan --run > "$out/assemble.txt" 2>&1
udevadm settle
cat /proc/mdstat > "$out/mdstat.txt"
for dir in /sys/block/md*/md; do
    echo "${dir%/md}: $(cat "$dir/array_state") $(cat "$dir/sync_action")"
done > "$out/arrays.txt"
printf %s "$(cat /job/passphrase)" | \
    cryptsetup open --readonly --key-file=- "$(blkid -U "$(cat /job/luks-uuid)")" check
e2fsck -fn /dev/mapper/check > "$out/fsck-luks-on-md.log" 2>&1
echo $? > "$out/fsck-luks-on-md.status"
dumpe2fs -h /dev/mapper/check > "$out/dumpe2fs-luks-on-md.txt" 2>&1
cryptsetup close check
vgchange -ay mdvg
e2fsck -fn /dev/mdvg/root > "$out/fsck-lvm-on-md.log" 2>&1
echo $? > "$out/fsck-lvm-on-md.status"
dumpe2fs -h /dev/mdvg/root > "$out/dumpe2fs-lvm-on-md.txt" 2>&1
vgchange -an mdvg
btrfs device scan
btrfs check --readonly "$(dev 5)" > "$out/fsck-btrfs-raid1.log" 2>&1
echo $? > "$out/fsck-btrfs-raid1.status"
btrfs inspect-internal dump-super "$(dev 5)" > "$out/super-btrfs-raid1.txt" 2>&1
printf %s "$(cat /job/passphrase)" | cryptsetup open --key-file=- "$(dev 7)" check-pv
vgchange -ay bookendvg
e2fsck -fn /dev/bookendvg/root > "$out/fsck-lvm-on-luks.log" 2>&1
echo $? > "$out/fsck-lvm-on-luks.status"
dumpe2fs -h /dev/bookendvg/root > "$out/dumpe2fs-lvm-on-luks.txt" 2>&1
vgchange -an bookendvg
cryptsetup close check-pv
mdadm --stop --scan
"""


@pytest.fixture(scope="module")
def exit_stacks(kernel: Kernel, root_disk: RootDisk) -> dict[str, StackDisks]:
    """LUKS2 on MD RAID1 and LVM on MD RAID1 (harness/stackdisks.py EXIT_SCENARIOS)."""
    return ensure_exit_stack_disks(kernel, root_disk)


def stamp(text: str, pattern: str) -> float:
    """The kernel's timestamp on the first console line matching pattern."""
    match = re.search(r"\[\s*(\d+\.\d+)\][^\n]*" + pattern, text)
    assert match, f"no console line matching {pattern!r}"
    return float(match.group(1))


def image_sizes(image: Path, tmp_path: Path) -> tuple[float, float]:
    """An image's size in MB as it is on disk and unpacked."""
    tree = tmp_path / f"{image.name}.tree"
    # This interpreter: bookend.proc scrubs PATH, and another python3 may lack lz4.
    run([sys.executable, "-m", "bookend", "extract", str(image), str(tree)])
    unpacked = sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file())
    return image.stat().st_size / 1e6, unpacked / 1e6


def root_args(stack: StackDisks) -> str:
    """The stack's root, and its LUKS2 volume, if any, unlocked under the name the real
    root's crypttab gives it, so that the root finds it open (under another name, the
    root's own systemd-cryptsetup@ unit would fail to open it again)."""
    if stack.luks_uuid:
        return f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name}"
    return stack.cmdline


def test_stack_roots_boot_and_the_exitrd_takes_them_down_and_leaves_them_clean(
    kernel: Kernel,
    root_disk: RootDisk,
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    exit_stacks: dict[str, StackDisks],
    generic_initrd: Path,
    tmp_path: Path,
) -> None:
    chosen = {**exit_stacks, "btrfs-raid1": stacks["btrfs-raid1"],
              "lvm-on-luks": stacks["lvm-on-luks"]}  # fmt: skip
    exitrd = generic_initrd.with_name("exitrd.img")
    figures = []
    copies: list[Path] = []
    for name in CHECKED:
        stack = chosen[name]
        # The shutdown writes to the disks, so it gets its own copies of the cached ones.
        disks: list[Path] = []
        for member in stack.disks:
            copy = tmp_path / f"{name}-{member.name}"
            copy_of(member, copy)
            disks.append(copy)
        copies += disks
        status = new_status()
        job = install_exitrd_job(tmp_path / f"job-{name}.img", exitrd.parent,
                                 then=pass_status_job(status))  # fmt: skip
        # The root has no modules of its own: the initrd loads ext4 for the job disk.
        modules = "" if stack.fs_type == "ext4" else " rd.modules-load=ext4"
        append = f"{root_args(stack)} rw{modules}"
        options = replace(root_boot, initrd=generic_initrd, append=append,
                          disks=(*(Disk(d, snapshot=False) for d in disks), job),
                          plain_devices=DEBUG_EXIT,
                          log_path=tmp_path / f"{name}-console.log")  # fmt: skip
        text = shutdown_through(options, stack.passphrase, exit_status=qemu_status(status))
        running, exiting = split_at_pivot(text)
        # The way in: the initrd asked for the passphrase, if any, and nothing failed.
        in_order(running, (INITRD, PROMPT) if stack.passphrase else (INITRD,))
        assert not failed_units(text), f"{name}: units failed; see {options.log_path}"
        assert ALL_DETACHED in exiting, f"{name}: {exiting[-3000:]}"
        assert console_line(status) in exiting, f"{name}: {exiting[-2000:]}"
        assert "shutdown[1]: All filesystems unmounted." in exiting, f"{name}: {exiting[-3000:]}"
        if stack.md_name:
            # systemd-shutdown's loop stops the arrays (since 247), else the mdraid hook.
            stopped = r"shutdown\[1\]: Stopping MD /dev/md\d+|bookend: stopped MD array md\d+"
            assert re.search(stopped, exiting), exiting[-3000:]
        if stack.luks_uuid or stack.vg:
            assert "shutdown[1]: All DM devices detached." in exiting, f"{name}: {exiting[-3000:]}"
        # From the system's power-off request (systemd's first "Stopping" after the
        # job) to the exit-status hook's line, the exitrd's last (QEMU ends 1 s later
        # through isa-debug-exit, before the kernel's power-down line), and the part of
        # it spent in the exitrd.
        start = stamp(running, r"BOOKEND-JOB-STATUS")
        pivot = stamp(text, r"(Returning to initrd|Entering exitrd)")
        end = stamp(exiting, r"BOOKEND-EXIT-STATUS")
        figures.append(f"{name}: shutdown {end - start:.1f} s after the job, "
                       f"{end - pivot:.1f} s of it in the exitrd")  # fmt: skip

    # One boot of the plain root looks at all of them.
    stack = exit_stacks["luks-on-md"]
    assert stack.passphrase and stack.luks_uuid
    files = {"passphrase": tmp_path / "passphrase", "luks-uuid": tmp_path / "luks-uuid"}
    files["passphrase"].write_text(stack.passphrase)
    files["luks-uuid"].write_text(stack.luks_uuid)
    check = make_job_disk(tmp_path / "check.img", CHECK_JOB, files=files,
                          modules_kver=kernel.version)  # fmt: skip
    attached = (Disk(root_disk.image), *(Disk(c, snapshot=False) for c in copies), check)
    run_job(replace(root_boot, disks=attached, log_path=tmp_path / "check-console.log"),
            exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip

    def output(name: str) -> str:
        return read_job_output(check.path, name, tmp_path / name).read_text()

    for index in range(1, 5):
        examined = output(f"examine-{index}.txt")
        assert re.search(r"State : clean", examined), examined
    arrays = output("arrays.txt")
    assert arrays.count("idle") == 2 and "resync" not in output("mdstat.txt"), arrays
    for name in CHECKED:
        assert output(f"fsck-{name}.status").strip() == "0", output(f"fsck-{name}.log")
    for name in ("luks-on-md", "lvm-on-md", "lvm-on-luks"):
        header = output(f"dumpe2fs-{name}.txt")
        assert re.search(r"Filesystem state:\s+clean", header), header
        assert "needs_recovery" not in header, header
    # A btrfs unmounted cleanly leaves no log tree to replay.
    assert re.search(r"^log_root\s+0$", output("super-btrfs-raid1.txt"), re.M)

    packed, unpacked = image_sizes(exitrd, tmp_path)
    compression = compression_of(exitrd.read_bytes()[:8])
    print(f"generic exitrd (with the test's exit-status hook): {packed:.1f} MB {compression}, "
          f"{unpacked:.1f} MB unpacked")  # fmt: skip
    print("\n".join(figures))


HOLDER_JOB = """\
# A "storage daemon" that keeps a file on the root open for writing: argv[0] starts
# with "@", so systemd-shutdown spares it, and its unit is not stopped at shutdown.
systemd-run --unit=bookend-test-holder -p DefaultDependencies=no -p IgnoreOnIsolate=yes \\
    -p KillMode=none \\
    /bin/bash -c 'exec 3>>/var/tmp/bookend-held; exec -a @bookend-holder sleep infinity'
sleep 1
systemctl is-active bookend-test-holder.service
# The hook names a held file by its inode (the exitrd has no readlink): say which it is.
echo "bookend-test: held inode $(stat -c %i /var/tmp/bookend-held)" > /dev/kmsg
"""


def test_exitrd_names_what_holds_the_root_and_powers_off_within_its_bound(
    root_boot: BootOptions, generic_initrd: Path, tmp_path: Path
) -> None:
    # Booted through the generic initrd, for its exitrd: that takes storage down (LUKS,
    # LVM, MD), so it has the holders hook, which a plain root's exitrd goes without.
    exitrd = generic_initrd.with_name("exitrd.img")
    job = install_exitrd_job(tmp_path / "job.img", exitrd.parent, then=HOLDER_JOB)
    booted = replace(root_boot, initrd=generic_initrd, disks=(*root_boot.disks, job))
    text = shutdown_through(booted)
    _, exiting = split_at_pivot(text)
    assert ALL_DETACHED not in exiting
    assert re.search(r"bookend: not detached after \d+ s", exiting), exiting[-3000:]
    assert re.search(r"bookend: still mounted: /oldroot \(ext4 from /dev/\S+\)", exiting)
    inode = re.search(r"bookend-test: held inode (\d+)", text)
    assert inode, text[-3000:]
    held = re.search(r"bookend:   /oldroot is held by pid \d+ \(sleep, a storage daemon: "
                     rf"argv\[0\] starts with @\): fd 3 \(inode {inode[1]}\)",
                     exiting)  # fmt: skip
    assert held, exiting[-3000:]
    pivot = stamp(text, r"(Returning to initrd|Entering exitrd)")
    end = stamp(exiting, POWER_DOWN)
    assert end - pivot <= HELD_LIMIT, f"{end - pivot:.1f} s from the pivot to the power-off"
    print(f"root held open: holder named, powered off {end - pivot:.1f} s after the pivot "
          f"(bound {HELD_LIMIT} s)")  # fmt: skip
