"""NFS roots: a client guest's root served by a real nfs-kernel-server in a server guest
beside it (harness/serverguest.py), over a cable between the two (harness/network.py).

Each boot: the client's initrd mounts the root over NFS (v4, v3, and v4 on a VLAN),
switches root, the job installs the exitrd, and the root powers off through it; the
console shows the exitrd finding no NFS mount left once systemd-shutdown has unmounted
the old root. The server then powers off cleanly, and the exported copy of the root
filesystem, read on the host, is clean and holds what the client wrote.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.exitrdjob import SHUTDOWN_LIMIT, install_exitrd_job
from harness.guestjob import JobRun, debugfs, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.netroot import assert_clean_ext4, copy_of, expect_initrd_then_root, record_scenario
from harness.network import link
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.serverguest import (
    CLIENT_ADDRESS,
    PREFIX,
    NfsServer,
    ensure_server_disk,
    serve_nfs_from_guest,
)
from harness.token import new_token

BOOT_LIMIT = 1200
NETMASK = {24: "255.255.255.0"}[PREFIX]

# After the exitrd is installed, the job records the root's source and type, and
# leaves a mark on the root for the host to find in the server's copy.
NFS_CHECKS = """
findmnt -no SOURCE,FSTYPE / > /job/out/root
echo @MARK@ > /var/tmp/bookend-nfs-mark
sync
"""


@pytest.fixture(scope="module")
def nfs_images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's initrd (and its exitrd beside it): the nfs feature, a virtio NIC, and
    ext4 loaded for the job disk (the root has no modules, and is not ext4 here)."""
    directory = tmp_path_factory.mktemp("nfs-images")
    build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                "--add-feature", "nfs", "--add-module", "virtio_net",
                "--add-module", "ext4")  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def server_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server guest's initrd: its root on a virtio disk, and its NIC's driver."""
    ensure_server_disk()  # made before any guest boots, outside the VM lock's time
    output = tmp_path_factory.mktemp("nfs-server") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4,
                       "--add-module", "virtio_net", "--no-exitrd")  # fmt: skip


def ip_for(interface: str) -> str:
    return f"ip={CLIENT_ADDRESS}:::{NETMASK}:bookend-test:{interface}:off"


SCENARIOS: dict[str, tuple[Callable[[NfsServer], str], int | None]] = {
    # name: (root= and friends, given the server; the server's VLAN id)
    "v4": (lambda s: f"root=nfs4:{s.address}:{s.path} {ip_for('ens3')}", None),
    "v3": (lambda s: f"root=/dev/nfs nfsroot={s.address}:{s.path},vers=3 {ip_for('ens3')}", None),
    # The harness puts the NIC first on the PCI bus (slot 3): ens3 carries VLAN 5.
    "v4 on vlan 5": (
        lambda s: f"root=nfs4:{s.address}:{s.path} vlan=vlan5:ens3 {ip_for('vlan5')}",
        5,
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_nfs_root_boots_and_powers_off_through_the_exitrd(
    kernel: Kernel,
    root_disk: RootDisk,
    nfs_images: Path,
    server_initrd: Path,
    console_log: Path,
    tmp_path: Path,
    scenario: str,
) -> None:
    command_line, vlan = SCENARIOS[scenario]
    export = copy_of(root_disk.image, tmp_path / "export.raw")
    mark = new_token()
    job = install_exitrd_job(tmp_path / "job.img", nfs_images,
                             then=NFS_CHECKS.replace("@MARK@", mark))  # fmt: skip
    done, server = boot_over_nfs(
        kernel, (nfs_images, server_initrd), export, job.path, command_line, vlan, console_log
    )
    assert done.status == 0, f"the job failed; see {console_log}"
    record_scenario(f"nfs root, {scenario}", done.text, nfs_images / "initrd.img")

    root = read_job_output(job.path, "root", tmp_path / "root").read_text().split()
    assert root[0] == f"{server.address}:{server.path}", root
    assert root[1] == ("nfs" if scenario == "v3" else "nfs4"), root
    _, marker, pivoted = done.text.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    # systemd-shutdown, in the exitrd, unmounts the old root (the NFS mount) and says
    # all are gone; then the exitrd's NFS step finds none left.
    unmounted = re.search(r"Unmounting '/oldroot'\.(?s:.*)shutdown\[1\]: All filesystems unmounted",
                          pivoted)  # fmt: skip
    gone = re.search(r"bookend: NFS root unmounted \(no NFS mount left\)", pivoted)
    assert unmounted and gone and gone.start() > unmounted.end(), pivoted[-3000:]
    # The server's copy, read on the host with both guests off: clean, with the mark.
    assert_clean_ext4(export)
    written, _ = debugfs(export, "cat /var/tmp/bookend-nfs-mark")
    assert written.strip() == mark


def boot_over_nfs(
    kernel: Kernel,
    initrds: tuple[Path, Path],
    export: Path,
    job: Path,
    command_line: Callable[[NfsServer], str],
    vlan: int | None,
    console_log: Path,
    on_the_way: Callable[[Boot, NfsServer], None] | None = None,
) -> tuple[JobRun, NfsServer]:
    """The server guest serving export, and the client booting from it with the job;
    both are off when this returns. on_the_way runs once the client's root is up."""
    images, server_initrd = initrds
    work = console_log.parent
    with (
        link() as cable,
        serve_nfs_from_guest(
            kernel, server_initrd, export, cable.end(0), work, vlan=vlan
        ) as server,
    ):
        client = cable.end(1)
        options = BootOptions(kernel=kernel.path, initrd=images / "initrd.img",
                              disks=(Disk(job, snapshot=False),),
                              append=f"{command_line(server)} rw",
                              network=client.args, pass_fds=client.pass_fds, cpus=1,
                              timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip

        def watch(vm: Boot) -> None:
            expect_initrd_then_root(vm)
            if on_the_way is not None:
                on_the_way(vm, server)

        done = run_job(options, on_the_way=watch, exit_timeout=SHUTDOWN_LIMIT)
    return done, server


PAUSE_S = 20
# The job announces its write, waits a moment (for the host to pause the server), then
# writes and syncs a file on the root, and records how long that took.
PAUSED_WRITE = """
echo BOOKEND-NFS-WRITING > /dev/console
sleep 3
began=$(date +%s)
dd if=/dev/urandom of=/var/tmp/bookend-nfs-written bs=64k count=16 conv=fsync status=none
ended=$(date +%s)
echo $((ended - began)) > /job/out/write-seconds
sha256sum < /var/tmp/bookend-nfs-written | cut -d' ' -f1 > /job/out/written-sha256
"""


def test_nfs_root_survives_the_server_paused_while_it_writes(
    kernel: Kernel,
    root_disk: RootDisk,
    nfs_images: Path,
    server_initrd: Path,
    console_log: Path,
    tmp_path: Path,
) -> None:
    export = copy_of(root_disk.image, tmp_path / "export.raw")
    job = install_exitrd_job(tmp_path / "job.img", nfs_images, then=PAUSED_WRITE)

    def pause_the_server(vm: Boot, server: NfsServer) -> None:
        vm.expect("BOOKEND-NFS-WRITING", timeout=600)
        server.qmp.execute("stop")
        time.sleep(PAUSE_S)
        server.qmp.execute("cont")

    done, _ = boot_over_nfs(kernel, (nfs_images, server_initrd), export, job.path,
                            SCENARIOS["v4"][0], None, console_log, pause_the_server)  # fmt: skip
    assert done.status == 0, f"the job failed; see {console_log}"
    # The write waited for the server (a hard mount retries), then went through.
    seconds = int(read_job_output(job.path, "write-seconds", tmp_path / "s").read_text())
    assert seconds >= PAUSE_S - 5, seconds
    assert "Returning to initrd..." in done.text
    assert "bookend: NFS root unmounted (no NFS mount left)" in done.text
    assert_clean_ext4(export)
    digest = read_job_output(job.path, "written-sha256", tmp_path / "sha").read_text().strip()
    debugfs(export, f"dump /var/tmp/bookend-nfs-written {tmp_path / 'written'}")
    assert hashlib.sha256((tmp_path / "written").read_bytes()).hexdigest() == digest
