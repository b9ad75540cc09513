"""The exitrd: the small image systemd pivots into at shutdown to take the root's storage down.

At shutdown systemd-shutdown unmounts what it can; if /run/initramfs/shutdown exists,
it then pivots into /run/initramfs (the old root moves to /oldroot) and executes
/shutdown with the verb (poweroff, reboot, halt, kexec) in argv[1]. Here /shutdown is
systemd-shutdown itself: finding /etc/initrd-release it knows it runs from an initrd,
so it unmounts /oldroot and detaches the DM, MD and loop devices under it, now that
nothing holds them, and powers off.

The exitrd holds no kernel modules (the running kernel has them loaded) and no udev:
only systemd-shutdown and exactly its DT_NEEDED closure, the release files, and what a
feature the initrd has declares as its exitrd part (Feature.exitrd) because something
runs it at shutdown: the hook that stops root storage daemons and the steps that detach
network storage. When the exitrd takes storage down, the holders hook (bookend.holders)
comes too, with the one program it runs, the shell. systemd-shutdown detaches DM (LUKS,
LVM) devices with ioctls, so those stacks add nothing more. What the configuration adds
comes with it: the
exitrd parts of exitrd_features, the exitrd_files, and the /usr and /opt of the
exitrd_sysexts (bookend.sysext).

systemd >= 254 can build a standalone systemd-shutdown (meson -Dstandalone-binaries),
the same program with systemd's shared code linked in: the exitrd then needs no
libsystemd-shared-N.so and what that links (on Debian 12 libcrypto, libgcrypt...:
with systemd-shutdown that closure is the floor). Debian 13 and later ship it as the
package systemd-standalone-shutdown, which installs /usr/lib/systemd/systemd-shutdown
and conflicts with systemd: a sysroot with systemd has not got it, so exitrd_shutdown
names the file (unpacked from that package with dpkg-deb -x, say), checked here: an
ELF program of the sysroot's architecture whose libraries the sysroot has, needing no
libsystemd-shared. Unnamed, the sysroot's systemd-shutdown.standalone (upstream's name)
or systemd-shutdown is taken, whichever needs no libsystemd-shared (its DT_NEEDED says,
not its name), else systemd-shutdown with that closure. libmount is asked for by name:
systemd >= 256 loads it with dlopen() (its .note.dlopen calls it only "suggested").

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

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from bookend import elf
from bookend.arches import by_elf, sysroot_arch
from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.errors import ConfigError, ElfError, SysrootError
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
from bookend.libsearch import LibrarySearch
from bookend.plan import Plan, enabled_features
from bookend.storage import StorageKind
from bookend.sysext import check_extension, extension_entries, extension_tree
from bookend.sysroot import Sysroot

SHUTDOWN = "/usr/lib/systemd/systemd-shutdown"
STANDALONE = "/usr/lib/systemd/systemd-shutdown.standalone"
SHARED_PREFIX = "libsystemd-shared-"  # systemd's private library: libsystemd-shared-257.so
LIBMOUNT = "libmount.so.1"
# systemd-shutdown mounts these itself; /oldroot is where the old root is moved.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/run", "/oldroot")


@dataclass(frozen=True)
class ShutdownProgram:
    """The program that is /shutdown: its image path, and the file it is copied from
    when it comes from outside the sysroot (exitrd_shutdown)."""

    path: str
    source: Path | None = None
    standalone: bool = False  # needs no libsystemd-shared


def shutdown_program(config: Config) -> ShutdownProgram:
    """exitrd_shutdown, checked; else the sysroot's first of STANDALONE and SHUTDOWN that
    is an executable ELF file needing no libsystemd-shared; else SHUTDOWN."""
    sysroot = Sysroot(config.sysroot)
    if config.exitrd_shutdown is not None:
        return _given_shutdown(config.exitrd_shutdown, config, sysroot)
    libraries = LibrarySearch(sysroot)
    for path in (STANDALONE, SHUTDOWN):
        resolved = sysroot.resolve(path)
        st = resolved.st
        if st is None or not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        try:
            info = libraries.info_if_elf(path)
        except ElfError:
            continue
        if info is not None and not _shared(info):
            return ShutdownProgram(path, standalone=True)
    return ShutdownProgram(SHUTDOWN)


def _shared(info: elf.ElfInfo) -> str | None:
    return next((name for name in info.needed if name.startswith(SHARED_PREFIX)), None)


def _given_shutdown(path: Path, config: Config, sysroot: Sysroot) -> ShutdownProgram:
    """exitrd_shutdown, if it can be /shutdown in an exitrd of this sysroot."""
    where = f"{path}: exitrd_shutdown ({config.origins.get('exitrd_shutdown', 'config')})"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"{where}: not an executable file")
    try:
        info = elf.read_elf(path) if elf.is_elf(path) else None
    except ElfError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if info is None:
        raise ConfigError(f"{where}: not an ELF file")
    arch, own = sysroot_arch(sysroot), by_elf(info.machine, info.elf_class)
    if arch is not None and own != arch:
        raise ConfigError(
            f"{where}: a {info.machine} ({info.elf_class}-bit) program, but the sysroot's "
            f"systemd is {arch.elf_machine} ({arch.elf_class}-bit)"
        )
    shared = _shared(info)
    if shared is not None:
        raise ConfigError(
            f"{where}: needs {shared}: not a standalone systemd-shutdown (Debian 13 and "
            "later ship one in the package systemd-standalone-shutdown)"
        )
    if info.interpreter and sysroot.resolve(info.interpreter).st is None:
        raise ConfigError(f"{where}: its loader {info.interpreter} is not in the sysroot")
    libraries = LibrarySearch(sysroot, overlay={SHUTDOWN: path})
    for soname in info.needed:
        if libraries.find(soname, SHUTDOWN, info) is None:
            raise ConfigError(
                f"{where}: needs {soname}, which is not in the sysroot's library path "
                "(RUNPATH, ld.so.conf or the system library directories)"
            )
    return ShutdownProgram(SHUTDOWN, source=path, standalone=True)


def _skeleton(context: FeatureContext) -> Contribution:
    program = shutdown_program(context.config)
    reason = "exitrd: systemd-shutdown executes /shutdown after pivoting"
    entries: list[Request | Generated] = []
    if program.source is None:
        entries.append(Request(RequestKind.EXECUTABLE, program.path, reason))
    else:
        entry = ArchiveEntry(program.path, EntryKind.FILE, 0o755, source=program.source)
        entries.append(Generated(entry, f"{reason} (exitrd_shutdown {program.source})"))
    entries += [
        *skeleton(MOUNT_POINTS, "exitrd skeleton"),
        Generated(
            ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target=program.path.lstrip("/")),
            reason,
        ),
    ]
    entries += release_files(context.config, "exitrd")
    return [*entries, *_libmount(context, program)]


# The storage a plain root stands on: nothing there for the exitrd to detach.
_NOTHING_TO_DETACH = frozenset({StorageKind.NETWORK})


def _holders(features: list[Feature]) -> list[Request | Generated]:
    """The holders hook and its shell, when the exitrd takes storage down: a feature
    serves a storage kind (device-mapper, MD, btrfs, network storage) or has an exitrd
    part of its own (a storage daemon). A plain root's exitrd only unmounts it, and what
    kept it busy is gone with the processes systemd-shutdown killed, so it goes
    without them."""
    if not any(
        (feature.serves is not None and feature.serves not in _NOTHING_TO_DETACH)
        or feature.exitrd is not None
        for feature in features
    ):
        return []
    reason = "exitrd: name what still holds the old root's storage"
    shell = [Request(RequestKind.EXECUTABLE, name.removeprefix("?"), reason,
                     optional=name.startswith("?")) for name in HOLDERS_EXECUTABLES]  # fmt: skip
    return [*shell, Generated(holders_entry(), reason)]


def _libmount(context: FeatureContext, program: ShutdownProgram) -> Contribution:
    """libmount wherever the sysroot keeps it (systemd >= 256 dlopens it to unmount), found
    as systemd-shutdown's loader would find it: no multiarch path written here."""
    sysroot = Sysroot(context.config.sysroot)
    overlay = {} if program.source is None else {program.path: program.source}
    libraries = LibrarySearch(sysroot, overlay=overlay)
    if program.source is None and not sysroot.exists(program.path):
        return []
    info = libraries.info_if_elf(program.path)
    found = None if info is None else libraries.find(LIBMOUNT, program.path, info)
    reason = "exitrd: libmount, which systemd-shutdown may dlopen"
    return [] if found is None else [Request(RequestKind.PATH, found, reason)]


EXITRD = Feature(
    name="exitrd",
    help="systemd-shutdown as /shutdown, to unmount the old root and detach its storage",
    compute=_skeleton,
)


def exitrd_features(initrd: Plan, context: FeatureContext) -> list[Feature]:
    """The initrd's features, in its order, then those exitrd_features names (and those
    they require) that the initrd has not got."""
    features = [initrd.registry[name] for name in initrd.features]
    added = enabled_features(context.config.exitrd_features, initrd.registry)
    _check_added_features(context.config, added)
    return features + [feature for feature in added if feature.name not in initrd.features]


def exitrd_parts(features: list[Feature], context: FeatureContext) -> list[Request | Generated]:
    """What the features ask of the exitrd (dmsetup, cryptsetup, lvm, mdadm..., the hook
    that stops root storage daemons, the steps that detach network storage)."""
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
    features = exitrd_features(initrd, context)
    own = [*EXITRD.requests(), *_skeleton(context), *_holders(features)]
    # The extensions' files first: the first entry at a path wins, and an extension
    # shows over the sysroot's tree as systemd-sysext's overlay would.
    contribution = [*extensions(config, unpack_dir), *own, *exitrd_parts(features, context)]
    requests, generated = split_contribution([*contribution, *added_files(config)])
    return Plan(features=("exitrd",), requests=tuple(requests), generated=tuple(generated))
