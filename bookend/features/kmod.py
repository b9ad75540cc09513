"""kmod: modprobe for the kernel's requests, udev's autoloading and modules-load.d."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, Feature, FeatureContext, Generated


def _modules_load(context: FeatureContext) -> Contribution:
    """Modules named in the configuration are loaded at boot, not only on demand."""
    config = context.config
    if not config.modules:
        return []
    text = "# Written by bookend: modules named in its configuration.\n"
    text += "".join(f"{name}\n" for name in config.modules)
    entry = ArchiveEntry(
        "/etc/modules-load.d/bookend.conf", EntryKind.FILE, 0o644, data=text.encode()
    )
    return [Generated(entry, "feature kmod: load the configured modules at boot")]


FEATURE = Feature(
    name="kmod",
    help="kmod, modprobe configuration and systemd-modules-load",
    executables=("kmod", "modprobe", "/sbin/modprobe", "insmod", "rmmod", "lsmod"),
    units=("systemd-modules-load.service",),
    files=("?/etc/modprobe.d", "?/usr/lib/modprobe.d", "?/lib/modprobe.d"),
    compute=_modules_load,
)
