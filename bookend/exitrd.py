"""The exitrd: the small image systemd pivots into at shutdown to take the root's storage down.

At shutdown systemd-shutdown unmounts what it can; if /run/initramfs/shutdown exists,
it then pivots into /run/initramfs (the old root moves to /oldroot) and executes
/shutdown with the verb (poweroff, reboot, halt, kexec) in argv[1]. Here /shutdown is
systemd-shutdown itself: finding /etc/initrd-release it knows it runs from an initrd,
so it unmounts /oldroot and detaches the DM, MD and loop devices under it, now that
nothing holds them, and powers off.

The exitrd holds no kernel modules (the running kernel has them loaded) and no udev:
only systemd-shutdown, its libraries, the release files, and the storage tools of the
storage features the initrd has, for an administrator's or a hook's use.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.features import ALL
from bookend.features.base import Contribution, Feature, Generated, Request, RequestKind
from bookend.features.release import release_files
from bookend.features.storage_daemons import STOP_HOOK, STOP_SCRIPT
from bookend.features.systemd import skeleton
from bookend.plan import Plan

SHUTDOWN = "/usr/lib/systemd/systemd-shutdown"
# systemd-shutdown mounts these itself; /oldroot is where the old root is moved.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/run", "/oldroot")


def _skeleton(config: Config) -> Contribution:
    entries = skeleton(MOUNT_POINTS, "exitrd skeleton")
    entries.append(
        Generated(
            ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target=SHUTDOWN.lstrip("/")),
            "exitrd: systemd-shutdown executes /shutdown after pivoting",
        )
    )
    entries += release_files(config, "exitrd")
    return entries


EXITRD = Feature(
    name="exitrd",
    help="systemd-shutdown as /shutdown, to unmount the old root and detach its storage",
    executables=(SHUTDOWN, "?/usr/lib/x86_64-linux-gnu/libmount.so.1"),
    compute=_skeleton,
)


def storage_tools(initrd: Plan) -> list[Request]:
    """The programs of the initrd's storage features (dmsetup, cryptsetup, lvm, mdadm...)."""
    requests = []
    for name in initrd.features:
        feature = ALL[name]
        if feature.storage or name == "dm":
            reason = f"exitrd: storage tools of feature {name}"
            requests += [
                Request(r.kind, r.name, reason, optional=r.optional)
                for r in feature.requests()
                if r.kind is RequestKind.EXECUTABLE
            ]
    return requests


def daemon_stopper(config: Config, detaching: bool = False) -> list[Request | Generated]:
    """The system-shutdown hook that stops the root storage daemons, and its tools.

    detaching: a feature leaves a detach step (and maybe a daemon of its own) for it.
    """
    if not config.storage_daemons and not detaching:
        return []
    reason = "exitrd: stop the root storage daemons (storage_daemons)"
    hook = ArchiveEntry(STOP_HOOK, EntryKind.FILE, 0o755, data=STOP_SCRIPT.encode())
    return [
        Generated(hook, reason),
        Request(RequestKind.EXECUTABLE, "/bin/sh", reason),
        Request(RequestKind.EXECUTABLE, "sleep", reason),
    ]


def make_exitrd_plan(config: Config, initrd: Plan) -> Plan:
    from_features = [
        item
        for name in initrd.features
        if (contribute := ALL[name].exitrd)
        for item in contribute(config)
    ]
    items = [*_skeleton(config), *daemon_stopper(config, bool(from_features)), *from_features]
    requests = [*EXITRD.requests(), *storage_tools(initrd)]
    requests += [item for item in items if isinstance(item, Request)]
    generated = [item for item in items if isinstance(item, Generated)]
    return Plan(features=("exitrd",), requests=tuple(requests), generated=tuple(generated))
