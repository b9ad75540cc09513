"""The exitrd: the small image systemd pivots into at shutdown to take the root's storage down.

At shutdown systemd-shutdown unmounts what it can; if /run/initramfs/shutdown exists,
it then pivots into /run/initramfs (the old root moves to /oldroot) and executes
/shutdown with the verb (poweroff, reboot, halt, kexec) in argv[1]. Here /shutdown is
systemd-shutdown itself: finding /etc/initrd-release it knows it runs from an initrd,
so it unmounts /oldroot and detaches the DM, MD and loop devices under it, now that
nothing holds them, and powers off.

The exitrd holds no kernel modules (the running kernel has them loaded) and no udev:
only systemd-shutdown, its libraries, the release files, and what each feature the
initrd has declares as its exitrd part (Feature.exitrd): the storage tools, for an
administrator's or a hook's use, and the hook that stops root storage daemons.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    split_contribution,
)
from bookend.features.release import release_files
from bookend.features.systemd import skeleton
from bookend.plan import Plan

SHUTDOWN = "/usr/lib/systemd/systemd-shutdown"
# systemd-shutdown mounts these itself; /oldroot is where the old root is moved.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/run", "/oldroot")


def _skeleton(context: FeatureContext) -> Contribution:
    entries = skeleton(MOUNT_POINTS, "exitrd skeleton")
    entries.append(
        Generated(
            ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target=SHUTDOWN.lstrip("/")),
            "exitrd: systemd-shutdown executes /shutdown after pivoting",
        )
    )
    entries += release_files(context.config, "exitrd")
    return entries


EXITRD = Feature(
    name="exitrd",
    help="systemd-shutdown as /shutdown, to unmount the old root and detach its storage",
    executables=(SHUTDOWN, "?/usr/lib/x86_64-linux-gnu/libmount.so.1"),
    compute=_skeleton,
)


def exitrd_parts(initrd: Plan, context: FeatureContext) -> list[Request | Generated]:
    """What the initrd's features ask of the exitrd (dmsetup, cryptsetup, lvm, mdadm...,
    the hook that stops root storage daemons, the steps that detach network storage),
    in the initrd's feature order."""
    features = [initrd.registry[name] for name in initrd.features]
    return [item for feature in features for item in feature.exitrd_contribution(context)]


def make_exitrd_plan(config: Config, initrd: Plan) -> Plan:
    context = FeatureContext(config, initrd.detection)
    own = [*EXITRD.requests(), *_skeleton(context)]
    requests, generated = split_contribution([*own, *exitrd_parts(initrd, context)])
    return Plan(features=("exitrd",), requests=tuple(requests), generated=tuple(generated))
