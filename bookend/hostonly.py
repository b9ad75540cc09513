"""Hostonly detection: the kernel modules THIS machine needs to mount / and /usr.

The answer comes straight from the kernel's own tables, as dracut's hostonly mode
finds it through udevadm: /proc/self/mountinfo says which filesystem and device each
mount point uses; /sys says how that device is built (partitions, and device-mapper
and MD stacks through slaves/) and which devices and drivers sit under it. Every
name is looked up in the image kernel's database, so a driver the running kernel
builds in but the image's kernel ships as a module is still found, and one the
image's kernel builds in or lacks is simply left out.

What sysfs cannot tell, and the guess made instead:
- The dm-crypt cipher is in the device-mapper table, readable only through a
  privileged ioctl (dmsetup table). A LUKS volume brings the modules the luks
  feature names for cryptsetup's defaults (bookend.features.luks.DEFAULT_CRYPTO),
  each when the image's kernel has it as a module; another cipher needs the "crypto"
  driver class.
- An LVM volume's segment type shows only in the names and UUID suffixes LVM gives
  the hidden layers under it; the common ones are mapped below, others need the
  "md-dm" driver class.

Active swap devices (/proc/swaps) are followed down their stacks too, as / is: an
image that can assemble and unlock the swap can resume from it (bookend.features.resume).

Network roots are found the same way: an NBD device (/sys/block/nbdN), a disk whose
sysfs path runs through an iSCSI session (.../hostN/sessionN/target...), also under
LUKS or LVM, and an NFS mount (mountinfo). Each brings the network storage kind, the
"network" kind (the network feature), and the drivers of the NICs its traffic uses
(bookend.hostnet says which and why).
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bookend import hostnet
from bookend.errors import SysrootError
from bookend.features.luks import DEFAULT_CRYPTO
from bookend.kmodules import ModuleDatabase
from bookend.storage import HostDetection, StorageKind


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, the fields detection needs."""

    point: str
    majmin: str  # st_dev of the filesystem; 0:N for one without a block device
    fstype: str
    source: str
    options: str = ""  # the superblock's options, e.g. an NFS mount's addr=SERVER


@dataclass(frozen=True)
class DmRule:
    """What a device-mapper device needs, known by the prefix its creator gives dm/uuid."""

    prefix: str
    modules: tuple[str, ...]  # names or aliases, on top of dm_mod
    what: str
    storage: StorageKind = StorageKind.DM


# The first matching prefix wins, so specific CRYPT- kinds come before the generic one.
DM_UUID_RULES = (
    DmRule("CRYPT-VERITY-", ("dm_verity",), "dm-verity volume"),
    DmRule("CRYPT-INTEGRITY-", ("dm_integrity",), "dm-integrity volume"),
    # The dm-integrity device a LUKS2 volume with authenticated encryption sits on.
    DmRule("CRYPT-SUBDEV-", ("dm_integrity",), "LUKS2 integrity device"),
    DmRule("CRYPT-LUKS", ("dm_crypt", *DEFAULT_CRYPTO), "LUKS volume", StorageKind.LUKS),
    DmRule("CRYPT-", ("dm_crypt",), "dm-crypt volume", StorageKind.LUKS),
    DmRule("LVM-", (), "LVM logical volume", StorageKind.LVM),
    # service-time is multipathd's default path selector.
    DmRule("mpath-", ("dm_multipath", "dm_service_time"), "multipath map", StorageKind.MULTIPATH),
)
# A device-mapper device none of the rules knows.
OTHER_DM = DmRule("", (), "device-mapper device")

# LVM's dm/uuid is "LVM-" + VG UUID + LV UUID (letters and digits only), then
# "-LAYER" for the hidden devices it stacks under a snapshot or thin volume.
LVM_UUID_LAYERS = {
    "tpool": ("dm_thin_pool", "LVM thin pool"),
    "real": ("dm_snapshot", "LVM snapshot origin"),
    "cow": ("dm_snapshot", "LVM snapshot"),
}
# Sub-volumes of RAID, mirror and cache volumes show only in their dm/name.
LVM_NAME_LAYERS = (
    ("_rimage_", ("dm_raid",), "LVM RAID image"),
    ("_mimage_", ("dm_mirror",), "LVM mirror image"),
    ("_corig", ("dm_cache", "dm-cache-default"), "LVM cache origin"),
    ("_wcorig", ("dm_writecache",), "LVM writecache origin"),
)

MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")
NBD_DEVICE = re.compile(r"nbd\d+")

log = logging.getLogger(__name__)


def detect_host(
    sysfs: Path,
    procfs: Path,
    db: ModuleDatabase,
    mount_points: Sequence[str] = ("/", "/usr"),
) -> HostDetection:
    """Modules, filesystems and storage kinds the mounts at mount_points stand on."""
    found = _Found(db)
    tree = _SysfsTree(sysfs)
    for mount in host_mounts(procfs / "self/mountinfo", mount_points):
        _detect_mount(tree, mount, found)
    _detect_swaps(tree, procfs / "swaps", found)
    _network_interfaces(tree.root, procfs, found)
    return found.result()


def format_detection(detection: HostDetection) -> str:
    """One line per module with its reason, then the filesystems and what they sit on."""
    lines = [f"module {name}: {reason}" for name, reason in detection.modules]
    lines += [f"filesystem {fstype}" for fstype in detection.filesystems]
    if detection.block_devices:
        lines.append("block-devices " + " ".join(detection.block_devices))
    if detection.storage:
        lines.append("storage " + " ".join(sorted(detection.storage_kinds)))
    if detection.crypt_volumes:
        lines.append("crypt-volumes " + " ".join(detection.crypt_volumes))
    if detection.crypt_devices:
        devices = (f"{volume}={majmin}" for volume, majmin in detection.crypt_devices)
        lines.append("crypt-devices " + " ".join(devices))
    if detection.swap_devices:
        lines.append("swap-devices " + " ".join(detection.swap_devices))
    if detection.interfaces:
        lines.append("network-interfaces " + " ".join(detection.interfaces))
    return "".join(line + "\n" for line in lines)


def host_mounts(mountinfo: Path, mount_points: Sequence[str]) -> list[Mount]:
    """The mounts at these points, root first; a point with no mount of its own is skipped."""
    try:
        text = mountinfo.read_text()
    except OSError as exc:
        raise SysrootError(f"{mountinfo}: cannot read: {exc.strerror}") from None
    visible = parse_mountinfo(text)
    if "/" not in visible:
        raise SysrootError(f"{mountinfo}: nothing is mounted at /")
    wanted = dict.fromkeys(["/", *(point.rstrip("/") or "/" for point in mount_points)])
    return [visible[point] for point in wanted if point in visible]


def parse_mountinfo(text: str) -> dict[str, Mount]:
    """Mount point -> its mount; a later mount on the same point hides the earlier one."""
    mounts: dict[str, Mount] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        # The optional fields end at "-"; fstype, source and super options follow it.
        if "-" not in fields[6:]:
            continue
        tail = fields.index("-", 6) + 1
        if len(fields) < tail + 2:
            continue
        point = _unescape(fields[4])
        options = fields[tail + 2] if len(fields) > tail + 2 else ""
        mounts[point] = Mount(
            point, fields[2], fields[tail], _unescape(fields[tail + 1]), _unescape(options)
        )
    return mounts


def _unescape(text: str) -> str:
    """The kernel writes space, tab, newline and backslash in mountinfo as octal escapes."""
    return MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match[1], 8)), text)


@dataclass
class _Found:
    """What detection has found so far, each item kept with the first reason for it."""

    db: ModuleDatabase
    modules: dict[str, str] = field(default_factory=dict)
    filesystems: dict[str, None] = field(default_factory=dict)
    block_devices: dict[str, None] = field(default_factory=dict)
    storage: dict[StorageKind, str] = field(default_factory=dict)  # kind -> where first found
    crypt_volumes: dict[str, None] = field(default_factory=dict)
    crypt_devices: dict[tuple[str, str], None] = field(default_factory=dict)
    # Each network root (what and where) -> its server's address, None where the
    # kernel does not show it (NBD).
    network_roots: dict[str, str | None] = field(default_factory=dict)
    interfaces: dict[str, None] = field(default_factory=dict)
    swap_devices: dict[str, None] = field(default_factory=dict)

    def want(self, names: Iterable[str], reason: str) -> None:
        """Look names or aliases up; builtin and unknown ones mean no module."""
        for name in names:
            for module in self.db.lookup(name):
                self.modules.setdefault(module, reason)

    def result(self) -> HostDetection:
        return HostDetection(
            tuple(self.modules.items()),
            tuple(self.filesystems),
            tuple(self.block_devices),
            tuple(self.storage.items()),
            tuple(self.crypt_volumes),
            tuple(self.interfaces),
            crypt_devices=tuple(self.crypt_devices),
            swap_devices=tuple(self.swap_devices),
        )


class _SysfsTree:
    """Block devices in a sysfs tree, kept to its devices/ directory."""

    def __init__(self, sysfs: Path) -> None:
        self.root = Path(os.path.realpath(sysfs))
        self.devices = self.root / "devices"

    def show(self, path: Path) -> str:
        """The path as it would read on the running system."""
        return "/sys/" + path.relative_to(self.root).as_posix()

    def inside(self, path: Path) -> Path | None:
        real = Path(os.path.realpath(path))
        return real if real.is_relative_to(self.devices) and real != self.devices else None

    def by_majmin(self, majmin: str) -> Path | None:
        link = self.root / "dev/block" / majmin
        return self.inside(link) if os.path.lexists(link) else None

    def by_name(self, name: str) -> Path | None:
        """A block device by its kernel name (sda2, dm-3), through /sys/dev/block."""
        for link in sorted((self.root / "dev/block").glob("*")):
            if (real := self.inside(link)) is not None and real.name == name:
                return real
        return None

    def links(self, directory: Path) -> list[Path]:
        """Devices the symlinks in a directory (slaves/, a btrfs devices/) lead to."""
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            return []
        return [real for entry in entries if (real := self.inside(entry))]

    def btrfs_members(self, source: str) -> list[Path]:
        """Devices of the mounted btrfs: its mountinfo st_dev is anonymous, not a disk."""
        filesystems = [
            self.links(directory) for directory in sorted(self.root.glob("fs/btrfs/*/devices"))
        ]
        name = source.rsplit("/", 1)[-1]
        for members in filesystems:
            if any(name in (dev.name, _read(dev / "dm/name")) for dev in members):
                return members
        # A source like /dev/disk/by-uuid/... names no member; one btrfs can only be it.
        return filesystems[0] if len(filesystems) == 1 else []

    def ancestors(self, dev: Path) -> list[Path]:
        """The device and each device above it, up to the bus root."""
        levels = []
        while dev.is_relative_to(self.devices) and dev != self.devices:
            levels.append(dev)
            dev = dev.parent
        return levels

    def stack(self, tops: Iterable[Path]) -> list[Path]:
        """The devices under these: a partition's disk, and slaves, recursively."""
        seen: dict[Path, None] = {}
        queue = deque(tops)
        while queue:
            dev = queue.popleft()
            if dev in seen:
                continue
            seen[dev] = None
            if (dev / "partition").is_file() and (dev.parent / "dev").is_file():
                queue.append(dev.parent)
            queue += self.links(dev / "slaves")
        return list(seen)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    """The last component of a symlink's target: a driver's or module's name."""
    try:
        return Path(os.readlink(path)).name
    except OSError:
        return None


def _detect_mount(tree: _SysfsTree, mount: Mount, found: _Found) -> None:
    top = tree.by_majmin(mount.majmin)
    if top is not None:
        devices = tree.stack([top])
    elif mount.fstype == "btrfs":
        devices = tree.stack(tree.btrfs_members(mount.source))
    else:
        devices = []
    if devices:
        context = f"{mount.point} ({mount.fstype} on /dev/{devices[0].name})"
    else:
        context = f"{mount.point} ({mount.fstype} from {mount.source})"
    _filesystem(mount.fstype, context, found)
    if mount.fstype in ("nfs", "nfs4"):
        found.network_roots.setdefault(context, _option(mount.options, "addr"))
    _detect_stack(tree, devices, context, found)


def active_swaps(swaps: Path) -> list[str]:
    """The kernel names of the block devices /proc/swaps lists (swap files left out:
    their filesystem is mounted only after the resume could have happened)."""
    try:
        lines = swaps.read_text().splitlines()[1:]
    except OSError:
        return []
    fields = [line.split() for line in lines]
    return [f[0].rsplit("/", 1)[-1] for f in fields if len(f) > 1 and f[1] == "partition"]


def _detect_swaps(tree: _SysfsTree, swaps: Path, found: _Found) -> None:
    """Each active swap's stack, as a mount's: an image that unlocks and assembles it
    can resume from it. Not a swap on plain dm-crypt (a crypttab key of /dev/urandom):
    its key is made anew at each boot, so no hibernation image survives on it."""
    for name in active_swaps(swaps):
        top = tree.by_name(name)
        if top is None:
            continue
        devices = tree.stack([top])
        if any((_read(dev / "dm/uuid") or "").startswith("CRYPT-PLAIN-") for dev in devices):
            log.info("hostonly: swap /dev/%s has a random key; no resume from it", name)
            continue
        found.swap_devices.setdefault(name)
        _detect_stack(tree, devices, f"swap /dev/{name}", found)


def _detect_stack(tree: _SysfsTree, devices: list[Path], context: str, found: _Found) -> None:
    """What the devices of one stack (top first) need, each found once."""
    for dev in devices:
        found.block_devices.setdefault(dev.name)
        _device_mapper(dev, context, found)
        _md_raid(dev, context, found)
        _nbd(dev, context, found)
        _iscsi(tree, dev, context, found)
        _hardware(tree, dev, context, found)


def _filesystem(fstype: str, context: str, found: _Found) -> None:
    """The kernel asks for "fs-TYPE" when mounting; "fuse.sshfs" and the like need fuse."""
    found.filesystems.setdefault(fstype)
    if fstype == "btrfs":
        found.storage.setdefault(StorageKind.BTRFS, context)
    if fstype in ("nfs", "nfs4"):  # served by a feature that mounts it over the network
        found.storage.setdefault(StorageKind.NFS, context)
    base = fstype.split(".", 1)[0]
    alias = f"fs-{base}" if found.db.lookup(f"fs-{base}") else base
    found.want([alias], f"filesystem of {context}")


def _device_mapper(dev: Path, context: str, found: _Found) -> None:
    if not (dev / "dm").is_dir():
        return
    uuid = _read(dev / "dm/uuid") or ""
    rule = next((rule for rule in DM_UUID_RULES if uuid.startswith(rule.prefix)), OTHER_DM)
    found.want(["dm_mod", *rule.modules], f"{rule.what} {dev.name} for {context}")
    found.storage.setdefault(rule.storage, f"{rule.what} {dev.name} under {context}")
    if rule.storage is StorageKind.LUKS:
        # systemd-cryptsetup names the mapping after the crypttab entry that opened it.
        volume = _read(dev / "dm/name") or dev.name
        found.crypt_volumes.setdefault(volume)
        for slave in sorted((dev / "slaves").glob("*")):
            majmin = _read(slave / "dev")
            if majmin:
                found.crypt_devices.setdefault((volume, majmin))
    if uuid.startswith("LVM-"):
        _lvm_layers(dev, uuid, context, found)


def _lvm_layers(dev: Path, uuid: str, context: str, found: _Found) -> None:
    layer = uuid.partition("-")[2].partition("-")[2]
    if layer in LVM_UUID_LAYERS:
        module, what = LVM_UUID_LAYERS[layer]
        found.want([module], f"{what} {dev.name} for {context}")
    name = _read(dev / "dm/name") or ""
    for marker, modules, what in LVM_NAME_LAYERS:
        if marker in name:
            found.want(modules, f"{what} {dev.name} for {context}")


def _md_raid(dev: Path, context: str, found: _Found) -> None:
    """md asks for "md-LEVEL" (md-raid1, md-raid5, md-linear) when it starts an array."""
    if not (dev / "md").is_dir():
        return
    found.storage.setdefault(StorageKind.MDRAID, f"MD array {dev.name} under {context}")
    level = _read(dev / "md/level") or ""
    reason = f"MD {level or 'RAID'} array {dev.name} for {context}"
    found.want(["md_mod", *([f"md-{level}"] if level else [])], reason)


def _hardware(tree: _SysfsTree, dev: Path, context: str, found: _Found) -> None:
    """Each device from the block device up to the bus root: its modalias and driver."""
    for level in tree.ancestors(dev):
        shown = tree.show(level)
        modalias = _read(level / "modalias")
        if modalias:
            found.want([modalias], f"modalias of {shown} ({modalias}) for {context}")
        driver = _link_name(level / "driver")
        if driver:
            # No module link: built into the running kernel, perhaps not the image's.
            module = _link_name(level / "driver/module") or driver
            found.want([module], f"driver of {shown} ({driver}) for {context}")
        handler = _read(level / "dh_state")
        if handler and handler != "detached":
            found.want([f"scsi_dh_{handler}"], f"SCSI device handler of {shown} for {context}")


def _option(options: str, name: str) -> str | None:
    """A NAME=VALUE item of a comma-separated mount option list."""
    prefix = name + "="
    return next((o.removeprefix(prefix) for o in options.split(",") if o.startswith(prefix)), None)


def _nbd(dev: Path, context: str, found: _Found) -> None:
    """An NBD device: its sysfs names no server (nbd-client handed the socket to the
    kernel and exited), so its interfaces are found without one."""
    if not NBD_DEVICE.fullmatch(dev.name):
        return
    where = f"NBD device {dev.name} under {context}"
    found.storage.setdefault(StorageKind.NBD, where)
    found.want(["nbd"], f"NBD device {dev.name} for {context}")
    found.network_roots.setdefault(where, None)


def _iscsi(tree: _SysfsTree, dev: Path, context: str, found: _Found) -> None:
    """A SCSI disk on an iSCSI session: .../platform/hostH/sessionS/targetH:C:T/H:C:T:L/
    block/sdX. The session names its target, each connection the server's portal, and
    the SCSI host's proc_name its transport (iscsi_tcp, or an offload driver)."""
    session = next(
        (level for level in tree.ancestors(dev) if (level / "iscsi_session").is_dir()), None
    )
    if session is None:
        return
    target = _read(session / "iscsi_session" / session.name / "targetname") or "unknown target"
    where = f"iSCSI {session.name} to {target} under {context}"
    found.storage.setdefault(StorageKind.ISCSI, where)
    host = session.parent
    transport = _read(host / "scsi_host" / host.name / "proc_name")
    if transport:
        found.want([transport], f"iSCSI transport of {session.name} for {context}")
    for connection in sorted(session.glob("connection*")):
        portal = connection / "iscsi_connection" / connection.name / "persistent_address"
        found.network_roots.setdefault(f"{where} ({connection.name})", _read(portal))


def _network_interfaces(sysfs: Path, procfs: Path, found: _Found) -> None:
    """For every network root: the "network" kind, and the drivers of the interfaces
    that carry its traffic (bookend.hostnet: the route to the server where the kernel
    shows the server, else every interface that is up with an address)."""
    if not found.network_roots:
        return
    found.storage.setdefault(StorageKind.NETWORK, next(iter(found.network_roots)))
    routes = hostnet.read_routes(procfs)
    for where, server in found.network_roots.items():
        interface = hostnet.route_interface(routes, server) if server else None
        if interface:
            chosen = {interface: f"route to {server}"}
        else:
            why = f"no route to {server}" if server else "the kernel shows no server address"
            up = hostnet.addressed_interfaces(sysfs, procfs)
            chosen = {name: f"up with an address, {why}" for name in up}
        if not chosen:
            advice = "add the NIC's driver (--add-module, --add-driver-class net)"
            log.warning("hostonly: no interface is up with an address for %s; %s", where, advice)
        for name, how in chosen.items():
            for lower in hostnet.lower_interfaces(sysfs, name):
                found.interfaces.setdefault(lower)
                for module, what in hostnet.nic_modules(sysfs, lower):
                    found.want([module], f"{what}: NIC {lower} ({how}) for {where}")
