"""A separate /usr, mounted in the initrd before switch-root.

systemd does the mounting: its fstab generator turns `mount.usr=`, `mount.usrfstype=`
and `mount.usrflags=` into a mount of /usr at /sysusr/usr, bound to /sysroot/usr, and
initrd-parse-etc reads the root's /etc/fstab, whose /usr line the initrd mounts too (a
merged-/usr root has no init without it). The image must only hold what mounting that
filesystem takes: its module, fsck and mount helper, which this feature asks for when
the sysroot's fstab names a /usr of a type the configuration does not list. A /usr on
dm-verity (`usrhash=`) is the verity feature's.
"""

from __future__ import annotations

from typing import NamedTuple

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.sysroot import Sysroot


class FstabLine(NamedTuple):
    device: str
    mount_point: str
    fstype: str
    options: str


def fstab_line(fstab: str, mount_point: str) -> FstabLine | None:
    """The last line of fstab mounting mount_point (the one mount(8) would use), if any."""
    found = None
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        if fields[1].rstrip("/") == mount_point.rstrip("/"):
            found = FstabLine(fields[0], fields[1], fields[2], fields[3] if len(fields) > 3 else "")
    return found


def sysroot_fstab(context: FeatureContext) -> str:
    return Sysroot(context.config.sysroot).read_text("/etc/fstab") or ""


def separate_usr(context: FeatureContext) -> bool:
    """Hostonly: the sysroot's fstab mounts /usr on its own (generic images carry every
    filesystem's tools anyway, and mount.usr= needs nothing more)."""
    return context.detection is not None and fstab_line(sysroot_fstab(context), "/usr") is not None


def _usr_filesystem(context: FeatureContext) -> Contribution:
    line = fstab_line(sysroot_fstab(context), "/usr")
    if line is None or line.fstype in ("auto", "none", *context.config.filesystems):
        return []
    reason = f"feature usr: /usr is {line.fstype} (the sysroot's /etc/fstab)"
    return [
        Request(RequestKind.MODULE, line.fstype, reason, optional=True),
        Request(RequestKind.EXECUTABLE, f"fsck.{line.fstype}", reason, optional=True),
        Request(RequestKind.EXECUTABLE, f"mount.{line.fstype}", reason, optional=True),
    ]


FEATURE = Feature(
    name="usr",
    help="a separate /usr mounted before switch-root, from mount.usr= or the root's fstab",
    requires=("filesystems",),
    # What systemd orders the /usr mounts by, and checks /usr with.
    units=("initrd-usr-fs.target", "systemd-fsck@.service"),
    compute=_usr_filesystem,
    switch_on=SwitchOn(detected=separate_usr),
)
