"""Mounting and checking the root: mount, fsck, and each filesystem's module and tools."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
)


def initrd_mounts(fstab: str) -> list[tuple[str, str]]:
    """(mount point, fstype) of the fstab lines marked x-initrd.mount, other than /.

    systemd in the initrd mounts these under /sysroot itself (initrd-parse-etc reads the
    root's fstab); the image must only hold what mounting them needs.
    """
    found = []
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#") or fields[1] == "/":
            continue
        if "x-initrd.mount" in fields[3].split(","):
            found.append((fields[1], fields[2]))
    return found


def _fstab(config: Config) -> bytes:
    """The initrd's own fstab: the root to mount when the command line names none."""
    lines = ["# Written by bookend. root= on the kernel command line takes precedence."]
    if config.root:
        fstype = config.filesystems[0] if config.filesystems else "auto"
        lines.append(f"{config.root} /sysroot {fstype} defaults 0 1")
    return ("\n".join(lines) + "\n").encode()


# systemd-fsck's checker writes its verdict ("clean", what it repaired) to the journal
# only; an administrator watching a first boot or a repair wants it on the console.
FSCK_UNITS = ("systemd-fsck-root.service", "systemd-fsck@.service")
# The fstab generator writes systemd-fsck-usr.service itself for mount.usr=.
FSCK_CONSOLE_UNITS = (*FSCK_UNITS, "systemd-fsck-usr.service")
FSCK_CONSOLE = b"[Service]\nStandardOutput=journal+console\n"


def fsck_on_console() -> list[Request | Generated]:
    return [
        Generated(
            ArchiveEntry(
                f"/etc/systemd/system/{unit}.d/bookend-console.conf",
                EntryKind.FILE,
                0o644,
                data=FSCK_CONSOLE,
            ),
            "feature filesystems: fsck's result on the console",
        )
        for unit in FSCK_CONSOLE_UNITS
    ]


def _per_filesystem(context: FeatureContext) -> Contribution:
    config = context.config
    contribution: list[Request | Generated] = [
        Generated(
            ArchiveEntry("/etc/fstab", EntryKind.FILE, 0o644, data=_fstab(config)),
            "feature filesystems: the initrd's fstab",
        ),
        *fsck_on_console(),
    ]
    for fstype in config.filesystems:
        reason = f"filesystem {fstype} (config filesystems)"
        contribution += [
            Request(RequestKind.MODULE, fstype, reason, optional=True),
            Request(RequestKind.EXECUTABLE, f"fsck.{fstype}", reason, optional=True),
            Request(RequestKind.EXECUTABLE, f"mount.{fstype}", reason, optional=True),
        ]
    return contribution


FEATURE = Feature(
    name="filesystems",
    help="mount, umount, systemd-fsck and fsck, plus each configured filesystem's tools",
    executables=("mount", "umount", "fsck", "/usr/lib/systemd/systemd-fsck"),
    units=FSCK_UNITS,
    compute=_per_filesystem,
)
