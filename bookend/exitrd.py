"""The exitrd: the small image systemd pivots into at shutdown to take the root's storage down.

At shutdown systemd-shutdown unmounts what it can; if /run/initramfs/shutdown exists,
it then pivots into /run/initramfs (the old root moves to /oldroot) and executes
/shutdown with the verb (poweroff, reboot, halt, kexec) in argv[1]. Here /shutdown is
systemd-shutdown itself: finding /etc/initrd-release it knows it runs from an initrd,
so it unmounts /oldroot and detaches the DM, MD and loop devices under it, now that
nothing holds them, and powers off.

The exitrd holds no kernel modules (the running kernel has them loaded), no udev and
no shell: only systemd-shutdown and exactly its DT_NEEDED closure, the release files,
and what a feature the initrd has declares as its exitrd part (Feature.exitrd) because
something runs it at shutdown: the hook that stops root storage daemons and the steps
that detach network storage. systemd-shutdown detaches DM (LUKS, LVM) devices with
ioctls, so those stacks add nothing. What the configuration adds comes with it: the
exitrd parts of exitrd_features, the exitrd_files, and the /usr and /opt of the
exitrd_sysexts (bookend.sysext).

systemd >= 254 can build systemd-shutdown.standalone (meson -Dstandalone-binaries),
the same program with systemd's shared code linked in: where the sysroot has it, it is
/shutdown, and the exitrd needs no libsystemd-shared-N.so and what that links (on
Debian 12 libcrypto, libgcrypt...: with systemd-shutdown that closure is the floor).
Debian 12 and 13 do not ship it. libmount is asked for by name: systemd >= 256
loads it with dlopen() (its .note.dlopen calls it only "suggested").

Shutdown hooks: systemd-shutdown runs every executable in SHUTDOWN_HOOK_DIR, in
parallel, with the verb in argv[1], once its loop of unmounting and detaching is done
and right before it either pivots into /run/initramfs or calls reboot(2)
(src/shutdown/shutdown.c: execute_directories() comes before switch_root_initramfs()).
The running root's hooks therefore run before the pivot ("Returning to initrd...",
257: "Entering exitrd..."), from its own directory; the exitrd's hooks run when its
/shutdown, systemd-shutdown again, reaches the same point: after /oldroot is unmounted
and before the power-off (in an initrd it does not pivot again). They run because
/shutdown is systemd-shutdown: a /shutdown of another kind would have to run them.
"""

from __future__ import annotations

import posixpath
import stat
from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.errors import ConfigError, SysrootError
from bookend.features.base import (
    SHUTDOWN_HOOK_DIR,
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    split_contribution,
)
from bookend.features.release import release_files
from bookend.features.systemd import skeleton
from bookend.holders import EXECUTABLES as HOLDERS_EXECUTABLES
from bookend.holders import holders_entry
from bookend.libsearch import loaded_by
from bookend.plan import Plan, enabled_features
from bookend.sysext import check_extension, extension_entries, extension_tree
from bookend.sysroot import Sysroot

SHUTDOWN = "/usr/lib/systemd/systemd-shutdown"
STANDALONE = "/usr/lib/systemd/systemd-shutdown.standalone"
LIBMOUNT = "libmount.so.1"
# systemd-shutdown mounts these itself; /oldroot is where the old root is moved.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/run", "/oldroot")


def shutdown_program(sysroot: Sysroot) -> str:
    """The program that is /shutdown: systemd-shutdown.standalone where the sysroot has
    it as an executable file, else systemd-shutdown."""
    resolved = sysroot.resolve(STANDALONE)
    st = resolved.st
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
        return STANDALONE
    return SHUTDOWN


def _skeleton(context: FeatureContext) -> Contribution:
    program = shutdown_program(Sysroot(context.config.sysroot))
    reason = "exitrd: systemd-shutdown executes /shutdown after pivoting"
    entries: list[Request | Generated] = [
        Request(RequestKind.EXECUTABLE, program, reason),
        *skeleton(MOUNT_POINTS, "exitrd skeleton"),
        Generated(
            ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target=program.lstrip("/")),
            reason,
        ),
    ]
    entries += release_files(context.config, "exitrd")
    entries.append(
        Generated(holders_entry(), "exitrd: name what still holds the old root's storage")
    )
    return [*entries, *_libmount(context, program)]


def _libmount(context: FeatureContext, program: str) -> Contribution:
    """libmount wherever the sysroot keeps it (systemd >= 256 dlopens it to unmount), found
    as systemd-shutdown's loader would find it: no multiarch path written here."""
    found = loaded_by(Sysroot(context.config.sysroot), program, LIBMOUNT)
    reason = "exitrd: libmount, which systemd-shutdown may dlopen"
    return [] if found is None else [Request(RequestKind.PATH, found, reason)]


EXITRD = Feature(
    name="exitrd",
    help="systemd-shutdown as /shutdown, to unmount the old root and detach its storage",
    executables=HOLDERS_EXECUTABLES,
    compute=_skeleton,
)


def exitrd_parts(initrd: Plan, context: FeatureContext) -> list[Request | Generated]:
    """What the initrd's features ask of the exitrd (dmsetup, cryptsetup, lvm, mdadm...,
    the hook that stops root storage daemons, the steps that detach network storage),
    in the initrd's feature order, then what the features exitrd_features names (and
    those they require) add that the initrd has not got."""
    features = [initrd.registry[name] for name in initrd.features]
    added = enabled_features(context.config.exitrd_features, initrd.registry)
    _check_added_features(context.config, added)
    features += [feature for feature in added if feature.name not in initrd.features]
    return [
        item
        for feature in features
        for item in [*feature.exitrd_contribution(context), *shutdown_hooks(feature, context)]
    ]


def _check_added_features(config: Config, added: list[Feature]) -> None:
    """A feature named for the exitrd that adds nothing to it is a mistake worth a line."""
    for index, name in enumerate(config.exitrd_features):
        required = enabled_features([name], {f.name: f for f in added})
        if all(feature.exitrd is None for feature in required):
            origin = config.origin_of("exitrd_features", index)
            raise ConfigError(
                f"{origin}: exitrd_features: feature {name} declares nothing for the exitrd"
            )


def shutdown_hooks(feature: Feature, context: FeatureContext) -> list[Request | Generated]:
    """The feature's shutdown hooks: each an executable of the sysroot, at its path, and
    in SHUTDOWN_HOOK_DIR (a link there to one that lives elsewhere)."""
    if feature.exitrd is None or not feature.exitrd.shutdown_hooks:
        return []
    sysroot = Sysroot(context.config.sysroot)
    reason = f"exitrd: shutdown hook of {feature.reason}"  # the user's file, if any
    items: list[Request | Generated] = []
    for declared in feature.exitrd.shutdown_hooks:
        name = declared.removeprefix("?")
        path = name if name.startswith("/") else f"{SHUTDOWN_HOOK_DIR}/{name}"
        resolved = sysroot.resolve(path)
        if resolved.st is None and declared.startswith("?"):
            continue
        if resolved.st is None or not stat.S_ISREG(resolved.st.st_mode):
            raise SysrootError(f"{sysroot.host_path(path)}: missing ({reason})")
        if not resolved.st.st_mode & 0o111:
            raise SysrootError(f"{sysroot.host_path(path)}: not executable ({reason})")
        items.append(Request(RequestKind.PATH, path, reason))
        if posixpath.dirname(path) != SHUTDOWN_HOOK_DIR:
            link = f"{SHUTDOWN_HOOK_DIR}/{posixpath.basename(path)}"
            entry = ArchiveEntry(link, EntryKind.SYMLINK, 0o777, target=path)
            items.append(Generated(entry, reason))
    return items


def added_files(config: Config) -> list[Request]:
    """The exitrd_files, each a path of the sysroot (resolve checked they exist)."""
    return [
        Request(RequestKind.PATH, name, f"exitrd_files ({config.origin_of('exitrd_files', i)})")
        for i, name in enumerate(config.exitrd_files)
    ]


def extensions(config: Config, unpack_dir: Path | None) -> list[Generated]:
    """The /usr and /opt of every exitrd_sysexts extension that fits the exitrd;
    unpack_dir: where images are unpacked (kept between builds: bookend.sysext)."""
    sysroot = Sysroot(config.sysroot)
    items: list[Generated] = []
    for index, name in enumerate(config.exitrd_sysexts):
        path = Path(name)
        if path.is_file() and unpack_dir is None:
            raise ConfigError(f"{path}: no directory to unpack the extension image in")
        tree = extension_tree(path, unpack_dir or Path())
        check_extension(path, tree, sysroot)
        origin = config.origin_of("exitrd_sysexts", index)
        items += extension_entries(path, tree, f"exitrd_sysexts ({origin}): extension {name}")
    return items


def make_exitrd_plan(config: Config, initrd: Plan, unpack_dir: Path | None = None) -> Plan:
    """The exitrd's plan; unpack_dir: where extension images are unpacked."""
    context = FeatureContext(config, initrd.detection)
    own = [*EXITRD.requests(), *_skeleton(context)]
    # The extensions' files first: the first entry at a path wins, and an extension
    # shows over the sysroot's tree as systemd-sysext's overlay would.
    contribution = [*extensions(config, unpack_dir), *own, *exitrd_parts(initrd, context)]
    requests, generated = split_contribution([*contribution, *added_files(config)])
    return Plan(features=("exitrd",), requests=tuple(requests), generated=tuple(generated))
