"""Hostonly detection of network roots (NBD, iSCSI, NFS) and of the NICs they use.

The NBD and iSCSI trees mirror what a guest booted on such a root showed (the
capture of tests/vm/test_netroot.py's and test_iscsi.py's guests, Linux 6.1 under
QEMU: `readlink -f /sys/block/...`, the sysfs attributes, /proc/self/mountinfo and
/proc/net/{route,ipv6_route,if_inet6}, copied as they were). The NFS mount's options
are the kernel's own form (nfs_show_options: ...,clientaddr=...,addr=SERVER last).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.features import ALL
from bookend.features.base import RequestKind
from bookend.hostnet import (
    addressed_interfaces,
    default_route_interfaces,
    lower_interfaces,
    read_routes,
    route_interface,
)
from bookend.hostonly import detect_host, format_detection
from bookend.kmodules import ModuleDatabase, load_database
from bookend.plan import HOSTONLY_RECORD, make_plan
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot
from tests.unit.conftest import load_config
from tests.unit.sysfstree import FakeHost
from tests.unit.test_iscsi import iscsi_sysroot

KVER = "6.1.0-test"
MODULES = (
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/nfs/nfsv4.ko",
    "kernel/drivers/block/nbd.ko",
    "kernel/drivers/scsi/iscsi_tcp.ko",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/md/dm-mod.ko",
    "kernel/drivers/md/dm-crypt.ko",
)
ALIASES = (
    "alias fs-ext4 ext4",
    "alias fs-nfs4 nfsv4",
    "alias virtio:d00000001v* virtio_net",
    "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci",
    "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e",
)

# As the captured guests showed them (both had the same network).
NIC_PCI = "pci0000:00/0000:00:03.0"
NIC_VIRTIO = f"{NIC_PCI}/virtio0"
NIC_PCI_ALIAS = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
NIC_VIRTIO_ALIAS = "virtio:d00000001v00001AF4"
ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ens3\t0002000A\t00000000\t0001\t0\t0\t1024\t00FFFFFF\t0\t0\t0
"""
IPV6_ROUTE = """\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000100 00000002 00000000 00000001     ens3
fec00000000000000000000000000000 40 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000400 00000001 00000000 00400001     ens3
00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
fe800000000000000000000000000002 00000400 00000001 00000000 00400003     ens3
00000000000000000000000000000001 80 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
fe80000000000000505400fffe123401 80 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000000 00000003 00000000 80200001     ens3
fec0000000000000505400fffe123401 80 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000000 00000002 00000000 80200001     ens3
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 \
00000000000000000000000000000000 00000100 00000004 00000000 00000001     ens3
00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""
IF_INET6 = """\
fec0000000000000505400fffe123401 02 40 40 00     ens3
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe123401 02 40 20 80     ens3
"""
SERVER = "10.0.2.100"
TARGET = "iqn.2026-12.test.bookend:root"
LUKS_UUID = "CRYPT-LUKS2-5c9d0e8f2a1b4c3d9e7f6a5b4c3d2e1f-luks-5c9d0e8f"
LVM_UUID = "LVM-" + "Xr4kD2" * 5 + "ab" + "Qm8Tz1" * 5 + "cd"


@pytest.fixture
def db(root_tree: Path) -> ModuleDatabase:
    moddir = root_tree / "usr/lib/modules" / KVER
    (moddir / "modules.dep").write_text("".join(f"{path}:\n" for path in MODULES))
    (moddir / "modules.alias").write_text("".join(f"{line}\n" for line in ALIASES))
    return load_database(Sysroot(root_tree), KVER)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """The captured guests' network: ens3, a virtio NIC with a DHCP address from slirp,
    no IPv4 default route, an IPv6 site-local prefix and default route from its RAs."""
    host = FakeHost(tmp_path / "host")
    host.device(NIC_PCI, NIC_PCI_ALIAS, driver="virtio-pci", module="virtio_pci")
    host.device(NIC_VIRTIO, NIC_VIRTIO_ALIAS, driver="virtio_net", module="virtio_net")
    host.interface("ens3", NIC_VIRTIO)
    host.interface("lo", None, flags="0x9")
    host.proc_file("net/route", ROUTE)
    host.proc_file("net/ipv6_route", IPV6_ROUTE)
    host.proc_file("net/if_inet6", IF_INET6)
    return host


def nbd_root(host: FakeHost) -> None:
    """/ on /dev/nbd0 as the guest showed it: a virtual block device, connected (pid)."""
    host.block("virtual/block/nbd0", "43:0", attributes={"pid": "153", "size": "3145728"})
    host.block("virtual/block/nbd1", "43:16")  # the nbd module makes 16; only nbd0 is used
    host.mount("/", "43:0", "ext4", "/dev/nbd0", "rw,errors=remount-ro")


def iscsi_disk(host: FakeHost) -> Path:
    """sda on LUN 1 of session1 (LUN 0 is the target's controller), as the guest showed."""
    hostdir = "platform/host0"
    host.device(hostdir, attributes={"scsi_host/host0/proc_name": "iscsi_tcp"})
    session = f"{hostdir}/session1"
    host.device(session, attributes={"iscsi_session/session1/targetname": TARGET})
    connection = f"{session}/connection1:0/iscsi_connection/connection1:0"
    host.device(connection, attributes={"persistent_address": SERVER, "address": SERVER,
                                        "persistent_port": "3260"})  # fmt: skip
    host.device(f"{session}/target0:0:0/0:0:0:0", "scsi:t-0x0c")
    lun = f"{session}/target0:0:0/0:0:0:1"
    host.device(lun, "scsi:t-0x00", driver="sd", module="sd_mod",
                attributes={"dh_state": "detached"})  # fmt: skip
    return host.block(f"{lun}/block/sda", "8:0")


def modules(found_modules: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(found_modules)


def test_nbd_root_takes_the_nics_that_are_up_with_an_address(
    host: FakeHost, db: ModuleDatabase
) -> None:
    nbd_root(host)
    found = detect_host(host.sys, host.proc, db)
    where = "NBD device nbd0 under / (ext4 on /dev/nbd0)"
    assert found.storage == ((StorageKind.NBD, where), (StorageKind.NETWORK, where))
    assert found.interfaces == ("ens3",)
    assert found.block_devices == ("nbd0",)
    reasons = modules(found.modules)
    assert reasons["nbd"] == "NBD device nbd0 for / (ext4 on /dev/nbd0)"
    how = "NIC ens3 (up with an address, the kernel shows no server address)"
    assert reasons["virtio_net"] == (
        f"modalias of /sys/devices/{NIC_VIRTIO} ({NIC_VIRTIO_ALIAS}): {how} for {where}"
    )
    assert reasons["virtio_pci"].startswith(f"modalias of /sys/devices/{NIC_PCI} ")
    record = format_detection(found)
    assert "storage nbd network\n" in record
    assert record.endswith("network-interfaces ens3\n")


def test_iscsi_root_takes_the_nic_with_the_route_to_the_portal(
    host: FakeHost, db: ModuleDatabase
) -> None:
    iscsi_disk(host)
    host.mount("/", "8:0", "ext4", "/dev/sda", "rw,errors=remount-ro")
    found = detect_host(host.sys, host.proc, db)
    where = f"iSCSI session1 to {TARGET} under / (ext4 on /dev/sda)"
    assert found.storage == (
        (StorageKind.ISCSI, where),
        (StorageKind.NETWORK, f"{where} (connection1:0)"),
    )
    assert found.interfaces == ("ens3",)
    reasons = modules(found.modules)
    assert reasons["iscsi_tcp"] == "iSCSI transport of session1 for / (ext4 on /dev/sda)"
    assert reasons["sd_mod"].startswith("driver of /sys/devices/platform/host0/session1/")
    assert f"NIC ens3 (route to {SERVER}) for {where} (connection1:0)" in reasons["virtio_net"]


def test_lvm_on_luks_on_an_iscsi_lun_is_all_found_and_planned(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    sda = iscsi_disk(host)
    luks = host.block("virtual/block/dm-0", "253:0", [sda],
                      {"dm/uuid": LUKS_UUID, "dm/name": "cryptlun"})  # fmt: skip
    host.block("virtual/block/dm-1", "253:1", [luks], {"dm/uuid": LVM_UUID, "dm/name": "vg-root"})
    host.mount("/", "253:1", "ext4", "/dev/mapper/vg-root")
    found = detect_host(host.sys, host.proc, db)
    assert found.storage_kinds == {
        StorageKind.LUKS,
        StorageKind.LVM,
        StorageKind.ISCSI,
        StorageKind.NETWORK,
    }
    assert found.interfaces == ("ens3",)
    config = load_config(None, {"sysroot": str(iscsi_sysroot(root_tree)),
                                "sysfs": str(host.sys), "procfs": str(host.proc)})  # fmt: skip
    plan = make_plan(config)
    assert {"dm", "luks", "lvm", "network", "iscsi", "storage-daemons"} <= set(plan.features)
    hostonly = {r.name: r.reason for r in plan.requests if r.reason.startswith("hostonly: ")}
    assert {"iscsi_tcp", "sd_mod", "dm_crypt", "virtio_net", "virtio_pci"} <= set(hostonly)
    assert "NIC ens3 (route to 10.0.2.100)" in hostonly["virtio_net"]


def test_nbd_root_plan_switches_on_nbd_and_network(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    nbd_root(host)
    (root_tree / "usr/sbin/nbd-client").write_text("")
    config = load_config(None, {"sysroot": str(root_tree), "sysfs": str(host.sys),
                                "procfs": str(host.proc)})  # fmt: skip
    plan = make_plan(config)
    assert {"network", "nbd", "storage-daemons"} <= set(plan.features)
    drivers = [r for r in plan.requests if r.kind is RequestKind.MODULE and r.name == "virtio_net"]
    assert any("NIC ens3 (up with an address" in r.reason for r in drivers), drivers
    record = next(g.entry.data for g in plan.generated if g.entry.path == HOSTONLY_RECORD)
    assert b"network-interfaces ens3\n" in (record or b"")


NFS_OPTIONS = (
    "rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,"
    "retrans=2,sec=sys,clientaddr=10.0.2.15,local_lock=none,addr=10.0.2.100"
)


def test_nfs_root_is_nfs_and_network_storage_reached_by_its_route(
    host: FakeHost, db: ModuleDatabase
) -> None:
    host.mount("/", "0:35", "nfs4", "10.0.2.100:/srv/root", NFS_OPTIONS)
    found = detect_host(host.sys, host.proc, db)
    where = "/ (nfs4 from 10.0.2.100:/srv/root)"
    assert found.storage == ((StorageKind.NFS, where), (StorageKind.NETWORK, where))
    assert found.interfaces == ("ens3",)
    assert f"NIC ens3 (route to {SERVER}) for {where}" in modules(found.modules)["virtio_net"]
    assert modules(found.modules)["nfsv4"] == f"filesystem of {where}"


def test_nfs_root_switches_on_the_feature_that_serves_it_and_network(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    host.mount("/", "0:35", "nfs4", "10.0.2.100:/srv/root", NFS_OPTIONS)
    config = load_config(None, {"sysroot": str(root_tree), "sysfs": str(host.sys),
                                "procfs": str(host.proc)})  # fmt: skip
    serving = [name for name, feature in ALL.items() if feature.serves is StorageKind.NFS]
    assert serving == ["nfs"]
    assert {"network", "nfs"} <= set(make_plan(config).features)


def test_the_longest_prefix_wins_and_the_default_route_takes_the_rest(host: FakeHost) -> None:
    """A second NIC with the default route: the server on ens3's own subnet is reached
    through ens3, any other address through the default route's ens4."""
    pci = "pci0000:00/0000:00:1f.6"
    host.device(pci, "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", "e1000e", "e1000e")
    host.interface("ens4", pci)
    host.proc_file("net/route", ROUTE + (
        "ens4\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "ens4\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    ))  # fmt: skip
    routes = read_routes(host.proc)
    assert route_interface(routes, SERVER) == "ens3"
    assert route_interface(routes, "192.168.1.7") == "ens4"
    assert route_interface(routes, "203.0.113.9") == "ens4"
    assert default_route_interfaces(host.proc) == ["ens4", "ens3"]  # IPv4's, then IPv6's
    # IPv6: the site-local prefix is ens3's; the captured default route too (via fe80::2).
    assert route_interface(routes, "fec0::2") == "ens3"
    assert route_interface(routes, "[2001:db8::1]") == "ens3"
    assert route_interface(routes, "nfs.example") is None
    assert addressed_interfaces(host.sys, host.proc) == ["ens3", "ens4"]


def test_a_down_or_unaddressed_nic_carries_nothing(host: FakeHost, db: ModuleDatabase) -> None:
    pci = "pci0000:00/0000:00:1f.6"
    host.device(pci, "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", "e1000e", "e1000e")
    host.interface("ens4", pci, flags="0x1002")  # down
    host.interface("ens5", None)  # up, with no address
    assert addressed_interfaces(host.sys, host.proc) == ["ens3"]
    nbd_root(host)
    assert "e1000e" not in modules(detect_host(host.sys, host.proc, db).modules)


def test_a_bond_takes_the_drivers_of_the_nics_under_it(host: FakeHost, db: ModuleDatabase) -> None:
    pci = "pci0000:00/0000:00:1f.6"
    host.device(pci, "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", "e1000e", "e1000e")
    host.interface("ens4", pci)
    host.interface("bond0", None, flags="0x1403", lower=("ens3", "ens4"))
    host.proc_file("net/route", ROUTE.replace("ens3\t", "bond0\t"))
    assert lower_interfaces(host.sys, "bond0") == ["bond0", "ens3", "ens4"]
    host.mount("/", "0:35", "nfs4", "10.0.2.100:/srv/root", NFS_OPTIONS)
    found = detect_host(host.sys, host.proc, db)
    assert found.interfaces == ("bond0", "ens3", "ens4")
    reasons = modules(found.modules)
    assert "NIC ens4 (route to 10.0.2.100)" in reasons["e1000e"]
    assert "NIC ens3 (route to 10.0.2.100)" in reasons["virtio_net"]


def test_no_interface_for_a_network_root_is_a_warning(
    host: FakeHost, db: ModuleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    host.proc_file("net/route", ROUTE.splitlines()[0] + "\n")
    host.proc_file("net/if_inet6", "")
    nbd_root(host)
    with caplog.at_level(logging.WARNING):
        found = detect_host(host.sys, host.proc, db)
    assert found.interfaces == ()
    assert "no interface is up with an address for NBD device nbd0" in caplog.text
    assert "--add-driver-class net" in caplog.text


def test_a_local_root_finds_no_network(host: FakeHost, db: ModuleDatabase) -> None:
    host.device("pci0000:00/0000:00:04.0/virtio1", "virtio:d00000002v00001AF4")
    host.block("pci0000:00/0000:00:04.0/virtio1/block/vda", "254:0")
    host.mount("/", "254:0", "ext4", "/dev/vda")
    found = detect_host(host.sys, host.proc, db)
    assert found.storage == () and found.interfaces == ()
    assert "virtio_net" not in modules(found.modules)


def test_plan_detect_prints_the_record_without_the_features_programs(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    """`bookend plan --detect` needs no nbd-client in the sysroot (the nbd feature would)."""
    nbd_root(host)
    empty = root_tree.parent / "conf"
    empty.mkdir()
    argv = ["plan", "--detect", "--config-root", str(empty), "--sysroot", str(root_tree),
            "--sysfs", str(host.sys), "--procfs", str(host.proc)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bookend", *argv],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == format_detection(detect_host(host.sys, host.proc, db))
    assert "module virtio_net: " in done.stdout
    assert done.stdout.endswith("storage nbd network\nnetwork-interfaces ens3\n")
    without = subprocess.run([sys.executable, "-m", "bookend", *argv[:1], *argv[2:]],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert without.returncode == 2 and "nbd-client" in without.stderr
