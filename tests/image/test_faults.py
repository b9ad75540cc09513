"""Real builds from this machine, killed, starved of space or run side by side.

Whatever happens, the initrd, the exitrd and its digest are each either the old file or
the complete new one; a digest is never beside an exitrd it does not describe, and an
old exitrd is never left loadable beside a new initrd. What a killed build leaves behind
the next build removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bookend.errors import ArchiveError
from bookend.exitrd_store import check_digest
from harness.images import bookend
from tests.tmpfs import small_tmpfs

KVER = max(os.listdir("/lib/modules"), default="") if os.path.isdir("/lib/modules") else ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")
NAMES = ("initrd.img", "exitrd.img", "exitrd.img.sha256")
KILLS = 20


def build_argv(directory: Path) -> list[str]:
    return [sys.executable, "-m", "bookend", "build", "--kver", KVER, "--compress", "none",
            "-o", str(directory / "initrd.img")]  # fmt: skip


def build(directory: Path, epoch: str = "") -> float:
    """A complete build into directory; its duration in seconds."""
    started = time.monotonic()
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    result = subprocess.run(build_argv(directory), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def contents(directory: Path) -> dict[str, bytes | None]:
    return {
        name: (directory / name).read_bytes() if (directory / name).exists() else None
        for name in NAMES
    }


def temporaries(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".bookend-tmp." in name)


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes | None], ...]:
    """Two complete sets that differ in every file (mtimes clamped to 1 s or to 0)."""
    old, new = tmp_path_factory.mktemp("old"), tmp_path_factory.mktemp("new")
    build(old, epoch="1")
    build(new)
    sets = contents(old), contents(new)
    assert all(sets[0][name] != sets[1][name] for name in NAMES)
    return sets


def state(found: bytes | None, old: bytes | None, new: bytes | None) -> str:
    return {old: "old", new: "new", None: "absent"}.get(found, "other")


def killed_build(directory: Path, when: Callable[[], None]) -> None:
    """Start a build, wait for when() to return, then SIGKILL it."""
    process = subprocess.Popen(build_argv(directory), stderr=subprocess.DEVNULL,
                               env={**os.environ, "SOURCE_DATE_EPOCH": ""})  # fmt: skip
    when()
    process.send_signal(signal.SIGKILL)
    process.wait()


def after(seconds: float) -> Callable[[], None]:
    return lambda: time.sleep(seconds)


def once_digest_is_gone(digest: Path, delay: float) -> Callable[[], None]:
    """The commit has begun: the old digest is removed just before the renames."""

    def wait() -> None:
        deadline = time.monotonic() + 120
        while digest.exists() and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(delay)

    return wait


def test_sigkill_anywhere_leaves_old_or_new_never_a_mixed_pair(
    tmp_path: Path, old_and_new: tuple[dict[str, bytes | None], ...]
) -> None:
    old, new = old_and_new
    # How long a build takes here now, to spread the kills over it: the slower of two, so
    # that a machine busy with other work still sees kills in the writing, at the end.
    duration = max(build(tmp_path), build(tmp_path))
    # KILLS points spread over the build, then a few in the few milliseconds of renames.
    waits = [(f"{k}/{KILLS + 1} of {duration:.2f} s", after(duration * k / (KILLS + 1)))
             for k in range(1, KILLS + 1)]  # fmt: skip
    digest = tmp_path / "exitrd.img.sha256"
    waits += [(f"renames + {ms} ms", once_digest_is_gone(digest, ms / 1000)) for ms in (0, 1, 3)]
    seen = []
    for label, when in waits:
        for name in NAMES:
            (tmp_path / name).write_bytes(old[name] or b"")
        killed_build(tmp_path, when)
        now = contents(tmp_path)
        states = tuple(state(now[name], old[name], new[name]) for name in NAMES)
        seen.append((label, states, temporaries(tmp_path)))
        initrd, exitrd, digest_state = states
        assert initrd in ("old", "new") and exitrd in ("old", "new"), seen[-1]
        # A digest is there only for the exitrd it describes, and with the initrd it was
        # built with; otherwise it is gone, and install-exitrd refuses the exitrd.
        assert digest_state == "absent" or digest_state == exitrd == initrd, seen[-1]
        if digest_state == "absent":
            with pytest.raises(ArchiveError, match="its digest: No such file"):
                check_digest(tmp_path / "exitrd.img")
    assert any(leftover for _, _, leftover in seen), f"no kill came while writing: {seen}"
    assert any(states[2] == "absent" for _, states, _ in seen), f"none in the renames: {seen}"
    build(tmp_path)
    assert temporaries(tmp_path) == []
    assert contents(tmp_path) == new


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "40m") as mountpoint:
        yield mountpoint


def test_a_full_output_file_system_is_one_line_and_changes_nothing(small_fs: Path) -> None:
    """An uncompressed initrd (26 MB here) fits once in 40 MB, not twice."""
    output = small_fs / "initrd.img"
    args = ("build", "--kver", KVER, "--compress", "none", "--no-exitrd", "--no-microcode",
            "-o", str(output))  # fmt: skip
    assert bookend(*args).returncode == 0
    before = hashlib.sha256(output.read_bytes()).hexdigest()
    result = bookend(*args, "--rebuild", check=False)  # not "up to date": build again
    assert result.returncode == 1
    message = re.fullmatch(
        rf"bookend: no space left on device writing {output} \(needs ~(\d+) MB\)\n", result.stderr
    )
    assert message, result.stderr
    assert abs(int(message[1]) - output.stat().st_size / 1e6) < 1
    assert hashlib.sha256(output.read_bytes()).hexdigest() == before
    assert temporaries(small_fs) == []


def test_two_builds_of_one_output_take_turns_and_agree(tmp_path: Path) -> None:
    argv = build_argv(tmp_path)
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    # The second starts once the first holds the lock (its file exists only while held).
    lock = tmp_path / ".initrd.img.bookend-lock"
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert lock.exists(), "the first build never took the lock"
    # The first stays stopped, holding the lock, until the second says it waits: on a
    # loaded machine the first could otherwise end before the second even starts.
    first.send_signal(signal.SIGSTOP)
    waiting = f"bookend: waiting for another build of {tmp_path / 'initrd.img'} (pid {first.pid})"
    second = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(second.stderr or ()))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(waiting in line for line in said) and second.poll() is None:
            assert time.monotonic() < deadline, f"the second build never waited: {said}"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGCONT)
    errors = [first.communicate(timeout=300)[1]]
    second.wait(timeout=300)
    reader.join(timeout=30)
    errors.append("".join(said))
    assert (first.returncode, second.returncode) == (0, 0), errors
    assert errors[1].count(waiting) == 1
    alone = tmp_path / "alone"
    alone.mkdir()
    build(alone)
    assert contents(tmp_path) == contents(alone)
    assert temporaries(tmp_path) == []
    shutil.rmtree(alone)
