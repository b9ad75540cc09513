"""A job runs inside the booted guest, and the host reads its results back."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.imagebuild import QEMU_VIRTIO_EXT4, build_image
from tests.vm.guestjob import job_status, make_job_disk, read_job_output
from tests.vm.qemu import Disk, Kernel, boot, drive_args
from tests.vm.rootdisk import RootDisk

# A boot takes 20-60 s under TCG; the job itself is short.
BOOT_LIMIT = 420

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


@pytest.fixture(scope="module")
def host_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("image") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4)


def run_job(kernel: Kernel, root_disk: RootDisk, initrd: Path, job: Disk, console_log: Path) -> int:
    """Boot with the job disk; return the job status the guest printed."""
    token = secrets.token_hex(8)
    append = f"root=UUID={root_disk.uuid} rw bookend.token={token} bookend.job"
    with boot(kernel.path, initrd, [root_disk.image, job], append, BOOT_LIMIT,
              log_path=console_log) as vm:  # fmt: skip
        printed = vm.expect(r"BOOKEND-JOB-STATUS (\d+)", timeout=BOOT_LIMIT)
        # Searched only after the job's line: the report waits for the job.
        vm.expect(rf"BOOKEND-TOKEN {token} booted-with-initrd=yes", timeout=120)
        assert vm.wait_exit(timeout=120) == 0
    return int(printed.group(1))


def test_job_uses_guest_tools_and_its_output_comes_back(
    kernel: Kernel, root_disk: RootDisk, host_initrd: Path, console_log: Path, tmp_path: Path
) -> None:
    job = make_job_disk(tmp_path / "job.img", CHECK_SCRIPT, modules_kver=kernel.version)
    assert run_job(kernel, root_disk, host_initrd, job, console_log) == 0
    assert job_status(job.path) == 0
    uname = read_job_output(job.path, "uname", tmp_path / "uname")
    assert uname.read_text().strip() == kernel.version
    text = console_log.read_text(errors="replace")
    assert "FAILED" not in text, "a unit failed during boot; see " + str(console_log)


def test_failed_job_records_its_status_and_the_guest_still_reports(
    kernel: Kernel, root_disk: RootDisk, host_initrd: Path, console_log: Path, tmp_path: Path
) -> None:
    # What a job leaves before it fails is still there to read.
    script = "#!/bin/sh\ncp /job/data/note /job/out/note\nexit 3\n"
    job = make_job_disk(tmp_path / "job.img", script, files={"data/note": Path(__file__)})
    assert run_job(kernel, root_disk, host_initrd, job, console_log) == 3
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
