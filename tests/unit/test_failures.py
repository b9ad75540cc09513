"""Failures while writing leave the old image as it was and nothing half-written behind.

A source that vanishes or changes is tested in process, between closure and archive:
as root, chmod 000 does not stop a read, and a file swapped by another process while the
writer streams would be a race the test could lose. Build the closure, change the tree,
then write: deterministic, and the same code path the writer takes mid-build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from bookend.archive import (
    ArchiveEntry,
    Compression,
    EntryKind,
    open_compressor,
    write_atomically,
    write_cpio,
)
from bookend.archive.atomic import remove_leftover_temporaries, temporary_path
from bookend.archive.lock import lock_path, locked_outputs
from bookend.build import write_image
from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.errors import ArchiveError
from bookend.features.base import Request, RequestKind
from bookend.plan import Plan
from tests.tmpfs import small_tmpfs
from tests.unit.conftest import load_config

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def write_new(out: BinaryIO) -> None:
    out.write(b"new")


def test_the_temporary_file_is_named_for_target_and_pid(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    seen: list[list[str]] = []

    def write(out: BinaryIO) -> None:
        seen.append(sorted(os.listdir(tmp_path)))
        out.write(b"image")

    write_atomically(target, write)
    assert seen == [[f".initrd.img.bookend-tmp.{os.getpid()}"]]
    assert os.listdir(tmp_path) == ["initrd.img"]


def test_leftovers_of_dead_builds_are_removed_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    dead = temporary_path(target, dead_pid())
    live = temporary_path(target, 1)  # init never exits
    other = temporary_path(tmp_path / "exitrd.img", dead_pid())
    for path in (dead, live, other):
        path.write_bytes(b"half an image")
    write_atomically(target, write_new)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "initrd.img"])
    # Whoever holds the lock knows nobody else is writing: pid 1's file is stale too.
    with locked_outputs([target]):
        pass
    assert sorted(os.listdir(tmp_path)) == sorted([other.name, "initrd.img"])


def test_only_names_of_the_exact_form_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    keep = [".initrd.img.bookend-tmp.x1", ".initrd.img.bookend-tmp.", "initrd.img.bookend-tmp.9"]
    for name in keep:
        (tmp_path / name).write_bytes(b"")
    remove_leftover_temporaries(target, only_dead=False)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real ENOSPC from the kernel, not a mock."""
    with small_tmpfs(tmp_path, "2m") as mountpoint:
        yield mountpoint


@pytest.mark.parametrize("compression", list(Compression))
def test_a_full_file_system_keeps_the_old_image_and_says_how_much(
    small_fs: Path, compression: Compression
) -> None:
    """Through every compressor: none of them may turn the error into something else."""
    target = small_fs / "initrd.img"
    target.write_bytes(b"old image")

    def write(out: BinaryIO) -> None:
        with open_compressor(compression, out, None) as stream:
            for _ in range(3):
                stream.write(os.urandom(1 << 20))  # random: no compressor makes it fit

    with pytest.raises(ArchiveError) as error:
        write_atomically(target, write, size_hint=3 << 20)
    assert str(error.value) == f"no space left on device writing {target} (needs ~4 MB)"
    assert target.read_bytes() == b"old image"
    assert os.listdir(small_fs) == ["initrd.img"]


# --- a source that changes between the closure and the archive --------------------------


def fixture_closure(root_tree: Path, output: Path) -> tuple[Config, Closure]:
    files = root_tree / "etc/data"
    files.mkdir()
    (files / "a.conf").write_text("a\n")
    (files / "b.conf").write_bytes(os.urandom(3 << 20))  # bigger than one copy chunk
    config = load_config(None, {"sysroot": str(root_tree), "output": str(output),
                                "compress": "none"})  # fmt: skip
    plan = Plan(features=(), requests=(Request(RequestKind.PATH, "/etc/data", "test"),),
                generated=())  # fmt: skip
    return config, build_closure(config, plan)


def _deleted(path: Path) -> None:
    path.unlink()


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _shrunk(path: Path) -> None:
    os.truncate(path, 100)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_deleted, "cannot read: No such file or directory"),
        (_directory, "no longer a regular file (changed during the build)"),
        (_fifo, "no longer a regular file (changed during the build)"),
    ],
)
def test_a_source_gone_or_replaced_is_named_and_nothing_changes(
    root_tree: Path, tmp_path: Path, change: Callable[[Path], None], message: str
) -> None:
    output = tmp_path / "out/initrd.img"
    output.parent.mkdir()
    output.write_bytes(b"old image")
    config, closure = fixture_closure(root_tree, output)
    source = root_tree / "etc/data/b.conf"
    change(source)
    with pytest.raises(ArchiveError) as error:
        write_image(config, closure, output)
    assert str(error.value) == f"{source}: {message}"
    assert output.read_bytes() == b"old image"
    assert os.listdir(output.parent) == ["initrd.img"]


def test_a_source_that_shrinks_while_streamed_is_named(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(3 << 20))

    class ShrinksSource:
        """Cuts the source short as soon as the writer has copied a first chunk of it."""

        def __init__(self) -> None:
            self.written = 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            if self.written > 1 << 20:
                _shrunk(source)
            return len(data)

    entry = ArchiveEntry("/big", EntryKind.FILE, 0o644, source=source)
    with pytest.raises(ArchiveError) as error:
        write_cpio([entry], ShrinksSource(), epoch=0)
    assert str(error.value) == f"{source}: changed size while it was being archived"


# --- the build lock ------------------------------------------------------------------------

HOLDER = textwrap.dedent("""\
    import logging, sys, time
    from pathlib import Path
    from bookend.archive.lock import locked_outputs
    logging.basicConfig(level=logging.WARNING, format="bookend: %(message)s")
    with locked_outputs([Path(sys.argv[1])]):
        start = time.monotonic()
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
        print(start, time.monotonic(), flush=True)
""")


def hold(target: Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(target), str(seconds)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def section(process: subprocess.Popen[str]) -> tuple[float, float, str]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    start, end = map(float, out.split()[-2:])
    return start, end, err


def test_builds_of_one_output_take_turns(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    first = hold(target, 1.0)
    assert first.stdout is not None and first.stdout.readline() == "locked\n"
    second = hold(target, 0.1)
    first_start, first_end, _ = section(first)
    second_start, second_end, waited = section(second)
    assert first_start < first_end <= second_start < second_end
    assert waited == f"bookend: waiting for another build of {target} (pid {first.pid})\n"


def test_builds_of_other_outputs_run_together(tmp_path: Path) -> None:
    first = hold(tmp_path / "initrd-6.1.img", 3.0)
    assert first.stdout is not None and first.stdout.readline() == "locked\n"
    second = hold(tmp_path / "initrd-6.2.img", 0.1)
    second_start, second_end, waited = section(second)
    first_start, first_end, _ = section(first)
    assert first_start < second_start and second_end < first_end
    assert waited == ""


def test_a_lock_file_left_by_a_killed_build_neither_blocks_nor_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "initrd.img"
    lock_path(target).write_text(f"{dead_pid()}\n")  # the kernel dropped its flock
    with locked_outputs([target]):
        assert lock_path(target).read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == []
    assert "waiting" not in caplog.text


def test_dying_between_the_renames_leaves_the_exitrd_without_a_digest(tmp_path: Path) -> None:
    from bookend.archive.atomic import staged_file
    from bookend.build import _replace_pair

    initrd, exitrd = tmp_path / "initrd.img", tmp_path / "exitrd.img"
    for path in (initrd, exitrd, tmp_path / "exitrd.img.sha256"):
        path.write_bytes(b"old")
    with (
        staged_file(initrd, write_new) as new_initrd,
        staged_file(exitrd, write_new) as new_exitrd,
    ):

        def killed() -> None:
            raise KeyboardInterrupt  # stands for the end of the process

        new_exitrd.commit = killed  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            _replace_pair(new_initrd, new_exitrd)
    assert (initrd.read_bytes(), exitrd.read_bytes()) == (b"new", b"old")
    assert sorted(os.listdir(tmp_path)) == ["exitrd.img", "initrd.img"]
