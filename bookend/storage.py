"""Storage kinds, and what hostonly detection found the root and /usr stand on.

Plain data shared by detection (bookend.hostonly), which fills it in, and the features
and the plan, which read it: kept apart from both so that neither imports the other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StorageKind(enum.StrEnum):
    """A kind of storage a mount can stand on, which some feature must know to set up."""

    LUKS = "luks"  # dm-crypt volumes, LUKS or plain
    LVM = "lvm"  # LVM logical volumes
    DM = "dm"  # any device-mapper device (the kinds above are all built on it)
    MDRAID = "md"  # MD RAID arrays; "md" as the hostonly record has always named it
    BTRFS = "btrfs"  # btrfs, possibly over several devices
    MULTIPATH = "multipath"  # dm-multipath maps
    # Network storage: a root reached through a network interface.
    NBD = "nbd"
    ISCSI = "iscsi"
    NFS = "nfs"
    # The network any of those is reached through: its interfaces and their drivers.
    NETWORK = "network"


# The kinds of storage served over a network (each also brings StorageKind.NETWORK).
NETWORK_STORAGE = frozenset({StorageKind.NBD, StorageKind.ISCSI, StorageKind.NFS})


@dataclass(frozen=True)
class HostDetection:
    """What this machine needs to mount its root and /usr; each list in the order found."""

    modules: tuple[tuple[str, str], ...]  # (module name, why)
    filesystems: tuple[str, ...]  # fstypes as mountinfo names them, the root's first
    block_devices: tuple[str, ...]  # kernel names, e.g. nvme0n1p2, dm-0
    # Each storage kind found, with where it was first found, e.g. "/ (ext4 on /dev/dm-1)".
    storage: tuple[tuple[StorageKind, str], ...]
    crypt_volumes: tuple[str, ...] = ()  # dm names of the dm-crypt volumes, as crypttab names
    # The network interfaces a network root's traffic uses (with the devices under a
    # bond, VLAN or bridge), e.g. ("ens3",).
    interfaces: tuple[str, ...] = ()
    # The devices the dm-crypt volumes decrypt, as (volume, "MAJOR:MINOR"): where their
    # LUKS headers are, which say how the volumes may be unlocked (TPM2, FIDO2, PKCS#11).
    crypt_devices: tuple[tuple[str, str], ...] = ()
    # Kernel names of the active swap devices (/proc/swaps) whose stacks were followed
    # too, for a resume from hibernation; not those with a key made anew at each boot.
    swap_devices: tuple[str, ...] = ()

    @property
    def storage_kinds(self) -> frozenset[StorageKind]:
        return frozenset(kind for kind, _ in self.storage)
