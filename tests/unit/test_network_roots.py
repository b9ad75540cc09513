"""Network roots: the generators' reading of the command line, and the features' parts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features.base import FeatureContext, Request, RequestKind
from bookend.features.bond_options import bond_options_script
from bookend.features.nbd import DETACH_STEP, GENERATOR, UNIT, generator_script
from bookend.features.network import FEATURE as NETWORK
from bookend.features.network import GENERATOR_SCRIPT, KEEP_SCRIPT, matched_names
from bookend.features.storage_daemons import STOP_HOOK
from bookend.hostnet import default_route_interfaces, nic_modules
from bookend.plan import make_plan
from tests.unit.conftest import load_config

CLIENT = "/usr/sbin/nbd-client"


def run_generator(script: str, cmdline: str, tmp_path: Path) -> dict[str, str]:
    """Run a generator on the host with a fake command line; every file it wrote."""
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "generator").write_text(script)
    dirs = [tmp_path / name for name in ("normal", "early", "late")]
    env = {
        "BOOKEND_CMDLINE": str(tmp_path / "cmdline"),
        "BOOKEND_UNIT_DIR": str(tmp_path / "run-system"),
        "BOOKEND_KMSG": str(tmp_path / "kmsg"),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["sh", str(tmp_path / "generator"), *map(str, dirs)], env=env, check=True)
    written = {}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_symlink():
            written[str(path.relative_to(tmp_path))] = "-> " + str(path.readlink())
        elif path.is_file() and path.parent != tmp_path:
            written[str(path.relative_to(tmp_path))] = path.read_text()
    return written


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_nbd_root_with_fstype_becomes_daemon_and_sysroot_mount(tmp_path: Path) -> None:
    written = run_generator(
        generator_script(CLIENT), "quiet root=nbd:10.0.2.100:10809:ext4 rw", tmp_path
    )
    service = unit_lines(written[f"run-system/{UNIT}"])
    assert "ExecStart=/usr/sbin/nbd-client 10.0.2.100 10809 /dev/nbd0" in service
    assert "IgnoreOnIsolate=yes" in service and "DefaultDependencies=no" in service
    assert "Type=oneshot" in service and "RemainAfterExit=yes" in service
    assert "After=network-online.target modprobe@nbd.service" in service
    # Nothing may disconnect the root's device but the exitrd.
    assert not any(line.startswith("ExecStop") for line in service)
    assert written[f"normal/initrd-root-device.target.wants/{UNIT}"].endswith(f"run-system/{UNIT}")
    mount = unit_lines(written["early/sysroot.mount"])
    assert mount[-4:] == ["What=/dev/nbd0", "Where=/sysroot", "Type=ext4", "Options=rw"]
    assert written["early/initrd-root-fs.target.requires/sysroot.mount"] == "-> ../sysroot.mount"


def test_nbd_export_flags_and_options(tmp_path: Path) -> None:
    cmdline = "root=nbd:srv:2000/disk1:xfs:noatime,discard:bs=4096,timeout=30,ro,bogus"
    written = run_generator(generator_script(CLIENT), cmdline, tmp_path)
    start = next(line for line in unit_lines(written[f"run-system/{UNIT}"]) if "ExecStart" in line)
    assert start.split(" ", 1)[1] == (
        "srv 2000 /dev/nbd0 -name disk1 -block-size 4096 -timeout 30 -readonly"
    )
    assert unit_lines(written["early/sysroot.mount"])[-2:] == [
        "Type=xfs",
        "Options=ro,noatime,discard",
    ]
    assert "ignoring unknown NBD option 'bogus'" in (tmp_path / "kmsg").read_text()


def test_netroot_with_own_root_and_ipv6_server(tmp_path: Path) -> None:
    cmdline = "netroot=nbd:[fd00::1]:10809 root=UUID=1234 rootflags=noatime"
    written = run_generator(generator_script(CLIENT), cmdline, tmp_path)
    service = unit_lines(written[f"run-system/{UNIT}"])
    assert "ExecStart=/usr/sbin/nbd-client fd00::1 10809 /dev/nbd0" in service
    assert "early/sysroot.mount" not in written  # the fstab generator mounts UUID=1234


def test_nbd_rootflags_from_command_line_and_default_port(tmp_path: Path) -> None:
    cmdline = "root=nbd:host rootflags=x-systemd.device-timeout=20s"
    written = run_generator(generator_script(CLIENT), cmdline, tmp_path)
    assert "host 10809 /dev/nbd0" in written[f"run-system/{UNIT}"]
    mount = unit_lines(written["early/sysroot.mount"])
    assert mount[-1] == "Options=ro,x-systemd.device-timeout=20s"
    assert not any(line.startswith("Type=") for line in mount)


def test_no_nbd_root_writes_nothing(tmp_path: Path) -> None:
    assert run_generator(generator_script(CLIENT), "root=UUID=1 rw", tmp_path) == {}


WAIT_DROPIN = "normal/systemd-networkd-wait-online.service.d/50-bookend-cmdline.conf"
NEEDNET_DROPIN = "normal/initrd-root-fs.target.d/50-bookend-neednet.conf"


@pytest.mark.parametrize(
    ("cmdline", "arguments", "neednet"),
    [
        ("ip=dhcp rd.neednet=1 rd.net.timeout.ifup=15", "--timeout=15 --any", True),
        ("ip=10.0.2.15::10.0.2.2:255.255.255.0:host:ens3:off", "--timeout=120 -i ens3", False),
        ("ip=eth1:dhcp ip=eth2:dhcp6 rd.neednet", "--timeout=120 -i eth1 -i eth2", True),
        ("rd.neednet=1 rd.net.timeout.ifup=x rd.neednet=0", "--timeout=120 --any", False),
    ],
)
def test_network_generator_scopes_the_wait(
    tmp_path: Path, cmdline: str, arguments: str, neednet: bool
) -> None:
    written = run_generator(GENERATOR_SCRIPT, cmdline, tmp_path)
    start = unit_lines(written[WAIT_DROPIN])[-1]
    assert start == f"ExecStart=/usr/lib/systemd/systemd-networkd-wait-online {arguments}"
    if neednet:
        assert unit_lines(written[NEEDNET_DROPIN])[1:] == [
            "Wants=network-online.target",
            "After=network-online.target",
        ]
    else:
        assert NEEDNET_DROPIN not in written


def nbd_sysroot(root_tree: Path, systemd: int = 252) -> Path:
    (root_tree / "usr/sbin/nbd-client").write_text("")
    (root_tree / f"usr/lib/systemd/libsystemd-shared-{systemd}.so").parent.mkdir(parents=True)
    (root_tree / f"usr/lib/systemd/libsystemd-shared-{systemd}.so").write_text("")
    return root_tree


def test_nbd_feature_brings_network_generator_and_exitrd_steps(root_tree: Path) -> None:
    config = load_config(
        None, {"sysroot": str(nbd_sysroot(root_tree)), "features": ["nbd"], "mode": "generic"}
    )
    plan = make_plan(config)
    assert plan.features.index("network") < plan.features.index("nbd")
    files = {g.entry.path: g.entry for g in plan.generated}
    assert files[GENERATOR].data == generator_script(CLIENT).encode()
    assert files[GENERATOR].mode == 0o755
    wanted = {(r.kind, r.name) for r in plan.requests}
    assert (RequestKind.DRIVER_CLASS, "net") in wanted
    assert (RequestKind.MODULE, "nbd") in wanted
    assert {(RequestKind.MODULE, name) for name in ("bonding", "bridge", "8021q")} <= wanted
    assert (RequestKind.EXECUTABLE, "/usr/lib/systemd/systemd-networkd") in wanted
    exitrd = make_exitrd_plan(config, plan)
    exitrd_files = {g.entry.path for g in exitrd.generated}
    assert {DETACH_STEP, STOP_HOOK} <= exitrd_files
    assert (RequestKind.EXECUTABLE, CLIENT) in {(r.kind, r.name) for r in exitrd.requests}


def test_nbd_without_client_is_an_error(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree), "features": ["nbd"], "mode": "generic"})
    with pytest.raises(ConfigError, match="feature nbd: the sysroot has no nbd-client"):
        make_plan(config)


def test_network_files_go_to_etc_systemd_network_and_enable_network(root_tree: Path) -> None:
    (root_tree / "etc/net").mkdir()
    (root_tree / "etc/net/10-uplink.network").write_text("[Match]\nName=ens3\n")
    values = {"sysroot": str(root_tree), "mode": "generic"}
    config = load_config(None, {**values, "network_files": ["/etc/net/10-uplink.network"]})
    plan = make_plan(config)
    assert "network" in plan.features
    files = {g.entry.path: g for g in plan.generated}
    entry = files["/etc/systemd/network/10-uplink.network"]
    assert entry.entry.data == b"[Match]\nName=ens3\n"
    assert "/etc/net/10-uplink.network" in entry.reason


def test_host_network_files_are_opt_in_and_never_carry_a_secret(
    root_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    network = root_tree / "etc/systemd/network"
    (network / "10-uplink.network.d").mkdir(parents=True)
    (network / "10-uplink.network").write_text("[Match]\nName=ens3\n[Network]\nDHCP=yes\n")
    (network / "10-uplink.network.d/mtu.conf").write_text("[Link]\nMTUBytes=9000\n")
    (network / "20-vpn.netdev").write_text("[NetDev]\nKind=wireguard\n[WireGuard]\nPrivateKey=x\n")
    (network / "30-vpn.network").write_text("[Match]\nName=wg0\n")
    (network / "40-masked.network").symlink_to("/dev/null")
    (network / "README").write_text("not a networkd file\n")
    (root_tree / "etc/net").mkdir()
    (root_tree / "etc/net/30-vpn.network").write_text("[Match]\nName=ens4\n")
    values = {"sysroot": str(root_tree), "mode": "generic"}

    def network_entries(**more: object) -> dict[str, bytes | None]:
        plan = make_plan(load_config(None, {**values, **more}))
        prefix = "/etc/systemd/network/"
        return {
            g.entry.path: g.entry.data for g in plan.generated if g.entry.path.startswith(prefix)
        }

    assert network_entries() == {}  # the host's files only when asked for
    with caplog.at_level("WARNING"):
        entries = network_entries(
            host_network_files=True, network_files=["/etc/net/30-vpn.network"]
        )
    assert entries == {
        "/etc/systemd/network/10-uplink.network": b"[Match]\nName=ens3\n[Network]\nDHCP=yes\n",
        "/etc/systemd/network/10-uplink.network.d/mtu.conf": b"[Link]\nMTUBytes=9000\n",
        # the file network_files names wins over the host's of that name
        "/etc/systemd/network/30-vpn.network": b"[Match]\nName=ens4\n",
    }
    assert "leaving /etc/systemd/network/20-vpn.netdev out of the initrd" in caplog.text
    assert "(PrivateKey=)" in caplog.text


def test_network_files_must_be_networkd_files_that_exist(root_tree: Path) -> None:
    (root_tree / "etc/hosts").write_text("")
    values = {"sysroot": str(root_tree), "network_files": ["/etc/hosts", "/etc/x.network"]}
    with pytest.raises(ConfigError) as error:
        load_config(None, values)
    assert "'/etc/hosts' is not an absolute path of a .network" in str(error.value)
    assert "x.network: no such file or directory" in str(error.value)


def test_hostonly_nic_drivers_from_default_route(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net/route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "ens3\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "ens4\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_route_interfaces(proc) == ["ens3"]
    sysfs = tmp_path / "sys"
    pci = sysfs / "devices/pci0000:00/0000:00:03.0"
    virtio = pci / "virtio0"
    (virtio / "net/ens3").mkdir(parents=True)
    (pci / "modalias").write_text("pci:v00001AF4d00001000\n")
    (virtio / "modalias").write_text("virtio:d00000001v00001AF4\n")
    (sysfs / "bus/virtio/drivers/virtio_net").mkdir(parents=True)
    (sysfs / "module/virtio_net").mkdir(parents=True)
    (virtio / "driver").symlink_to(sysfs / "bus/virtio/drivers/virtio_net")
    (sysfs / "bus/virtio/drivers/virtio_net/module").symlink_to(sysfs / "module/virtio_net")
    (sysfs / "class/net").mkdir(parents=True)
    (sysfs / "class/net/ens3").symlink_to(virtio / "net/ens3")
    (virtio / "net/ens3/device").symlink_to(virtio)
    names = [name for name, _ in nic_modules(sysfs, "ens3")]
    assert names == ["virtio:d00000001v00001AF4", "virtio_net", "pci:v00001AF4d00001000"]
    assert nic_modules(sysfs, "br0") == []


def test_names_matched_by_network_files() -> None:
    text = "[Match]\nName=ens3 eth*\nName=enp1s0\n[Network]\nName=notmatch\n"
    assert matched_names(text) == ["ens3", "enp1s0"]


def run_bond_options(cmdline: str, tmp_path: Path, slaves: tuple[str, ...]) -> Path:
    """The bond script over the files systemd-network-generator (252) writes for bond0."""
    netdir = tmp_path / "network"
    netdir.mkdir()
    (netdir / "90-bond0.netdev").write_text("[NetDev]\nKind=bond\nName=bond0\n")
    (netdir / "90-bond0.network").write_text("[Match]\nName=bond0\n\n[Network]\nDHCP=ipv4\n")
    for slave in slaves:
        (netdir / f"90-{slave}.network").write_text(
            f"[Match]\nName={slave}\n\n[Network]\nBond=bond0\n"
        )
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "script").write_text(bond_options_script())
    env = {
        "BOOKEND_CMDLINE": str(tmp_path / "cmdline"),
        "BOOKEND_NETWORK_DIR": str(netdir),
        "BOOKEND_KMSG": str(tmp_path / "kmsg"),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["sh", str(tmp_path / "script")], env=env, check=True)
    return netdir


def test_bond_options_become_networkd_keys_in_a_dropin(tmp_path: Path) -> None:
    cmdline = (
        "ip=bond0:dhcp bond=bond0:ens3,ens4:mode=active-backup,miimon=100,primary=ens4,"
        "arp_ip_target=10.0.2.2;10.0.2.3,use_carrier=1:9000"
    )
    netdir = run_bond_options(cmdline, tmp_path, ("ens3", "ens4"))
    dropin = unit_lines((netdir / "90-bond0.netdev.d/50-bookend-bond.conf").read_text())
    assert dropin == [
        "[Bond]",
        "Mode=active-backup",
        "MIIMonitorSec=100ms",
        "ARPIPTargets=10.0.2.2 10.0.2.3",
    ]
    primary = unit_lines((netdir / "90-ens4.network.d/50-bookend-bond.conf").read_text())
    assert primary == ["[Network]", "PrimarySlave=yes"]
    assert not (netdir / "90-ens3.network.d").exists()
    assert "no key for option 'use_carrier=1'" in (tmp_path / "kmsg").read_text()


@pytest.mark.parametrize(
    ("options", "lines"),
    [
        ("mode=1", ["Mode=active-backup"]),
        ("mode=4,lacp_rate=1,xmit_hash_policy=2", ["Mode=802.3ad", "LACPTransmitRate=fast",
                                                   "TransmitHashPolicy=layer2+3"]),
        ("downdelay=200,updelay=400,lp_interval=3", ["DownDelaySec=200ms", "UpDelaySec=400ms",
                                                     "LearnPacketIntervalSec=3s"]),
    ],
)  # fmt: skip
def test_bond_options_by_number_and_in_the_driver_units(
    tmp_path: Path, options: str, lines: list[str]
) -> None:
    netdir = run_bond_options(f"bond=bond0:ens3,ens4:{options}", tmp_path, ("ens3", "ens4"))
    dropin = unit_lines((netdir / "90-bond0.netdev.d/50-bookend-bond.conf").read_text())
    assert dropin == ["[Bond]", *lines]


@pytest.mark.parametrize("cmdline", ["bond=bond0:ens3,ens4", "ip=dhcp", "bond=bond0:ens3::9000"])
def test_bond_without_options_writes_no_dropin(tmp_path: Path, cmdline: str) -> None:
    netdir = run_bond_options(cmdline, tmp_path, ("ens3",))
    assert not list(netdir.glob("*.d"))


def test_bond_options_for_a_bond_the_generator_did_not_make_are_reported(tmp_path: Path) -> None:
    netdir = run_bond_options("bond=bond1:ens5:mode=1", tmp_path, ())
    assert not list(netdir.glob("*.d"))
    assert (
        "bond bond1: systemd-network-generator wrote no .netdev" in (tmp_path / "kmsg").read_text()
    )


def test_every_network_file_keeps_its_addresses_past_stops_and_carrier_loss(
    tmp_path: Path,
) -> None:
    run, image = tmp_path / "run", tmp_path / "image"
    run.mkdir()
    image.mkdir()
    (run / "91-default.network").write_text("[Network]\nDHCP=ipv4\n")
    (image / "10-uplink.network").write_text("[Network]\nDHCP=ipv4\n")
    (image / "10-uplink.link").write_text("[Link]\n")
    (tmp_path / "keep").write_text(KEEP_SCRIPT)
    env = {
        "BOOKEND_RUN_NETWORK": str(run),
        "BOOKEND_IMAGE_NETWORK": str(image),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["sh", str(tmp_path / "keep")], env=env, check=True)
    dropins = sorted(str(p.relative_to(run)) for p in run.rglob("*.conf"))
    assert dropins == [
        "10-uplink.network.d/90-bookend-keep.conf",
        "91-default.network.d/90-bookend-keep.conf",
    ]
    for dropin in dropins:
        assert unit_lines((run / dropin).read_text()) == [
            "[Network]",
            "KeepConfiguration=yes",
            "IgnoreCarrierLoss=yes",
        ]


def test_hostonly_nic_drivers_of_a_bonds_slaves(tmp_path: Path, root_tree: Path) -> None:
    """The default route goes through bond0 (no device, so no driver of its own): the
    drivers are its slaves', one of them under a VLAN (the kernel's lower_ links)."""
    sysfs = tmp_path / "sys"
    net = sysfs / "class/net"
    net.mkdir(parents=True)
    virtual = sysfs / "devices/virtual/net"
    for name in ("bond0", "ens3.7"):
        (virtual / name).mkdir(parents=True)
        (net / name).symlink_to(virtual / name)
    for slot, name in ((3, "ens3"), (4, "ens4")):
        device = sysfs / f"devices/pci0000:00/0000:00:0{slot}.0"
        (device / "net" / name).mkdir(parents=True)
        (device / "modalias").write_text(f"pci:slot{slot}\n")
        (device / "net" / name / "device").symlink_to(device)
        (net / name).symlink_to(device / "net" / name)
    (virtual / "bond0/lower_ens3.7").symlink_to(virtual / "ens3.7")
    (virtual / "bond0/lower_ens4").symlink_to(net / "ens4")
    (virtual / "ens3.7/lower_ens3").symlink_to(net / "ens3")
    (sysfs / "dev/block").mkdir(parents=True)  # what makes it a sysfs to the config
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text("")
    (proc / "net").mkdir()
    (proc / "net/route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "bond0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    values = {"sysroot": str(root_tree), "sysfs": str(sysfs), "procfs": str(proc)}
    assert NETWORK.compute is not None
    contribution = NETWORK.compute(FeatureContext(load_config(None, values)))  # hostonly
    modules = [item.name for item in contribution if isinstance(item, Request)
               and item.kind is RequestKind.MODULE]  # fmt: skip
    assert sorted(modules) == ["pci:slot3", "pci:slot4"]
