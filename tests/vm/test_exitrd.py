"""The exitrd: the running system unpacks it at shutdown, systemd pivots into it, and its
/shutdown (systemd-shutdown) unmounts the old root and detaches the storage under it.

A job in the booted guest installs bookend into the root, copies the exitrd beside it
and installs the unit with `bookend install-exitrd`; then the root's report unit
powers the machine off, which is the shutdown under test.
Run with `-rP` to see the measured figures.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

import bookend
from tests.imagebuild import QEMU_VIRTIO_EXT4, build_image
from tests.vm.guestjob import make_job_disk, read_job_output
from tests.vm.qemu import Disk, Kernel, boot
from tests.vm.rootdisk import RootDisk
from tests.vm.stackdisks import StackDisks, ensure_stack_disks

BOOT_LIMIT = 900
PROMPT = r"Please enter passphrase for disk"

INSTALL_JOB = """\
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
if [ -e /run/initramfs ]; then du -sk /run/initramfs | cut -f1; else echo 0; fi \
    > /job/out/ram-kib
"""

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


@pytest.fixture(scope="module")
def images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generic initrd and its exitrd, built in one run."""
    directory = tmp_path_factory.mktemp("images")
    initrd = build_image(directory / "initrd.img", kernel.version, "--generic")
    exitrd = directory / "exitrd.img"
    assert exitrd.exists() and (directory / "exitrd.img.sha256").exists()
    return initrd, exitrd


@pytest.fixture(scope="module")
def plain_images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("plain")
    initrd = build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4)
    return initrd, directory / "exitrd.img"


def install_job(path: Path, exitrd_dir: Path) -> Disk:
    files = {"src/bookend": Path(bookend.__file__).parent, "exitrd": exitrd_dir}
    return make_job_disk(path, INSTALL_JOB, files=files)


def shutdown_through(
    kernel: Kernel,
    initrd: Path,
    disks: list[Disk],
    append: str,
    console_log: Path,
    passphrase: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """Boot with the install job, let the root power off, return the console text."""
    token = secrets.token_hex(8)
    append = f"{append} rw bookend.token={token} bookend.job"
    with boot(kernel.path, initrd, disks, append, BOOT_LIMIT, log_path=console_log,
              extra=extra) as vm:  # fmt: skip
        if passphrase is not None:
            vm.expect(PROMPT, timeout=300)
            vm.send(passphrase + "\n")
        vm.expect(r"BOOKEND-JOB-STATUS 0", timeout=BOOT_LIMIT)
        vm.expect(rf"BOOKEND-TOKEN {token} booted-with-initrd=yes", timeout=300)
        assert vm.wait_exit(timeout=300) == 0
    return console_log.read_text(errors="replace")


def after(text: str, marker: str) -> str:
    assert marker in text, f"no {marker!r} on the console"
    return text[text.index(marker) :]


def test_exitrd_takes_down_plain_root(
    kernel: Kernel,
    root_disk: RootDisk,
    plain_images: tuple[Path, Path],
    console_log: Path,
    tmp_path: Path,
) -> None:
    initrd, exitrd = plain_images
    job = install_job(tmp_path / "job.img", exitrd.parent)
    text = shutdown_through(kernel, initrd, [Disk(root_disk.image), job],
                            f"root=UUID={root_disk.uuid}", console_log)  # fmt: skip
    unpacked = re.search(r"exitrd /boot/exitrd.img: (\d+) entries unpacked .* in ([\d.]+) s", text)
    assert unpacked, "the unit did not unpack the exitrd at shutdown"
    pivoted = after(text, "Returning to initrd...")
    # From here on the exitrd's /shutdown speaks: systemd-shutdown, named by argv[0].
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted), pivoted[-2000:]
    assert read_job_output(job.path, "ram-kib", tmp_path / "ram").read_text().strip() == "0"
    print(f"exitrd {exitrd.stat().st_size / 1e6:.1f} MB, unpacked at shutdown in "
          f"{unpacked.group(2)} s; RAM while running: 0")  # fmt: skip


def test_corrupted_exitrd_is_refused_and_poweroff_goes_on(
    kernel: Kernel,
    root_disk: RootDisk,
    plain_images: tuple[Path, Path],
    console_log: Path,
    tmp_path: Path,
) -> None:
    _, exitrd = plain_images
    corrupt_dir = tmp_path / "exitrd"
    corrupt_dir.mkdir()
    data = bytearray(exitrd.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt_dir / "exitrd.img").write_bytes(data)
    shutil.copy(exitrd.with_name("exitrd.img.sha256"), corrupt_dir)
    job = install_job(tmp_path / "job.img", corrupt_dir)
    text = shutdown_through(kernel, plain_images[0], [Disk(root_disk.image), job],
                            f"root=UUID={root_disk.uuid}", console_log)  # fmt: skip
    assert re.search(r"exitrd /boot/exitrd.img: SHA-256 \w+ does not match", text), text[-3000:]
    assert "Returning to initrd" not in text  # nothing to pivot into: the normal power-off


@pytest.fixture(scope="module")
def stacks(kernel: Kernel, root_disk: RootDisk) -> dict[str, StackDisks]:
    return ensure_stack_disks(kernel, root_disk)


def test_exitrd_detaches_lvm_on_luks_and_leaves_ext4_clean(
    kernel: Kernel,
    root_disk: RootDisk,
    stacks: dict[str, StackDisks],
    images: tuple[Path, Path],
    plain_images: tuple[Path, Path],
    console_log: Path,
    tmp_path: Path,
) -> None:
    stack = stacks["lvm-on-luks"]
    assert stack.passphrase and stack.luks_uuid
    # The shutdown writes to the disk, so it gets its own copy of the cached one.
    disk = tmp_path / "stack.img"
    shutil.copyfile(stack.disks[0], disk)
    initrd, exitrd = images
    job = install_job(tmp_path / "job.img", exitrd.parent)
    append = f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name}"
    text = shutdown_through(kernel, initrd, [Disk(disk, snapshot=False), job], append,
                            console_log, stack.passphrase)  # fmt: skip
    pivoted = after(text, "Returning to initrd...")
    assert "shutdown[1]: All DM devices detached." in pivoted, pivoted[-3000:]

    # Another boot, from the plain root, opens the stack and checks the filesystem.
    check = make_job_disk(tmp_path / "check.img", FSCK_JOB, modules_kver=kernel.version,
                          files={"passphrase": _write(tmp_path / "pass", stack.passphrase),
                                 "device": _write(tmp_path / "dev",
                                                  "/dev/disk/by-id/virtio-bookend1")})  # fmt: skip
    token = secrets.token_hex(8)
    append = f"root=UUID={root_disk.uuid} rw bookend.token={token} bookend.job"
    disks = [Disk(root_disk.image), Disk(disk, snapshot=False), check]
    with boot(kernel.path, plain_images[0], disks, append, BOOT_LIMIT,
              log_path=tmp_path / "check-console.log") as vm:  # fmt: skip
        vm.expect(r"BOOKEND-JOB-STATUS \d+", timeout=BOOT_LIMIT)
        assert vm.wait_exit(timeout=300) == 0
    fsck = read_job_output(check.path, "fsck.log", tmp_path / "fsck.log").read_text()
    status = read_job_output(check.path, "fsck-status", tmp_path / "status").read_text()
    header = read_job_output(check.path, "dumpe2fs.txt", tmp_path / "dumpe2fs").read_text()
    assert status.strip() == "0", fsck
    assert re.search(r"Filesystem state:\s+clean", header), header
    assert "needs_recovery" not in header


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
