"""NFS roots: a client guest's root served by a real nfs-kernel-server in a server guest
beside it (harness/serverguest.py), over a cable between the two (harness/network.py).

Each boot: the client's initrd mounts the root over NFS (v3, v4 on a VLAN, and v4 in
the boot that pauses the server), switches root, the job installs the exitrd, and the
root powers off through it; the console shows the exitrd finding no NFS mount left once
systemd-shutdown has unmounted the old root. The server then powers off cleanly, and
the exported copy of the root filesystem, read on the host, is clean and holds what the
client wrote. The NFSv4 boot also keeps writing while the host pauses the server guest
for 20 s: a write waits for the server, and every write goes through.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.exitrdjob import SHUTDOWN_LIMIT, install_exitrd_job
from harness.guestjob import JobRun, debugfs, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.netroot import assert_clean_ext4, expect_initrd_then_root, record_scenario
from harness.network import link
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk, copy_of
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


@dataclass(frozen=True)
class Scenario:
    command_line: Callable[[NfsServer], str]  # root= and friends, given the server
    vlan: int | None = None  # the server's VLAN id
    # The root has its own nfs-common (the server disk's root: nfs-kernel-server needs it),
    # whose rpcbind and rpc.statd must start beside the initrd's NFSv3 mount.
    nfs_common: bool = False


# NFSv4 on the NIC itself: the boot that pauses the server.
V4 = Scenario(lambda s: f"root=nfs4:{s.address}:{s.path} {ip_for('ens3')}")
SCENARIOS = {
    "v3": Scenario(
        lambda s: f"root=/dev/nfs nfsroot={s.address}:{s.path},vers=3 {ip_for('ens3')}",
        nfs_common=True,
    ),
    # The harness puts the NIC first on the PCI bus (slot 3): ens3 carries VLAN 5.
    "v4 on vlan 5": Scenario(
        lambda s: f"root=nfs4:{s.address}:{s.path} vlan=vlan5:ens3 {ip_for('vlan5')}", vlan=5
    ),
}

# On a root with nfs-common: its own rpc.statd starts (and with it rpcbind).
STATD_CHECKS = """
systemctl start rpc-statd.service
systemctl show -P ActiveState rpc-statd.service rpcbind.service > /job/out/statd
"""


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_nfs_root_boots_and_powers_off_through_the_exitrd(
    kernel: Kernel,
    root_disk: RootDisk,
    nfs_images: Path,
    server_initrd: Path,
    console_log: Path,
    tmp_path: Path,
    name: str,
) -> None:
    scenario = SCENARIOS[name]
    source = ensure_server_disk() if scenario.nfs_common else root_disk
    export = copy_of(source.image, tmp_path / "export.raw")
    mark = new_token()
    job = install_exitrd_job(tmp_path / "job.img", nfs_images,
                             then=NFS_CHECKS.replace("@MARK@", mark)
                             + (STATD_CHECKS if scenario.nfs_common else ""))  # fmt: skip
    done, server = boot_over_nfs(
        kernel,
        (nfs_images, server_initrd),
        export,
        job.path,
        scenario.command_line,
        scenario.vlan,
        console_log,
    )
    assert done.status == 0, done.why_failed(console_log)
    record_scenario(f"nfs root, {name}", done.text, nfs_images / "initrd.img")
    assert_nfs_root(job.path, server, "nfs" if name == "v3" else "nfs4", tmp_path)
    if scenario.nfs_common:
        states = read_job_output(job.path, "statd", tmp_path / "statd").read_text().split()
        assert states == ["active", "active"], states
    assert_unmounted_then_no_nfs_left(done.text)
    assert_clean_with_mark(export, mark)


def assert_nfs_root(job: Path, server: NfsServer, fstype: str, tmp_path: Path) -> None:
    """The running root (NFS_CHECKS): the server's export, mounted as fstype."""
    root = read_job_output(job, "root", tmp_path / "root").read_text().split()
    assert root[0] == f"{server.address}:{server.path}", root
    assert root[1] == fstype, root


def assert_unmounted_then_no_nfs_left(console: str) -> None:
    """systemd-shutdown, in the exitrd, unmounts the old root (the NFS mount) and says
    all are gone; then the exitrd's NFS step finds none left."""
    _, marker, pivoted = console.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    unmounted = re.search(r"Unmounting '/oldroot'\.(?s:.*)shutdown\[1\]: All filesystems unmounted",
                          pivoted)  # fmt: skip
    gone = re.search(r"bookend: NFS root unmounted \(no NFS mount left\)", pivoted)
    assert unmounted and gone and gone.start() > unmounted.end(), pivoted[-3000:]


def assert_clean_with_mark(export: Path, mark: str) -> None:
    """The server's copy, read on the host with both guests off: clean, with the mark."""
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
# A write that waited for the paused server took at least this long (the pause less the
# host's reaction and the guest's whole-second clock).
WAITED_AT_LEAST_S = PAUSE_S - 5
# The loop's bound if the pause never shows (a failure): long enough for the host to
# pause the server however late after the announcement, on a loaded machine.
WRITE_AT_MOST_S = 90
# The job announces its writes, then writes and syncs a small file on the root again and
# again until one write has waited for the paused server and the next one has gone
# through (the loop needs no fixed length to hold the pause, however late the host
# pauses), and records the longest time between two writes, where its shell, dd and the
# write itself all wait for the server. Time is read from /proc/uptime with the shell's
# own `read`: running `date` would wait for the root too.
PAUSED_WRITE = f"""
echo BOOKEND-NFS-WRITING > /dev/console
set +x
read -r up _ < /proc/uptime
began=${{up%.*}} last=${{up%.*}} longest=0 writes=0
while [ $((last - began)) -lt {WRITE_AT_MOST_S} ]; do
    dd if=/dev/urandom of=/var/tmp/bookend-nfs-written bs=64k count=4 conv=fsync status=none
    read -r up _ < /proc/uptime
    now=${{up%.*}}
    gap=$((now - last))
    [ "$gap" -le "$longest" ] || longest=$gap
    last=$now writes=$((writes + 1))
    echo "$up" >> /job/out/write-log
    # Done once a write after the one that waited for the server has gone through.
    [ "$longest" -lt {WAITED_AT_LEAST_S} ] || [ "$gap" -ge {WAITED_AT_LEAST_S} ] || break
done
echo "$longest $writes" > /job/out/writes
sha256sum < /var/tmp/bookend-nfs-written | cut -d' ' -f1 > /job/out/written-sha256
"""


def test_nfsv4_root_boots_survives_the_server_paused_while_it_writes_and_powers_off(
    kernel: Kernel,
    root_disk: RootDisk,
    nfs_images: Path,
    server_initrd: Path,
    console_log: Path,
    tmp_path: Path,
) -> None:
    export = copy_of(root_disk.image, tmp_path / "export.raw")
    mark = new_token()
    job = install_exitrd_job(tmp_path / "job.img", nfs_images,
                             then=NFS_CHECKS.replace("@MARK@", mark) + PAUSED_WRITE)  # fmt: skip

    paused: list[float] = []

    def pause_the_server(vm: Boot, server: NfsServer) -> None:
        vm.expect("BOOKEND-NFS-WRITING", timeout=600)
        server.qmp.execute("stop")
        paused.append(vm.elapsed)
        assert server.qmp.execute("query-status")["status"] == "paused"
        time.sleep(PAUSE_S)
        server.qmp.execute("cont")
        paused.append(vm.elapsed)

    done, server = boot_over_nfs(kernel, (nfs_images, server_initrd), export, job.path,
                                 V4.command_line, None, console_log,
                                 pause_the_server)  # fmt: skip
    assert done.status == 0, done.why_failed(console_log)
    record_scenario("nfs root, v4", done.text, nfs_images / "initrd.img")
    assert_nfs_root(job.path, server, "nfs4", tmp_path)
    # One write waited for the server (a hard mount retries), then the next went through.
    longest, writes = map(
        int, read_job_output(job.path, "writes", tmp_path / "w").read_text().split()
    )
    log = read_job_output(job.path, "write-log", tmp_path / "write-log").read_text()
    assert longest >= WAITED_AT_LEAST_S and writes > 1, (longest, writes, paused, log[-300:])
    assert_unmounted_then_no_nfs_left(done.text)
    assert_clean_with_mark(export, mark)
    digest = read_job_output(job.path, "written-sha256", tmp_path / "sha").read_text().strip()
    debugfs(export, f"dump /var/tmp/bookend-nfs-written {tmp_path / 'written'}")
    assert hashlib.sha256((tmp_path / "written").read_bytes()).hexdigest() == digest
