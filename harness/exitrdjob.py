"""A guest job that installs an exitrd into the booted root, and the shutdown through it.

The job copies this checkout's bookend into the root, puts the exitrd (and its digest)
in /boot and installs the unit with `bookend install-exitrd`; the root's report unit
then powers the machine off, which is the shutdown under test. It records in
/job/out/ram-kib what the unpacked exitrd costs while the system runs. For a root
without Python, installed_exitrd_job installs on this host instead (`bookend
install-exitrd --root`, as for an image tree) and the guest only copies the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import bookend
from harness.guestjob import make_job_disk, run_job
from harness.images import bookend as run_bookend
from harness.qemu import Boot, BootOptions, Disk

BOOT_LIMIT = 900
# From the token to QEMU's exit: unpacking the exitrd, pivoting, detaching the storage.
SHUTDOWN_LIMIT = 300
PROMPT = r"Please enter passphrase for disk"

# The unit started as at boot; by default it checks the exitrd in the background
# (Type=exec), and a job that changes or times it waits for that check's end. The unit
# waits for multi-user.target, which waits for this job: started out of order.
START_EXITRD_UNIT = """\
systemctl daemon-reload
systemctl start --job-mode=ignore-dependencies bookend-exitrd.service
while [ "$(systemctl show -P MainPID bookend-exitrd.service)" != 0 ]; do sleep 0.5; done
"""
# Unpacked at shutdown (the default): no RAM is spent on it while the system runs.
_START_AND_MEASURE = (
    START_EXITRD_UNIT
    + """\
# Nothing but the empty directory the check at boot makes, or no directory at all: 0.
ram_kib=0
[ -z "$(ls -A /run/initramfs 2>/dev/null)" ] || ram_kib=$(du -sk /run/initramfs | cut -f1)
echo "$ram_kib" > /job/out/ram-kib
"""
)
INSTALL_EXITRD_JOB = (
    """\
#!/bin/sh
set -eux
mkdir -p /usr/local/lib/bookend-src
cp -r /job/src/bookend /usr/local/lib/bookend-src/
cp /job/exitrd/exitrd.img /job/exitrd/exitrd.img.sha256 /boot/
cd /usr/local/lib/bookend-src
python3 -m bookend install-exitrd --image /boot/exitrd.img
"""
    + _START_AND_MEASURE
)
# The store, loader and unit made on the host, copied over the root as they are.
INSTALLED_EXITRD_JOB = (
    """\
#!/bin/sh
set -eux
cp -a /job/installed/. /
"""
    + _START_AND_MEASURE
)


def install_exitrd_job(
    path: Path, exitrd_dir: Path, then: str = "", files: Mapping[str, Path] = {}
) -> Disk:
    """The job disk at path: install exitrd_dir's exitrd.img, then run the shell lines then
    (in bookend's source directory); files go on the disk too (make_job_disk)."""
    files = {"src/bookend": Path(bookend.__file__).parent, "exitrd": exitrd_dir, **files}
    return make_job_disk(path, INSTALL_EXITRD_JOB + then, files=files)


def installed_exitrd_job(path: Path, exitrd_dir: Path, then: str = "") -> Disk:
    """The job disk at path for a root without Python: exitrd_dir's exitrd.img installed
    on this host with `bookend install-exitrd --root` into a tree the job copies over the
    root, then the shell lines then."""
    tree = path.with_name(path.name + ".root")
    tree.mkdir()
    image = exitrd_dir / "exitrd.img"
    run_bookend("install-exitrd", "--image", str(image), "--root", str(tree))
    return make_job_disk(path, INSTALLED_EXITRD_JOB + then, files={"installed": tree})


def shutdown_through(
    options: BootOptions, passphrase: str | None = None, exit_status: int = 0
) -> str:
    """Boot with the install job among options.disks, let the root power off through
    the exitrd, return the console text. passphrase is typed at the LUKS prompt;
    exit_status: QEMU's, when the exitrd ends it through isa-debug-exit."""

    def unlock(vm: Boot) -> None:
        if passphrase is not None:
            vm.expect(PROMPT, timeout=300)
            vm.send(passphrase + "\n")

    done = run_job(replace(options, timeout=BOOT_LIMIT), on_the_way=unlock,
                   exit_timeout=SHUTDOWN_LIMIT, exit_status=exit_status)  # fmt: skip
    assert done.status == 0, done.why_failed(options.log_path)
    return done.text


# systemd-shutdown's line as it pivots into the exitrd: 252 says "Returning to
# initrd...", 257 "Entering exitrd...".
PIVOT = re.compile(r"Returning to initrd\.\.\.|Entering exitrd\.\.\.")


def split_at_pivot(text: str) -> tuple[str, str]:
    """The console before the pivot into the exitrd (the running system), and from it on."""
    pivot = PIVOT.search(text)
    assert pivot, "no pivot into the exitrd on the console"
    return text[: pivot.start()], text[pivot.start() :]


def after(text: str, marker: str) -> str:
    """The console text from marker on (e.g. the pivot into the exitrd)."""
    assert marker in text, f"no {marker!r} on the console"
    return text[text.index(marker) :]
