from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.config import Config
from bookend.drivers import GENERIC_CLASSES
from bookend.errors import SysrootError
from bookend.features import ALL
from bookend.features.base import RequestKind
from bookend.hostonly import detect_host, format_detection, parse_mountinfo
from bookend.kmodules import ModuleDatabase, load_database
from bookend.plan import HOSTONLY_RECORD, make_plan
from bookend.storage import HostDetection, StorageKind
from bookend.sysroot import Sysroot
from tests.unit.conftest import load_config
from tests.unit.sysfstree import FakeHost

KVER = "6.1.0-test"
MODULES = (
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/btrfs/btrfs.ko",
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/nvme/host/nvme.ko",
    "kernel/drivers/ata/ahci.ko",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/scsi/mpt3sas/mpt3sas.ko",
    "kernel/drivers/scsi/device_handler/scsi_dh_alua.ko",
    "kernel/drivers/md/md-mod.ko",
    "kernel/drivers/md/raid1.ko",
    "kernel/drivers/md/raid456.ko",
    "kernel/drivers/md/dm-mod.ko",
    "kernel/drivers/md/dm-crypt.ko",
    "kernel/drivers/md/dm-multipath.ko",
    "kernel/drivers/md/dm-snapshot.ko",
    "kernel/drivers/md/dm-thin-pool.ko",
    "kernel/drivers/md/dm-raid.ko",
    "kernel/crypto/xts.ko",
    "kernel/crypto/algif_skcipher.ko",
    "kernel/arch/x86/crypto/aesni-intel.ko",
)
ALIASES = (
    "alias virtio:d00000002v* virtio_blk",
    "alias pci:v*d*sv*sd*bc01sc06i01* ahci",
    "alias fs-ext4 ext4",
    "alias fs-btrfs btrfs",
    "alias fs-overlay overlay",
    "alias crypto-xts xts",
    "alias crypto-aes aesni_intel",
    "alias md-raid1 raid1",
    "alias md-raid5 raid456",
)
BUILTIN = ("kernel/fs/xfs/xfs.ko", "kernel/crypto/sha256_generic.ko")

VIRTIO_PCI = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
VIRTIO_BLK = "virtio:d00000002v00001AF4"
NVME_PCI = "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"
BRIDGE_PCI = "pci:v00008086d0000A330sv00001028sd00000869bc06sc04i00"
AHCI_PCI = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
LVM_UUID = "LVM-" + "Xr4kD2" * 5 + "ab" + "Qm8Tz1" * 5 + "cd"
LUKS_UUID = "CRYPT-LUKS2-5c9d0e8f2a1b4c3d9e7f6a5b4c3d2e1f-luks-5c9d0e8f"


@pytest.fixture
def db(root_tree: Path) -> ModuleDatabase:
    moddir = root_tree / "usr/lib/modules" / KVER
    (moddir / "modules.dep").write_text("".join(f"{path}:\n" for path in MODULES))
    (moddir / "modules.alias").write_text("".join(f"{line}\n" for line in ALIASES))
    (moddir / "modules.builtin").write_text("".join(f"{path}\n" for path in BUILTIN))
    return load_database(Sysroot(root_tree), KVER)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "host")


def virtio_partition(host: FakeHost, slot: str, virtio: str, disk: str, major: int) -> Path:
    """Partition 2 of a virtio disk whose virtio device has no driver link, only a modalias."""
    pci = f"pci0000:00/0000:00:{slot}"
    host.device(pci, VIRTIO_PCI, driver="virtio-pci", module="virtio_pci")
    host.device(f"{pci}/{virtio}", VIRTIO_BLK)
    disk_dir = host.block(f"{pci}/{virtio}/block/{disk}", f"{major}:0")
    return host.block(
        f"{disk_dir.relative_to(host.sys / 'devices')}/{disk}2",
        f"{major}:2",
        [],
        {"partition": "2"},
    )


def nvme_partition(host: FakeHost, number: int) -> Path:
    """nvme0n1pN on a PCIe NVMe controller behind a bridge whose driver is built in."""
    host.device("pci0000:00/0000:00:1d.0", BRIDGE_PCI, driver="pcieport")
    pci = "pci0000:00/0000:00:1d.0/0000:3d:00.0"
    host.device(pci, NVME_PCI, driver="nvme", module="nvme")
    host.block(f"{pci}/nvme/nvme0/nvme0n1", "259:0")
    part = f"{pci}/nvme/nvme0/nvme0n1/nvme0n1p{number}"
    return host.block(part, f"259:{number}", [], {"partition": str(number)})


def sata_partition(host: FakeHost, port: int) -> Path:
    """sdX1 on an AHCI port: the SCSI disk driver is "sd", its module sd_mod."""
    host.device("pci0000:00/0000:00:1f.2", AHCI_PCI, driver="ahci", module="ahci")
    scsi = f"pci0000:00/0000:00:1f.2/ata{port + 1}/host{port}/target{port}:0:0/{port}:0:0:0"
    host.device(scsi, "scsi:t-0x00", driver="sd", module="sd_mod")
    disk = "sd" + "abcdefgh"[port]
    host.block(f"{scsi}/block/{disk}", f"8:{16 * port}")
    return host.block(f"{scsi}/block/{disk}/{disk}1", f"8:{16 * port + 1}", [], {"partition": "1"})


def test_virtio_partition_with_ext4(host: FakeHost, db: ModuleDatabase) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    found = detect_host(host.sys, host.proc, db)
    context = "for / (ext4 on /dev/vda2)"
    virtio = "/sys/devices/pci0000:00/0000:00:04.0/virtio2"
    assert found == HostDetection(
        modules=(
            ("ext4", "filesystem of / (ext4 on /dev/vda2)"),
            ("virtio_blk", f"modalias of {virtio} ({VIRTIO_BLK}) {context}"),
            (
                "virtio_pci",
                f"driver of /sys/devices/pci0000:00/0000:00:04.0 (virtio-pci) {context}",
            ),
        ),
        filesystems=("ext4",),
        block_devices=("vda2", "vda"),
        storage=(),
    )


def test_nvme_luks_lvm_stack(host: FakeHost, db: ModuleDatabase) -> None:
    part = nvme_partition(host, 2)
    luks = host.block("virtual/block/dm-0", "253:0", [part], {"dm/uuid": LUKS_UUID})
    host.block("virtual/block/dm-1", "253:1", [luks], {"dm/uuid": LVM_UUID, "dm/name": "vg-root"})
    host.mount("/", "253:1", "ext4", "/dev/mapper/vg-root")
    found = detect_host(host.sys, host.proc, db)
    context = "for / (ext4 on /dev/dm-1)"
    luks_reason = f"LUKS volume dm-0 {context}"
    assert found.modules == (
        ("ext4", "filesystem of / (ext4 on /dev/dm-1)"),
        ("dm_mod", f"LVM logical volume dm-1 {context}"),
        ("dm_crypt", luks_reason),
        ("xts", luks_reason),
        ("aesni_intel", luks_reason),
        ("algif_skcipher", luks_reason),
        ("nvme", f"driver of /sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0 (nvme) {context}"),
    )
    assert found.block_devices == ("dm-1", "dm-0", "nvme0n1p2", "nvme0n1")
    assert found.storage == (
        (StorageKind.LVM, "LVM logical volume dm-1 under / (ext4 on /dev/dm-1)"),
        (StorageKind.LUKS, "LUKS volume dm-0 under / (ext4 on /dev/dm-1)"),
    )
    assert found.crypt_volumes == ("dm-0",)  # no dm/name in this fixture: the kernel name
    # Where its LUKS header is, for the token features (tokens.py).
    assert found.crypt_devices == (("dm-0", "259:2"),)


def test_md_raid1_over_two_ahci_disks(host: FakeHost, db: ModuleDatabase) -> None:
    members = [sata_partition(host, 0), sata_partition(host, 1)]
    host.block("virtual/block/md0", "9:0", members, {"md/level": "raid1"})
    host.mount("/", "9:0", "ext4", "/dev/md0")
    found = detect_host(host.sys, host.proc, db)
    context = "for / (ext4 on /dev/md0)"
    scsi = "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0"
    assert found.modules == (
        ("ext4", "filesystem of / (ext4 on /dev/md0)"),
        ("md_mod", f"MD raid1 array md0 {context}"),
        ("raid1", f"MD raid1 array md0 {context}"),
        ("sd_mod", f"driver of {scsi} (sd) {context}"),
        ("ahci", f"modalias of /sys/devices/pci0000:00/0000:00:1f.2 ({AHCI_PCI}) {context}"),
    )
    assert found.block_devices == ("md0", "sda1", "sdb1", "sda", "sdb")
    assert found.storage == ((StorageKind.MDRAID, "MD array md0 under / (ext4 on /dev/md0)"),)


def test_usr_on_its_own_device_with_a_builtin_filesystem(
    host: FakeHost, db: ModuleDatabase
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    nvme_partition(host, 1)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    host.mount("/usr", "259:1", "xfs", "/dev/nvme0n1p1")
    found = detect_host(host.sys, host.proc, db)
    assert [name for name, _ in found.modules] == ["ext4", "virtio_blk", "virtio_pci", "nvme"]
    assert dict(found.modules)["nvme"].endswith("for /usr (xfs on /dev/nvme0n1p1)")
    assert found.filesystems == ("ext4", "xfs")
    assert found.block_devices == ("vda2", "vda", "nvme0n1p1", "nvme0n1")


def test_missing_usr_is_fine(host: FakeHost, db: ModuleDatabase) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    nvme_partition(host, 1)  # present, but nothing is mounted from it
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    found = detect_host(host.sys, host.proc, db)
    assert found == detect_host(host.sys, host.proc, db, mount_points=("/",))
    assert found.block_devices == ("vda2", "vda")
    assert "nvme" not in dict(found.modules)


def test_root_on_overlay_has_no_block_device(host: FakeHost, db: ModuleDatabase) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "0:31", "overlay", "overlay")
    found = detect_host(host.sys, host.proc, db)
    assert found == HostDetection(
        modules=(("overlay", "filesystem of / (overlay from overlay)"),),
        filesystems=("overlay",),
        block_devices=(),
        storage=(),
    )


def test_btrfs_members_come_from_sysfs_fs_btrfs(host: FakeHost, db: ModuleDatabase) -> None:
    vdb = virtio_partition(host, "05.0", "virtio3", "vdb", 251)
    vdc = virtio_partition(host, "06.0", "virtio4", "vdc", 250)
    other = virtio_partition(host, "07.0", "virtio5", "vdd", 249)
    for uuid, members in (("1111-aaaa", [other]), ("2222-bbbb", [vdb, vdc])):
        for member in members:
            link = host.sys / "fs/btrfs" / uuid / "devices" / member.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../../../..") / member.relative_to(host.sys))
    # btrfs reports an anonymous device number, never the disk's.
    host.mount("/", "0:35", "btrfs", "/dev/vdc2")
    found = detect_host(host.sys, host.proc, db)
    assert found.block_devices == ("vdb2", "vdc2", "vdb", "vdc")
    assert found.storage == ((StorageKind.BTRFS, "/ (btrfs on /dev/vdb2)"),)
    assert found.modules[0] == ("btrfs", "filesystem of / (btrfs on /dev/vdb2)")


def test_sole_btrfs_is_taken_when_source_names_no_member(
    host: FakeHost, db: ModuleDatabase
) -> None:
    vdb = virtio_partition(host, "05.0", "virtio3", "vdb", 251)
    link = host.sys / "fs/btrfs/2222-bbbb/devices" / vdb.name
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("../../../..") / vdb.relative_to(host.sys))
    host.mount("/", "0:35", "btrfs", "/dev/disk/by-label/root")
    assert detect_host(host.sys, host.proc, db).block_devices == ("vdb2", "vdb")


@pytest.mark.parametrize(
    ("attributes", "module"),
    [
        ({"dm/uuid": LVM_UUID + "-real", "dm/name": "vg-root-real"}, "dm_snapshot"),
        ({"dm/uuid": LVM_UUID + "-tpool", "dm/name": "vg-pool-tpool"}, "dm_thin_pool"),
        ({"dm/uuid": LVM_UUID, "dm/name": "vg-root_rimage_0"}, "dm_raid"),
    ],
)
def test_lvm_hidden_layers(
    host: FakeHost, db: ModuleDatabase, attributes: dict[str, str], module: str
) -> None:
    part = nvme_partition(host, 3)
    layer = host.block("virtual/block/dm-0", "253:0", [part], attributes)
    host.block("virtual/block/dm-1", "253:1", [layer], {"dm/uuid": LVM_UUID})
    host.mount("/", "253:1", "ext4", "/dev/mapper/vg-root")
    found = dict(detect_host(host.sys, host.proc, db).modules)
    assert found[module].endswith(" dm-0 for / (ext4 on /dev/dm-1)")
    assert {"dm_snapshot", "dm_thin_pool", "dm_raid"} & set(found) == {module}


def multipath_host(host: FakeHost, point: str = "/") -> None:
    """point on a multipath map over two SAS paths with the ALUA device handler."""
    host.device("pci0000:00/0000:00:03.0", driver="mpt3sas", module="mpt3sas")
    paths = []
    for n in (2, 3):
        scsi = f"pci0000:00/0000:00:03.0/host0/port-0:{n}/end_device-0:{n}/target0:0:{n}/0:0:{n}:0"
        host.device(scsi, driver="sd", module="sd_mod", attributes={"dh_state": "alua"})
        paths.append(host.block(f"{scsi}/block/sd{'abcd'[n]}", f"8:{16 * n}"))
    host.block("virtual/block/dm-0", "253:0", paths, {"dm/uuid": "mpath-3600a0b80001234"})
    host.mount(point, "253:0", "ext4", "/dev/mapper/mpatha")


def test_multipath_with_alua_handler(host: FakeHost, db: ModuleDatabase) -> None:
    multipath_host(host)
    found = detect_host(host.sys, host.proc, db)
    names = [name for name, _ in found.modules]
    assert names == ["ext4", "dm_mod", "dm_multipath", "sd_mod", "scsi_dh_alua", "mpt3sas"]
    assert found.storage_kinds == {StorageKind.MULTIPATH}


def test_builtin_driver_of_running_kernel_found_by_driver_name(
    host: FakeHost, db: ModuleDatabase
) -> None:
    host.device("pci0000:00/0000:00:1f.2", driver="ahci")  # no module link, no modalias
    host.block("pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda", "8:0")
    host.mount("/", "8:0", "ext4", "/dev/sda")
    assert "ahci" in dict(detect_host(host.sys, host.proc, db).modules)


def test_mountinfo_escapes_and_stacked_mounts() -> None:
    mounts = parse_mountinfo(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "28 27 8:1 / /srv/my\\040disk rw shared:1 master:2 - vfat /dev/sda1 rw\n"
        "29 1 0:40 / / rw - overlay over\\134lay rw\n"
    )
    assert mounts["/srv/my disk"].fstype == "vfat"
    assert mounts["/srv/my disk"].majmin == "8:1"
    assert (mounts["/"].fstype, mounts["/"].source) == ("overlay", "over\\lay")


def test_unreadable_mountinfo_is_one_clear_error(host: FakeHost, db: ModuleDatabase) -> None:
    with pytest.raises(SysrootError, match=r"proc/self/mountinfo: cannot read: No such file"):
        detect_host(host.sys, host.proc, db)


def test_missing_root_mount_is_one_clear_error(host: FakeHost, db: ModuleDatabase) -> None:
    host.mount("/usr", "252:2", "ext4", "/dev/vda2")
    with pytest.raises(SysrootError, match=r"mountinfo: nothing is mounted at /$"):
        detect_host(host.sys, host.proc, db)


def test_format_detection_lists_modules_then_filesystems() -> None:
    detection = HostDetection(
        modules=(("ext4", "filesystem of /"), ("dm_crypt", "LUKS volume dm-0 for /")),
        filesystems=("ext4", "vfat"),
        block_devices=("dm-0", "vda2", "vda"),
        storage=((StorageKind.LVM, "LVM volume"), (StorageKind.LUKS, "LUKS volume")),
    )
    assert format_detection(detection) == (
        "module ext4: filesystem of /\n"
        "module dm_crypt: LUKS volume dm-0 for /\n"
        "filesystem ext4\n"
        "filesystem vfat\n"
        "block-devices dm-0 vda2 vda\n"
        "storage luks lvm\n"
    )


def test_plan_in_hostonly_mode_requests_and_records_detection(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    (host.proc / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    config = load_config(
        None,
        {"sysroot": str(root_tree), "sysfs": str(host.sys), "procfs": str(host.proc),
         "driver_classes": ["nvme"]},
    )  # fmt: skip
    plan = make_plan(config)
    detected = {r.name for r in plan.requests if r.reason.startswith("hostonly: ")}
    assert detected == {"ext4", "virtio_blk", "virtio_pci"}
    classes = [r.name for r in plan.requests if r.kind is RequestKind.DRIVER_CLASS]
    assert classes == ["nvme"]
    record = next(g.entry.data for g in plan.generated if g.entry.path == HOSTONLY_RECORD)
    assert record == format_detection(detect_host(host.sys, host.proc, db)).encode()
    assert plan.microcode_vendors == ("GenuineIntel",)
    # The detected filesystem reaches the filesystems feature, which brings its fsck.
    assert any(r.name == "fsck.ext4" for r in plan.requests)


def test_plan_in_generic_mode_detects_nothing(host: FakeHost, root_tree: Path) -> None:
    config = load_config(
        None, {"sysroot": str(root_tree), "sysfs": str(host.sys), "mode": "generic"}
    )
    plan = make_plan(config)
    classes = {r.name for r in plan.requests if r.kind is RequestKind.DRIVER_CLASS}
    assert classes == set(GENERIC_CLASSES) >= {"virtio", "ata", "nvme", "md-dm", "crypto"}
    assert not any(r.reason.startswith("hostonly") for r in plan.requests)
    assert HOSTONLY_RECORD not in {g.entry.path for g in plan.generated}
    assert plan.detection is None
    assert plan.microcode_vendors == ("GenuineIntel", "AuthenticAMD")
    assert {"fsck.xfs", "fsck.btrfs", "fsck.ext4"} <= {r.name for r in plan.requests}
    assert make_plan(dataclasses.replace(config, microcode=False)).microcode_vendors == ()


def luks_lvm_host(host: FakeHost) -> None:
    """/ on LVM on a LUKS volume named cryptroot on NVMe; /var on its own device."""
    part = nvme_partition(host, 2)
    luks = host.block(
        "virtual/block/dm-0", "253:0", [part], {"dm/uuid": LUKS_UUID, "dm/name": "cryptroot"}
    )
    host.block("virtual/block/dm-1", "253:1", [luks], {"dm/uuid": LVM_UUID, "dm/name": "vg-root"})
    host.mount("/", "253:1", "ext4", "/dev/mapper/vg-root")


CRYPTTAB = """\
# <target> <source> <key file> <options>
cryptroot UUID=5c9d0e8f-2a1b-4c3d-9e7f-6a5b4c3d2e1f none luks,discard
cryptswap /dev/nvme0n1p3 /dev/urandom swap,cipher=aes-xts-plain64
cryptdata UUID=11111111-2222-3333-4444-555555555555 /etc/keys/data.key luks
"""


def test_plan_for_root_on_lvm_on_luks_enables_features_and_a_minimal_crypttab(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    luks_lvm_host(host)
    (root_tree / "etc/crypttab").write_text(CRYPTTAB)
    config = load_config(
        None, {"sysroot": str(root_tree), "sysfs": str(host.sys), "procfs": str(host.proc)}
    )
    plan = make_plan(config)
    assert {"dm", "luks", "lvm"} <= set(plan.features)
    assert not {"mdraid", "btrfs"} & set(plan.features)
    files = {g.entry.path: g.entry.data for g in plan.generated}
    # Only the root's volume: the swap and data volumes (and their key file) stay out.
    assert files["/etc/crypttab"] == (
        b"# Written by bookend: the sysroot's entries for the volumes / and /usr need.\n"
        b"cryptroot UUID=5c9d0e8f-2a1b-4c3d-9e7f-6a5b4c3d2e1f none luks,discard\n"
    )
    assert b"crypt-volumes cryptroot" in (files[HOSTONLY_RECORD] or b"")
    assert not any(r.name == "/etc/keys/data.key" for r in plan.requests)
    # The passphrase prompt needs a keyboard.
    assert any(r.kind is RequestKind.DRIVER_CLASS and r.name == "keyboard" for r in plan.requests)
    # Unlocking that fails for good ends in emergency mode at once, not after a timeout.
    give_up = files["/etc/systemd/system/systemd-cryptsetup@.service.d/bookend-emergency.conf"]
    assert b"OnFailure=emergency.target\n" in (give_up or b"")


def test_volume_missing_from_crypttab_is_a_warning(
    host: FakeHost, db: ModuleDatabase, root_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    luks_lvm_host(host)
    config = load_config(
        None, {"sysroot": str(root_tree), "sysfs": str(host.sys), "procfs": str(host.proc)}
    )
    files = {g.entry.path: g.entry.data for g in make_plan(config).generated}
    assert files["/etc/crypttab"] == (
        b"# Written by bookend: the sysroot's entries for the volumes / and /usr need.\n"
    )
    assert "LUKS volume cryptroot is under /, /usr or an active swap but not in" in caplog.text
    assert "rd.luks.uuid=" in caplog.text


def test_x_initrd_mount_points_are_detected_too(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    nvme = nvme_partition(host, 1)
    assert nvme.name == "nvme0n1p1"
    host.mount("/srv/data", "259:1", "btrfs", "/dev/nvme0n1p1")
    (root_tree / "etc/fstab").write_text(
        "/dev/vda2 / ext4 defaults 0 1\n"
        "/dev/nvme0n1p1 /srv/data btrfs defaults,x-initrd.mount 0 0\n"
        "# /dev/sdz1 /old xfs x-initrd.mount 0 0\n"
    )
    config = load_config(
        None, {"sysroot": str(root_tree), "sysfs": str(host.sys), "procfs": str(host.proc)}
    )
    plan = make_plan(config)
    detected = {r.name for r in plan.requests if r.reason.startswith("hostonly: ")}
    assert {"ext4", "btrfs", "nvme", "virtio_blk"} <= detected
    assert "btrfs" in plan.features  # the storage kind of the x-initrd.mount filesystem
    assert "xfs" not in {r.name for r in plan.requests}


def hostonly_config(root_tree: Path, host: FakeHost) -> Config:
    values = {"sysroot": str(root_tree), "sysfs": str(host.sys), "procfs": str(host.proc)}
    return load_config(None, values)


def storage_features(root_tree: Path, host: FakeHost) -> set[str]:
    return {
        name for name in make_plan(hostonly_config(root_tree, host)).features if ALL[name].serves
    }


@pytest.mark.parametrize(
    ("uuid", "kind", "features"),
    [
        (LUKS_UUID, StorageKind.LUKS, {"dm", "luks"}),
        ("CRYPT-PLAIN-root", StorageKind.LUKS, {"dm", "luks"}),
        (LVM_UUID, StorageKind.LVM, {"dm", "lvm"}),
        ("CRYPT-VERITY-0123abcd-root", StorageKind.DM, {"dm"}),
        (None, StorageKind.DM, {"dm"}),  # made by dmsetup create, without a UUID
    ],
)
def test_each_device_mapper_kind_switches_on_the_feature_serving_it(
    host: FakeHost,
    db: ModuleDatabase,
    root_tree: Path,
    uuid: str | None,
    kind: StorageKind,
    features: set[str],
) -> None:
    attributes = {"dm/name": "root", **({"dm/uuid": uuid} if uuid else {})}
    host.block("virtual/block/dm-0", "253:0", [nvme_partition(host, 2)], attributes)
    host.mount("/", "253:0", "ext4", "/dev/mapper/root")
    assert detect_host(host.sys, host.proc, db).storage_kinds == {kind}
    assert storage_features(root_tree, host) == features


def test_md_array_switches_on_mdraid(host: FakeHost, db: ModuleDatabase, root_tree: Path) -> None:
    members = [sata_partition(host, 0), sata_partition(host, 1)]
    host.block("virtual/block/md0", "9:0", members, {"md/level": "raid1"})
    host.mount("/", "9:0", "ext4", "/dev/md0")
    assert storage_features(root_tree, host) == {"mdraid"}


def test_plain_disk_switches_on_no_storage_feature(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    assert storage_features(root_tree, host) == set()


@pytest.mark.parametrize("point", ["/", "/usr"])
def test_storage_no_feature_serves_fails_naming_where_it_is(
    host: FakeHost, db: ModuleDatabase, root_tree: Path, point: str
) -> None:
    if point != "/":
        virtio_partition(host, "04.0", "virtio2", "vda", 252)
        host.mount("/", "252:2", "ext4", "/dev/vda2")
    multipath_host(host, point)
    message = (
        f"hostonly: multipath map dm-0 under {point} (ext4 on /dev/dm-0): "
        "no feature serves multipath storage, so the image could not mount it"
    )
    with pytest.raises(SysrootError) as failure:
        make_plan(hostonly_config(root_tree, host))
    assert str(failure.value) == message
    # The command says it in one line, with the exit status of a failure (not bad input).
    empty = root_tree.parent / "conf"
    empty.mkdir()
    argv = ["plan", "--config-root", str(empty), "--sysroot", str(root_tree)]
    argv += ["--sysfs", str(host.sys), "--procfs", str(host.proc)]
    done = subprocess.run([sys.executable, "-m", "bookend", *argv],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (1, f"bookend: {message}\n")


# Swaps: hibernation resume (bookend.features.resume).
SWAP_LVM_UUID = "LVM-" + "Xr4kD2" * 5 + "ab" + "Sw4pLv" * 5 + "ef"
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
SWAP_CRYPTTAB_LINE = "swap_crypt UUID=22222222-3333-4444-5555-666666666666 none luks"


def with_resume_helper(root_tree: Path) -> None:
    helper = root_tree / "usr/lib/systemd/systemd-hibernate-resume"
    helper.parent.mkdir(parents=True, exist_ok=True)
    helper.write_bytes(b"")


def swap_on_lvm_on_luks_host(host: FakeHost) -> None:
    """/ on a plain virtio partition; the active swap an LV on a LUKS volume on NVMe,
    and a swap file beside it."""
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    part = nvme_partition(host, 3)
    luks = host.block(
        "virtual/block/dm-0", "253:0", [part], {"dm/uuid": LUKS_UUID, "dm/name": "swap_crypt"}
    )
    host.block(
        "virtual/block/dm-1", "253:1", [luks], {"dm/uuid": SWAP_LVM_UUID, "dm/name": "vg-swap"}
    )
    host.proc_file(
        "swaps",
        SWAPS_HEADER
        + "/dev/dm-1                               partition\t4194300\t\t0\t\t-2\n"
        + "/swapfile                               file\t\t1048572\t\t0\t\t-3\n",
    )


def test_an_active_swaps_stack_is_detected_as_a_mounts_is(
    host: FakeHost, db: ModuleDatabase
) -> None:
    swap_on_lvm_on_luks_host(host)
    found = detect_host(host.sys, host.proc, db)
    assert found.swap_devices == ("dm-1",)  # the swap file is no device to resume from
    assert found.storage == (
        (StorageKind.LVM, "LVM logical volume dm-1 under swap /dev/dm-1"),
        (StorageKind.LUKS, "LUKS volume dm-0 under swap /dev/dm-1"),
    )
    assert found.crypt_volumes == ("swap_crypt",)
    assert ("nvme", "driver of /sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0 (nvme) "
            "for swap /dev/dm-1") in found.modules  # fmt: skip
    assert "swap-devices dm-1\n" in format_detection(found)


def test_a_swap_with_a_key_made_at_each_boot_is_left_out(
    host: FakeHost, db: ModuleDatabase
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    part = nvme_partition(host, 3)
    host.block("virtual/block/dm-0", "253:0", [part], {"dm/uuid": "CRYPT-PLAIN-cryptswap"})
    host.proc_file("swaps", SWAPS_HEADER + "/dev/dm-0 partition 4194300 0 -2\n")
    found = detect_host(host.sys, host.proc, db)
    assert found.swap_devices == ()
    assert found.storage == () and found.crypt_volumes == ()


def test_hostonly_resume_from_a_swap_on_lvm_on_luks(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    swap_on_lvm_on_luks_host(host)
    (root_tree / "etc/crypttab").write_text(CRYPTTAB + SWAP_CRYPTTAB_LINE + "\n")
    # A systemd built without hibernation: nothing to resume with, the swap is set up alone.
    assert "resume" not in make_plan(hostonly_config(root_tree, host)).features
    with_resume_helper(root_tree)
    plan = make_plan(hostonly_config(root_tree, host))
    assert {"resume", "luks", "lvm"} <= set(plan.features)
    files = {g.entry.path: g.entry.data or b"" for g in plan.generated}
    # The swap's volume is unlocked in the initrd; the others stay out.
    assert files["/etc/crypttab"].decode().splitlines()[1:] == [SWAP_CRYPTTAB_LINE]
    assert (
        b"After=local-fs-pre.target"
        in files["/etc/systemd/system/systemd-fsck-root.service.d/bookend-resume.conf"]
    )
    resume = {(r.kind, r.name, r.optional) for r in plan.requests if r.reason == "feature resume"}
    assert resume == {
        (RequestKind.EXECUTABLE, "/usr/lib/systemd/systemd-hibernate-resume", False),
        (RequestKind.GENERATOR, "systemd-hibernate-resume-generator", False),
        # systemd up to 254, and 255 and later: whichever the sysroot has.
        (RequestKind.UNIT, "systemd-hibernate-resume@.service", True),
        (RequestKind.UNIT, "systemd-hibernate-resume.service", True),
        # HibernateLocation is an EFI variable.
        (RequestKind.MODULE, "efivarfs", True),
    }


@pytest.mark.parametrize(
    ("cmdline", "wanted"),
    [
        ("root=/dev/vda2 ro quiet", False),
        ("root=/dev/vda2 resume=UUID=22222222-3333-4444-5555-666666666666", True),
        ("root=/dev/vda2 resume=/dev/vda3 noresume", False),
    ],
    ids=["no-swap", "resume", "noresume"],
)
def test_hostonly_resume_without_an_active_swap_follows_the_command_line(
    host: FakeHost, db: ModuleDatabase, root_tree: Path, cmdline: str, wanted: bool
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    host.proc_file("cmdline", cmdline + "\n")
    host.proc_file("swaps", SWAPS_HEADER)
    with_resume_helper(root_tree)
    assert ("resume" in make_plan(hostonly_config(root_tree, host)).features) is wanted


def test_a_ukis_command_line_asks_for_resume_too(
    host: FakeHost, db: ModuleDatabase, root_tree: Path
) -> None:
    virtio_partition(host, "04.0", "virtio2", "vda", 252)
    host.mount("/", "252:2", "ext4", "/dev/vda2")
    with_resume_helper(root_tree)
    config = dataclasses.replace(
        hostonly_config(root_tree, host), cmdline="root=/dev/vda2 resume=/dev/vda3"
    )
    assert "resume" in make_plan(config).features


@pytest.mark.parametrize("has_helper", [True, False])
def test_generic_resume_when_the_sysroot_has_systemd_hibernate_resume(
    root_tree: Path, has_helper: bool
) -> None:
    if has_helper:
        with_resume_helper(root_tree)
    config = load_config(None, {"sysroot": str(root_tree), "mode": "generic"})
    assert ("resume" in make_plan(config).features) is has_helper
    # The generator is the resume feature's alone: without it, nothing would start.
    assert "systemd-hibernate-resume-generator" not in ALL["systemd"].generators
