"""kmod: modprobe for the kernel's requests, udev's autoloading and modules-load.d."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, Feature, FeatureContext, Generated


def modules_to_load(context: FeatureContext) -> list[str]:
    """Modules named in the configuration, and in hostonly mode the filesystems this
    machine's mounts stand on: loaded at boot, not only on demand.

    Loading the root's filesystem while udev still looks for its disk takes the module's
    load (ext4: 0.3-0.6 s under TCG, signature check included) off the path to the
    mount, where mount(2)'s request would otherwise load it. Generic images name every
    filesystem and keep loading them on demand.
    """
    config = context.config
    names = list(config.modules)
    if context.detection is not None:
        # Only filesystems detection found as modules: those are in the image for sure
        # (not built in, not a filesystem without a module of that name).
        detected = {module for module, _why in context.detection.modules}
        names += [fs for fs in config.filesystems if fs in detected and fs not in names]
    return names


def _modules_load(context: FeatureContext) -> Contribution:
    names = modules_to_load(context)
    if not names:
        return []
    text = "# Written by bookend: modules named in its configuration.\n"
    text += "".join(f"{name}\n" for name in names)
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
