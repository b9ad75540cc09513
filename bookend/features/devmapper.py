"""device-mapper: dm_mod, dmsetup and the udev rules that name and announce dm devices."""

from bookend.features.base import ExitrdPart, Feature
from bookend.storage import StorageKind

FEATURE = Feature(
    name="dm",
    help="device-mapper: dm_mod, dmsetup and its udev rules (/dev/mapper, udev sync)",
    executables=("dmsetup",),
    udev_rules=(
        "55-dm.rules",
        "60-persistent-storage-dm.rules",
        "95-dm-notify.rules",
        # Fedora and Arch name the same rules this way.
        "?10-dm.rules",
        "?13-dm-disk.rules",
    ),
    modules=("dm_mod",),
    serves=StorageKind.DM,
    # Removing what systemd-shutdown could not detach, by hand or by a hook.
    exitrd=ExitrdPart(executables=("dmsetup",)),
)
