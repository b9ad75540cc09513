"""Paths inside the root tree we build from, resolved as a chroot would resolve them.

An absolute symlink target means the sysroot's root, never the build host's, and ".."
never climbs above it. Every symlink met on the way is reported, because the image
must hold the same chain for the same paths to work at boot.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bookend.errors import SysrootError

# Linux gives up after 40 links (ELOOP); a deeper chain is a loop or a mistake.
MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Link:
    """A symlink met while resolving: where it is (image path) and what it says."""

    path: str
    target: str


@dataclass(frozen=True)
class Resolved:
    """Where an image path really leads: the final path and the links on the way."""

    path: str  # canonical path inside the sysroot, no symlinks left
    links: tuple[Link, ...]
    st: os.stat_result | None  # lstat of the final path; None when it does not exist


class Sysroot:
    """One tree, read as it is when first looked at.

    lstat, readlink and resolve answers are remembered: resolving a path stats every component,
    and a build resolves thousands of paths under the same few directories. A tree that
    changes while one build reads it gives an inconsistent image either way.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Strings, not Paths: joining Paths cost more than the lstat calls themselves.
        self._prefix = str(root).rstrip("/")
        self._lstats: dict[str, os.stat_result | None] = {}
        self._links: dict[str, str] = {}
        self._resolved: dict[str, Resolved] = {}

    def host_path(self, path: str) -> Path:
        """The build host's path for an absolute image path."""
        return self.root / path.lstrip("/")

    def host_str(self, path: str) -> str:
        """host_path as a string, for the calls made for every path."""
        return f"{self._prefix}/{path.lstrip('/')}"

    def lstat(self, path: str) -> os.stat_result | None:
        if path in self._lstats:
            return self._lstats[path]
        try:
            st: os.stat_result | None = os.lstat(self.host_str(path))
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            raise SysrootError(f"{self.host_path(path)}: cannot stat: {exc.strerror}") from None
        self._lstats[path] = st
        return st

    def readlink(self, path: str) -> str:
        if path not in self._links:
            self._links[path] = os.readlink(self.host_str(path))
        return self._links[path]

    def resolve(self, path: str) -> Resolved:
        """Follow every symlink in path, staying inside the sysroot."""
        if path not in self._resolved:
            self._resolved[path] = self._resolve(path)
        return self._resolved[path]

    def _resolve(self, path: str) -> Resolved:
        if not path.startswith("/"):
            raise SysrootError(f"{path}: not an absolute path")
        links: list[Link] = []
        done: list[str] = []  # canonical components resolved so far
        pending = path.split("/")  # "" and "." parts are skipped below
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            current = "/" + "/".join([*done, name])
            st = self.lstat(current)
            if st is None:
                rest = [part for part in pending if part not in ("", ".")]
                return Resolved("/" + "/".join([*done, name, *rest]), tuple(links), None)
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            if len(links) >= MAX_SYMLINKS:
                raise SysrootError(f"{self.host_path(path)}: too many levels of symbolic links")
            target = self.readlink(current)
            links.append(Link(current, target))
            if target.startswith("/"):
                done = []
            pending = target.split("/") + pending
        final = "/" + "/".join(done)
        return Resolved(final, tuple(links), self.lstat(final) if done else self.lstat("/"))

    def read_bytes(self, path: str) -> bytes | None:
        """The content of a file inside the sysroot, following links; None if absent."""
        resolved = self.resolve(path)
        if resolved.st is None or not stat.S_ISREG(resolved.st.st_mode):
            return None
        try:
            return self.host_path(resolved.path).read_bytes()
        except OSError as exc:
            raise SysrootError(f"{self.host_path(resolved.path)}: {exc.strerror}") from None

    def read_text(self, path: str) -> str | None:
        content = self.read_bytes(path)
        return None if content is None else content.decode(errors="replace")

    def exists(self, path: str) -> bool:
        return self.resolve(path).st is not None

    def is_dir(self, path: str) -> bool:
        st = self.resolve(path).st
        return st is not None and stat.S_ISDIR(st.st_mode)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory (following links to it); empty if it is absent."""
        resolved = self.resolve(path)
        if resolved.st is None or not stat.S_ISDIR(resolved.st.st_mode):
            return []
        try:
            return sorted(os.listdir(self.host_path(resolved.path)))
        except OSError as exc:
            raise SysrootError(f"{self.host_path(resolved.path)}: {exc.strerror}") from None

    def glob(self, pattern: str) -> list[str]:
        """Image paths matching a glob in one directory (used for ld.so.conf includes)."""
        directory, _, name_pattern = pattern.rpartition("/")
        return [
            f"{directory}/{name}"
            for name in self.listdir(directory or "/")
            if fnmatch.fnmatchcase(name, name_pattern)
        ]


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5) assignments, shell quoting removed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        fields[key.strip()] = value
    return fields
