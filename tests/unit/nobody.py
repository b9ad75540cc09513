"""Running a piece of a test as an ordinary user (nobody), from a root test process."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


def as_nobody(function: Callable[[], object]) -> object:
    """function's result, computed in a child process that has dropped root.

    A fork rather than a new interpreter: the modules are already loaded, and the
    interpreter itself may live where nobody cannot read it.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with os.fdopen(writer, "wb") as out:
                pickle.dump(function(), out)
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return pickle.loads(data)


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory nobody may write in, as pytest's own are root's alone."""
    with tempfile.TemporaryDirectory(prefix="bookend-nobody-") as scratch:
        os.chmod(scratch, 0o777)
        yield Path(scratch)
