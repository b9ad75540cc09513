"""`bookend extract` never writes outside its directory, whatever the archive says."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookend.errors import ArchiveError
from bookend.inspect.extract import ExtractReport, extract_image
from tests.unit.test_inspect_reader import (
    S_IFCHR,
    S_IFDIR,
    S_IFLNK,
    S_IFREG,
    archive,
    newc,
)

ROOT = Path(__file__).resolve().parents[2]
CANARY = "zz-bookend-extract-canary"  # a name no honest path on this machine has


def snapshot(top: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Every path below top with its type, mode and content or link target."""
    found: dict[str, tuple[int, int, bytes | str | None]] = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(directory, name)
            st_ = path.lstat()
            content: bytes | str | None = None
            if stat.S_ISLNK(st_.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                content = path.read_bytes()
            found[str(path.relative_to(top))] = (stat.S_IFMT(st_.st_mode), st_.st_mode, content)
    return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """tmp/outside holds a file no extraction may touch; tmp/dir is where images go."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    return tmp_path


def write_image(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def extract(sandbox: Path, data: bytes, *paths: str) -> tuple[Path, list[str]]:
    """Extract data into sandbox/dir; the refusals, after checking outside is untouched."""
    before = snapshot(sandbox / "outside")
    image = write_image(sandbox / "image.img", data)
    report = extract_image(image, sandbox / "dir", paths)
    assert snapshot(sandbox / "outside") == before
    return sandbox / "dir", [f"{name}: {why}" for name, why in report.refused]


def test_dot_dot_is_refused_and_the_rest_extracted(sandbox: Path) -> None:
    directory, refused = extract(sandbox, archive(
        newc("../outside/passwd", data=b"owned"), newc("a/../../outside/x", data=b"owned"),
        newc("ok", data=b"fine")))  # fmt: skip
    assert len(refused) == 2 and all("'..'" in line for line in refused)
    assert (directory / "ok").read_bytes() == b"fine"
    assert sorted(os.listdir(directory)) == ["ok"]


def test_absolute_names_are_taken_inside_the_directory(sandbox: Path) -> None:
    directory, refused = extract(sandbox, archive(newc(f"/etc/{CANARY}", data=b"x"),
                                                  newc(f"//./{CANARY}", data=b"y")))  # fmt: skip
    assert not refused
    assert (directory / "etc" / CANARY).read_bytes() == b"x"
    assert (directory / CANARY).read_bytes() == b"y"
    assert not os.path.lexists(f"/etc/{CANARY}") and not os.path.lexists(f"/{CANARY}")


def test_a_file_through_a_planted_absolute_symlink_stays_inside(sandbox: Path) -> None:
    outside = str(sandbox / "outside")
    directory, refused = extract(
        sandbox,
        archive(
            newc("a", S_IFLNK | 0o777, b"/etc"),
            newc(f"a/{CANARY}", data=b"owned"),
            newc("b", S_IFLNK | 0o777, outside.encode()),
            newc("b/passwd", data=b"owned"),
        ),
    )
    # Resolved as the kernel resolves them in its rootfs: inside the directory.
    assert (directory / "etc" / CANARY).read_bytes() == b"owned"
    assert not os.path.lexists(f"/etc/{CANARY}")
    assert (directory / outside.lstrip("/") / "passwd").read_bytes() == b"owned"
    assert os.readlink(directory / "a") == "/etc" and os.readlink(directory / "b") == outside
    assert not refused


def test_a_file_through_a_relative_symlink_climbing_out_stays_inside(sandbox: Path) -> None:
    directory, refused = extract(
        sandbox,
        archive(newc("a", S_IFLNK | 0o777, b"../../../outside"), newc("a/passwd", data=b"owned")),
    )
    assert not refused
    assert (directory / "outside/passwd").read_bytes() == b"owned"


def test_a_symlink_already_in_the_directory_is_not_followed_out(sandbox: Path) -> None:
    (sandbox / "dir").mkdir()
    (sandbox / "dir/pre").symlink_to(sandbox / "outside")
    (sandbox / "dir/file").symlink_to(sandbox / "outside/passwd")
    directory, refused = extract(sandbox, archive(newc("pre/passwd", data=b"owned"),
                                                  newc("file", data=b"replaced")))  # fmt: skip
    assert not refused
    assert (directory / str(sandbox / "outside/passwd").lstrip("/")).read_bytes() == b"owned"
    # A symlink where a file goes is replaced, never written through.
    assert not (directory / "file").is_symlink()
    assert (directory / "file").read_bytes() == b"replaced"


def test_symlink_loops_and_files_in_the_way_are_refused(sandbox: Path) -> None:
    directory, refused = extract(sandbox, archive(
        newc("loop", S_IFLNK | 0o777, b"loop"), newc("loop/x", data=b"x"),
        newc("file", data=b"f"), newc("file/x", data=b"x"),
        newc("ping", S_IFLNK | 0o777, b"pong"), newc("pong", S_IFLNK | 0o777, b"ping"),
        newc("ping/x", data=b"x")))  # fmt: skip
    assert [line.split(":")[0] for line in refused] == ["loop/x", "file/x", "ping/x"]
    assert "too many levels of symbolic links" in refused[0]
    assert "not a directory" in refused[1]
    assert sorted(os.listdir(directory)) == ["file", "loop", "ping", "pong"]


def test_modes_times_and_read_only_directories(sandbox: Path) -> None:
    directory, refused = extract(sandbox, archive(
        newc("ro", S_IFDIR | 0o555), newc("ro/x", S_IFREG | 0o4755, b"#!/bin/sh\n"),
        newc("secret", S_IFREG | 0o600, b"k")))  # fmt: skip
    assert not refused
    assert stat.S_IMODE((directory / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((directory / "ro/x").stat().st_mode) == 0o4755
    assert stat.S_IMODE((directory / "secret").stat().st_mode) == 0o600
    (directory / "ro").chmod(0o755)  # let pytest clean up


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create device nodes")
def test_device_nodes_as_root_and_skipped_when_asked(sandbox: Path) -> None:
    data = archive(newc("dev", S_IFDIR | 0o755), newc("dev/null", S_IFCHR | 0o666, rdev=(1, 3)))
    directory, _ = extract(sandbox, data)
    node = (directory / "dev/null").lstat()
    assert stat.S_ISCHR(node.st_mode) and os.major(node.st_rdev) == 1
    report = extract_image(sandbox / "image.img", sandbox / "other", devices=False)
    assert report.skipped == [("dev/null", "device node: only root can create one")]
    assert not (sandbox / "other/dev/null").exists()


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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_directory() as directory:
        yield directory


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an ordinary user")
def test_as_an_ordinary_user_device_nodes_are_skipped_with_a_note(shared_dir: Path) -> None:
    image = write_image(shared_dir / "image.img", archive(
        newc("dev", S_IFDIR | 0o755), newc("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        newc("etc", S_IFDIR | 0o755), newc("etc/x", S_IFREG | 0o4755, b"x")))  # fmt: skip
    image.chmod(0o644)
    report = as_nobody(lambda: extract_image(image, shared_dir / "dir"))
    assert isinstance(report, ExtractReport) and report.ok
    assert report.skipped == [("dev/console", "device node: only root can create one")]
    assert sorted(snapshot(shared_dir / "dir")) == ["dev", "etc", "etc/x"]
    assert (shared_dir / "dir/etc/x").stat().st_uid == NOBODY
    command = [sys.executable, "-m", "bookend", "extract", str(image), str(shared_dir / "d2")]
    result = as_nobody(lambda: _run_in_process(command))
    assert result == (0, "bookend: note: 1 skipped (device node: only root can create one): "
                         "dev/console\n")  # fmt: skip


def _run_in_process(command: list[str]) -> tuple[int, str]:
    """The CLI's exit status and stderr, run in this (already unprivileged) process."""
    from bookend.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = main(command[3:])
    return status, stderr.getvalue()


def test_only_the_paths_asked_for(sandbox: Path) -> None:
    data = archive(newc("etc", S_IFDIR | 0o755), newc("etc/a", data=b"a"),
                   newc("etc/b", data=b"b"), newc("usr/bin/x", data=b"x"))  # fmt: skip
    image = write_image(sandbox / "image.img", data)
    report = extract_image(image, sandbox / "dir", ["/etc/a", "usr", "nothing"])
    assert snapshot(sandbox / "dir").keys() == {"etc", "etc/a", "usr", "usr/bin", "usr/bin/x"}
    assert report.missing == ["nothing"] and not report.ok


def test_hard_links_are_made_as_links(sandbox: Path) -> None:
    directory, _ = extract(sandbox, archive(
        newc("a", ino=7, nlink=2), newc("b", data=b"shared", ino=7, nlink=2)))  # fmt: skip
    assert (directory / "a").read_bytes() == b"shared"
    assert (directory / "a").stat().st_ino == (directory / "b").stat().st_ino


@pytest.mark.parametrize("replacement", ["fifo", "chardev", "symlink"])
def test_a_hard_link_whose_first_path_was_replaced_is_never_written_through(
    sandbox: Path, replacement: str
) -> None:
    # The first link of a group is replaced by a FIFO (writing would block forever) or a
    # device node (writing would write to the device) before the link with the content.
    other = {
        "fifo": newc("a", 0o010644),
        "chardev": newc("a", S_IFCHR | 0o600, rdev=(1, 3)),
        "symlink": newc("a", S_IFLNK | 0o777, str(sandbox / "outside/passwd").encode()),
    }
    directory, refused = extract(sandbox, archive(
        newc("a", ino=9, nlink=2), other[replacement],
        newc("b", data=b"content", ino=9, nlink=2)))  # fmt: skip
    assert not refused
    assert (directory / "b").read_bytes() == b"content"
    assert not (directory / "b").is_symlink()


def test_a_corrupt_archive_stops_with_an_error_after_what_came_before(sandbox: Path) -> None:
    data = archive(newc("first", data=b"1"), newc("second", data=b"2"))
    image = write_image(sandbox / "image.img", data[:150])
    with pytest.raises(ArchiveError, match="at offset 120 of the file is cut short"):
        extract_image(image, sandbox / "dir")
    assert (sandbox / "dir/first").read_bytes() == b"1"


def bookend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bookend", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT)  # fmt: skip


def test_cli_refusals_exit_non_zero_with_one_line_each(sandbox: Path) -> None:
    image = write_image(sandbox / "image.img", archive(newc("../x", data=b"x"),
                                                       newc("ok", data=b"o")))  # fmt: skip
    result = bookend("extract", str(image), str(sandbox / "dir"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"bookend: {image}: entry '../x' refused: its name climbs out of the directory with '..'"
    ]
    assert result.stdout == f"{image}: 1 entries extracted to {sandbox / 'dir'}\n"


def test_cli_truncated_archive_is_one_line_naming_the_offset(sandbox: Path) -> None:
    data = archive(newc("first", data=b"1"), newc("second", data=b"2"))
    image = write_image(sandbox / "image.img", data[:150])
    result = bookend("extract", "--json", str(image), str(sandbox / "dir"))
    assert result.returncode == 1
    assert result.stderr == (
        f"bookend: {image}: truncated archive: the entry header at offset 120 of the file "
        "is cut short\n"
    )


def test_cli_json_report(sandbox: Path) -> None:
    image = write_image(sandbox / "image.img", archive(newc("a/../../b"), newc("c")))
    result = bookend("extract", "--json", str(image), str(sandbox / "dir"), "a", "c", "d")
    report = json.loads(result.stdout)
    assert report["extracted"] == 1 and report["missing"] == ["d"]
    assert report["refused"] == [
        {"path": "a/../../b", "reason": "its name climbs out of the directory with '..'"}
    ]
    assert result.returncode == 1


def test_cli_directory_whose_parent_is_missing(sandbox: Path) -> None:
    image = write_image(sandbox / "image.img", archive(newc("c")))
    result = bookend("extract", str(image), str(sandbox / "no/such/dir"))
    assert result.returncode == 1
    assert "cannot create: No such file or directory" in result.stderr
    assert not (sandbox / "no").exists()


# --- the property: whatever the bytes, nothing outside, and only ArchiveError -----------

COMPONENTS = ["a", "b", "..", ".", "", "etc", "pre", CANARY]


@st.composite
def hostile_names(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4))
    lead = draw(st.sampled_from(["", "/", "./", "//"]))
    return (lead + "/".join(parts)).encode()


@st.composite
def hostile_members(draw: st.DrawFn, outside: str) -> bytes:
    name = draw(hostile_names())
    kind = draw(st.sampled_from(["file", "dir", "link", "hardlink", "fifo", "chardev"]))
    if kind == "link":
        target = draw(st.sampled_from([outside, f"{outside}/passwd", "/", "/etc", "..",
                                       "../../..", "a", "a/b", "", "b/../..", CANARY]))  # fmt: skip
        return newc(name, S_IFLNK | 0o777, target.encode())
    if kind == "dir":
        return newc(name, S_IFDIR | draw(st.sampled_from([0o755, 0o555, 0o000])))
    if kind == "fifo":
        return newc(name, 0o010644)
    if kind == "chardev":
        return newc(name, S_IFCHR | 0o600, rdev=(1, 3))
    nlink, ino = (2, 42) if kind == "hardlink" else (1, 1)
    data = draw(st.binary(max_size=16))
    return newc(name, S_IFREG | 0o644, data, ino=ino, nlink=nlink)


@st.composite
def hostile_images(draw: st.DrawFn, outside: str) -> bytes:
    members = draw(st.lists(hostile_members(outside), max_size=8))
    data = archive(*members)
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif damage == "garbage":
        data += draw(st.binary(min_size=1, max_size=32))
    return data


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """A hang (writing into a FIFO blocks for ever) fails the example instead."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"extract_image still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_extract_never_writes_outside_and_raises_only_archive_errors(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="bookend-hostile-") as scratch:
        top = Path(scratch)
        outside = top / "outside"
        outside.mkdir()
        (outside / "passwd").write_text("root:x:0:0\n")
        directory = top / "dir"
        directory.mkdir()
        (directory / "pre").symlink_to(outside)  # already there before the archive
        image = write_image(top / "image.img", data.draw(hostile_images(str(outside))))
        before = snapshot(top)
        with contextlib.suppress(ArchiveError), hang_guard(10):
            extract_image(image, directory)
        after = snapshot(top)
        assert {k: v for k, v in after.items() if not k.startswith("dir/")} == before_outside(
            before
        )
        assert not os.path.lexists(f"/{CANARY}") and not os.path.lexists(f"/etc/{CANARY}")
        for path, _, _ in os.walk(directory):
            os.chmod(path, 0o755)  # read-only directories from the archive: let cleanup in


def before_outside(before: dict[str, tuple[int, int, bytes | str | None]]) -> dict[str, object]:
    return {k: v for k, v in before.items() if not k.startswith("dir/")}
