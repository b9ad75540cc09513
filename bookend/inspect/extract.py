"""`bookend extract`: unpack an image into a directory without ever writing outside it.

An image is untrusted input. Every entry is created through directory file descriptors
opened with O_NOFOLLOW, one path component at a time, so the kernel never follows a
symlink on our behalf. A symlink met on the way (one an earlier entry planted, or one
already in the directory) is resolved by us *inside* the directory, as the kernel
resolves it inside its rootfs when it unpacks the image at boot: an entry `a -> /etc`
followed by `a/passwd` writes DIR/etc/passwd, never /etc/passwd. Names with ".." are
refused; absolute names are taken relative to the directory, as the kernel does.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bookend.archive.reader import Body, Header, read_image
from bookend.errors import ArchiveError
from bookend.inspect.image import HardlinkKey, clean_path, hardlink_key, kind_of, open_image

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40  # as the kernel's ELOOP limit
_ENTRY_ERRORS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                 errno.ELOOP, errno.EMLINK, errno.EILSEQ}  # fmt: skip


@dataclass
class ExtractReport:
    extracted: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name as stored, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why), on purpose
    missing: list[str] = field(default_factory=list)  # requested paths not in the image

    @property
    def ok(self) -> bool:
        return not self.refused and not self.missing


class Refused(Exception):
    """This entry cannot be written inside the directory; the message says why."""


def extract_image(
    image: Path,
    directory: Path,
    paths: Sequence[str] = (),
    *,
    devices: bool | None = None,
    owners: bool | None = None,
) -> ExtractReport:
    """Unpack image (or only the entries at or below paths) into directory.

    devices and owners default to whether we are root: only root may create device
    nodes and give files away. A truncated or corrupt image raises ArchiveError, after
    the entries before the damage have been written.
    """
    is_root = os.geteuid() == 0
    wanted = {clean_path(path): False for path in paths}
    report = ExtractReport()
    with open_image(image) as raw, _Tree(directory) as tree:
        tree.devices = is_root if devices is None else devices
        tree.owners = is_root if owners is None else owners
        try:
            for header, body in read_image(raw, str(image)):
                _extract_one(tree, header, body, wanted, report)
        finally:
            tree.finish()  # also after damage: what was written gets its modes
    report.missing = [path for path, found in wanted.items() if not found]
    return report


def _extract_one(
    tree: _Tree, header: Header, body: Body, wanted: dict[str, bool], report: ExtractReport
) -> None:
    path = clean_path(header.path)
    if wanted and not _select(path, wanted):
        return
    try:
        skipped = tree.add(header, path, body)
    except Refused as why:
        report.refused.append((header.path, str(why)))
        return
    if skipped is None:
        report.extracted += 1
    elif skipped:
        report.skipped.append((path, skipped))


def _select(path: str, wanted: dict[str, bool]) -> bool:
    for prefix in wanted:
        if prefix == "." or path == prefix or path.startswith(prefix + "/"):
            wanted[prefix] = True
            return True
    return False


def prepare_directory(directory: Path) -> None:
    """The target directory, made if missing; its parent must exist."""
    try:
        directory.mkdir(mode=0o755)
    except FileExistsError:
        if not directory.is_dir():
            raise ArchiveError(f"{directory}: exists and is not a directory") from None
    except OSError as exc:
        raise ArchiveError(f"{directory}: cannot create: {exc.strerror}") from None


class _Tree:
    """The target directory, and what has been written into it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.devices = False
        self.owners = False
        self.fd = -1
        self.links: dict[HardlinkKey, list[str]] = {}
        # Directory modes and times are set last: a read-only directory must still take
        # its entries, and writing them would change its mtime.
        self.directories: list[tuple[list[str], int, int]] = []

    def __enter__(self) -> _Tree:
        prepare_directory(self.directory)
        try:
            self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArchiveError(f"{self.directory}: cannot open: {exc.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def add(self, header: Header, path: str, body: Body) -> str | None:
        """Write one entry; None when written, else why it was left out ("" for the root)."""
        parts = path.split("/")
        if ".." in parts:
            raise Refused("its name climbs out of the directory with '..'")
        if path == ".":
            return ""  # the root: the target directory itself is left as it is
        kind = kind_of(header.mode)
        if kind in ("chardev", "blockdev") and not self.devices:
            return "device node: only root can create one"
        if kind in ("socket", "unknown"):
            return f"{kind}: nothing can use one from an archive"
        try:
            with self._parent(parts[:-1], create=True) as parent:
                self._write(parent, parts, header, body, kind)
        except OSError as exc:
            # Errors a name or a target can cause refuse the entry; the others (a full
            # disk, a read-only directory) stop the extraction.
            if exc.errno in _ENTRY_ERRORS:
                raise Refused(exc.strerror or str(exc)) from None
            raise ArchiveError(
                f"{self.directory / path}: cannot create: {exc.strerror or exc}"
            ) from None
        return None

    def finish(self) -> None:
        for parts, mode, mtime in reversed(self.directories):
            try:
                with self._parent(parts[:-1], create=False) as parent:
                    # O_NOFOLLOW: a later entry may have put a symlink in its place.
                    fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
            except (Refused, OSError):
                continue  # replaced by a later entry: nothing of ours to set
            try:
                os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    @contextmanager
    def _parent(self, parts: Sequence[str], *, create: bool) -> Iterator[int]:
        fd = self._open_dir(parts, create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, parts: Sequence[str], create: bool) -> int:
        """The directory at parts, with every symlink on the way resolved inside the tree."""
        stack = [os.dup(self.fd)]
        pending = list(parts)
        links = 0
        try:
            while pending:
                name = pending.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                opened = _open_component(stack[-1], name, create)
                if isinstance(opened, int):
                    stack.append(opened)
                    continue
                links += 1
                if links > MAX_LINKS:
                    raise Refused("too many levels of symbolic links on its way")
                if opened.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending[:0] = opened.split("/")
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    def _write(self, parent: int, parts: list[str], header: Header, body: Body, kind: str) -> None:
        name = parts[-1]
        key = hardlink_key(header)
        if kind == "dir":
            _make_directory(parent, name)
            self.directories.append((parts, stat.S_IMODE(header.mode), header.mtime))
        elif key is not None and key in self.links:
            self._link(parent, name, self.links[key], body)
        else:
            _clear(parent, name)
            self._create(parent, name, header, body, kind)
            if key is not None:
                self.links[key] = parts
        # The owner first: chown clears the set-user-ID bit.
        if self.owners:
            os.chown(name, header.uid, header.gid, dir_fd=parent, follow_symlinks=False)
        if kind == "dir":
            return
        if kind != "link":
            # Linux cannot chmod a symlink; name is what we have just made, not one.
            os.chmod(name, stat.S_IMODE(header.mode), dir_fd=parent)
        os.utime(name, (header.mtime, header.mtime), dir_fd=parent, follow_symlinks=False)

    def _create(self, parent: int, name: str, header: Header, body: Body, kind: str) -> None:
        if kind == "file":
            fd = os.open(name, FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent)
            _write_body(fd, body)
        elif kind == "link":
            target = body.read().decode("utf-8", "surrogateescape")
            if "\0" in target:
                raise Refused("its symlink target holds a NUL byte")
            os.symlink(target, name, dir_fd=parent)
        elif kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=parent)
        else:
            node = stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK
            try:
                device = os.makedev(*header.rdev)
            except (OverflowError, ValueError):
                raise Refused(f"device number {header.rdev} is out of range") from None
            os.mknod(name, node | 0o600, device, dir_fd=parent)

    def _link(self, parent: int, name: str, first: list[str], body: Body) -> None:
        """A later link of a hard-link group: the same file, and the body written into it."""
        _clear(parent, name)
        if not self._link_to_regular(first, parent, name):
            # The first link is gone or was replaced, perhaps by a FIFO or a device node
            # that writing would block on or write through: a file of its own instead.
            os.close(os.open(name, FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent))
        # Opened without O_TRUNC, as the kernel opens a link it has made; O_NONBLOCK and
        # the check after it are for a file swapped under us, which must not be written.
        fd = os.open(name, FILE_FLAGS | os.O_NONBLOCK, dir_fd=parent)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused("its hard link leads to something that is not a regular file")
        _write_body(fd, body)

    def _link_to_regular(self, first: list[str], parent: int, name: str) -> bool:
        """Link name to the group's first path, if that is still a regular file."""
        try:
            with self._parent(first[:-1], create=False) as source:
                st = os.stat(first[-1], dir_fd=source, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    return False
                os.link(first[-1], name, src_dir_fd=source, dst_dir_fd=parent,
                        follow_symlinks=False)  # fmt: skip
        except (Refused, FileNotFoundError, NotADirectoryError):
            return False
        return True


def _open_component(parent: int, name: str, create: bool) -> int | str:
    """Open directory name in parent without following it: its fd, or a symlink's target."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o755, dir_fd=parent)
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
        return os.readlink(name, dir_fd=parent)
    raise Refused(f"{name} on its way is not a directory")


def _make_directory(parent: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(name, 0o700, dir_fd=parent)
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, 0o700, dir_fd=parent)


def _clear(parent: int, name: str) -> None:
    """Remove what is at name, as the kernel does before it writes a non-directory."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise Refused("a directory of that name is already there and not empty") from None
        raise


def _write_body(fd: int, body: Body) -> None:
    with os.fdopen(fd, "wb") as out:
        for chunk in body.chunks():
            out.write(chunk)
