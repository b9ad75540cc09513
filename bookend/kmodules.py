"""Kernel modules: names and aliases to files, dependencies and softdeps, and the index.

The sysroot's /lib/modules/KVER text databases (modules.dep, modules.alias,
modules.softdep, modules.builtin) say what a name means; the image gets its own
binary index, made by depmod over exactly the included modules, so modprobe in the
initrd finds them by name and alias and knows nothing of modules left out.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bookend.errors import ConfigError, SysrootError
from bookend.proc import SCRUBBED_PATH, run
from bookend.scancache import ScanCache, stamp
from bookend.suggest import did_you_mean
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

MODULE_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")
GLOB_CHARS = re.compile(r"[*?\[]")
# "alias PATTERN MODULE", with any blanks but line ends around the words.
ALIAS_LINE = re.compile(r"^[^\S\n]*alias[^\S\n]+(\S+)[^\S\n]+(\S+)[^\S\n]*$", re.MULTILINE)

# The files depmod writes; the image carries these for the included modules only.
INDEX_FILES = (
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.builtin.modinfo",
    "modules.devname",
    "modules.order",
)
# What depmod reads besides the modules themselves.
DEPMOD_INPUTS = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def normalize(name: str) -> str:
    """Module names treat '-' and '_' alike; kmod compares them with '_'."""
    return name.replace("-", "_")


def module_name(relpath: str) -> str:
    return normalize(MODULE_SUFFIX.sub("", relpath.rsplit("/", 1)[-1]))


@dataclass
class ModuleDatabase:
    """The sysroot's module database for one kernel, as plain tables."""

    moddir: str  # image path, e.g. /lib/modules/KVER
    paths: dict[str, str] = field(default_factory=dict)  # name -> path relative to moddir
    deps: dict[str, list[str]] = field(default_factory=dict)  # name -> names it depends on
    exact_aliases: dict[str, list[str]] = field(default_factory=dict)  # alias -> names
    # literal prefix (what comes before the first glob character) -> (glob pattern, name):
    # a name is matched against the ~23,000 globs only where a prefix of it is theirs
    glob_aliases: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # name -> pre and post names
    weakdeps: dict[str, list[str]] = field(default_factory=dict)  # name -> names (kmod >= 33)
    builtin: set[str] = field(default_factory=set)

    def lookup(self, name: str) -> list[str]:
        """Module names for a name or alias; [] when built in or unknown."""
        wanted = normalize(name)
        if wanted in self.paths:
            return [wanted]
        if wanted in self.builtin:
            return []
        found = set(self.exact_aliases.get(name, [])) | set(self.exact_aliases.get(wanted, []))
        found |= {
            module
            for end in range(len(name) + 1)
            for pattern, module in self.glob_aliases.get(name[:end], ())
            if _glob_matches(name, pattern)
        }
        return sorted(found)

    def add_alias(self, pattern: str, name: str) -> None:
        glob = GLOB_CHARS.search(pattern)
        if glob is None:
            self.exact_aliases.setdefault(pattern, []).append(name)
        else:
            self.glob_aliases.setdefault(pattern[: glob.start()], []).append((pattern, name))

    def is_known(self, name: str) -> bool:
        return normalize(name) in self.builtin or bool(self.lookup(name))


def _glob_matches(name: str, pattern: str) -> bool:
    """fnmatchcase, without compiling a regular expression for the common '*'-only glob.

    A lookup tries a few hundred of modules.alias' globs, and compiling each (fnmatch
    does, then caches) cost more than the rest of a hostonly build's module work.
    """
    if "?" in pattern or "[" in pattern:
        return fnmatch.fnmatchcase(name, pattern)
    if "*" not in pattern:
        return name == pattern
    first, *middle, last = pattern.split("*")
    if len(name) < len(first) + len(last) or not name.startswith(first):
        return False
    if not name.endswith(last):
        return False
    # Each '*'-separated piece, leftmost first, between the fixed start and end.
    at, end = len(first), len(name) - len(last)
    for piece in middle:
        found = name.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def _lines(text: str | None) -> list[str]:
    """The lines of a database file that say something: not blank, not comments."""
    if text is None:
        return []
    stripped = (line.strip() for line in text.splitlines() if not line.startswith("#"))
    return [line for line in stripped if line]


# The text databases load_database reads.
MODULE_ROOTS = ("/lib/modules", "/usr/lib/modules")
DATABASE_FILES = ("modules.dep", "modules.alias", "modules.softdep", "modules.weakdep",
                  "modules.builtin")  # fmt: skip


def shared_database(sysroot: Sysroot, kver: str, cache: ScanCache) -> ModuleDatabase:
    """load_database, once per build (the plan and the closure both need it), and from
    the scan cache while the text databases are unchanged: reading the cached tables
    takes a third of the time parsing ~50,000 lines does."""
    key = ("module database", str(sysroot.root), kver)
    if key not in cache.memory:
        moddir = module_dir(sysroot, kver)
        stamps = [[name, _stamp_or_none(sysroot, f"{moddir}/{name}")] for name in DATABASE_FILES]
        if stamps[0][1] is None:  # no modules.dep: the host's depmod indexes the modules
            stamps.append([moddir, _stamp_or_none(sysroot, moddir)])
        digest = hashlib.sha256(json.dumps([moddir, stamps]).encode()).hexdigest()

        def parsed() -> dict[str, object]:
            return _database_to_json(load_database(sysroot, kver))

        cache.memory[key] = _database_from_json(cache.lookup_file("moddb", digest, parsed))
    db = cache.memory[key]
    assert isinstance(db, ModuleDatabase)
    return db


def _database_to_json(db: ModuleDatabase) -> dict[str, object]:
    data = asdict(db)
    data["builtin"] = sorted(db.builtin)
    return data


def _database_from_json(data: dict[str, Any]) -> ModuleDatabase:
    globs = {
        prefix: [(pattern, name) for pattern, name in entries]
        for prefix, entries in data["glob_aliases"].items()
    }
    return ModuleDatabase(
        moddir=data["moddir"],
        paths=data["paths"],
        deps=data["deps"],
        exact_aliases=data["exact_aliases"],
        glob_aliases=globs,
        softdeps=data["softdeps"],
        weakdeps=data["weakdeps"],
        builtin=set(data["builtin"]),
    )


def module_dir(sysroot: Sysroot, kver: str) -> str:
    """The kernel's module directory: /lib/modules/KVER (through the /lib link on a
    merged-/usr tree), or /usr/lib/modules/KVER where only that exists (kmod >= 31
    built for /usr/lib/modules with no /lib link). Also the image's path."""
    for root in MODULE_ROOTS:
        if sysroot.is_dir(f"{root}/{kver}"):
            return f"{root}/{kver}"
    return f"{MODULE_ROOTS[0]}/{kver}"


def database_texts(sysroot: Sysroot, kver: str) -> dict[str, str | None]:
    """The text databases (DATABASE_FILES) of the sysroot's modules for kver.

    A tree whose packages were unpacked but never configured (debootstrap's first
    stage, an image builder's tree of another architecture) has the modules but no
    modules.dep: then the host's depmod indexes them in a scratch directory (kmod
    reads any architecture's modules), and nothing is written into the sysroot.
    """
    moddir = module_dir(sysroot, kver)
    if sysroot.read_text(f"{moddir}/modules.dep") is not None:
        return {name: sysroot.read_text(f"{moddir}/{name}") for name in DATABASE_FILES}
    relpaths = module_files(sysroot, moddir)
    if not relpaths:
        raise SysrootError(
            f"{sysroot.host_path(moddir)}: no modules.dep and no modules; "
            f"is the kernel {kver} installed in the sysroot?"
        )
    log.warning("%s/modules.dep: missing; indexing %d modules with this host's depmod",
                sysroot.host_path(moddir), len(relpaths))  # fmt: skip
    index = image_index(sysroot, kver, relpaths)
    return {name: index[name].decode(errors="replace") if name in index else None
            for name in DATABASE_FILES}  # fmt: skip


def module_files(sysroot: Sysroot, moddir: str) -> list[str]:
    """moddir-relative paths of the module files under moddir, sorted."""
    top = sysroot.host_path(sysroot.resolve(moddir).path)
    found = []
    for directory, _, files in os.walk(top):
        for name in files:
            if MODULE_SUFFIX.search(name):
                found.append(os.path.relpath(os.path.join(directory, name), top))
    return sorted(found)


def load_database(sysroot: Sysroot, kver: str) -> ModuleDatabase:
    moddir = module_dir(sysroot, kver)
    texts = database_texts(sysroot, kver)
    dep_text = texts["modules.dep"]
    if dep_text is None:
        raise SysrootError(f"{sysroot.host_path(moddir)}/modules.dep: depmod wrote none")
    db = ModuleDatabase(moddir)
    # Each path's name once: modules.dep names most modules many times over.
    names: dict[str, str] = {}

    def name_of(relpath: str) -> str:
        if relpath not in names:
            names[relpath] = module_name(relpath)
        return names[relpath]

    for line in _lines(dep_text):
        target, _, needs = line.partition(":")
        name = name_of(target)
        db.paths[name] = target
        db.deps[name] = [name_of(dep) for dep in needs.split()]
    # One regular expression over the whole file: the biggest table, ~50,000 lines.
    for pattern, name in ALIAS_LINE.findall(texts["modules.alias"] or ""):
        db.add_alias(pattern, normalize(name))
    for line in _lines(texts["modules.softdep"]):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "softdep":
            softdeps = [p for p in parts[2:] if p not in ("pre:", "post:")]
            db.softdeps.setdefault(normalize(parts[1]), []).extend(softdeps)
    # modules.weakdep: "weakdep NAME MODULES...", written by depmod for kernels >= 6.8.
    for line in _lines(texts["modules.weakdep"]):
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "weakdep":
            db.weakdeps.setdefault(normalize(parts[1]), []).extend(parts[2:])
    db.builtin = {module_name(line) for line in _lines(texts["modules.builtin"])}
    return db


def builtin_modules(sysroot: Sysroot, moddir: str) -> set[str]:
    """The names modules.builtin lists: modules the kernel has built in."""
    lines = _lines(sysroot.read_text(f"{moddir}/modules.builtin"))
    return {module_name(line) for line in lines}


@dataclass(frozen=True)
class ModuleChoice:
    """A module to include, and which module or request pulled it in."""

    name: str
    relpath: str
    reason: str
    parent: str | None  # the module that needs it; None for a direct request


def resolve_request(db: ModuleDatabase, name: str, source: str, optional: bool) -> list[str]:
    """Module names a request means; a clear error for a name nothing matches."""
    found = db.lookup(name)
    if found or normalize(name) in db.builtin or optional:
        return found
    raise ConfigError(
        f"{source}: no kernel module or alias '{name}' in {db.moddir}"
        + did_you_mean(normalize(name), sorted(db.paths))
    )


def dependency_closure(
    db: ModuleDatabase, roots: Iterable[tuple[str, str]], omit: Iterable[str] = ()
) -> list[ModuleChoice]:
    """Roots (name, reason) and every hard, soft and weak dependency, each once.

    Names matching an omit glob are left out wherever they appear, as dracut's
    omit_drivers: the user asked for that, even if a dependency breaks.
    """
    omitted = [normalize(pattern) for pattern in omit]
    chosen: dict[str, ModuleChoice] = {}
    queue: deque[tuple[str, str, str | None]] = deque((n, r, None) for n, r in roots)
    while queue:
        name, reason, parent = queue.popleft()
        if name in chosen or any(fnmatch.fnmatchcase(name, p) for p in omitted):
            continue
        chosen[name] = ModuleChoice(name, db.paths[name], reason, parent)
        queue += [(dep, "dependency of module", name) for dep in db.deps.get(name, [])]
        # Soft and weak dependencies are wishes, not needs: an alias with no module is fine.
        for soft in db.softdeps.get(name, []):
            queue += [(dep, "softdep of module", name) for dep in db.lookup(soft)]
        for weak in db.weakdeps.get(name, []):
            queue += [(dep, "weakdep of module", name) for dep in db.lookup(weak)]
    return list(chosen.values())


def modules_under(db: ModuleDatabase, directories: Iterable[str]) -> list[str]:
    """Names of the modules whose files lie below any of these moddir-relative directories."""
    prefixes = tuple(directories)
    return sorted(name for name, relpath in db.paths.items() if relpath.startswith(prefixes))


def cached_image_index(
    sysroot: Sysroot, kver: str, relpaths: list[str], cache: ScanCache
) -> dict[str, bytes]:
    """image_index, from the scan cache when depmod would be given the same inputs.

    Those are the module files, depmod's other inputs and depmod itself; depmod's
    output depends on nothing else.
    """
    moddir = module_dir(sysroot, kver)
    inputs = [f"{moddir}/{relpath}" for relpath in sorted(relpaths)]
    inputs += [f"{moddir}/{name}" for name in DEPMOD_INPUTS]
    stamps: list[object] = [[path, _stamp_or_none(sysroot, path)] for path in inputs]
    depmod = shutil.which("depmod", path=SCRUBBED_PATH)
    stamps.append(["depmod", depmod, stamp(os.stat(depmod)) if depmod else None])
    key = hashlib.sha256(json.dumps(stamps).encode()).hexdigest()

    def index() -> dict[str, str]:
        files = image_index(sysroot, kver, relpaths)
        return {name: base64.b64encode(content).decode() for name, content in files.items()}

    stored = cache.lookup_file("depmod", key, index)
    return {name: base64.b64decode(content) for name, content in stored.items()}


def _stamp_or_none(sysroot: Sysroot, path: str) -> list[int] | None:
    st = sysroot.resolve(path).st
    return None if st is None else stamp(st)


def image_index(sysroot: Sysroot, kver: str, relpaths: list[str]) -> dict[str, bytes]:
    """depmod's index files for exactly these modules: file name -> content.

    depmod runs over a scratch tree of symlinks to the sysroot's modules (depmod
    follows them), so nothing but the small index files is written anywhere.
    """
    import tempfile  # here: only a build that misses the scan cache runs depmod

    with tempfile.TemporaryDirectory(prefix="bookend-depmod-") as scratch:
        moddir = Path(scratch) / "lib/modules" / kver
        moddir.mkdir(parents=True)
        for relpath in relpaths:
            link = moddir / relpath
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(
                sysroot.host_path(sysroot.resolve(f"{module_dir(sysroot, kver)}/{relpath}").path)
            )
        included = set(relpaths)
        for name in DEPMOD_INPUTS:
            content = sysroot.read_bytes(f"{module_dir(sysroot, kver)}/{name}")
            if content is not None and name == "modules.order":
                kept = [line for line in content.splitlines() if line.decode() in included]
                content = b"".join(line + b"\n" for line in kept)
            if content is not None:
                (moddir / name).write_bytes(content)
        run(["depmod", "-b", scratch, kver])
        return {
            name: (moddir / name).read_bytes()
            for name in INDEX_FILES
            if os.path.exists(moddir / name)
        }
