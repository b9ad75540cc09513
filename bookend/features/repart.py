"""The first boot of an image: systemd-repart and systemd-growfs in the initrd.

systemd-repart.service runs in the initrd once /usr is mounted (at /sysusr/usr with
mount.usr=, else with the root at /sysroot) and before the root's target: it grows the
partitions and adds the ones the repart.d definitions of that tree ask for, on the disk
holding them, so an image written small fills its disk on first boot. The mounts the
initrd makes with x-systemd.growfs (/usr, x-initrd.mount lines) are then grown by
systemd-growfs; the root's own `/` line with x-systemd.growfs is grown by the real root.
"""

from __future__ import annotations

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.usr import sysroot_fstab
from bookend.sysroot import Sysroot

# Where systemd-repart reads its definitions, under the tree it works on.
DEFINITION_DIRS = ("/etc/repart.d", "/usr/local/lib/repart.d", "/usr/lib/repart.d")


def definitions(sysroot: Sysroot) -> list[str]:
    """The image paths of the sysroot's repart.d definitions, in the order of DEFINITION_DIRS."""
    found = []
    for directory in DEFINITION_DIRS:
        for name in sysroot.listdir(directory):
            if name.endswith(".conf"):
                found.append(f"{directory}/{name}")
    return found


def formats(sysroot: Sysroot, paths: list[str]) -> list[str]:
    """The filesystem types the definitions' Format= makes, each once."""
    found: dict[str, None] = {}
    for path in paths:
        for line in (sysroot.read_text(path) or "").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "Format" and value.strip() not in ("", "swap"):
                found[value.strip()] = None
    return list(found)


def grown_in_initrd(fstab: str) -> bool:
    """Whether a line the initrd mounts (/usr, or x-initrd.mount) has x-systemd.growfs."""
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#"):
            continue
        options = fields[3].split(",")
        initrd = fields[1].rstrip("/") == "/usr" or "x-initrd.mount" in options
        if initrd and "x-systemd.growfs" in options:
            return True
    return False


def first_boot_wanted(context: FeatureContext) -> bool:
    """Hostonly: the sysroot has repart.d definitions, or grows an initrd mount."""
    if context.detection is None:
        return False
    sysroot = Sysroot(context.config.sysroot)
    return bool(definitions(sysroot)) or grown_in_initrd(sysroot_fstab(context))


def _mkfs_tools(context: FeatureContext) -> Contribution:
    sysroot = Sysroot(context.config.sysroot)
    reason = "feature repart: Format= of the sysroot's repart.d definitions"
    return [
        Request(RequestKind.EXECUTABLE, f"mkfs.{fstype}", reason, optional=True)
        for fstype in formats(sysroot, definitions(sysroot))
    ]


FEATURE = Feature(
    name="repart",
    help="first boot of an image: systemd-repart grows and adds partitions per the "
    "repart.d definitions of /usr or the root, systemd-growfs grows x-systemd.growfs mounts",
    requires=("filesystems",),
    executables=(
        "systemd-repart",
        "/usr/lib/systemd/systemd-growfs",
        # What x-systemd.makefs and a definition's Format= run.
        "?/usr/lib/systemd/systemd-makefs",
    ),
    units=(
        "systemd-repart.service",
        # Templates the fstab generator instantiates from systemd 254 on; earlier ones
        # write the whole unit themselves.
        "?systemd-growfs@.service",
        "?systemd-growfs-root.service",
    ),
    compute=_mkfs_tools,
    # Not in generic images unless asked for: most roots never repartition.
    switch_on=SwitchOn(detected=first_boot_wanted),
)
