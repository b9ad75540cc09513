"""btrfs: multi-device filesystems, ready once udev has seen every member."""

from bookend.features.base import ExitrdPart, Feature, SwitchOn
from bookend.storage import StorageKind

FEATURE = Feature(
    name="btrfs",
    help="btrfs: the btrfs tool and udev rules that wait for every member of a multi-device fs",
    # 64-btrfs.rules asks udev's btrfs builtin whether all members are there, so the
    # root's device unit becomes ready only then; subvolumes come from rootflags=subvol=.
    executables=("btrfs", "?fsck.btrfs", "?btrfsck"),
    udev_rules=("64-btrfs.rules", "?64-btrfs-dm.rules"),
    modules=("btrfs",),
    switch_on=SwitchOn(program="/bin/btrfs"),
    serves=StorageKind.BTRFS,
    exitrd=ExitrdPart(executables=("btrfs", "?fsck.btrfs", "?btrfsck")),
)
