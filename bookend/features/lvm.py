"""LVM: logical volumes activated by udev events, as on the host (event autoactivation)."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    SwitchOn,
)
from bookend.storage import StorageKind

# Only what differs from lvm's built-in defaults: no dmeventd monitoring (it is not in
# the image and would hold the old root at switch-root), and no metadata backups or
# archives, which the initrd's /etc could not keep anyway.
LVM_CONF = """\
# Written by bookend: the initrd's lvm.conf, lvm's defaults apart from these.
activation {
    monitoring = 0
}
backup {
    backup = 0
    archive = 0
}
"""


def _lvm_conf(context: FeatureContext) -> Contribution:
    entry = ArchiveEntry("/etc/lvm/lvm.conf", EntryKind.FILE, 0o644, data=LVM_CONF.encode())
    return [Generated(entry, "feature lvm: minimal lvm.conf")]


FEATURE = Feature(
    name="lvm",
    help="LVM: lvm, its udev rules and a minimal lvm.conf; volumes activate on udev events",
    requires=("dm",),
    # The rules run lvm pvscan, then systemd-run for vgchange once a VG is complete.
    executables=("lvm", "systemd-run"),
    # Debian's 56-lvm.rules and 69-lvm.rules, lvm2's own 11-dm-lvm.rules and
    # 69-dm-lvm.rules elsewhere: found by purpose (bookend.udevrules).
    udev_rules=("@lvm", "@lvm-activation"),
    modules=("?dm_snapshot", "?dm_mirror", "?dm_thin_pool", "?dm_raid", "?dm_cache"),
    compute=_lvm_conf,
    switch_on=SwitchOn(program="/sbin/lvm"),
    serves=StorageKind.LVM,
    # No exitrd part: systemd-shutdown removes the logical volumes itself (DM ioctls).
)
