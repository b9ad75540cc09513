"""System extensions for the exitrd: a distribution's shutdown logic shipped as an extension.

An extension is a directory or a plain squashfs or erofs image (unpacked in user space
by unsquashfs or fsck.erofs --extract, never mounted). It is accepted by the rules
systemd-sysext applies to the image it would merge (src/shared/extension-util.c,
src/sysext/sysext.c):
- it carries usr/lib/extension-release.d/extension-release.NAME, NAME being the
  directory's name or the image file's name without ".raw";
- its ID is the exitrd's (the sysroot's os-release ID, or one of its ID_LIKE), or "_any";
  then, when both carry SYSEXT_LEVEL, the levels are equal, else, when the sysroot has a
  VERSION_ID, the extension's VERSION_ID is that one;
- its SYSEXT_SCOPE lists "initrd": the exitrd is an initrd, and an extension without the
  key is meant for "system portable" only;
- its ARCHITECTURE, if given and not "_any", is the sysroot's (from systemd-shutdown's
  ELF header);
- it holds no usr/lib/os-release; only its /usr and /opt are merged.

Why merged when the exitrd is built and not by systemd-sysext at shutdown: merging is
an overlayfs mount, which would need systemd-sysext with its libraries and the overlay
module in the exitrd and something to run it (systemd-shutdown starts no services); and
the extension's file lives on the root file system the exitrd is there to unmount, so a
loop device on it would keep the root busy. Merged at build time, its programs' libraries
are found like every other file's, and a bad extension stops the build, not the
power-off. Its files go in ahead of the sysroot's, as the overlay would show them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bookend import arches, proc
from bookend.archive import ArchiveEntry, EntryKind
from bookend.elf import read_elf
from bookend.errors import CommandError, ConfigError, ElfError
from bookend.features.base import Generated
from bookend.scancache import stamp
from bookend.sysroot import Sysroot, parse_os_release

log = logging.getLogger(__name__)

RELEASE_DIR = "usr/lib/extension-release.d"
MERGED = ("usr", "opt")  # systemd-sysext's hierarchies
SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")
EROFS_MAGIC_OFFSET = 1024
GPT_MAGIC = b"EFI PART"  # at 512: a disk image with partitions (a DDI)
# What unpacks each kind of image in user space, and the Debian package that has it.
UNPACKERS = {"squashfs": ("unsquashfs", "squashfs-tools"), "erofs": ("fsck.erofs", "erofs-utils")}
SHUTDOWN = "/usr/lib/systemd/systemd-shutdown"


@dataclass(frozen=True)
class ExtensionKind:
    """What differs between the extensions checked here: a system extension (merged
    into /usr and /opt) or a configuration extension (into /etc), and which image it is
    for, as the messages name it."""

    release_dir: str  # where its extension-release.NAME is
    prefix: str  # of its release keys: SYSEXT_SCOPE, SYSEXT_LEVEL or CONFEXT_...
    image: str  # "the exitrd", "the initrd"


EXITRD_SYSEXT = ExtensionKind(RELEASE_DIR, "SYSEXT", "the exitrd")
INITRD_SYSEXT = ExtensionKind(RELEASE_DIR, "SYSEXT", "the initrd")
INITRD_CONFEXT = ExtensionKind("etc/extension-release.d", "CONFEXT", "the initrd")


def extension_name(path: Path) -> str:
    """The name systemd-sysext gives an extension: its file name without ".raw"."""
    return path.name.removesuffix(".raw") if path.is_file() else path.name


def image_kind(path: Path) -> str:
    """The image's file system, squashfs or erofs; ConfigError naming the file when it is
    neither."""
    with path.open("rb") as image:
        head = image.read(EROFS_MAGIC_OFFSET + 4)
    if head.startswith(SQUASHFS_MAGIC):
        return "squashfs"
    if head[EROFS_MAGIC_OFFSET:] == EROFS_MAGIC:
        return "erofs"
    if head[512:520] == GPT_MAGIC:
        raise ConfigError(
            f"{path}: a disk image with partitions; give the extension as a directory or a "
            f"plain squashfs or erofs image"
        )
    raise ConfigError(f"{path}: not a system extension (a directory, or a squashfs or erofs image)")


def extension_tree(path: Path, work: Path) -> Path:
    """The extension's tree: the directory itself, or the image unpacked under work.

    An image is unpacked once for each version of it (its size, mtime, ctime and
    inode), so the files the exitrd takes from the tree keep their stamps between builds
    and an unchanged build stays up to date."""
    if path.is_dir():
        return path
    kind = image_kind(path)
    slot = work / hashlib.sha256(os.fsencode(path.absolute())).hexdigest()[:32]
    version = json.dumps(stamp(path.stat()))
    tree = slot / "tree"
    if (slot / "stamp").is_file() and (slot / "stamp").read_text() == version:
        return tree
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=work))
    try:
        _unpack(kind, path, staging / "tree")
        (staging / "stamp").write_text(version)
        shutil.rmtree(slot, ignore_errors=True)
        staging.rename(slot)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree


def _unpack(kind: str, image: Path, destination: Path) -> None:
    """Unpack image into destination; a tool that is missing or fails is named with it."""
    tool, package = UNPACKERS[kind]
    if shutil.which(tool, path=proc.SCRUBBED_PATH) is None:
        raise CommandError(f"{image}: unpacking a {kind} image needs {tool} ({package})")
    if kind == "squashfs":
        # Extended attributes are left out: the exitrd's cpio archive holds none.
        argv: list[str | Path] = [tool, "-no-xattrs", "-no-progress", "-d", destination, image]
    else:
        argv = [tool, f"--extract={destination}", image]
    try:
        proc.run(argv)
    except CommandError as exc:
        raise ConfigError(f"{image}: not a readable {kind} image ({exc})") from None


def check_extension(
    path: Path, tree: Path, sysroot: Sysroot, kind: ExtensionKind = EXITRD_SYSEXT
) -> None:
    """The extension fits the image as systemd-sysext (or systemd-confext) would judge
    it; ConfigError naming the extension and what does not match otherwise."""
    name = extension_name(path)
    release_dir = kind.release_dir
    release_path = tree / release_dir / f"extension-release.{name}"
    if not release_path.is_file():
        what = "system" if kind.prefix == "SYSEXT" else "configuration"
        raise ConfigError(f"{path}: not a {what} extension (no {release_dir}/{release_path.name})")
    if (tree / "usr/lib/os-release").exists():
        raise ConfigError(f"{path}: holds usr/lib/os-release, which an extension may not replace")
    release = parse_os_release(release_path.read_text(errors="replace"))
    host_text = sysroot.read_text("/etc/os-release") or sysroot.read_text("/usr/lib/os-release")
    host = parse_os_release(host_text or "")
    problem = release_mismatch(release, host, _architecture(sysroot), kind)
    if problem:
        raise ConfigError(f"{path}: {release_dir}/{release_path.name}: {problem}")


def release_mismatch(
    release: Mapping[str, str],
    host: Mapping[str, str],
    architecture: str | None,
    kind: ExtensionKind = EXITRD_SYSEXT,
) -> str | None:
    """Why an extension's release fields do not fit the image's os-release, or None."""
    image, scope_key, level_key = kind.image, f"{kind.prefix}_SCOPE", f"{kind.prefix}_LEVEL"
    scopes = release.get(scope_key, "system portable").split()
    if "initrd" not in scopes:
        listed = " ".join(scopes)
        return f"{scope_key} is '{listed}'; {image} is an initrd, so it must list initrd"
    wanted_architecture = release.get("ARCHITECTURE", "")
    if wanted_architecture not in ("", "_any") and architecture not in (None, wanted_architecture):
        return f"ARCHITECTURE={wanted_architecture}, but the sysroot is {architecture}"
    ext_id = release.get("ID", "")
    if ext_id == "_any":
        return None
    host_id = host.get("ID", "")
    if not ext_id or (ext_id != host_id and ext_id not in host.get("ID_LIKE", "").split()):
        return f"ID={ext_id or '(none)'}, but {image}'s os-release says ID={host_id} (or _any)"
    host_level, ext_level = host.get(level_key, ""), release.get(level_key, "")
    if host_level and ext_level:
        if host_level != ext_level:
            return f"{level_key}={ext_level}, but {image}'s is {host_level}"
        return None
    host_version = host.get("VERSION_ID", "")
    ext_version = release.get("VERSION_ID", "")
    if host_version and ext_version != host_version:
        return (
            f"VERSION_ID={ext_version or '(none)'}, but {image}'s os-release says "
            f"VERSION_ID={host_version} (or give {level_key}, or ID=_any)"
        )
    return None


def _architecture(sysroot: Sysroot) -> str | None:
    """The sysroot's architecture as systemd names it; None when it cannot be told."""
    resolved = sysroot.resolve(SHUTDOWN)
    if resolved.st is None or not stat.S_ISREG(resolved.st.st_mode):
        return None
    try:
        info = read_elf(sysroot.host_path(resolved.path))
    except ElfError:
        return None
    arch = arches.by_elf(info.machine, info.elf_class)
    return None if arch is None else arch.systemd


def extension_entries(path: Path, tree: Path, reason: str) -> list[Generated]:
    """The extension's /usr and /opt as entries at their paths, files read from tree;
    anything else in it is left out, as systemd-sysext leaves it, with a warning."""
    ignored = sorted(name for name in os.listdir(tree) if name not in MERGED)
    if ignored:
        log.warning("%s: only /usr and /opt of an extension are merged; left out: %s",
                    path, ", ".join(ignored))  # fmt: skip
    entries: list[Generated] = []
    for top in MERGED:
        if os.path.isdir(tree / top) and not os.path.islink(tree / top):
            entries += _tree_entries(path, tree, top, reason)
    return entries


def _tree_entries(path: Path, tree: Path, top: str, reason: str) -> list[Generated]:
    entries: list[Generated] = []
    for directory, subdirectories, files in os.walk(tree / top):
        subdirectories.sort()
        relative = os.path.relpath(directory, tree)
        entry = _entry(path, Path(directory), "/" + relative)
        if entry is not None:
            entries.append(Generated(entry, reason))
        for name in sorted(files):
            entry = _entry(path, Path(directory) / name, f"/{relative}/{name}")
            if entry is not None:
                entries.append(Generated(entry, reason))
        # os.walk lists a link to a directory among the directories and does not follow it.
        for name in [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]:
            entry = _entry(path, Path(directory) / name, f"/{relative}/{name}")
            if entry is not None:
                entries.append(Generated(entry, reason))
    return entries


def _entry(extension: Path, host: Path, image_path: str) -> ArchiveEntry | None:
    st = host.lstat()
    mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        return ArchiveEntry(image_path, EntryKind.DIRECTORY, mode, mtime=mtime)
    if stat.S_ISREG(st.st_mode):
        return ArchiveEntry(image_path, EntryKind.FILE, mode, source=host, mtime=mtime)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(host)
        return ArchiveEntry(image_path, EntryKind.SYMLINK, 0o777, target=target, mtime=mtime)
    log.warning("%s: %s is not a file, directory or link; left out", extension, image_path)
    return None
