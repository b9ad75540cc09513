"""Network roots: the generators' reading of the command line, and the features' parts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features.base import RequestKind
from bookend.features.nbd import DETACH_STEP, GENERATOR, UNIT, generator_script
from bookend.features.network import (
    GENERATOR_SCRIPT,
    default_route_interfaces,
    matched_names,
    nic_modules,
)
from bookend.features.storage_daemons import STOP_HOOK
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
