"""Replace a file only with a complete one: write beside it, fsync, rename.

The temporary file is `.<name>.bookend-tmp.<pid>` in the target's directory, made with
O_EXCL, so that one a killed build left behind is recognisable as ours and as dead: the
next write for the same target removes those whose process is gone.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bookend.errors import ArchiveError

TEMPORARY_MARK = ".bookend-tmp."


def temporary_path(target: Path, pid: int) -> Path:
    return target.with_name(f".{target.name}{TEMPORARY_MARK}{pid}")


def leftover_temporaries(target: Path) -> list[Path]:
    """Temporary files of earlier writes of target, by any process, alive or not."""
    prefix = f".{target.name}{TEMPORARY_MARK}"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [
        target.with_name(name)
        for name in sorted(names)
        if name.startswith(prefix) and name[len(prefix) :].isdigit()
    ]


def remove_leftover_temporaries(target: Path, *, only_dead: bool = True) -> None:
    """Remove what killed writes of target left; with only_dead, spare live processes'.

    A build holding target's lock passes only_dead=False: no other build can be writing
    it, so every leftover is stale, even one whose pid a new process has since taken.
    """
    for path in leftover_temporaries(target):
        pid = int(path.name.rsplit(".", 1)[1])
        if only_dead and process_alive(pid) and pid != os.getpid():
            continue
        path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass
class Staged:
    """A complete, synced temporary file waiting to replace target."""

    target: Path
    temporary: Path

    def commit(self) -> None:
        try:
            os.replace(self.temporary, self.target)
        except OSError as error:
            self.discard()
            raise ArchiveError(f"{self.target}: cannot replace: {error.strerror}") from error
        _sync_directory(self.target.parent)

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


@contextmanager
def staged_file(
    target: Path,
    write: Callable[[BinaryIO], None],
    mode: int = 0o644,
    verify: Callable[[Path], None] | None = None,
    size_hint: int = 0,
) -> Iterator[Staged]:
    """The complete temporary file for target; removed on leaving unless committed.

    verify, if given, is called with the complete temporary file and may raise to keep
    target as it is. On any failure, including Ctrl-C, the temporary file is removed and
    target is left exactly as it was. size_hint (bytes) is what the error for a full
    file system says the image needs.
    """
    _check_target(target)
    remove_leftover_temporaries(target)
    staged = Staged(target, _create_temporary(target))
    try:
        _fill(staged, write, mode, size_hint)
        if verify is not None:
            verify(staged.temporary)
        yield staged
    finally:
        staged.discard()  # a no-op once committed: the name is gone


def write_atomically(
    target: Path,
    write: Callable[[BinaryIO], None],
    mode: int = 0o644,
    verify: Callable[[Path], None] | None = None,
    size_hint: int = 0,
) -> None:
    """Call write() on a temporary file in target's directory, then rename it to target."""
    with staged_file(target, write, mode, verify, size_hint) as staged:
        staged.commit()


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise ArchiveError(f"{target}: is a directory, not a file")
    if not target.parent.is_dir():
        raise ArchiveError(f"{target}: directory {target.parent} does not exist")


def _create_temporary(target: Path) -> Path:
    temporary = temporary_path(target, os.getpid())
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise ArchiveError(
            f"{target}: cannot create a file in {target.parent}: {error.strerror}"
        ) from error
    os.close(fd)
    return temporary


def _fill(staged: Staged, write: Callable[[BinaryIO], None], mode: int, size_hint: int) -> None:
    try:
        with open(staged.temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArchiveError(_no_space(staged, size_hint)) from error
        raise ArchiveError(f"{staged.target}: cannot write: {error.strerror}") from error


def _no_space(staged: Staged, size_hint: int) -> str:
    """What a full file system stopped; the size is at least what was written by then."""
    try:
        written = staged.temporary.stat().st_size
    except OSError:
        written = 0
    needed = math.ceil(max(size_hint, written) / 1e6)
    return f"no space left on device writing {staged.target} (needs ~{needed} MB)"


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable before we report success."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
