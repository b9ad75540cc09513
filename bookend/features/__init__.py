"""The feature registry: every feature module, by name."""

from bookend.features import (
    activation,
    btrfs,
    devmapper,
    emergency,
    filesystems,
    hooks,
    iscsi,
    kmod,
    luks,
    lvm,
    mdraid,
    nbd,
    network,
    release,
    storage_daemons,
    systemd,
    udev,
)
from bookend.features.base import Feature

ALL: dict[str, Feature] = {
    module.FEATURE.name: module.FEATURE
    for module in (
        systemd,
        udev,
        kmod,
        filesystems,
        emergency,
        release,
        storage_daemons,
        devmapper,
        luks,
        lvm,
        mdraid,
        btrfs,
        network,
        nbd,
        iscsi,
        activation,
        hooks,
    )
}

# Every initrd gets these (and what they require).
DEFAULT = ("systemd",)

# Features that switch themselves on for the storage under / and /usr.
STORAGE = tuple(feature for feature in ALL.values() if feature.storage)
