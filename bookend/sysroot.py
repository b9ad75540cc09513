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
from pathlib import Path, PurePosixPath

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
    def __init__(self, root: Path) -> None:
        self.root = root

    def host_path(self, path: str) -> Path:
        """The build host's path for an absolute image path."""
        return self.root / path.lstrip("/")

    def lstat(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(self.host_path(path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            raise SysrootError(f"{self.host_path(path)}: cannot stat: {exc.strerror}") from None

    def resolve(self, path: str) -> Resolved:
        """Follow every symlink in path, staying inside the sysroot."""
        if not path.startswith("/"):
            raise SysrootError(f"{path}: not an absolute path")
        links: list[Link] = []
        done: list[str] = []  # canonical components resolved so far
        pending = [c for c in PurePosixPath(path).parts[1:]]
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
                return Resolved("/" + "/".join([*done, name, *pending]), tuple(links), None)
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            if len(links) >= MAX_SYMLINKS:
                raise SysrootError(f"{self.host_path(path)}: too many levels of symbolic links")
            target = os.readlink(self.host_path(current))
            links.append(Link(current, target))
            target_parts = list(PurePosixPath(target).parts)
            if target.startswith("/"):
                done = []
                target_parts = target_parts[1:]
            pending = target_parts + pending
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
