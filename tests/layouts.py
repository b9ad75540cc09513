"""Fixture sysroots shaped like Fedora and Arch, made from this Debian host's own files.

The files are the ones a Debian build of the host takes (the initrd's and the exitrd's
closure for the features asked for), each put where the other distribution keeps it:
libraries out of /usr/lib/<multiarch> into /usr/lib64 (Fedora) or /usr/lib (Arch),
systemd's private library beside them or in /usr/lib/systemd, kernel modules
compressed (xz, zstd), lvm2's own udev rule names, Arch's merged /usr/sbin, their own
ld.so.conf and os-release, no dracut or mkinitcpio. Programs whose RUNPATH names the
multiarch directory get the layout's directory written into the same bytes (shorter,
NUL-padded), so the loader's search is the layout's and nothing Debian-shaped is
left to find things by accident.

A `packages` hook (PackageDatabase) lets package-database writers (rpm's sqlite rpmdb,
pacman's local database) add their files to a tree later; it writes nothing yet.
"""

from __future__ import annotations

import functools
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from bookend.archive import EntryKind
from bookend.cli import vocabularies
from bookend.closure import build_closure
from bookend.exitrd import make_exitrd_plan
from bookend.plan import make_plan
from bookend.resolve import configure

HOST_MULTIARCH = "/usr/lib/x86_64-linux-gnu"  # this Debian x86-64 host's, never bookend's
# Debian's renamed lvm2 rules, by lvm2's own names as Fedora and Arch ship them.
LVM2_RULE_NAMES = {
    "55-dm.rules": "10-dm.rules",
    "56-lvm.rules": "11-dm-lvm.rules",
    "60-persistent-storage-dm.rules": "13-dm-disk.rules",
    "69-lvm.rules": "69-dm-lvm.rules",
}
RULES_DIR = "/usr/lib/udev/rules.d"
# Module directories the fixture keeps (the storage stack LUKS and LVM stand on): a
# whole generic set would be tens of MB per tree for nothing the tests read.
KEPT_MODULES = ("kernel/drivers/md/", "kernel/crypto/", "kernel/arch/", "kernel/lib/", "kernel/fs/")
# What each layout writes for itself instead of taking Debian's.
DEBIAN_ONLY = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/os-release",
               "/usr/lib/os-release", "/etc/initrd-release",
               f"{RULES_DIR}/80-debian-compat.rules")  # fmt: skip

# (tree, what the layout calls itself): adds a package database; see PackageDatabase.
PackageDatabase = Callable[[Path, "Layout"], None]


@dataclass(frozen=True)
class Layout:
    name: str
    libdir: str  # where Debian's /usr/lib/<multiarch> files go
    links: Mapping[str, str]  # top-level and /usr links: path -> target
    os_release: str
    ld_so_conf: str
    module_suffix: str = ".ko"  # kernel modules compressed as the distribution's kernel has them
    sbin_merged: bool = False  # /usr/sbin is a link to bin (Arch)
    rule_names: Mapping[str, str] = field(default_factory=lambda: LVM2_RULE_NAMES)

    def place(self, path: str) -> str | None:
        """Where Debian's path goes in this layout; None: the layout has its own."""
        if path.startswith(DEBIAN_ONLY) or path in self.links:
            return None
        if path.startswith(("/lib64", "/usr/lib64")):
            return None  # Debian's links to its loader; the layout's is in its libdir
        if path == HOST_MULTIARCH or path.startswith(HOST_MULTIARCH + "/"):
            path = self.libdir + path[len(HOST_MULTIARCH) :]
        if self.sbin_merged and path.startswith("/usr/sbin/"):
            path = "/usr/bin/" + path.removeprefix("/usr/sbin/")
        directory, name = posixpath.split(path)
        if directory == RULES_DIR and name in self.rule_names:
            path = f"{RULES_DIR}/{self.rule_names[name]}"
        return path


FEDORA = Layout(
    name="fedora",
    libdir="/usr/lib64",
    links={"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"},
    os_release='NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\nPRETTY_NAME="Fedora (fixture)"\n',
    ld_so_conf="include ld.so.conf.d/*.conf\n",
    module_suffix=".ko.xz",
)
ARCH = Layout(
    name="arch",
    libdir="/usr/lib",
    links={
        "/bin": "usr/bin",
        "/sbin": "usr/bin",
        "/lib": "usr/lib",
        "/lib64": "usr/lib",
        "/usr/sbin": "bin",
        "/usr/lib64": "lib",
    },
    os_release='NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\nPRETTY_NAME="Arch (fixture)"\n',
    ld_so_conf="# Arch's\ninclude /etc/ld.so.conf.d/*.conf\n",
    module_suffix=".ko.zst",
    sbin_merged=True,
)
LAYOUTS = {layout.name: layout for layout in (FEDORA, ARCH)}


@dataclass(frozen=True)
class HostEntry:
    path: str  # the host's canonical path
    kind: EntryKind
    target: str | None  # a link's


@functools.cache
def host_files(features: tuple[str, ...], kver: str | None = None) -> tuple[HostEntry, ...]:
    """The host's files a generic build with these features and its exitrd take."""
    with tempfile.TemporaryDirectory(prefix="bookend-layouts-") as scratch:
        values: dict[str, object] = {"sysroot": "/", "mode": "generic", "exitrd": True,
                                     "features": list(features), "microcode": False}  # fmt: skip
        if kver:
            values["kver"] = kver
        config = configure(None, values, vocabularies(), config_root=Path(scratch))
        plan = make_plan(config)
        closures = [build_closure(config, plan)]
        exitrd_plan = make_exitrd_plan(config, plan, Path(scratch) / "unpack")
        closures.append(build_closure(config, exitrd_plan))
    found: dict[str, HostEntry] = {}
    for closure in closures:
        for path, item in closure.entries.items():
            entry = item.entry
            from_host = (
                entry.source is not None
                if entry.kind is EntryKind.FILE
                else os.path.lexists(path)
                and (entry.kind is not EntryKind.SYMLINK or os.readlink(path) == entry.target)
            )
            if from_host:
                found[path] = HostEntry(path, entry.kind, entry.target)
    return tuple(found[path] for path in sorted(found))


def _patch_multiarch(data: bytes, libdir: str) -> bytes:
    """Every NUL-terminated string starting with the host's multiarch directory made to
    start with libdir instead, padded with NULs to the same length."""
    prefix = HOST_MULTIARCH.encode()

    def replace(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        new = libdir.encode() + match.group(1) + b"\0"
        return new + b"\0" * (len(old) - len(new))

    return re.sub(re.escape(prefix) + rb"((?:/[^\0]*)?)\0", replace, data)


def _put_file(source: Path, dest: Path, libdir: str) -> None:
    data = source.read_bytes()
    if data.startswith(b"\x7fELF") and HOST_MULTIARCH.encode() in data:
        data = _patch_multiarch(data, libdir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    shutil.copymode(source, dest)


def _put_module(source: Path, dest: Path, suffix: str) -> None:
    """The module compressed as suffix says (Fedora: xz with CRC32, as the kernel's
    decompressor wants; Arch: zstd); depmod then indexes it under that name."""
    data = source.read_bytes()
    if suffix == ".ko.xz":
        data = lzma.compress(data, preset=0, check=lzma.CHECK_CRC32)
    elif suffix == ".ko.zst":
        data = zstandard.ZstdCompressor(level=1).compress(data)
    dest = dest.with_name(dest.name.removesuffix(".ko") + suffix)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    shutil.copymode(source, dest)


def _kept_module(path: str) -> bool:
    parts = path.split("/")  # "", "usr", "lib", "modules", KVER, "kernel", ...
    if parts[1:4] != ["usr", "lib", "modules"] or len(parts) < 7:
        return True
    relative = "/".join(parts[5:])
    return not relative.startswith("kernel/") or relative.startswith(KEPT_MODULES)


def layout_tree(
    layout: Layout,
    dest: Path,
    features: tuple[str, ...] = ("luks", "lvm"),
    packages: PackageDatabase | None = None,
) -> Path:
    """dest made a sysroot of this layout holding what a build with features needs."""
    for link, target in layout.links.items():
        (dest / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (dest / link.lstrip("/")).symlink_to(target)
    kvers = set()
    for entry in host_files(features):
        placed = layout.place(entry.path)
        if placed is None or not _kept_module(entry.path):
            continue
        where = dest / placed.lstrip("/")
        if entry.path.startswith("/usr/lib/modules/"):
            kvers.add(entry.path.split("/")[4])
        if entry.kind is EntryKind.DIRECTORY:
            where.mkdir(parents=True, exist_ok=True)
        elif entry.kind is EntryKind.FILE and entry.path.endswith(".ko"):
            _put_module(Path(entry.path), where, layout.module_suffix)
        elif entry.kind is EntryKind.FILE:
            _put_file(Path(entry.path), where, layout.libdir)
        elif entry.kind is EntryKind.SYMLINK and entry.target is not None:
            _put_link(layout, entry, placed, where)
    for kver in kvers:
        _module_database(dest, kver)
    _write(dest, "/usr/lib/os-release", layout.os_release)
    (dest / "etc/os-release").symlink_to("../usr/lib/os-release")
    _write(dest, "/etc/ld.so.conf", layout.ld_so_conf)
    (dest / "etc/ld.so.conf.d").mkdir(exist_ok=True)
    if packages is not None:
        packages(dest, layout)
    return dest


def _put_link(layout: Layout, entry: HostEntry, placed: str, where: Path) -> None:
    """The link, its target moved as its own path was (Debian's relative links stay
    relative, absolute ones absolute)."""
    assert entry.target is not None
    absolute = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), entry.target))
    moved = layout.place(absolute) or absolute
    if entry.target.startswith("/"):
        target = moved
    else:
        target = posixpath.relpath(moved, posixpath.dirname(placed))
    where.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(where):
        where.symlink_to(target)


def _module_database(root: Path, kver: str) -> None:
    """modules.dep and the other indexes for the modules kept, as depmod writes them
    from the kernel's own lists of what is built in and in what order."""
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        host = Path(f"/usr/lib/modules/{kver}/{name}")
        if host.is_file():
            shutil.copy(host, root / f"usr/lib/modules/{kver}/{name}")
    subprocess.run(["depmod", "-b", str(root), kver], check=True, capture_output=True)


def _write(root: Path, path: str, text: str) -> None:
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
