"""Finding a shared library the way the dynamic loader (ld.so) will at boot.

Order, as ld.so(8) gives it: DT_RPATH (only when there is no DT_RUNPATH), DT_RUNPATH,
the directories of ld.so.conf (which the loader knows through ld.so.cache), then the
system's trusted directories. A candidate of another ELF class or machine is skipped,
as the loader skips it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path

from bookend import arches, elf
from bookend.errors import ElfError
from bookend.scancache import ScanCache, stamp
from bookend.sysroot import Sysroot


def trusted_dirs(info: elf.ElfInfo) -> list[str]:
    """The loader's built-in directories for an object of this class and machine:
    Debian's multiarch ones first (bookend.arches), then lib64 for 64-bit (Fedora,
    openSUSE; on Arch a link to lib), then lib."""
    dirs = []
    arch = arches.by_elf(info.machine, info.elf_class)
    if arch:
        dirs += [f"/lib/{arch.multiarch}", f"/usr/lib/{arch.multiarch}"]
    if info.elf_class == 64:
        dirs += ["/lib64", "/usr/lib64"]
    return [*dirs, "/lib", "/usr/lib"]


class LibrarySearch:
    """Library lookups inside one sysroot, with the ELF headers read once per file."""

    def __init__(
        self,
        sysroot: Sysroot,
        cache: ScanCache | None = None,
        overlay: Mapping[str, Path] | None = None,
    ) -> None:
        self.sysroot = sysroot
        self.cache = cache or ScanCache(None)
        # Image paths of files from outside the sysroot (an extension's), over it.
        self.overlay = overlay if overlay is not None else {}
        self._info: dict[str, elf.ElfInfo | None] = {}
        self._ld_so_conf: list[str] | None = None
        self.used_ld_so_cache = False

    def info(self, path: str) -> elf.ElfInfo:
        found = self.info_if_elf(path)
        if found is None:
            raise ElfError(f"{self.sysroot.host_path(path)}: not an ELF file")
        return found

    def info_if_elf(self, path: str) -> elf.ElfInfo | None:
        """The ELF needs of the regular file at path; None when it is no ELF file."""
        if path in self.overlay:
            canonical, host = path, self.overlay[path]
            st: os.stat_result | None = host.stat()
        else:
            resolved = self.sysroot.resolve(path)
            canonical, st = resolved.path, resolved.st
            host = self.sysroot.host_path(canonical)
        if canonical not in self._info:
            if st is None:
                raise ElfError(f"{host}: missing")

            def scan() -> dict[str, object] | None:
                return elf.info_to_json(elf.read_elf(host)) if elf.is_elf(host) else None

            data = self.cache.lookup("elf", str(host), stamp(st), scan)
            self._info[canonical] = None if data is None else elf.info_from_json(data)
        return self._info[canonical]

    def ld_so_conf(self) -> list[str]:
        if self._ld_so_conf is None:
            self._ld_so_conf = elf.parse_ld_so_conf(self.sysroot.read_text, self.sysroot.glob)
        return self._ld_so_conf

    def find(self, soname: str, needed_by: str, info: elf.ElfInfo) -> str | None:
        """The image path the loader would open for soname, or None."""
        if "/" in soname:
            return soname if self._usable(soname, info) else None
        if needed_by not in self.overlay:
            needed_by = self.sysroot.resolve(needed_by).path
        origin = posixpath.dirname(needed_by)
        rpath = [] if info.runpath else list(info.rpath)
        explicit = [elf.expand_origin(d, origin) for d in (*rpath, *info.runpath)]
        trusted = trusted_dirs(info)
        configured = [d for d in self.ld_so_conf() if d not in trusted]
        for directories, via_cache in ((explicit, False), (configured, True), (trusted, False)):
            for directory in directories:
                candidate = posixpath.join(directory, soname)
                if self._usable(candidate, info):
                    self.used_ld_so_cache |= via_cache
                    return candidate
        return None

    def _usable(self, candidate: str, wanted: elf.ElfInfo) -> bool:
        if candidate in self.overlay:
            info = self.info_if_elf(candidate)
            return info is not None and elf.compatible(info, wanted)
        resolved = self.sysroot.resolve(candidate)
        if resolved.st is None or not stat.S_ISREG(resolved.st.st_mode):
            return False
        info = self.info_if_elf(resolved.path)
        return info is not None and elf.compatible(info, wanted)


def loaded_by(sysroot: Sysroot, program: str, soname: str) -> str | None:
    """The path program's loader opens for soname (a library it may dlopen), found as
    ld.so would for that program; None when the sysroot lacks either."""
    libraries = LibrarySearch(sysroot)
    info = libraries.info_if_elf(program) if sysroot.exists(program) else None
    return None if info is None else libraries.find(soname, program, info)
