"""One build at a time per output file: a flock on `.<name>.bookend-lock` beside it.

Two builds of the same image would otherwise race their renames and the exitrd's digest
could end up describing the other build's exitrd. The lock is held for the whole build,
so the second one waits (and says once for whom); builds of other outputs (other
kernels) do not touch it and run in parallel. The lock file is left in place: removing
it would let a third build lock a new file while the second still waits on the old one.
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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ArchiveError(f"{target}: cannot create its lock {path}: {error.strerror}") from None
    try:
        _acquire(fd, target)
        # Whoever waits next reads who holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(fd: int, target: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    log.warning("waiting for another build of %s (pid %s)", target, holder)
    fcntl.flock(fd, fcntl.LOCK_EX)
