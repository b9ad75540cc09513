"""Run one build and measure it; read an image back with bookend's own reader."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.tools import Command
from bookend.inspect.image import scan_image


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + system seconds of the tool and every child it waited for
    peak_rss_kib: int  # the largest resident set among the tool and those children
    sha256: str  # of the image


class BuildFailed(RuntimeError):
    pass


def run_build(command: Command, log: Path) -> Sample:
    """Run the build to completion; its rusage comes from wait4, children included."""
    command.output.unlink(missing_ok=True)
    return run_again(command, log)


def run_again(command: Command, log: Path) -> Sample:
    """Like run_build, but leaves an existing image in place (the rebuild case)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            command.argv, env=command.env, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        # wait4, not Popen.wait: it also returns the child's rusage, which covers
        # the grandchildren it reaped (dracut's cpio and zstd, mkinitramfs' hooks).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not command.output.is_file():
        raise BuildFailed(f"{command.argv[0]} failed (status {process.returncode}); see {log}")
    return Sample(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_kib=usage.ru_maxrss,
        sha256=file_sha256(command.output),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as image:
        while chunk := image.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageFacts:
    compressed: int  # bytes of the image file
    uncompressed: int  # bytes of file content, each hard-link group once
    entries: int
    paths: frozenset[str]


def read_image_facts(image: Path) -> ImageFacts:
    scan = scan_image(image)
    content = sum(
        entry.size for entry in scan.entries if entry.kind == "file" and entry.hardlink is None
    )
    return ImageFacts(
        compressed=scan.file_size,
        uncompressed=content,
        entries=len(scan.entries),
        paths=frozenset(entry.path for entry in scan.entries),
    )


def missing_paths(paths: frozenset[str], expected: tuple[str, ...]) -> list[str]:
    """The expected path suffixes no entry ends with (e.g. "lib/systemd/systemd")."""
    return [
        suffix
        for suffix in expected
        if not any(path == suffix or path.endswith("/" + suffix) for path in paths)
    ]
