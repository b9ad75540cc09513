"""A job runs inside the booted guest, and the host reads its results back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.guestjob import job_status, make_job_disk, read_job_output, run_job
from harness.qemu import BootOptions, Disk, Kernel, drive_args

# What the jobs of later tests rely on: bookend's libraries under the guest's
# python3, modules from the job disk, and device-mapper tools.
CHECK_SCRIPT = """\
#!/bin/sh
set -eux
python3 -c 'import zstandard, lz4, elftools'
modprobe dm_crypt
test -e /sys/module/dm_crypt
cryptsetup --version
uname -r > /job/out/uname
"""


def with_job(options: BootOptions, job: Disk) -> BootOptions:
    return replace(options, disks=(*options.disks, job))


def test_job_uses_guest_tools_and_its_output_comes_back(
    kernel: Kernel, root_boot: BootOptions, tmp_path: Path
) -> None:
    job = make_job_disk(tmp_path / "job.img", CHECK_SCRIPT, modules_kver=kernel.version)
    done = run_job(with_job(root_boot, job))
    assert done.status == 0
    assert job_status(job.path) == 0
    uname = read_job_output(job.path, "uname", tmp_path / "uname")
    assert uname.read_text().strip() == kernel.version
    assert [line for line in done.text.splitlines() if "FAILED" in line] == []


def test_failed_job_records_its_status_and_the_guest_still_reports(
    root_boot: BootOptions, tmp_path: Path
) -> None:
    # What a job leaves before it fails is still there to read.
    script = "#!/bin/sh\ncp /job/data/note /job/out/note\nexit 3\n"
    job = make_job_disk(tmp_path / "job.img", script, files={"data/note": Path(__file__)})
    assert run_job(with_job(root_boot, job)).status == 3
    assert job_status(job.path) == 3
    note = read_job_output(job.path, "note", tmp_path / "note")
    assert note.read_bytes() == Path(__file__).read_bytes()


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
