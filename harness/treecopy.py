"""A private copy of a cached sysroot tree that a test extends with its own files.

Tests build images from a sysroot, never from files added to the host's own /etc or
/usr. The cached trees (harness/ukisysroot.py) are hundreds of MB and a test adds a few
files, so the copy links every file (`cp -al`, same filesystem) instead of copying it:
each directory is the copy's own, each file the cache's inode. So files are only ever
added or replaced (the old link removed first), never written through, which would
change the cache for every later test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from harness.timings import timed


def linked_copy(tree: Path, dest: Path) -> Path:
    """dest, a tree of tree's own directories and links to its files."""
    with timed("linked copy of a sysroot") as outcome:
        outcome.how = "made"  # every time: the copy is the test's own
        subprocess.run(["cp", "-al", "--", str(tree), str(dest)], check=True)
    return dest


def squashfs_of(tree: Path, image: Path) -> Path:
    """image: a squashfs of tree, every file root's (as a package's files would be)."""
    subprocess.run(["mksquashfs", str(tree), str(image), "-all-root", "-noappend", "-quiet"],
                   check=True, capture_output=True)  # fmt: skip
    return image


def put_file(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    """Write text at path (absolute, inside root) as a new file of its own."""
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.is_symlink() or file.exists():
        file.unlink()  # a link to the cache's file: never write through it
    file.write_text(text)
    os.chmod(file, mode)
    return file


def remove_copy(dest: Path) -> None:
    """Remove a copy: unlinking the links leaves the cache's files alone."""
    shutil.rmtree(dest, ignore_errors=True)


# A test package's files: absolute path -> (text, mode).
PackageFiles = Mapping[str, tuple[str, int]]


@contextmanager
def tree_with_files(tree: Path, dest: Path, files: PackageFiles) -> Iterator[Path]:
    """A linked copy of tree at dest with files put in, removed when done."""
    root = linked_copy(tree, dest)
    try:
        for path, (text, mode) in files.items():
            put_file(root, path, text, mode)
        yield root
    finally:
        remove_copy(root)
