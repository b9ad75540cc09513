"""A job runs inside the booted guest, and the host reads its results back: one boot runs
a job that uses the guest's tools and fails, and its status and output come back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.guestjob import job_status, make_job_disk, read_job_output, run_job
from harness.qemu import BootOptions, Disk, Kernel, drive_args

# What the jobs of later tests rely on: bookend's libraries under the guest's
# python3, modules from the job disk, and device-mapper tools. Then the job leaves a
# file and fails: with `set -e`, its status 3 also says every check before it passed.
CHECK_SCRIPT = """\
#!/bin/sh
set -eux
python3 -c 'import zstandard, lz4, elftools'
modprobe dm_crypt
test -e /sys/module/dm_crypt
cryptsetup --version
uname -r > /job/out/uname
cp /job/data/note /job/out/note
exit 3
"""


def with_job(options: BootOptions, job: Disk) -> BootOptions:
    return replace(options, disks=(*options.disks, job))


def test_job_uses_guest_tools_fails_and_its_status_and_output_come_back(
    kernel: Kernel, root_boot: BootOptions, tmp_path: Path
) -> None:
    job = make_job_disk(tmp_path / "job.img", CHECK_SCRIPT, modules_kver=kernel.version,
                        files={"data/note": Path(__file__)})  # fmt: skip
    done = run_job(with_job(root_boot, job))
    # The guest still reports after a failed job, and records its status.
    assert done.status == 3
    assert job_status(job.path) == 3
    uname = read_job_output(job.path, "uname", tmp_path / "uname")
    assert uname.read_text().strip() == kernel.version
    # What a job leaves before it fails is still there to read.
    note = read_job_output(job.path, "note", tmp_path / "note")
    assert note.read_bytes() == Path(__file__).read_bytes()
    assert [line for line in done.text.splitlines() if "FAILED" in line] == []


def test_an_unrun_job_disk_has_no_status(tmp_path: Path) -> None:
    job = make_job_disk(tmp_path / "job.img", "#!/bin/sh\n")
    with pytest.raises(FileNotFoundError, match="recorded no status"):
        job_status(job.path)
    with pytest.raises(FileNotFoundError, match="/out/missing"):
        read_job_output(job.path, "missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_only_disks_that_keep_writes_leave_the_snapshot(tmp_path: Path) -> None:
    args = drive_args([Disk(tmp_path / "root.img"), Disk(tmp_path / "job.img", snapshot=False)])
    drives = [arg for arg in args if arg.startswith("file=")]
    assert [d.endswith(",snapshot=off") for d in drives] == [False, True]
