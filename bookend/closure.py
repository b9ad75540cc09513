"""The closure: every file the plan needs, at its original path, and why it is there.

One work queue and one set of paths, as in make-initrd-ng: a request adds a path; a
path adds the symlinks met on the way to it and its parent directories; an added file
is scanned for what it needs (ELF interpreter, DT_NEEDED, .note.dlopen, `#!`), a unit
for its Exec*= programs, a rules file for its RUN/PROGRAM/IMPORT programs. Every entry
records the reason and the entry that pulled it in, so the chain can be printed.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from bookend import firmware, kmodules, microcode, modinfo, udevrules, units
from bookend.archive import ArchiveEntry, EntryKind
from bookend.archive.cpio import MAX_FILE_SIZE, too_big
from bookend.config import Config
from bookend.drivers import DRIVER_CLASSES
from bookend.errors import ConfigError, ElfError, SysrootError
from bookend.exitrd_store import CARRIED, initrd_entries, seal_entries
from bookend.features.base import FeatureContext, Request, RequestKind
from bookend.libsearch import LibrarySearch
from bookend.plan import Plan
from bookend.scancache import ScanCache, stamp
from bookend.secrets import Secrets
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

# Module files are ELF objects but never executed; scanning them finds nothing.
UNSCANNED_PREFIXES = ("/usr/lib/modules/", "/lib/modules/", "/usr/lib/firmware/")


@dataclass(frozen=True)
class ClosureEntry:
    entry: ArchiveEntry
    reason: str  # e.g. "DT_NEEDED of", "feature systemd"
    parent: str | None  # the image path of the entry that pulled this one in
    secret: bool = False  # a host secret the configuration named (bookend.secrets)


@dataclass(frozen=True)
class Closure:
    entries: dict[str, ClosureEntry]
    warnings: tuple[str, ...] = ()
    early: tuple[ArchiveEntry, ...] = ()  # the uncompressed segment ahead of the archive

    def why(self, path: str) -> list[tuple[str, str]]:
        """(path, reason) steps from path back to the request that started it."""
        chain: list[tuple[str, str]] = []
        current: str | None = path
        while current is not None and current in self.entries and current not in dict(chain):
            item = self.entries[current]
            chain.append((current, item.reason))
            current = item.parent
        return chain

    def format_why(self, path: str) -> str:
        """One line: 'lib <- DT_NEEDED of /usr/sbin/x <- feature luks'."""
        chain = self.why(path)
        if not chain:
            return f"{path}: not in the image"
        parts = [chain[0][0]]
        for (_, reason), (next_step, _) in itertools.pairwise(chain):
            parts.append(f"{reason} {next_step}")
        parts.append(chain[-1][1])
        return " <- ".join(parts)

    def archive_entries(self) -> list[ArchiveEntry]:
        return [item.entry for item in self.entries.values()]

    def secrets(self) -> list[str]:
        return [path for path, item in self.entries.items() if item.secret]


def _find_executable(sysroot: Sysroot, name: str) -> str | None:
    """An absolute path as it is, a bare name on the search path systemd uses."""
    if name.startswith("/"):
        return name if sysroot.exists(name) else None
    return next(
        (f"{d}/{name}" for d in units.EXEC_SEARCH_PATH if sysroot.exists(f"{d}/{name}")), None
    )


def _find_generator(sysroot: Sysroot, name: str) -> str | None:
    return next(
        (f"{d}/{name}" for d in units.GENERATOR_DIRS if sysroot.exists(f"{d}/{name}")), None
    )


@dataclass
class _Builder:
    sysroot: Sysroot
    config: Config
    cache: ScanCache
    entries: dict[str, ClosureEntry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scan_queue: deque[str] = field(default_factory=deque)
    units_included: set[str] = field(default_factory=set)
    loaded_sonames: dict[str, str] = field(default_factory=dict)  # soname -> image path
    unresolved: list[tuple[str, str]] = field(default_factory=list)  # (ELF, soname)
    # Image path -> host file of the generated entries copied from outside the sysroot
    # (an exitrd extension's files): scanned as sysroot files are, and found first.
    overlay: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.libraries = LibrarySearch(self.sysroot, self.cache, self.overlay)
        self.secrets = Secrets(self.sysroot)
        # Secrets go in only when named exactly (or through a link named exactly); key
        # files named for LUKS are secret whatever their path.
        self.keyfiles = {self.sysroot.resolve(path).path for path in self.config.keyfiles}
        named = (*self.config.files, *self.config.keyfiles)
        self.named_exactly = {self.sysroot.resolve(path).path for path in named}

    # --- paths -----------------------------------------------------------------

    def add_path(self, path: str, reason: str, parent: str | None, *, recurse: bool = False) -> str:
        """Add path, the links on the way and its parents; return the canonical path."""
        if path in self.overlay:
            return path  # put with the generated entries
        resolved = self.sysroot.resolve(path)
        if resolved.st is None:
            wanted_by = f" {parent}" if parent else ""
            raise SysrootError(f"{self.sysroot.host_path(path)}: missing ({reason}{wanted_by})")
        if not self._admitted(resolved.path, resolved.st):
            return resolved.path
        self.add_parents(resolved.path)
        self._add_final(resolved.path, resolved.st, reason, parent, recurse)
        for link in resolved.links:
            self.add_parents(link.path)
            entry = ArchiveEntry(link.path, EntryKind.SYMLINK, 0o777, target=link.target)
            self.put(entry, "link on the way to", resolved.path)
        return resolved.path

    def put(
        self, entry: ArchiveEntry, reason: str, parent: str | None, *, secret: bool = False
    ) -> bool:
        """Record entry unless its path is taken; the first reason found is kept."""
        if entry.path in self.entries:
            return False
        secret = secret or (entry.source is not None and self._is_secret(entry.path))
        self.entries[entry.path] = ClosureEntry(entry, reason, parent, secret)
        return True

    def _is_secret(self, path: str) -> bool:
        return path in self.keyfiles or self.secrets.is_secret(path)

    def _admitted(self, path: str, st: os.stat_result) -> bool:
        """Whether a file may go in: secrets only when named exactly. Others: a clear
        error for what newc cannot hold."""
        if not stat.S_ISREG(st.st_mode):
            return True
        if st.st_size > MAX_FILE_SIZE:
            raise SysrootError(too_big(self.sysroot.host_path(path), st.st_size))
        if not self._is_secret(path) or path in self.named_exactly:
            return True
        warning = f"{path}: a host secret, left out (name it exactly in files to include it)"
        if warning not in self.warnings:
            self.warnings.append(warning)
        return False

    def add_parents(self, path: str) -> None:
        """Every directory above path, with the sysroot's modes."""
        parts = path.strip("/").split("/")[:-1]
        for depth in range(len(parts), 0, -1):
            directory = "/" + "/".join(parts[:depth])
            if directory in self.entries:
                return  # its own parents were added with it
            st = self.sysroot.lstat(directory)
            mode = stat.S_IMODE(st.st_mode) if st else 0o755
            mtime = int(st.st_mtime) if st else 0
            entry = ArchiveEntry(directory, EntryKind.DIRECTORY, mode, mtime=mtime)
            self.put(entry, "parent directory of", path)
            path = directory

    def _add_final(
        self, path: str, st: os.stat_result, reason: str, parent: str | None, recurse: bool
    ) -> None:
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            entry = ArchiveEntry(path, EntryKind.DIRECTORY, mode, mtime=mtime)
            self.put(entry, reason, parent)
            if recurse:
                for name in self.sysroot.listdir(path):
                    self._add_member(f"{path}/{name}", path)
        elif stat.S_ISREG(st.st_mode):
            source = self.sysroot.host_path(path)
            entry = ArchiveEntry(path, EntryKind.FILE, mode, source=source, mtime=mtime)
            if self.put(entry, reason, parent) and not path.startswith(UNSCANNED_PREFIXES):
                self.scan_queue.append(path)
        else:
            # Device nodes, sockets and fifos in a source tree are never what a request means.
            self.warnings.append(f"{self.sysroot.host_path(path)}: not a file, directory or link")

    def _add_member(self, path: str, directory: str) -> None:
        """One entry of a directory the image takes whole. A link there that leads
        nowhere (99-sysctl.conf -> ../sysctl.conf in a tree without procps) is what the
        sysroot's own boot meets too: a warning naming it, left out, never a failure."""
        if self.sysroot.resolve(path).st is None:
            target = self.sysroot.readlink(path)
            self.warnings.append(
                f"{self.sysroot.host_path(path)}: dangling link to {target}; left out "
                f"(in {directory}, which the image takes whole)"
            )
            return
        self.add_path(path, "in directory", directory, recurse=True)

    # --- what files need -----------------------------------------------------

    def scan(self, path: str) -> None:
        if self.libraries.info_if_elf(path) is not None:
            self._scan_elf(path)
            return
        st = self.entries[path].entry.mode
        if st & 0o111:
            self._scan_shebang(path)

    def _scan_elf(self, path: str) -> None:
        info = self.libraries.info(path)
        if info.interpreter:
            self.add_path(info.interpreter, "PT_INTERP of", path)
        for soname in info.needed:
            found = self.libraries.find(soname, path, info)
            if found is None:
                # ld.so reuses a library the process already loaded under that soname:
                # systemd's private libraries need each other without a RUNPATH of their own.
                self.unresolved.append((path, soname))
                continue
            self.loaded_sonames.setdefault(soname, found)
            self.add_path(found, "DT_NEEDED of", path)
        for note in info.dlopen:
            if note.priority == "suggested":
                continue
            for soname in note.sonames:
                found = self.libraries.find(soname, path, info)
                if found is not None:
                    self.add_path(found, f"dlopen ({note.feature}, {note.priority}) of", path)
                    break
            else:
                self.warnings.append(
                    f"{path}: dlopen {note.feature} ({note.priority}): none of "
                    f"{', '.join(note.sonames)} found; left out"
                )

    def _host(self, path: str) -> Path:
        return self.overlay.get(path) or self.sysroot.host_path(path)

    def _scan_shebang(self, path: str) -> None:
        try:
            with open(self._host(path), "rb") as f:
                first = f.readline(256)
        except OSError as exc:
            raise SysrootError(f"{self._host(path)}: {exc.strerror}") from None
        if not first.startswith(b"#!"):
            return
        words = first[2:].decode(errors="replace").split()
        if not words:
            raise SysrootError(f"{self._host(path)}: '#!' names no interpreter")
        self.add_path(words[0], "#! interpreter of", path)
        if words[0].endswith("/env") and len(words) > 1:
            self.named(RequestKind.EXECUTABLE, words[1], "#! interpreter (via env) of", path, False)

    # --- requests ------------------------------------------------------------

    def named(
        self, kind: RequestKind, name: str, reason: str, parent: str | None, optional: bool
    ) -> None:
        """Find a named executable, unit, generator or rules file, add it and what it runs;
        one not found is an error naming where it was looked for, unless optional."""
        finder = FINDERS[kind]
        path = finder.find(self.sysroot, name)
        if path is None:
            if optional:
                return
            searched = f" in {', '.join(finder.searched)}" if finder.searched else ""
            searched += finder.looked_for(name) if finder.looked_for else ""
            needed_by = f" (needed by {parent})" if parent else ""
            raise SysrootError(
                f"{self.sysroot.root}: {finder.what} {name} not found{searched}{needed_by} "
                f"[{reason}]"
            )
        canonical = self.add_path(path, reason, parent)
        if finder.follow:
            finder.follow(self, name, path, canonical)

    def unit_followers(self, name: str, path: str, canonical: str) -> None:
        """A unit's drop-ins, the programs of the unit and its drop-ins, and the unit
        noted for the dependency links between units (finish_units)."""
        self.units_included.add(name)
        for dropin in units.dropin_paths(self.sysroot, name):
            self.add_path(dropin, "drop-in of", canonical)
        for source in [canonical, *units.dropin_paths(self.sysroot, name)]:
            self._unit_programs(source)

    def _unit_programs(self, path: str) -> None:
        self.generated_unit_programs(path, self.sysroot.read_text(path) or "")

    def generated_unit_programs(self, path: str, text: str) -> None:
        """Follow the programs of a unit or drop-in, from the sysroot or generated."""
        for line in units.exec_lines(text):
            if "%" in line.program or "$" in line.program:
                self.warnings.append(
                    f"{path}: {line.line}: program decided at run time; not followed"
                )
                continue
            try:
                self.named(RequestKind.EXECUTABLE, line.program, "Exec of", path, line.may_fail)
            except SysrootError:
                where = f"{self.sysroot.host_path(path)}: {line.line}"
                raise SysrootError(f"{where}: {line.program} not found in the sysroot") from None

    def rules_programs(self, name: str, path: str, canonical: str) -> None:
        """The programs a rules file runs; one the sysroot lacks is a warning."""
        for program in udevrules.rule_programs(self.sysroot.read_text(path) or ""):
            candidates = (
                [program]
                if program.startswith("/")
                else [f"{d}/{program}" for d in udevrules.UDEV_PROGRAM_DIRS]
            )
            found = next((c for c in candidates if self.sysroot.exists(c)), None)
            if found:
                self.add_path(found, "program run by udev rules", canonical)
            else:
                self.warnings.append(
                    f"{canonical}: runs {program}, which the sysroot lacks; left out"
                )

    def finish_units(self) -> None:
        """Replicate the .wants/.requires links between the included units."""
        for name in sorted(self.units_included):
            for link in units.wants_links(self.sysroot, name, self.units_included):
                self.add_path(link, "dependency link of unit", name)

    def drain(self) -> None:
        while self.scan_queue:
            self.scan(self.scan_queue.popleft())

    def resolve_leftovers(self) -> None:
        """Needs no search path satisfied: met if another object brought that soname."""
        for path, soname in self.unresolved:
            found = self.loaded_sonames.get(soname)
            if found is None:
                raise ElfError(
                    f"{self.sysroot.host_path(path)}: needs {soname}, which is not in its "
                    f"RUNPATH/RPATH, ld.so.conf or the system library directories"
                )
            self.add_path(found, "DT_NEEDED (already loaded) of", path)
        self.unresolved.clear()
        self.drain()


@dataclass(frozen=True)
class _Finder:
    """How the closure finds one kind of named request in the sysroot."""

    what: str  # as the failure names it
    find: Callable[[Sysroot, str], str | None]
    searched: tuple[str, ...] = ()  # directories the failure names
    # What a found one brings along: (builder, name, sysroot path, canonical image path).
    follow: Callable[[_Builder, str, str, str], None] | None = None
    # What else was looked for, said after the directories (a udev rules purpose's names).
    looked_for: Callable[[str], str] | None = None


FINDERS = {
    RequestKind.EXECUTABLE: _Finder("executable", _find_executable),
    RequestKind.UNIT: _Finder("unit", units.find_unit, units.UNIT_DIRS, _Builder.unit_followers),
    RequestKind.GENERATOR: _Finder("generator", _find_generator),
    RequestKind.UDEV_RULES: _Finder(
        "udev rules",
        udevrules.find_rules,
        udevrules.RULES_DIRS,
        _Builder.rules_programs,
        udevrules.looked_for,
    ),
}


def _requests_by_kind(plan: Plan, kind: RequestKind) -> Iterator[Request]:
    return (r for r in plan.requests if r.kind is kind)


def _module_roots(db: kmodules.ModuleDatabase, plan: Plan) -> list[tuple[str, str]]:
    roots: list[tuple[str, str]] = []
    for request in _requests_by_kind(plan, RequestKind.MODULE):
        for name in kmodules.resolve_request(db, request.name, request.reason, request.optional):
            roots.append((name, f"module {request.name} <- {request.reason}"))
    for request in _requests_by_kind(plan, RequestKind.DRIVER_CLASS):
        driver_class = DRIVER_CLASSES[request.name]
        reason = f"driver class {request.name} <- {request.reason}"
        roots += [(n, reason) for n in kmodules.modules_under(db, driver_class.directories)]
        roots += [(n, reason) for m in driver_class.modules for n in db.lookup(m)]
    return roots


def _add_firmware(builder: _Builder, module_path: str, module: str, dirs: list[str]) -> None:
    """The firmware files a module declares; missing ones are a warning, never silent."""
    host = builder.sysroot.host_path(module_path)
    st = builder.sysroot.lstat(module_path)
    assert st is not None  # add_path found it

    def declared() -> list[str]:
        return modinfo.module_info(host).get("firmware", [])

    missing = []
    for name in builder.cache.lookup("modinfo", str(host), stamp(st), declared):
        if firmware.is_pattern(name):
            found = firmware.expand_firmware_pattern(builder.sysroot, name, dirs)
        else:
            single = firmware.find_firmware(builder.sysroot, name, dirs)
            found = [single] if single else []
        if not found:
            missing.append(name)
        for path in found:
            builder.add_path(path, "firmware of module", module_path)
    if missing:
        builder.warnings.append(
            f"module {module}: firmware not in the sysroot: {', '.join(missing)}"
        )


def _add_modules(builder: _Builder, plan: Plan) -> None:
    config = builder.config
    if not any(r.kind in (RequestKind.MODULE, RequestKind.DRIVER_CLASS) for r in plan.requests):
        return  # an image without kernel modules (the exitrd) needs no module index either
    db = kmodules.shared_database(builder.sysroot, config.kver, builder.cache)
    chosen = kmodules.dependency_closure(db, _module_roots(db, plan), config.omit_modules)
    firmware_dirs = firmware.firmware_search_dirs(
        config.kver, firmware.host_firmware_class_path(config.sysfs)
    )
    paths: dict[str, str] = {}
    for choice in chosen:
        parent = paths.get(choice.parent) if choice.parent else None
        paths[choice.name] = builder.add_path(
            f"{db.moddir}/{choice.relpath}", choice.reason, parent
        )
        _add_firmware(builder, paths[choice.name], choice.name, firmware_dirs)
    relpaths = [c.relpath for c in chosen]
    index = kmodules.cached_image_index(builder.sysroot, config.kver, relpaths, builder.cache)
    moddir = builder.sysroot.resolve(db.moddir).path
    for name, content in index.items():
        entry = ArchiveEntry(f"{moddir}/{name}", EntryKind.FILE, 0o644, data=content)
        builder.put(entry, "module index of the included modules (depmod)", None)


def build_closure(config: Config, plan: Plan, cache: ScanCache | None = None) -> Closure:
    """Every entry the plan needs; cache, if given, holds earlier scans of the same files."""
    builder = _Builder(Sysroot(config.sysroot), config, cache or ScanCache(None))
    for item in plan.generated:
        entry = item.entry
        put = builder.put(entry, item.reason, None, secret=item.secret)
        builder.add_parents(entry.path)
        if entry.data is not None and entry.path.startswith(units.UNIT_DIRS):
            builder.generated_unit_programs(entry.path, entry.data.decode())
        if put and entry.source is not None and entry.kind is EntryKind.FILE:
            builder.overlay[entry.path] = entry.source
            builder.scan_queue.append(entry.path)
    _overlay_links(builder, plan)
    for request in plan.requests:
        if request.kind is RequestKind.PATH:
            _add_requested_path(builder, request)
        elif request.kind in FINDERS:
            builder.named(request.kind, request.name, request.reason, None, request.optional)
        builder.drain()  # modules and driver classes come all at once, below
    builder.finish_units()
    _add_modules(builder, plan)
    builder.drain()
    builder.resolve_leftovers()
    if builder.libraries.used_ld_so_cache:
        builder.add_path("/etc/ld.so.cache", "libraries found through ld.so.conf", None)
    builder.warnings += _feature_warnings(config, plan, builder.entries.keys())
    early = microcode.microcode_entries(builder.sysroot, plan.microcode_vendors)
    if plan.microcode_vendors and not early:
        vendors = ", ".join(plan.microcode_vendors)
        builder.warnings.append(f"no early microcode for {vendors} in the sysroot's /lib/firmware")
    return Closure(dict(sorted(builder.entries.items())), tuple(builder.warnings), tuple(early))


def _overlay_links(builder: _Builder, plan: Plan) -> None:
    """A generated link to a file copied from outside the sysroot (libfoo.so.1 ->
    libfoo.so.1.2 in an extension) is found as that file, as the loader would find it."""
    for item in plan.generated:
        entry = item.entry
        if entry.kind is not EntryKind.SYMLINK or entry.target is None:
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), entry.target))
        if target in builder.overlay and builder.entries[entry.path].entry is entry:
            builder.overlay[entry.path] = builder.overlay[target]


def _feature_warnings(config: Config, plan: Plan, paths: Collection[str]) -> list[str]:
    """What the plan's features say of the finished image (a unit that may not start)."""
    context = FeatureContext(config, plan.detection)
    # The exitrd's own feature is in no registry.
    features = [plan.registry[name] for name in plan.features if name in plan.registry]
    return [
        warning
        for feature in features
        if feature.image_warnings
        for warning in feature.image_warnings(context, paths)
    ]


def _add_requested_path(builder: _Builder, request: Request) -> None:
    if not builder.sysroot.exists(request.name):
        if request.optional:
            return
        missing = builder.sysroot.host_path(request.name)
        raise ConfigError(f"{request.reason}: {missing}: no such file or directory")
    builder.add_path(request.name, request.reason, None, recurse=True)


def with_exitrd(initrd: Closure, exitrd: Closure, config: Config) -> Closure:
    """The initrd's closure with what it holds of the exitrd built beside it: the unit
    that leaves the exitrd's digest in /run at boot and, with exitrd_in_initrd, the
    exitrd's tree. The digest is the seal of the exitrd's entries (bookend.exitrd_store),
    so it is known, and printed by `bookend plan --closure`, before anything is written."""
    carried = _with_exitrd_tree(initrd, exitrd) if config.exitrd_in_initrd else initrd
    sealed = seal_entries([*exitrd.early, *exitrd.archive_entries()], config.exitrd_output)
    joined = _with_exitrd_digest(carried, sealed.digest, config.exitrd_in_initrd)
    return replace(joined, entries=dict(sorted(joined.entries.items())))


def _with_exitrd_tree(closure: Closure, exitrd: Closure) -> Closure:
    """closure plus the exitrd's entries under CARRIED, but its device nodes:
    systemd-shutdown mounts /dev over them."""
    reason = "exitrd_in_initrd: the exitrd, copied to /run/initramfs at boot"
    entries = dict(closure.entries)
    entries[CARRIED] = ClosureEntry(ArchiveEntry(CARRIED, EntryKind.DIRECTORY, 0o755), reason, None)
    for path, item in exitrd.entries.items():
        if item.entry.kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE) or path == "/":
            continue
        moved = replace(item.entry, path=CARRIED + path)
        entries[moved.path] = ClosureEntry(moved, reason, None, item.secret)
    return replace(closure, entries=entries)


def _with_exitrd_digest(closure: Closure, digest: str, carried: bool) -> Closure:
    """closure plus the unit that leaves the exitrd's digest in /run at boot (with the
    initrd's systemd-tmpfiles; an initrd without it names no exitrd); carried: and the
    copy of the exitrd's tree to /run/initramfs."""
    tmpfiles = [path for path in closure.entries if path.endswith("bin/systemd-tmpfiles")]
    if not tmpfiles:
        warning = ("the initrd has no systemd-tmpfiles: it names no exitrd, and the "
                   "exitrd loader falls back to the latest one installed")  # fmt: skip
        return replace(closure, warnings=(*closure.warnings, warning))
    reason = "exitrd: the digest of the exitrd built with this initrd"
    entries = dict(closure.entries)
    for path, data, target in initrd_entries(digest, min(tmpfiles), carried):
        if target is not None:
            entry = ArchiveEntry(path, EntryKind.SYMLINK, 0o777, target=target)
        elif data is not None:
            entry = ArchiveEntry(path, EntryKind.FILE, 0o644, data=data)
        elif path in entries:
            continue
        else:
            entry = ArchiveEntry(path, EntryKind.DIRECTORY, 0o755)
        entries[path] = ClosureEntry(entry, reason, None)
    return replace(closure, entries=entries)


def format_closure(closure: Closure) -> str:
    lines = [
        f"{entry.kind.value:9} {entry.mode:04o} {entry.path}  [early microcode segment]"
        for entry in closure.early
    ]
    for path, item in closure.entries.items():
        entry = item.entry
        detail = f" -> {entry.target}" if entry.kind is EntryKind.SYMLINK else ""
        by = f" {item.parent}" if item.parent else ""
        lines.append(f"{entry.kind.value:9} {entry.mode:04o} {path}{detail}  [{item.reason}{by}]")
    return "\n".join(lines)
