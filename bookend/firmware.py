"""Where the kernel looks for a firmware file, and which file it would load.

The order is the kernel's (drivers/base/firmware_loader/main.c and
Documentation/driver-api/firmware/fw_search_path.rst): the firmware_class.path
parameter if set, then /lib/firmware/updates/KVER, /lib/firmware/updates,
/lib/firmware/KVER and /lib/firmware. A kernel built with CONFIG_FW_LOADER_COMPRESS
also reads NAME.zst (CONFIG_FW_LOADER_COMPRESS_ZSTD) and NAME.xz
(CONFIG_FW_LOADER_COMPRESS_XZ), but only after the plain NAME is missing from every
directory: each suffix is one full pass over the directories, plain first, then .zst,
then .xz. So /lib/firmware/NAME wins over /lib/firmware/updates/NAME.zst.

The image carries the winner at the same path, so the loader in the initrd finds the
same file the booted system would.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from bookend.errors import SysrootError
from bookend.sysroot import Sysroot

FIRMWARE_ROOT = "/lib/firmware"
# In the order the kernel tries them; a suffix is tried only when all earlier ones failed.
COMPRESSED_SUFFIXES = ("", ".zst", ".xz")
GLOB_CHARS = re.compile(r"[*?\[]")


def firmware_search_dirs(kver: str, extra: str | None) -> list[str]:
    """The directories the kernel searches, in its order; extra is firmware_class.path."""
    dirs = [
        f"{FIRMWARE_ROOT}/updates/{kver}",
        f"{FIRMWARE_ROOT}/updates",
        f"{FIRMWARE_ROOT}/{kver}",
        FIRMWARE_ROOT,
    ]
    # The kernel skips an empty path parameter; it is one directory, not a list.
    return [extra, *dirs] if extra else dirs


def find_firmware(sysroot: Sysroot, name: str, dirs: Iterable[str]) -> str | None:
    """The image path of the file the kernel would load for name, or None if none exists.

    Only non-empty regular files count (following symlinks): the kernel's read of a
    directory or an empty file fails and it moves on to the next candidate.
    """
    searched = list(dirs)
    for suffix in COMPRESSED_SUFFIXES:
        for directory in searched:
            # The kernel joins with "/" whatever the directory ends with, and reads a
            # relative firmware_class.path from init's working directory, the root.
            candidate = posixpath.normpath(posixpath.join("/", f"{directory}/{name}{suffix}"))
            if _loadable(sysroot, candidate):
                return candidate
    return None


def expand_firmware_pattern(sysroot: Sysroot, pattern: str, dirs: Iterable[str]) -> list[str]:
    """Image paths for a firmware= value that is a glob, one per firmware name it matches.

    A few drivers declare a family of files this way (brcmfmac: "brcm/brcmfmac*-sdio.*.bin");
    the driver picks one at run time by what the device reports, so every match goes in.
    Each matched name then resolves as find_firmware resolves it.
    """
    searched = list(dirs)
    names = {name for directory in searched for name in _glob_names(sysroot, directory, pattern)}
    found = (find_firmware(sysroot, name, searched) for name in names)
    return sorted({path for path in found if path is not None})


def is_pattern(name: str) -> bool:
    return GLOB_CHARS.search(name) is not None


def host_firmware_class_path(sysfs: Path) -> str | None:
    """The running kernel's firmware_class.path, read from sysfs; None when unset."""
    parameter = sysfs / "module/firmware_class/parameters/path"
    try:
        value = parameter.read_text(errors="surrogateescape")
    except FileNotFoundError:
        return None  # a kernel without the loader, or sysfs not mounted at that path
    except OSError as exc:
        raise SysrootError(f"{parameter}: cannot read: {exc.strerror}") from None
    # sysfs ends a string parameter with one newline of its own.
    value = value.removesuffix("\n")
    return value or None


def _loadable(sysroot: Sysroot, path: str) -> bool:
    st = sysroot.resolve(path).st
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size > 0


def _glob_names(sysroot: Sysroot, directory: str, pattern: str) -> list[str]:
    """Firmware names below directory matching pattern, one component at a time.

    A file matching only with a compression suffix added stands for the name without it.
    """
    *parents, last = pattern.split("/")
    prefixes = [""]
    for part in parents:
        prefixes = [
            posixpath.join(prefix, name)
            for prefix in prefixes
            for name in sysroot.listdir(posixpath.join(directory, prefix))
            if fnmatch.fnmatchcase(name, part)
        ]
    names = []
    for prefix in prefixes:
        for name in sysroot.listdir(posixpath.join(directory, prefix)):
            suffix = next(
                (s for s in COMPRESSED_SUFFIXES if fnmatch.fnmatchcase(name, last + s)), None
            )
            if suffix is not None:
                names.append(posixpath.join(prefix, name.removesuffix(suffix)))
    return names
