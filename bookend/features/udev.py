"""systemd-udevd: device discovery, module autoloading and the /dev/disk links."""

from bookend.features.base import Feature

FEATURE = Feature(
    name="udev",
    help="systemd-udevd with the rules that name storage and load drivers",
    executables=("udevadm", "/usr/lib/systemd/systemd-udevd"),
    units=(
        "systemd-udevd.service",
        "systemd-udevd-control.socket",
        "systemd-udevd-kernel.socket",
        "systemd-udev-trigger.service",
        "?systemd-udev-settle.service",
    ),
    udev_rules=(
        "50-udev-default.rules",
        "60-block.rules",
        "60-persistent-storage.rules",
        "80-drivers.rules",
        "99-systemd.rules",
        "?50-firmware.rules",
        "?80-debian-compat.rules",
    ),
    files=("?/etc/udev/udev.conf",),
)
