"""A guest job that installs an exitrd into the booted root, for the tests of shutdown.

The job copies this checkout's bookend into the root, puts the exitrd (and its digest)
in /boot and installs the unit with `bookend install-exitrd`; the root's report unit
then powers the machine off, which is the shutdown under test. It records in
/job/out/ram-kib what the unpacked exitrd costs while the system runs.
"""

from __future__ import annotations

from pathlib import Path

import bookend
from harness.guestjob import make_job_disk
from harness.qemu import Disk

INSTALL_EXITRD_JOB = """\
#!/bin/sh
set -eux
mkdir -p /usr/local/lib/bookend-src
cp -r /job/src/bookend /usr/local/lib/bookend-src/
cp /job/exitrd/exitrd.img /job/exitrd/exitrd.img.sha256 /boot/
cd /usr/local/lib/bookend-src
python3 -m bookend install-exitrd --image /boot/exitrd.img
systemctl daemon-reload
systemctl start bookend-exitrd.service
# Unpacked at shutdown (the default): no RAM is spent on it while the system runs.
if [ -e /run/initramfs ]; then du -sk /run/initramfs | cut -f1; else echo 0; fi \\
    > /job/out/ram-kib
"""


def install_exitrd_job(path: Path, exitrd_dir: Path, then: str = "") -> Disk:
    """The job disk at path: install exitrd_dir's exitrd.img, then run the shell lines then."""
    files = {"src/bookend": Path(bookend.__file__).parent, "exitrd": exitrd_dir}
    return make_job_disk(path, INSTALL_EXITRD_JOB + then, files=files)
