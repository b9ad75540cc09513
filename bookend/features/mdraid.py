"""MD RAID: arrays assembled incrementally by udev with mdadm, degraded ones after a wait.

mdadm's udev rules add each member as it appears; when an array could start only
degraded, they pull in mdadm-last-resort@.timer, which starts it anyway after a while
instead of waiting forever for a disk that is gone.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import (
    Contribution,
    ExitrdPart,
    Feature,
    FeatureContext,
    Generated,
    SwitchOn,
)
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot

CONF_PATHS = ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf")
# What the early boot needs from mdadm.conf: which arrays and devices, and how to
# name them. Mail and monitoring settings are the running system's business.
ASSEMBLY_KEYWORDS = ("ARRAY", "DEVICE", "HOMEHOST", "AUTO", "CREATE", "POLICY")


def mdadm_conf(sysroot_conf: str | None) -> str:
    """The sysroot's assembly lines (its ARRAY lines make those arrays local), or none."""
    lines = ["# Written by bookend from the sysroot's mdadm.conf: assembly settings only."]
    keep = False
    for line in (sysroot_conf or "").splitlines():
        if line[:1].isspace():  # a continuation belongs to the line before
            if keep:
                lines.append(line.rstrip())
            continue
        words = line.split()
        keep = bool(words) and words[0].upper().startswith(
            tuple(k[:3] for k in ASSEMBLY_KEYWORDS)  # mdadm accepts 3-letter abbreviations
        )
        if keep:
            lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def _conf(context: FeatureContext) -> Contribution:
    sysroot = Sysroot(context.config.sysroot)
    found = next((sysroot.read_text(p) for p in CONF_PATHS if sysroot.exists(p)), None)
    entry = ArchiveEntry(
        "/etc/mdadm/mdadm.conf", EntryKind.FILE, 0o644, data=mdadm_conf(found).encode()
    )
    return [Generated(entry, "feature mdraid: mdadm.conf")]


FEATURE = Feature(
    name="mdraid",
    help="MD RAID: mdadm, its udev rules, mdadm.conf; degraded arrays start after a timeout",
    executables=("mdadm", "?mdmon"),
    udev_rules=(
        "@md-arrays",
        "@md-assembly",
        "?01-md-raid-creating.rules",
    ),
    units=("mdadm-last-resort@.timer", "mdadm-last-resort@.service", "?mdmon@.service"),
    modules=("md_mod", "?raid0", "?raid1", "?raid10", "?raid456", "?linear"),
    compute=_conf,
    switch_on=SwitchOn(program="/sbin/mdadm"),
    serves=StorageKind.MDRAID,
    # Stopping arrays (and mdmon's external metadata) by hand or by a hook at shutdown.
    exitrd=ExitrdPart(executables=("mdadm", "?mdmon")),
)
