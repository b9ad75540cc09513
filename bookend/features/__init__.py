"""The feature registry: every feature module, by name."""

from bookend.features import emergency, filesystems, kmod, release, systemd, udev
from bookend.features.base import Feature

ALL: dict[str, Feature] = {
    module.FEATURE.name: module.FEATURE
    for module in (systemd, udev, kmod, filesystems, emergency, release)
}

# Every initrd gets these (and what they require).
DEFAULT = ("systemd",)
