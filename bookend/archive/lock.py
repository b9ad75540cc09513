"""One build at a time per output file: a flock on `.<name>.bookend-lock` beside it.

Two builds of the same image would otherwise race their renames and the exitrd's digest
could end up describing the other build's exitrd. The lock is held for the whole build,
so the second one waits (and says once for whom); builds of other outputs (other
kernels) do not touch it and run in parallel. The holder removes the lock file before it
lets go, so nothing is left beside the image; a build that locked a file which was
removed meanwhile sees that its inode is no longer at the path, and locks afresh.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bookend.archive.atomic import remove_leftover_temporaries
from bookend.errors import ArchiveError

log = logging.getLogger(__name__)


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.bookend-lock")


@contextmanager
def locked_outputs(targets: Iterable[Path]) -> Iterator[None]:
    """Hold the lock of every target, in the order given: the initrd's, then the exitrd's.

    A build holds nothing while it waits for its first lock, so two builds can only
    deadlock if each one's exitrd were the other's initrd. Once a target is locked nobody
    else is writing it, so whatever temporary files of it are left are from killed
    builds and are removed.
    """
    with ExitStack() as held:
        for target in dict.fromkeys(targets):
            held.enter_context(_locked(target))
            remove_leftover_temporaries(target, only_dead=False)
        yield


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    path = lock_path(target)
    fd = _acquire(path, target)
    try:
        # Whoever waits next reads who holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: nobody can have locked it in between
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, target: Path) -> int:
    """An fd holding the flock of the file now at path."""
    said = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ArchiveError(
                f"{target}: cannot create its lock {path}: {error.strerror}"
            ) from None
        if not said and not _try_lock(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            log.warning("waiting for another build of %s (pid %s)", target, holder)
            said = True
        fcntl.flock(fd, fcntl.LOCK_EX)  # at once if _try_lock got it
        if _still_at(fd, path):
            return fd
        os.close(fd)  # its holder removed it after we opened it: lock the new one


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_at(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)
