"""Network roots: an NBD root served from the host's loopback boots, switches root and
powers off through the exitrd, which disconnects the device after the old root is
unmounted (and not a moment earlier: the kernel logs "shutting down sockets" when a
connection ends); and rd.neednet=1 without a link stops in emergency mode naming the NIC.

The NBD server is qemu-nbd on 127.0.0.1, serving a qcow2 overlay of the cached root
disk (the cache is never written); the guest reaches it only through a restricted
user network's guestfwd (netroot.py). Its address comes from slirp's DHCP (ip=dhcp) or
a static ip= naming the interface.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest

import bookend
from tests.imagebuild import QEMU_VIRTIO_EXT4, build_image
from tests.vm.guestjob import make_job_disk, read_job_output
from tests.vm.netroot import GUEST_SERVER, NETDEV, serve_nbd, user_nic
from tests.vm.qemu import Kernel, boot
from tests.vm.qmp import Qmp
from tests.vm.rootdisk import RootDisk
from tests.vm.test_exitrd import INSTALL_JOB

BOOT_LIMIT = 900
NBD_PORT = 10809
NET_TIMEOUT = 20

# The exitrd goes into the NBD root while it runs; the job also records the device's
# unit (still active: nothing in the running system disconnected it) and the root.
JOB = (
    INSTALL_JOB
    + """
systemctl show -P ActiveState bookend-nbd-root.service > /job/out/nbd-state
findmnt -no SOURCE / > /job/out/root-source
ls /run/systemd/network/*.network.d/90-bookend-keep.conf > /job/out/keep-dropins
"""
)


@pytest.fixture(scope="module")
def nbd_images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initrd (and its exitrd beside it) with the nbd feature and a virtio NIC driver."""
    directory = tmp_path_factory.mktemp("nbd-images")
    build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                "--add-feature", "nbd", "--add-module", "virtio_net")  # fmt: skip
    return directory


def overlay_of(root_disk: RootDisk, path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", str(root_disk.image), str(path)], check=True)  # fmt: skip
    return path


# slirp's DHCP, or the address it would give, set statically on the NIC by name (the
# guest's NIC sits in PCI slot 4, after the job disk, hence ens4): wait-online then
# waits for that interface alone.
ADDRESSING = {
    "dhcp": "ip=dhcp",
    "static": "ip=10.0.2.15::10.0.2.2:255.255.255.0:bookend-test:ens4:off",
}


@pytest.mark.parametrize("addressing", list(ADDRESSING))
def test_nbd_root_boots_and_the_exitrd_disconnects_it(
    kernel: Kernel,
    root_disk: RootDisk,
    nbd_images: Path,
    console_log: Path,
    tmp_path: Path,
    addressing: str,
) -> None:
    overlay = overlay_of(root_disk, tmp_path / "root.qcow2")
    files = {"src/bookend": Path(bookend.__file__).parent, "exitrd": nbd_images}
    job = make_job_disk(tmp_path / "job.img", JOB, files=files)
    token = secrets.token_hex(8)
    append = (f"root=nbd:{GUEST_SERVER}:{NBD_PORT}:ext4 rw {ADDRESSING[addressing]} "
              f"bookend.token={token} bookend.job")  # fmt: skip
    with serve_nbd(overlay, "qcow2", tmp_path / "qemu-nbd.log") as port:
        nic = user_nic(tmp_path, {NBD_PORT: port})
        with boot(kernel.path, nbd_images / "initrd.img", [job], append, BOOT_LIMIT,
                  log_path=console_log, extra=nic) as vm:  # fmt: skip
            vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
            vm.expect(r"Reached target .*initrd\.target", timeout=400)
            vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=200)
            vm.expect(r"BOOKEND-JOB-STATUS 0", timeout=BOOT_LIMIT)
            vm.expect(rf"BOOKEND-TOKEN {token} booted-with-initrd=yes", timeout=300)
            assert vm.wait_exit(timeout=300) == 0
    text = console_log.read_text(errors="replace")

    state = read_job_output(job.path, "nbd-state", tmp_path / "nbd-state").read_text()
    assert state.strip() == "active"
    root = read_job_output(job.path, "root-source", tmp_path / "root-source").read_text()
    assert root.strip() == "/dev/nbd0"
    # The real root sees the initrd's KeepConfiguration= drop-in for ip='s network.
    keep = read_job_output(job.path, "keep-dropins", tmp_path / "keep").read_text().split()
    assert keep and all(path.startswith("/run/systemd/network/") for path in keep), keep

    _, marker, pivoted = text.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    assert "block nbd0: shutting down sockets" not in text.partition(marker)[0]
    unmounted = re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted)
    assert unmounted, pivoted[-3000:]
    disconnected = re.search(
        r"bookend: disconnecting NBD device /dev/nbd0 \(/oldroot unmounted\)", pivoted
    )
    assert disconnected and disconnected.start() > unmounted.start(), pivoted[-3000:]
    # The server's copy of the root, read on the host once the guest is off: clean.
    raw = tmp_path / "root.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    header = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True)
    assert re.search(r"Filesystem state:\s+clean", header.stdout), header.stdout
    assert "needs_recovery" not in header.stdout


def test_neednet_without_link_ends_in_emergency_naming_the_interface(
    kernel: Kernel, root_disk: RootDisk, nbd_images: Path, console_log: Path, tmp_path: Path
) -> None:
    append = (f"root=UUID={root_disk.uuid} rw ip=dhcp rd.neednet=1 "
              f"rd.net.timeout.ifup={NET_TIMEOUT}")  # fmt: skip
    socket = tmp_path / "qmp.sock"
    nic = user_nic(tmp_path, {})
    initrd = nbd_images / "initrd.img"
    with boot(kernel.path, initrd, [root_disk.image], append, BOOT_LIMIT, log_path=console_log,
              qmp_socket=socket, extra=nic) as vm, Qmp(socket) as qmp:  # fmt: skip
        # The cable is out before the guest's kernel has even started.
        qmp.execute("set_link", name=NETDEV, up=False)
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        # systemd shortens long status lines in the middle: match the unit or its end.
        vm.expect(r"Starting .*(networkd-wait-online|to be Configured)", timeout=300)
        began = vm.elapsed
        named = vm.expect(
            r"bookend: network interface (\S+) is not online \((\S+), no carrier\)", timeout=240
        )
        assert named.group(1) != "lo" and re.fullmatch(r"(en|eth)\w+", named.group(1))
        vm.expect(r"Reached target .*emergency\.target", timeout=120)
        # The wait ended at the timeout given, not systemd's 120 s default.
        assert vm.elapsed - began < NET_TIMEOUT + 60
        vm.expect(r"root account is locked", timeout=60)
        vm.kill()
    # The real root never started: the only greeting is the initrd's.
    greetings = re.findall(r"Welcome to [^\n]*!", console_log.read_text(errors="replace"))
    assert greetings and all("(bookend initrd)" in line for line in greetings), greetings
