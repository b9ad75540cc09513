"""Replace a file only with a complete one: write beside it, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bookend.errors import ArchiveError


def write_atomically(
    target: Path,
    write: Callable[[BinaryIO], None],
    mode: int = 0o644,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Call write() on a temporary file in target's directory, then rename it to target.

    verify, if given, is called with the complete temporary file before the rename and
    may raise to keep target as it is. On any failure, including Ctrl-C, the temporary
    file is removed and target is left exactly as it was.
    """
    directory = target.parent
    if target.is_dir():
        raise ArchiveError(f"{target}: is a directory, not a file")
    if not directory.is_dir():
        raise ArchiveError(f"{target}: directory {directory} does not exist")
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.bookend-", suffix=".tmp", dir=directory
        )
    except OSError as error:
        raise ArchiveError(
            f"{target}: cannot create a file in {directory}: {error.strerror}"
        ) from error
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        if verify is not None:
            verify(Path(temporary))
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ArchiveError(f"{target}: cannot write: {error.strerror}") from error
        raise
    _sync_directory(directory)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable before we report success."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
