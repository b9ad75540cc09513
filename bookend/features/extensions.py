"""System and configuration extensions merged in the initrd by systemd itself.

Unlike the exitrd's (bookend.sysext), these are merged at boot, as on a running system:
each image goes into the initrd as it is, checked first by the rules systemd-sysext
(or systemd-confext) applies, and systemd-sysext.service merges it into /usr and /opt
before sysinit.target, so the initrd's units find its programs. The images lie where
both systemd 252's and later versions' services look: system extensions in
/etc/extensions, configuration extensions (systemd 254 and later) in /var/lib/confexts
(systemd-confext in an initrd does not look in /usr/lib/confexts: 257 was seen to
ignore an image there).
The same services merge what an earlier unit puts in /run/extensions, and (systemd 254
and later) what systemd-stub leaves in /.extra/sysext and /.extra/confext from the ESP,
but only signed Verity images from there: feature signed-extensions brings what that
takes, and has the services started even with no image embedded. 252 ignores
/.extra/sysext, and nothing here makes it look: the images come unauthenticated.
Merging needs a loop device, the image's file system and overlayfs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.errors import ConfigError
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.hooks import wants_link
from bookend.features.signed_extensions import takes_stub_extensions
from bookend.sysext import (
    INITRD_CONFEXT,
    INITRD_SYSEXT,
    ExtensionKind,
    check_extension,
    extension_name,
    extension_tree,
    image_kind,
)
from bookend.sysroot import Sysroot
from bookend.units import find_unit

SYSEXT_DIR = "/etc/extensions"
CONFEXT_DIR = "/var/lib/confexts"
SYSEXT_UNIT = "systemd-sysext.service"
CONFEXT_UNIT = "systemd-confext.service"
# Loaded by systemd-modules-load before the merge, not left to the kernel's requests:
# /dev/loop-control is a static node, and systemd 252's sysext failed in the initrd with
# loop not loaded.
MODULES = ("loop", "squashfs", "overlay")  # erofs: by the kernel's request, where present
MODULES_LOAD = "/etc/modules-load.d/bookend-extensions.conf"
AFTER_MODULES = b"[Unit]\nWants=systemd-modules-load.service\nAfter=systemd-modules-load.service\n"


def _embedded(
    config: Config, key: str, kind: ExtensionKind, directory: str, work: Path
) -> list[Generated]:
    """Each image of the setting key, checked, at directory/NAME.raw."""
    sysroot = Sysroot(config.sysroot)
    entries: list[Generated] = []
    for index, name in enumerate(getattr(config, key)):
        path = Path(name)
        if path.is_dir():
            raise ConfigError(
                f"{path}: {key}: the initrd takes extension images (squashfs or erofs), "
                f"not directories; make one with mksquashfs"
            )
        image_kind(path)  # a squashfs or erofs image, else one line naming it
        check_extension(path, extension_tree(path, work / key / str(index)), sysroot, kind)
        origin = config.origin_of(key, index)
        target = f"{directory}/{extension_name(path)}.raw"
        entry = ArchiveEntry(target, EntryKind.FILE, 0o644, source=path)
        entries.append(Generated(entry, f"{key} ({origin}): extension {name}"))
    return entries


def merge_service(unit: str, reason: str) -> list[Request | Generated]:
    """unit (systemd-sysext.service or -confext) in the image, started for sysinit.target
    once systemd-modules-load has loaded what merging needs."""
    dropin = f"/etc/systemd/system/{unit}.d/bookend-modules.conf"
    return [
        Request(RequestKind.UNIT, unit, reason),
        wants_link("sysinit.target", "wants", unit, reason),
        Generated(ArchiveEntry(dropin, EntryKind.FILE, 0o644, data=AFTER_MODULES), reason),
    ]


def _stub_services(context: FeatureContext) -> list[Request | Generated]:
    """The merge services for the signed images systemd-stub hands over, when the image
    takes them (bookend.features.signed_extensions): the sysext one, and the confext
    one where the sysroot's systemd has it (254 and later)."""
    if not takes_stub_extensions(context):
        return []
    reason = "feature signed-extensions: merge what systemd-stub brings in /.extra"
    items = merge_service(SYSEXT_UNIT, reason)
    if find_unit(Sysroot(context.config.sysroot), CONFEXT_UNIT) is not None:
        items += merge_service(CONFEXT_UNIT, reason)
    return items


def _extensions(context: FeatureContext) -> Contribution:
    config = context.config
    items: list[Request | Generated] = []
    reason = "feature extensions: merge the extensions before sysinit.target"
    stub = _stub_services(context)
    with tempfile.TemporaryDirectory(prefix="bookend-extensions-") as work:
        for key, kind, directory, unit in (
            ("sysexts", INITRD_SYSEXT, SYSEXT_DIR, SYSEXT_UNIT),
            ("confexts", INITRD_CONFEXT, CONFEXT_DIR, CONFEXT_UNIT),
        ):
            embedded = _embedded(config, key, kind, directory, Path(work))
            items += embedded
            served = any(isinstance(i, Request) and i.name == unit for i in stub)
            if embedded and not served:
                items += merge_service(unit, reason)
    items += stub
    if items:
        text = "".join(f"{name}\n" for name in MODULES).encode()
        entry = ArchiveEntry(MODULES_LOAD, EntryKind.FILE, 0o644, data=text)
        items.append(Generated(entry, reason))
    return items


FEATURE = Feature(
    name="extensions",
    help="system and configuration extension images merged by systemd-sysext/-confext "
    "in the initrd (--add-sysext, --add-confext)",
    # A plain image is mounted from a loop device; overlayfs stacks it over /usr or /etc.
    modules=("loop", "squashfs", "?erofs", "overlay"),
    requires=("kmod",),
    compute=_extensions,
    switch_on=SwitchOn(settings=("sysexts", "confexts")),
)
