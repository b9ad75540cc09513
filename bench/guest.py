"""Boot an image in QEMU (TCG) into the shared test root disk and read the guest's times.

The root disk (harness/rootdisk.py) runs `/job/run` from a disk labelled
BOOKEND-JOB during its boot, then reports the test token and powers off. Our job
only queues a transient unit ordered after multi-user.target (the disk's default
target) and before that report; the unit prints the manager's timestamps on the
serial console. All times are CLOCK_MONOTONIC, i.e. seconds since the kernel
started, as systemd records them:

- switch-root: UserspaceTimestampMonotonic, when the real root's PID 1 started.
  After a systemd initrd that is the moment of switch-root; after
  initramfs-tools it is when its /init exec'd the root's systemd. The same
  definition for every generator.
- default target: multi-user.target's ActiveEnterTimestampMonotonic, less the
  run time of the bench job itself (the target waits for the job, which mounts
  its disk and queues the unit: time no generator should be charged for).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.guestjob import make_job_disk
from harness.qemu import BootOptions, Disk, boot
from harness.rootdisk import RootDisk
from harness.token import expect_token, new_token, with_token

BOOT_LIMIT = 600  # seconds for the whole boot; TCG on a busy host is slow

TIMES_SCRIPT = """\
#!/bin/sh
# Print the manager's boot timestamps (microseconds, CLOCK_MONOTONIC) for the host.
show() { systemctl show -P "$@"; }
echo "BENCH-TIMES" \\
    "initrd=$(show InitRDTimestampMonotonic)" \\
    "userspace=$(show UserspaceTimestampMonotonic)" \\
    "target=$(show ActiveEnterTimestampMonotonic multi-user.target)" \\
    "jobstart=$(show ExecMainStartTimestampMonotonic bookend-test-job.service)" \\
    "jobend=$(show ExecMainExitTimestampMonotonic bookend-test-job.service)" > /dev/ttyS0
"""

JOB_SCRIPT = """\
#!/bin/sh
set -eu
# /job is unmounted when this script ends; /run stays.
# Run through sh: initramfs-tools leaves /run mounted noexec.
cp /job/times /run/bench-times
# Queued, not waited for: multi-user.target waits for this job to finish.
systemd-run --no-block --unit=bench-times --property=Type=oneshot \\
    --property=After=multi-user.target --property=Before=bookend-test-report.service \\
    /bin/sh /run/bench-times
"""

TIMES_LINE = re.compile(
    r"BENCH-TIMES initrd=(\d+) userspace=(\d+) target=(\d+) jobstart=(\d+) jobend=(\d+)"
)


@dataclass(frozen=True)
class GuestTimes:
    switch_root: float  # seconds
    default_target: float  # seconds, the bench job's own run time taken out


def parse_times(line: str) -> GuestTimes:
    match = TIMES_LINE.search(line)
    if match is None:
        raise ValueError(f"not a BENCH-TIMES line: {line!r}")
    _initrd, userspace, target, job_start, job_end = (int(g) for g in match.groups())
    job = max(job_end - job_start, 0)
    return GuestTimes(switch_root=userspace / 1e6, default_target=(target - job) / 1e6)


def make_bench_job_disk(path: Path, work: Path) -> Disk:
    times = work / "bench-times.sh"
    times.write_text(TIMES_SCRIPT)
    disk = make_job_disk(path, JOB_SCRIPT, files={"times": times})
    # The guest's writes (the job's status) are of no interest: keep the disk as made.
    return Disk(disk.path, snapshot=True)


def boot_once(
    kernel: Path, image: Path, root: RootDisk, job_disk: Disk, log_path: Path
) -> GuestTimes:
    """Boot image into the root disk; raise AssertionError if the boot is not proven."""
    token = new_token()
    options = BootOptions(kernel=kernel, initrd=image, disks=(root.image, job_disk),
                          append=f"root=UUID={root.uuid} rw bookend.job", timeout=BOOT_LIMIT,
                          log_path=log_path)  # fmt: skip
    with boot(with_token(options, token)) as vm:
        times = vm.expect(TIMES_LINE, timeout=BOOT_LIMIT)
        # Positive proof that the boot reached the real root and finished; mkinitramfs'
        # images are initrds, but not systemd ones.
        expect_token(vm, token, timeout=120, systemd_initrd=False)
    return parse_times(times.group(0))
