"""`bookend check`: static proof that an image can start, short of booting it.

The image is unpacked (safely, without device nodes) into a temporary directory and
looked at as a sysroot, so the questions are answered by the same code that builds
images: paths resolve as a chroot resolves them (bookend.sysroot), libraries are found
as ld.so finds them (bookend.libsearch), units and modules are read as the build reads
them. What is checked:

- /init (or /shutdown, for an exitrd) exists and is executable, with its `#!`
  interpreter if it is a script; /etc/initrd-release is present;
- every ELF file's interpreter and DT_NEEDED libraries are in the image;
- every Exec*= program of every unit is in the image;
- every module's dependencies (per the image's modules.dep) are in the image;
- the root filesystem's module is in the image, or modules.builtin lists it.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bookend import elf, kmodules, modinfo
from bookend.archive.atomic import process_alive
from bookend.errors import BookendError
from bookend.inspect.extract import extract_image
from bookend.inspect.image import printable
from bookend.libsearch import LibrarySearch
from bookend.sysroot import Sysroot
from bookend.units import EXEC_SEARCH_PATH, UNIT_DIRS, exec_lines, logical_lines

RELEASE = "/etc/initrd-release"
# Filesystems the kernel always has, which no module or modules.builtin line names.
ALWAYS_BUILT_IN = {"tmpfs", "ramfs", "rootfs", "proc", "sysfs", "devtmpfs"}
UNIT_SUFFIXES = (".service", ".socket", ".mount", ".swap")  # the types with Exec*= lines


@dataclass
class CheckResult:
    kind: str  # "initrd" or "exitrd"
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # what was looked at

    @property
    def ok(self) -> bool:
        return not self.problems


# Where the image is unpacked, when it fits: in RAM (tmpfs) creating and removing a few
# hundred files and directories cost a tenth of what they cost on a disk other programs
# are writing to (the check of a hostonly initrd: 1.2 s -> 0.6 s on this project's busy
# test machine). The content stays there only while the check runs.
SCRATCH_IN_RAM = (Path("/dev/shm"),)
# The most the unpacked content can be per byte of compressed image, with room to spare
# (zstd and xz make initrds 3-4 times smaller).
UNPACKED_PER_COMPRESSED = 8
SCRATCH_MARGIN = 64 << 20


def scratch_parent(image_size: int, candidates: tuple[Path, ...] = SCRATCH_IN_RAM) -> str | None:
    """A RAM-backed directory with room for the unpacked image, else None (the default
    temporary directory)."""
    needed = image_size * UNPACKED_PER_COMPRESSED + SCRATCH_MARGIN
    for candidate in candidates:
        try:
            fs = os.statvfs(candidate)
        except OSError:
            continue
        if os.access(candidate, os.W_OK | os.X_OK) and fs.f_bavail * fs.f_frsize >= needed:
            return str(candidate)
    return None


SCRATCH_PREFIX = "bookend-check-"


def remove_dead_scratch(parent: str) -> None:
    """Remove what checks killed on the way left in parent (SIGKILL skips the cleanup; in
    RAM it would stay until the next boot): the directories of processes that are gone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name.removeprefix(SCRATCH_PREFIX).partition("-")[0]
        if name.startswith(SCRATCH_PREFIX) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def check_image(image: Path, root_fstype: str | None = None) -> CheckResult:
    """Unpack image into a temporary directory and check it there."""
    try:
        size = image.stat().st_size
    except OSError:
        size = 0  # extract_image says what is wrong with it
    parent = scratch_parent(size)
    remove_dead_scratch(parent or tempfile.gettempdir())
    prefix = f"{SCRATCH_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as scratch:
        root = Path(scratch) / "image"
        report = extract_image(image, root, devices=False, owners=False)
        if os.geteuid() != 0:
            _let_owner_read(root)
        result = check_tree(root, root_fstype)
        result.problems[:0] = [
            f"entry '{printable(name)}': refused: {why}" for name, why in report.refused
        ]
        return result


def _let_owner_read(root: Path) -> None:
    """A directory or file the image makes unreadable must not hide what is in it from us
    (root reads it anyway; as another user, only the owner bits count)."""
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(path, stat.S_IMODE(mode) | (0o700 if stat.S_ISDIR(mode) else 0o400))


def check_tree(root: Path, root_fstype: str | None = None) -> CheckResult:
    """Check an unpacked image."""
    sysroot = Sysroot(root)
    exitrd = sysroot.lstat("/init") is None and sysroot.lstat("/shutdown") is not None
    result = CheckResult("exitrd" if exitrd else "initrd")
    problems = result.problems
    entry_point = "/shutdown" if exitrd else "/init"
    elves = _elf_files(root)
    units: list[str] = _guarded(problems, "units", lambda: _unit_files(sysroot), [])
    databases: dict[str, _Modules] = _guarded(
        problems, "modules", lambda: _module_databases(sysroot), {}
    )
    fstype = root_fstype or _guarded(problems, "/etc/fstab", lambda: _fstab_type(sysroot), None)
    result.counts = {
        "elf": len(elves),
        "units": len(units),
        "modules": sum(len(modules.present) for modules in databases.values()),
    }
    checks: list[tuple[str, Callable[[], list[str]]]] = [
        (entry_point, lambda: _check_entry_point(sysroot, entry_point)),
        (RELEASE, lambda: _check_release(sysroot)),
        ("ELF files", lambda: _check_elves(sysroot, elves)),
        ("units", lambda: _check_units(sysroot, units)),
        ("modules", lambda: _check_modules(sysroot, databases)),
        ("root filesystem", lambda: _check_root_filesystem(databases, fstype)),
    ]
    for what, check in checks:
        problems += _guarded(problems, what, check, [])
    return result


T = TypeVar("T")


def _guarded(problems: list[str], what: str, step: Callable[[], T], default: T) -> T:
    """step's result; a failure on the way (a symlink loop, an unreadable file) is one
    more problem, not the end of the check."""
    try:
        value = step()
    except BookendError as exc:
        problems.append(f"{what}: {exc}")
        return default
    return value


def _check_release(sysroot: Sysroot) -> list[str]:
    if sysroot.read_bytes(RELEASE) is None:
        return [f"{RELEASE}: missing (systemd runs as an initrd only when it is there)"]
    return []


# --- the entry point -------------------------------------------------------------------


def _check_entry_point(sysroot: Sysroot, path: str) -> list[str]:
    resolved = sysroot.resolve(path)
    if resolved.st is None:
        shown = f"{path} -> {resolved.path}" if resolved.links else path
        return [f"{shown}: missing"]
    if not stat.S_ISREG(resolved.st.st_mode):
        return [f"{path}: not a regular file"]
    if not resolved.st.st_mode & 0o111:
        return [f"{path}: not executable (mode {stat.S_IMODE(resolved.st.st_mode):04o})"]
    return _check_script(sysroot, path)


def _check_script(sysroot: Sysroot, path: str) -> list[str]:
    """A `#!` script's interpreter must be in the image too."""
    content = sysroot.read_bytes(path) or b""
    if not content.startswith(b"#!"):
        return []
    words = content[2:].partition(b"\n")[0].split()
    if not words:
        return [f"{path}: its #! line names no interpreter"]
    interpreter = os.fsdecode(words[0])
    if not _is_executable(sysroot, interpreter):
        return [f"{path}: its interpreter {interpreter} is not in the image"]
    return []


def _is_executable(sysroot: Sysroot, path: str) -> bool:
    if not path.startswith("/"):
        return False
    st = sysroot.resolve(path).st
    return st is not None and stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


# --- ELF files -------------------------------------------------------------------------


def _elf_files(root: Path) -> list[str]:
    """Image paths of the regular ELF files, kernel modules aside (they need no loader)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            host = Path(directory, name)
            if ".ko" in name or not stat.S_ISREG(host.lstat().st_mode):
                continue
            if elf.is_elf(host):
                found.append("/" + str(host.relative_to(root)))
    return found


class _ImageLibraries(LibrarySearch):
    """ld.so's search inside the image; ld.so.cache counts, as the loader reads it."""

    def ld_so_conf(self) -> list[str]:
        if self._ld_so_conf is None:
            cached = _ld_so_cache_dirs(self.sysroot.read_bytes("/etc/ld.so.cache") or b"")
            configured = super().ld_so_conf()
            self._ld_so_conf = [*configured, *(d for d in cached if d not in configured)]
        return self._ld_so_conf


def _check_elves(sysroot: Sysroot, elves: list[str]) -> list[str]:
    libraries = _ImageLibraries(sysroot)
    problems = []
    unresolved: list[tuple[str, str]] = []
    resolved: set[str] = set()
    for path in elves:
        try:
            info = libraries.info(path)
            if info.interpreter and not _is_regular(sysroot, info.interpreter):
                problems.append(f"{path}: its interpreter {info.interpreter} is not in the image")
            for soname in info.needed:
                if libraries.find(soname, path, info) is None:
                    unresolved.append((path, soname))
                else:
                    resolved.add(soname)
        except BookendError as exc:
            problems.append(f"{path}: {exc}")
    # ld.so reuses a library the process has already loaded under that soname, so
    # systemd's private libraries need each other without a RUNPATH of their own; the
    # closure counts on that too.
    problems += [
        f"{path}: needs {soname}, which is not in the image"
        for path, soname in unresolved
        if soname not in resolved
    ]
    return problems


def _is_regular(sysroot: Sysroot, path: str) -> bool:
    st = sysroot.resolve(path).st if path.startswith("/") else None
    return st is not None and stat.S_ISREG(st.st_mode)


# glibc's ld.so.cache, new format: a header, then entries whose strings are offsets from
# the start of that header.
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_CACHE_HEADER = struct.Struct("<20sII")  # magic and version, nlibs, len_strings
_CACHE_HEADER_SIZE = 48
_CACHE_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap


def _ld_so_cache_dirs(cache: bytes) -> list[str]:
    """The directories of the libraries an ld.so.cache lists; [] if it is not one."""
    start = cache.find(_CACHE_MAGIC)
    if start < 0 or len(cache) < start + _CACHE_HEADER_SIZE:
        return []
    _, count, _ = _CACHE_HEADER.unpack_from(cache, start)
    directories: list[str] = []
    for index in range(count):
        at = start + _CACHE_HEADER_SIZE + index * _CACHE_ENTRY.size
        if at + _CACHE_ENTRY.size > len(cache):
            break
        value = _CACHE_ENTRY.unpack_from(cache, at)[2]
        end = cache.find(b"\0", start + value)
        if end < 0:
            break
        directory = os.path.dirname(os.fsdecode(cache[start + value : end]))
        if directory.startswith("/") and directory not in directories:
            directories.append(directory)
    return directories


# --- units -----------------------------------------------------------------------------


def _unit_files(sysroot: Sysroot) -> list[str]:
    """Canonical image paths of the unit files and drop-ins in the unit directories."""
    found: dict[str, None] = {}
    for directory in UNIT_DIRS:
        for name in sysroot.listdir(directory):
            path = f"{directory}/{name}"
            if name.endswith(".d"):
                found.update((p, None) for p in _dropins(sysroot, path))
            elif name.endswith(UNIT_SUFFIXES):
                found[sysroot.resolve(path).path] = None
    return [path for path in found if _is_regular(sysroot, path)]


def _dropins(sysroot: Sysroot, directory: str) -> Iterator[str]:
    for name in sysroot.listdir(directory):
        if name.endswith(".conf"):
            yield sysroot.resolve(f"{directory}/{name}").path


def _check_units(sysroot: Sysroot, units: list[str]) -> list[str]:
    problems = []
    for unit in units:
        text = sysroot.read_text(unit) or ""
        for line in exec_lines(text):
            program = line.program
            # A "-" prefix makes systemd skip a missing program; a specifier or a
            # variable is only known at run time.
            if line.may_fail or "%" in program or "$" in program:
                continue
            key = line.line.partition("=")[0].strip()
            found = _find_program(sysroot, program)
            if found is None:
                problems.append(f"{unit}: {key}= runs {program}, which is not in the image")
            else:
                problems += [f"{unit}: {key}=: {p}" for p in _check_script(sysroot, found)]
    return problems


def _find_program(sysroot: Sysroot, program: str) -> str | None:
    """The image path systemd would execute for an Exec*= program, if it is there."""
    candidates = [program] if "/" in program else [f"{d}/{program}" for d in EXEC_SEARCH_PATH]
    return next((path for path in candidates if _is_executable(sysroot, path)), None)


# --- kernel modules --------------------------------------------------------------------


@dataclass(frozen=True)
class _Modules:
    """One kernel's module database in the image, and which of its modules are there."""

    db: kmodules.ModuleDatabase
    present: set[str]
    builtin_aliases: set[str]  # what modules.builtin.modinfo says built-in modules answer to


KERNEL_MODULE_FILES = ("modules.dep", "modules.builtin", "modules.order")


def _module_databases(sysroot: Sysroot) -> dict[str, _Modules]:
    """The image's module database for each kernel it has a /lib/modules/KVER (or, in an
    image of a tree without the /lib link, /usr/lib/modules/KVER) for."""
    databases = {}
    kvers = dict.fromkeys(k for top in kmodules.MODULE_ROOTS for k in sysroot.listdir(top))
    for kver in kvers:
        moddir = kmodules.module_dir(sysroot, kver)
        # Not every directory there is a kernel's: dracut's modsign puts the module
        # signing keys in /lib/modules/keys. A kernel's has depmod's files.
        if not any(sysroot.exists(f"{moddir}/{name}") for name in KERNEL_MODULE_FILES):
            continue
        if sysroot.read_bytes(f"{moddir}/modules.dep") is not None:
            db = kmodules.load_database(sysroot, kver)
        else:
            # No modules.dep: no module can be loaded by name, but modules.builtin may
            # still say what the kernel has.
            db = kmodules.ModuleDatabase(moddir, builtin=kmodules.builtin_modules(sysroot, moddir))
        present = {name for name, rel in db.paths.items() if sysroot.exists(f"{moddir}/{rel}")}
        databases[kver] = _Modules(db, present, _builtin_aliases(sysroot, moddir))
    return databases


def _builtin_aliases(sysroot: Sysroot, moddir: str) -> set[str]:
    """Aliases of built-in modules, from modules.builtin.modinfo ("ext4.alias=fs-ext3")."""
    content = sysroot.read_bytes(f"{moddir}/modules.builtin.modinfo") or b""
    # The same NUL-separated key=value strings as a module's .modinfo, keys prefixed.
    info = modinfo.parse_modinfo(content)
    return {alias for key, values in info.items() if key.endswith(".alias") for alias in values}


def _module_files(sysroot: Sysroot, moddir: str) -> Iterator[str]:
    """Paths of the module files below moddir, relative to it."""
    host = sysroot.host_path(sysroot.resolve(moddir).path)
    for directory, dirs, files in os.walk(host):
        dirs.sort()
        for name in sorted(files):
            if kmodules.MODULE_SUFFIX.search(name):
                yield str(Path(directory, name).relative_to(host))


def _check_modules(sysroot: Sysroot, databases: dict[str, _Modules]) -> list[str]:
    problems = []
    for modules in databases.values():
        db = modules.db
        for name in sorted(modules.present):
            problems += [
                f"{db.moddir}/{db.paths[name]}: needs module {dep}, which is not in the image"
                for dep in db.deps.get(name, [])
                if dep not in modules.present
            ]
        listed = set(db.paths.values())
        problems += [
            f"{db.moddir}/{relpath}: not in modules.dep, so modprobe cannot load it"
            for relpath in _module_files(sysroot, db.moddir)
            if relpath not in listed
        ]
    return problems


def _fstab_type(sysroot: Sysroot) -> str | None:
    """The fstype of the image's own /sysroot line in /etc/fstab, if it has one."""
    for line in logical_lines(sysroot.read_text("/etc/fstab") or ""):
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/sysroot":
            return fields[2]
    return None


def _check_root_filesystem(databases: dict[str, _Modules], fstype: str | None) -> list[str]:
    if not fstype or fstype in ALWAYS_BUILT_IN or fstype in ("auto", "none"):
        return []
    if not databases:
        return [
            f"root filesystem {fstype}: the image has no /lib/modules/KVER, so neither a "
            "module for it nor a modules.builtin that lists it"
        ]
    problems = []
    for modules in databases.values():
        db = modules.db
        # The kernel asks for a filesystem's module as "fs-TYPE".
        names = set(db.lookup(f"fs-{fstype}")) | set(db.lookup(fstype))
        if names & modules.present:
            continue
        if kmodules.normalize(fstype) in db.builtin or f"fs-{fstype}" in modules.builtin_aliases:
            continue
        problems.append(
            f"root filesystem {fstype}: its module is not in {db.moddir} "
            "and modules.builtin does not list it"
        )
    return problems
