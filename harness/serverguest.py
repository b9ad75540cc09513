"""A server guest: a Debian 12 machine booted beside a client guest, serving the
client's root over NFS from a real nfs-kernel-server (the host's kernel has no nfsd).

    with link() as cable, serve_nfs_from_guest(kernel, initrd, export, cable.end(0),
                                               work=tmp_path) as server:
        ... boot the client on cable.end(1), root=nfs4:{server.address}:{server.path} ...
    assert_clean_ext4(export)

The server's disk is a cached root disk of its own recipe (harness/rootdisk.py: the
root disk's, with nfs-kernel-server and iproute2), made once and never written. It
boots through a bookend initrd with the root disk's job machinery: its job disk brings
the kernel's modules (nfsd, 8021q) and a job that configures the NIC (on a VLAN when
asked), mounts the second disk (the export, a copy of the client's root the test
made) and exports it rw,no_root_squash, prints the ready line, and then waits for the
ACPI power button. `system_powerdown` (QMP) presses it: the job stops the NFS server,
unmounts the export and ends, and the root's report unit powers the guest off, which
the context manager waits for (a clean shutdown: the export is unmounted, its
filesystem clean). The power button is read by the job itself (one blocking read of
its input device): the root has no logind (no D-Bus in a minimal Debian).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bookend.proc import run
from harness.guestjob import make_job_disk
from harness.network import Nic
from harness.qemu import Boot, BootOptions, Disk, Kernel, boot
from harness.qmp import Qmp
from harness.rootdisk import Recipe, RootDisk, default_recipe, ensure_root_disk
from harness.token import expect_token, new_token, with_token

# The cable's own network: server and client, nothing else on it.
SERVER_ADDRESS = "192.168.50.1"
CLIENT_ADDRESS = "192.168.50.2"
PREFIX = 24
EXPORT_PATH = "/srv/root"
# The server's NIC: the only network device, so PCI slot 3 as on the client (ens3).
SERVER_NIC = "ens3"
READY = "BOOKEND-NFS-SERVER-READY"
BOOT_LIMIT = 600
# From the power button to QEMU's exit: the NFS server stops, the export is unmounted.
POWEROFF_LIMIT = 300
# The job serves as long as the client runs: the root disk's job unit gives up after
# 15 minutes, the server's never.
JOB_TIMEOUT_DROPIN = """\
[Service]
TimeoutStartSec=infinity
"""


def server_recipe() -> Recipe:
    """The root disk's recipe with an NFS server and `ip` (another disk, cached apart)."""
    base = default_recipe()
    return dataclasses.replace(
        base,
        include=(*base.include, "nfs-kernel-server", "iproute2"),
        files=(
            *base.files,
            (
                "etc/systemd/system/bookend-test-job.service.d/serve.conf",
                JOB_TIMEOUT_DROPIN,
                0o644,
            ),
        ),
    )


def ensure_server_disk() -> RootDisk:
    return ensure_root_disk(recipe=server_recipe(), what="NFS server disk")


# The server's job: @...@ are filled in by server_job(). The NIC is found by its MAC.
SERVER_JOB = """\
#!/bin/sh
set -eux
modprobe nfsd
modprobe button  # the ACPI power button, which the host presses to end the job
nic=
for dir in /sys/class/net/*; do
    [ "$(cat "$dir/address")" = "@MAC@" ] && nic=${dir##*/}
done
[ -n "$nic" ]
ip link set "$nic" up
dev=$nic
vlan=@VLAN@
if [ -n "$vlan" ]; then
    modprobe 8021q
    dev=$nic.$vlan
    ip link add link "$nic" name "$dev" type vlan id "$vlan"
    ip link set "$dev" up
fi
ip address add @ADDRESS@/@PREFIX@ dev "$dev"
mkdir -p @EXPORT@
mount @EXPORT_DEVICE@ @EXPORT@
# The root disk's fstab names / by UUID, which an NFS root has not: the initrd has
# mounted it, nothing is left to mount or check.
echo "# / is the NFS root the initrd mounted" > @EXPORT@/etc/fstab
echo "@EXPORT@ @CLIENTS@(rw,no_root_squash,no_subtree_check,sync)" > /etc/exports
# NFSv4 refuses new opens for its grace period after a start (90 s by default).
printf '[nfsd]\\ngrace-time=10\\nlease-time=15\\n' > /etc/nfs.conf.d/bookend-test.conf
systemctl reset-failed
systemctl restart nfs-server
exportfs -v
button=
for dir in /sys/class/input/event*; do
    [ "$(cat "$dir/device/name")" = "Power Button" ] && button=/dev/input/${dir##*/}
done
[ -n "$button" ]
exec 3< "$button"
echo "@READY@ $dev"
head -c 24 <&3 > /dev/null  # one input event: the button was pressed
echo "power button pressed: stopping the NFS server"
systemctl stop nfs-server
umount @EXPORT@
"""


def server_job(mac: str, vlan: int | None) -> str:
    values = {
        "MAC": mac,
        "VLAN": "" if vlan is None else str(vlan),
        "ADDRESS": SERVER_ADDRESS,
        "PREFIX": str(PREFIX),
        "EXPORT": EXPORT_PATH,
        # The second disk, by the serial harness/qemu.py gives it: the root disk and
        # the export are copies of one filesystem, with the same UUID and label.
        "EXPORT_DEVICE": "/dev/disk/by-id/virtio-bookend1",
        "CLIENTS": f"{SERVER_ADDRESS.rsplit('.', 1)[0]}.0/{PREFIX}",
        "READY": READY,
    }
    script = SERVER_JOB
    for name, value in values.items():
        script = script.replace(f"@{name}@", value)
    return script


@dataclass(frozen=True)
class NfsServer:
    """A server guest that serves EXPORT_PATH at address until the with-block ends."""

    address: str
    path: str
    vm: Boot
    qmp: Qmp  # e.g. "stop" and "cont" to take the server away for a while


@contextmanager
def serve_nfs_from_guest(
    kernel: Kernel,
    initrd: Path,
    export: Path,
    nic: Nic,
    work: Path,
    *,
    vlan: int | None = None,
) -> Iterator[NfsServer]:
    """Boot the server guest on nic, serving export (a raw copy of a root disk, which it
    writes); yield once it serves. At the end power it off through the power button and
    wait for its clean shutdown (its job's status 0, its token, QEMU's exit)."""
    disk = ensure_server_disk()
    # nfsd tells exported filesystems apart by their UUID (in the file handles), and the
    # export is a copy of the same root disk as the server's own root: give it another.
    run(["tune2fs", "-U", "random", export])
    job = make_job_disk(work / "server-job.img", server_job(nic.mac, vlan),
                        modules_kver=kernel.version)  # fmt: skip
    token = new_token()
    socket = work / "server-qmp.sock"
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        # The server's root by its path: the export beside it has the same UUID.
        disks=(disk.image, Disk(export, snapshot=False), job),
        append="root=/dev/vda rw bookend.job",
        network=nic.args,
        pass_fds=nic.pass_fds,
        cpus=1,
        memory_mib=768,
        qmp_socket=socket,
        timeout=3600,
        log_path=work / "server-console.log",
    )
    with boot(with_token(options, token)) as vm, Qmp(socket) as qmp:
        vm.expect(rf"{READY} \S+", timeout=BOOT_LIMIT)
        yield NfsServer(SERVER_ADDRESS, EXPORT_PATH, vm, qmp)
        qmp.execute("system_powerdown")
        status = vm.expect(r"BOOKEND-JOB-STATUS (\d+)", timeout=POWEROFF_LIMIT)
        assert status.group(1) == "0", f"the server's job failed; see {options.log_path}"
        expect_token(vm, token, POWEROFF_LIMIT)
