"""Network roots over several NICs and a bond, and a server that goes away while the root
runs (issue 14, proofs 3 and 5; the iSCSI target's outage is in test_iscsi.py's Debian
12 boot); with them, an NBD root by DHCP and by a static ip=.

- Two NICs where only the second reaches the server: ens3 is on a cable whose other end
  no guest holds (nobody answers its DHCP), ens4 on a restricted user network forwarding
  to qemu-nbd (harness/servers.py, a qcow2 overlay of the cached root disk). The root
  comes over ens4 by DHCP, or by a static ip= naming ens4, and
  systemd-networkd-wait-online does not wait for ens3.
- A bond (`bond=bond0:ens3,ens4:mode=active-backup,miimon=100 ip=bond0:dhcp`) of two
  NICs, each on a user network with the same forward, ens3's cable out before the kernel
  starts: the root comes over ens4, the bond's active slave.
- The NBD root's cable out for 12 s while the root runs (its one NIC addressed by DHCP,
  networkd running in the real root too, keeping the address): a write started during
  the outage completes after it (harness/outage.py), and the shutdown through the
  exitrd still detaches the device after unmounting the root.

In the NBD boots by DHCP on one NIC and by a static ip= over the second of two, the
running root also shows the device's unit still active, the initrd's KeepConfiguration=
drop-ins, and bookend's hostonly detection finding NBD over the network through the NIC
that carries it (and not the other). In every boot nothing disconnects the device before the exitrd
does, once the old root is unmounted ("shutting down sockets" is the kernel's word when
a connection ends). Every scenario powers off through the exitrd and records its
figures.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.exitrdjob import SHUTDOWN_LIMIT, install_exitrd_job
from harness.guestjob import read_job_output, run_job
from harness.netroot import (
    DETECTION_CHECK,
    DETECTION_FILES,
    ROOT_GREETING,
    assert_clean_ext4,
    assert_nbd_disconnected_after_unmount,
    ext4_file_text,
    module_index_tree,
    overlay_of,
    record_scenario,
)
from harness.network import (
    USER_GUEST_ADDRESS,
    USER_SERVER_ADDRESS,
    Nic,
    interface_name,
    joined,
    link,
    netdev_id,
    user_network,
)
from harness.outage import (
    OUTAGE_S,
    assert_write_waited_for_the_server,
    expect_root_then,
    outage_job,
    outage_log,
)
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.qmp import Qmp
from harness.rootdisk import RootDisk
from harness.servers import serve_nbd
from harness.token import new_token

BOOT_LIMIT = 900
NBD_PORT = 10809
ROOT_IQN = "iqn.2026-12.test.bookend:root"
# systemd shortens long status lines in the middle: match the unit or its end.
WAIT_ONLINE = r"(networkd-wait-online|to be Configured)"

# Each interface's IPv4 address, "NAME ADDRESS/PREFIX" a line: the root has no iproute2,
# but python3. Written to /run, so running it reads nothing from the root's server.
ADDRESSES = """
cat > /run/addresses.py <<'EOF'
import fcntl, os, socket, struct
SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    for name in sorted(os.listdir("/sys/class/net")):
        request = struct.pack("256s", name.encode())
        try:
            address = fcntl.ioctl(probe, SIOCGIFADDR, request)[20:24]
            mask = fcntl.ioctl(probe, SIOCGIFNETMASK, request)[20:24]
        except OSError:
            continue  # no IPv4 address
        prefix = bin(int.from_bytes(mask, "big")).count("1")
        print(f"{name} {socket.inet_ntoa(address)}/{prefix}")
EOF
"""

# The root's addresses and source, as the running root sees them.
ADDRESS_CHECKS = (
    ADDRESSES
    + """
python3 -I -S /run/addresses.py > /job/out/addresses
findmnt -no SOURCE / > /job/out/root-source
"""
)

# On an NBD root: the device's unit (still active: nothing in the running system
# disconnected it), the KeepConfiguration= drop-ins the initrd left in /run, and what
# bookend's hostonly detection finds on the live root.
NBD_ROOT_CHECKS = (
    """
systemctl show -P ActiveState bookend-nbd-root.service > /job/out/nbd-state
findmnt -no SOURCE / > /job/out/root-source
ls /run/systemd/network/*.network.d/90-bookend-keep.conf > /job/out/keep-dropins
"""
    + DETECTION_CHECK
)

BOND_CHECKS = ADDRESS_CHECKS + "cat /proc/net/bonding/bond0 > /job/out/bonding\n"

# The NIC's carrier follows QEMU's set_link. The root runs networkd as well (it takes
# over the initrd's files in /run), which must keep the address while the carrier is
# gone.
NBD_WATCH = (
    ADDRESSES
    + f"""
systemctl start systemd-networkd.service
/usr/lib/systemd/systemd-networkd-wait-online -i {interface_name(0)} --timeout=120
python3 -I -S /run/addresses.py > /job/out/address-before
carrier=/sys/class/net/{interface_name(0)}/carrier
outage_begun() {{ read -r now < "$carrier"; [ "$now" = 0 ]; }}
outage_over() {{ read -r now < "$carrier"; [ "$now" = 1 ]; }}
during_outage() {{
    sleep 3
    python3 -I -S /run/addresses.py > /job/out/address-during
}}
"""
)


def nbd_append(addressing: str) -> str:
    return f"root=nbd:{USER_SERVER_ADDRESS}:{NBD_PORT}:ext4 rw {addressing}"


def boot_options(
    kernel: Kernel, images: Path, job: Disk, append: str, nics: Nic, console_log: Path
) -> BootOptions:
    return BootOptions(kernel=kernel.path, initrd=images / "initrd.img", append=append,
                       disks=(job,), network=nics.args, pass_fds=nics.pass_fds,
                       timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip


def expect_network_then_root(vm: Boot) -> float:
    """Follow the boot into the root; return how long wait-online took (from its start
    to its end, both on the console)."""
    vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
    vm.expect(rf"Starting .*{WAIT_ONLINE}", timeout=300)
    began = vm.elapsed
    vm.expect(rf"Finished .*{WAIT_ONLINE}", timeout=300)
    waited = vm.elapsed - began
    vm.expect(r"Reached target .*initrd\.target", timeout=400)
    vm.expect(ROOT_GREETING, timeout=200)
    return waited


def addresses_by_interface(text: str) -> dict[str, str]:
    """ADDRESSES' output as interface -> its IPv4 address (CIDR)."""
    return dict(line.split() for line in text.splitlines() if line.strip())


def nbd_root_job(path: Path, images: Path, kver: str, then: str) -> Disk:
    """The exitrd job with NBD_ROOT_CHECKS (and the module index detection reads), then
    `then`."""
    index = module_index_tree(kver, path.with_name("kindex"))
    return install_exitrd_job(path, images, then=NBD_ROOT_CHECKS + then,
                              files={DETECTION_FILES: index})  # fmt: skip


def assert_nbd_root_seen_running(job: Path, nic: str, tmp_path: Path) -> None:
    """What NBD_ROOT_CHECKS found in the running root, whose traffic goes through nic."""

    def output(name: str) -> str:
        return read_job_output(job, name, tmp_path / name).read_text()

    assert output("nbd-state").strip() == "active"
    assert output("root-source").strip() == "/dev/nbd0"
    # The real root sees the initrd's KeepConfiguration= drop-in for ip='s network.
    keep = output("keep-dropins").split()
    assert keep and all(path.startswith("/run/systemd/network/") for path in keep), keep
    # Hostonly detection on the live root: NBD over the network, through nic's driver
    # (the kernel shows no NBD server, so the NIC that is up with an address: nic alone).
    detection = output("detection")
    assert "storage nbd network\n" in detection, detection
    assert f"network-interfaces {nic}\n" in detection, detection
    driver = rf"^module virtio_net: .*NIC {nic} \(up with an address"
    assert re.search(driver, detection, re.M), detection
    assert re.search(r"^module nbd: NBD device nbd0 for / \(ext4 on /dev/nbd0\)$", detection, re.M)


def server_copy_of_root(overlay: Path, tmp_path: Path) -> Path:
    """The NBD server's qcow2 overlay as a raw image, read once the guest is off."""
    raw = tmp_path / "root.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], check=True)
    return raw


# ens3 gets nothing (DHCP unanswered, or not named); ens4 the address.
TWO_NIC_ADDRESSING = {
    "dhcp": "ip=dhcp",
    "static": f"ip={USER_GUEST_ADDRESS}::10.0.2.2:255.255.255.0:bookend-test:"
    f"{interface_name(1)}:off",
}


@pytest.mark.parametrize("addressing", list(TWO_NIC_ADDRESSING))
def test_nbd_root_over_the_second_of_two_nics(
    kernel: Kernel,
    root_disk: RootDisk,
    nbd_images: Path,
    console_log: Path,
    tmp_path: Path,
    addressing: str,
) -> None:
    overlay = overlay_of(root_disk.image, tmp_path / "root.qcow2")
    # The static boot also shows the running root (NBD_ROOT_CHECKS, detection's few
    # seconds); by DHCP on one NIC the cable-out boot does.
    running = addressing == "static"
    job = (nbd_root_job(tmp_path / "job.img", nbd_images, kernel.version, ADDRESS_CHECKS)
           if running else install_exitrd_job(tmp_path / "job.img", nbd_images,
                                              then=ADDRESS_CHECKS))  # fmt: skip
    append = nbd_append(TWO_NIC_ADDRESSING[addressing])
    waits: list[float] = []
    with serve_nbd(overlay, "qcow2", tmp_path / "qemu-nbd.log") as port, link() as cable:
        dead = cable.end(0, index=0)  # the other end stays with us, unread
        live = user_network(relayed=((USER_SERVER_ADDRESS, NBD_PORT, port),), index=1)
        options = boot_options(kernel, nbd_images, job, append, joined(dead, live), console_log)
        done = run_job(options, on_the_way=lambda vm: waits.append(expect_network_then_root(vm)),
                       exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip
    assert done.status == 0, done.why_failed(console_log)
    record_scenario(f"nbd root, 2 NICs, 2nd reaches, {addressing}", done.text,
                    nbd_images / "initrd.img")  # fmt: skip
    # Well inside wait-online's 120 s: it waited for the NIC that came up, not for ens3.
    assert waits and waits[0] < 60, waits
    listed = read_job_output(job.path, "addresses", tmp_path / "addresses").read_text()
    addresses = addresses_by_interface(listed)
    assert addresses.get(interface_name(1)) == f"{USER_GUEST_ADDRESS}/24", addresses
    assert interface_name(0) not in addresses, addresses
    root = read_job_output(job.path, "root-source", tmp_path / "root-source").read_text()
    assert root.strip() == "/dev/nbd0"
    if running:
        assert_nbd_root_seen_running(job.path, interface_name(1), tmp_path)
    assert_nbd_disconnected_after_unmount(done.text)
    assert_clean_ext4(server_copy_of_root(overlay, tmp_path))


BOND = "bond0"
BOND_CMDLINE = (f"bond={BOND}:{interface_name(0)},{interface_name(1)}:mode=active-backup,"
                f"miimon=100 ip={BOND}:dhcp")  # fmt: skip


def test_nbd_root_over_a_bond_with_the_first_slave_cut_at_boot(
    kernel: Kernel,
    root_disk: RootDisk,
    nbd_images: Path,
    console_log: Path,
    tmp_path: Path,
) -> None:
    overlay = overlay_of(root_disk.image, tmp_path / "root.qcow2")
    job = install_exitrd_job(tmp_path / "job.img", nbd_images, then=BOND_CHECKS)
    qmp_socket = tmp_path / "qmp.sock"

    def cut_first_slave_then_follow(vm: Boot) -> None:
        with Qmp(qmp_socket) as qmp:
            # Out before the guest's kernel has even started.
            qmp.execute("set_link", name=netdev_id(0), up=False)
        expect_network_then_root(vm)

    with serve_nbd(overlay, "qcow2", tmp_path / "qemu-nbd.log") as port:
        forward = ((USER_SERVER_ADDRESS, NBD_PORT, port),)
        slaves = joined(user_network(relayed=forward, index=0),
                        user_network(relayed=forward, index=1))  # fmt: skip
        options = boot_options(kernel, nbd_images, job, nbd_append(BOND_CMDLINE), slaves,
                               console_log)  # fmt: skip
        options = replace(options, qmp_socket=qmp_socket)
        done = run_job(options, on_the_way=cut_first_slave_then_follow,
                       exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip
    assert done.status == 0, done.why_failed(console_log)
    record_scenario("nbd root, bond, 1st slave cut", done.text, nbd_images / "initrd.img")
    addresses = read_job_output(job.path, "addresses", tmp_path / "addresses").read_text()
    assert addresses_by_interface(addresses) == {
        "lo": "127.0.0.1/8",
        BOND: f"{USER_GUEST_ADDRESS}/24",
    }, addresses
    bonding = read_job_output(job.path, "bonding", tmp_path / "bonding").read_text()
    # The options of bond= reached the driver, and the second slave carries the bond.
    assert "Bonding Mode: fault-tolerance (active-backup)" in bonding, bonding
    assert "MII Polling Interval (ms): 100" in bonding, bonding
    assert f"Currently Active Slave: {interface_name(1)}" in bonding, bonding
    slaves_status = re.findall(r"Slave Interface: (\S+)\nMII Status: (\S+)", bonding)
    # (networkd enslaves them in no fixed order)
    assert dict(slaves_status) == {interface_name(0): "down", interface_name(1): "up"}, bonding
    root = read_job_output(job.path, "root-source", tmp_path / "root-source").read_text()
    assert root.strip() == "/dev/nbd0"
    assert_nbd_disconnected_after_unmount(done.text)
    assert_clean_ext4(server_copy_of_root(overlay, tmp_path))


def test_nbd_root_by_dhcp_boots_survives_its_cable_out_for_12_s_and_is_disconnected(
    kernel: Kernel, root_disk: RootDisk, nbd_images: Path, console_log: Path, tmp_path: Path
) -> None:
    overlay = overlay_of(root_disk.image, tmp_path / "root.qcow2")
    token = new_token()
    job = nbd_root_job(tmp_path / "job.img", nbd_images, kernel.version,
                       outage_job(NBD_WATCH, token))  # fmt: skip
    qmp_socket = tmp_path / "qmp.sock"

    def cable_out() -> None:
        with Qmp(qmp_socket) as qmp:
            qmp.execute("set_link", name=netdev_id(0), up=False)
            time.sleep(OUTAGE_S)
            qmp.execute("set_link", name=netdev_id(0), up=True)

    with serve_nbd(overlay, "qcow2", tmp_path / "qemu-nbd.log") as port:
        nic = user_network(relayed=((USER_SERVER_ADDRESS, NBD_PORT, port),))
        options = boot_options(kernel, nbd_images, job, nbd_append("ip=dhcp"), nic, console_log)
        options = replace(options, qmp_socket=qmp_socket)
        done = run_job(options, on_the_way=expect_root_then(cable_out),
                       exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip
    assert done.status == 0, done.why_failed(console_log)
    record_scenario("nbd root, dhcp, cable out 12 s", done.text, nbd_images / "initrd.img")
    assert_nbd_root_seen_running(job.path, interface_name(0), tmp_path)
    steps = outage_log(read_job_output(job.path, "outage", tmp_path / "outage").read_text())
    assert_write_waited_for_the_server(steps)
    # The real root's networkd kept the address through the carrier's loss.
    for when in ("before", "during"):
        listed = read_job_output(job.path, f"address-{when}", tmp_path / when).read_text()
        assert addresses_by_interface(listed) == {
            "lo": "127.0.0.1/8",
            interface_name(0): f"{USER_GUEST_ADDRESS}/24",
        }, (when, listed)
    assert_nbd_disconnected_after_unmount(done.text)
    raw = server_copy_of_root(overlay, tmp_path)
    assert_clean_ext4(raw)
    assert ext4_file_text(raw, "/outage-proof").split() == [token, "during", token, "after"]
