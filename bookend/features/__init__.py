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
    nfs,
    plymouth,
    release,
    storage_daemons,
    systemd,
    udev,
    units,
)
from bookend.features.base import Feature

# In the order the plan switches them on within each group (always, configured,
# storage, settings), so the plan and the images read the same run after run.
ALL: dict[str, Feature] = {
    module.FEATURE.name: module.FEATURE
    for module in (
        systemd,
        udev,
        kmod,
        filesystems,
        emergency,
        release,
        devmapper,
        luks,
        plymouth,
        lvm,
        mdraid,
        btrfs,
        network,
        nbd,
        iscsi,
        nfs,
        activation,
        hooks,
        storage_daemons,
        units,
    )
}

# Every initrd gets these (and what they require); `bookend features` marks them.
DEFAULT = tuple(name for name, feature in ALL.items() if feature.switch_on.always)
