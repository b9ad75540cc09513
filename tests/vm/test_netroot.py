"""Network roots: an NBD root served from the host's loopback boots, switches root and
powers off through the exitrd, which disconnects the device after the old root is
unmounted (and not a moment earlier: the kernel logs "shutting down sockets" when a
connection ends); and rd.neednet=1 without a link stops in emergency mode naming the NIC.

The NBD server is qemu-nbd on 127.0.0.1 (harness/servers.py), serving a qcow2 overlay
of the cached root disk (the cache is never written); the guest reaches it only through
a restricted user network's relayed forward (harness/network.py). Its address comes
from slirp's DHCP (ip=dhcp) or a static ip= naming the interface.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.exitrdjob import install_exitrd_job
from harness.guestjob import read_job_output, run_job
from harness.netroot import (
    DETECTION_CHECK,
    DETECTION_FILES,
    assert_clean_ext4,
    expect_initrd_then_root,
    module_index_tree,
    overlay_of,
    record_scenario,
)
from harness.network import USER_GUEST_ADDRESS, USER_SERVER_ADDRESS, user_network
from harness.qemu import BootOptions, Kernel, boot
from harness.qmp import Qmp
from harness.rootdisk import RootDisk
from harness.servers import serve_nbd

BOOT_LIMIT = 900
# From the token to QEMU's exit: unpacking the exitrd, pivoting, disconnecting.
SHUTDOWN_LIMIT = 300
NBD_PORT = 10809
NET_TIMEOUT = 20
NETDEV = "net0"  # the id harness/network.py gives a guest's first NIC

# After the exitrd is installed, the job also records the device's unit (still active:
# nothing in the running system disconnected it), the root's source, the
# KeepConfiguration= drop-ins the initrd left in /run, and what bookend's hostonly
# detection finds on this live NBD root.
NBD_CHECKS = (
    """
systemctl show -P ActiveState bookend-nbd-root.service > /job/out/nbd-state
findmnt -no SOURCE / > /job/out/root-source
ls /run/systemd/network/*.network.d/90-bookend-keep.conf > /job/out/keep-dropins
"""
    + DETECTION_CHECK
)


# slirp's DHCP, or the address it would give, set statically on the NIC by name: the
# harness puts network devices before disks, so the NIC has PCI slot 3 (ens3), and
# wait-online then waits for that interface alone.
ADDRESSING = {
    "dhcp": "ip=dhcp",
    "static": f"ip={USER_GUEST_ADDRESS}::10.0.2.2:255.255.255.0:bookend-test:ens3:off",
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
    overlay = overlay_of(root_disk.image, tmp_path / "root.qcow2")
    index = module_index_tree(kernel.version, tmp_path / "kindex")
    job = install_exitrd_job(tmp_path / "job.img", nbd_images, then=NBD_CHECKS,
                             files={DETECTION_FILES: index})  # fmt: skip
    append = f"root=nbd:{USER_SERVER_ADDRESS}:{NBD_PORT}:ext4 rw {ADDRESSING[addressing]}"
    with serve_nbd(overlay, "qcow2", tmp_path / "qemu-nbd.log") as port:
        nic = user_network(relayed=((USER_SERVER_ADDRESS, NBD_PORT, port),))
        options = BootOptions(kernel=kernel.path, initrd=nbd_images / "initrd.img",
                              disks=(job,), append=append, network=nic.args,
                              timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip
        done = run_job(options, on_the_way=expect_initrd_then_root, exit_timeout=SHUTDOWN_LIMIT)
    assert done.status == 0, f"the job failed; see {console_log}"
    record_scenario(f"nbd root, {addressing} address", done.text, nbd_images / "initrd.img")

    state = read_job_output(job.path, "nbd-state", tmp_path / "nbd-state").read_text()
    assert state.strip() == "active"
    root = read_job_output(job.path, "root-source", tmp_path / "root-source").read_text()
    assert root.strip() == "/dev/nbd0"
    # The real root sees the initrd's KeepConfiguration= drop-in for ip='s network.
    keep = read_job_output(job.path, "keep-dropins", tmp_path / "keep").read_text().split()
    assert keep and all(path.startswith("/run/systemd/network/") for path in keep), keep
    # Hostonly detection on the live root: NBD over the network, through ens3's driver
    # (the kernel shows no NBD server, so the NIC that is up with an address).
    detection = read_job_output(job.path, "detection", tmp_path / "detection").read_text()
    assert "storage nbd network\n" in detection, detection
    assert "network-interfaces ens3\n" in detection, detection
    assert re.search(r"^module virtio_net: .*NIC ens3 \(up with an address", detection, re.M), (
        detection
    )
    assert re.search(r"^module nbd: NBD device nbd0 for / \(ext4 on /dev/nbd0\)$", detection, re.M)

    _, marker, pivoted = done.text.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    assert "block nbd0: shutting down sockets" not in done.text.partition(marker)[0]
    unmounted = re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted)
    assert unmounted, pivoted[-3000:]
    disconnected = re.search(
        r"bookend: disconnecting NBD device /dev/nbd0 \(/oldroot unmounted\)", pivoted
    )
    assert disconnected and disconnected.start() > unmounted.start(), pivoted[-3000:]
    # The server's copy of the root, read on the host once the guest is off: clean.
    raw = tmp_path / "root.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], check=True)
    assert_clean_ext4(raw)


def test_neednet_without_link_ends_in_emergency_naming_the_interface(
    root_boot: BootOptions, nbd_images: Path, console_log: Path, tmp_path: Path
) -> None:
    socket = tmp_path / "qmp.sock"
    options = replace(
        root_boot,
        initrd=nbd_images / "initrd.img",
        append=f"{root_boot.append} ip=dhcp rd.neednet=1 rd.net.timeout.ifup={NET_TIMEOUT}",
        network=user_network().args,
        qmp_socket=socket,
        timeout=BOOT_LIMIT,
    )
    with boot(options) as vm, Qmp(socket) as qmp:
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
