"""systemd as PID 1 in initrd mode: the manager, journald and the initrd unit chain."""

from __future__ import annotations

import os

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    SwitchOn,
)

# The directories systemd expects to find or mount over; /sysroot is where the root goes.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/run", "/sysroot", "/tmp", "/root", "/var")

# The kernel opens /dev/console before devtmpfs exists, so these must be in the archive.
DEVICE_NODES = (
    ("/dev/console", 0o600, os.makedev(5, 1)),
    ("/dev/null", 0o666, os.makedev(1, 3)),
    ("/dev/kmsg", 0o644, os.makedev(1, 11)),
)


def skeleton(mount_points: tuple[str, ...], reason: str) -> list[Request | Generated]:
    """The mount point directories and the device nodes an image needs before devtmpfs."""
    entries: list[Request | Generated] = [
        Generated(ArchiveEntry(path, EntryKind.DIRECTORY, 0o755), reason) for path in mount_points
    ]
    entries += [
        Generated(ArchiveEntry(path, EntryKind.CHAR_DEVICE, mode, rdev=rdev), reason)
        for path, mode, rdev in DEVICE_NODES
    ]
    return entries


def _skeleton(context: FeatureContext) -> Contribution:
    entries = skeleton(MOUNT_POINTS, "feature systemd: initrd skeleton")
    # The kernel runs /init; systemd itself is that init.
    entries.append(
        Generated(
            ArchiveEntry("/init", EntryKind.SYMLINK, 0o777, target="usr/lib/systemd/systemd"),
            "feature systemd: the kernel runs /init",
        )
    )
    # PID 1 starts initrd.target on its own, but systemd 252's emergency shell "continues
    # the boot" (Enter, Control-D, `exit`) by isolating default.target: without this alias
    # that fails and the console goes silent. It is the link `systemctl set-default
    # initrd.target` writes.
    entries.append(
        Generated(
            ArchiveEntry(
                "/etc/systemd/system/default.target",
                EntryKind.SYMLINK,
                0o777,
                target="/usr/lib/systemd/system/initrd.target",
            ),
            "feature systemd: leaving the emergency shell resumes the initrd's boot",
        )
    )
    return entries


FEATURE = Feature(
    name="systemd",
    help="systemd as PID 1 in initrd mode, journald, and the initrd target chain",
    requires=("udev", "kmod", "filesystems", "emergency", "release"),
    executables=(
        "/usr/lib/systemd/systemd",
        # systemd 255 and later run every unit's process through it; the manager
        # refuses to start without it.
        "?/usr/lib/systemd/systemd-executor",
        "/usr/lib/systemd/systemd-shutdown",
        "/usr/lib/systemd/systemd-sulogin-shell",
        "systemctl",
        "journalctl",
        "systemd-tmpfiles",
        "systemd-escape",
        "?systemd-ask-password",
        "?systemd-tty-ask-password-agent",
    ),
    units=(
        "initrd.target",
        "initrd-fs.target",
        "initrd-root-device.target",
        "initrd-root-fs.target",
        "initrd-usr-fs.target",
        "initrd-switch-root.target",
        "initrd-switch-root.service",
        "initrd-cleanup.service",
        "initrd-parse-etc.service",
        "?initrd-udevadm-cleanup-db.service",
        "sysinit.target",
        "basic.target",
        "local-fs.target",
        "local-fs-pre.target",
        "swap.target",
        "sockets.target",
        "timers.target",
        "paths.target",
        "slices.target",
        # Debian 13 (systemd 257) ships these two in systemd-cryptsetup.
        "?cryptsetup.target",
        "?cryptsetup-pre.target",
        "remote-fs.target",
        "remote-fs-pre.target",
        "emergency.target",
        "emergency.service",
        "rescue.target",
        "rescue.service",
        "shutdown.target",
        "final.target",
        "umount.target",
        "reboot.target",
        "poweroff.target",
        "halt.target",
        "ctrl-alt-del.target",
        "systemd-reboot.service",
        "systemd-poweroff.service",
        "systemd-halt.service",
        "systemd-journald.service",
        "systemd-journald.socket",
        "systemd-journald-dev-log.socket",
        "?systemd-journald-audit.socket",
        "systemd-tmpfiles-setup-dev.service",
        "?kmod-static-nodes.service",
        "?systemd-ask-password-console.path",
        "?systemd-ask-password-console.service",
        "?systemd-ask-password-wall.path",
        "?systemd-ask-password-wall.service",
        "?systemd-volatile-root.service",
        "?systemd-sysctl.service",
    ),
    generators=(
        "systemd-fstab-generator",
        "?systemd-debug-generator",
        "?systemd-gpt-auto-generator",
        "?systemd-run-generator",
    ),
    files=(
        "?/etc/systemd/system.conf",
        "?/etc/systemd/journald.conf",
        "?/usr/lib/tmpfiles.d/static-nodes-permissions.conf",
        "?/usr/lib/sysctl.d",
        "?/etc/sysctl.d",
        "?/etc/sysctl.conf",
    ),
    # systemd loads these itself at start-up and complains when they are missing.
    modules=("?autofs4",),
    compute=_skeleton,
    switch_on=SwitchOn(always=True),
)
