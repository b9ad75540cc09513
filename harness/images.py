"""Build images the way a user does, through the `bookend` command line, and read them
back the way another program does (bsdtar)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# What a QEMU guest with a virtio disk and an ext4 root needs beyond systemd itself;
# finding these from the host's hardware is the kernel-modules issue's work.
QEMU_VIRTIO_EXT4 = ("--add-module", "virtio_blk", "--add-module", "virtio_pci",
                    "--filesystem", "ext4")  # fmt: skip


# The checkout this harness belongs to: its bookend is the one under test.
CHECKOUT = Path(__file__).resolve().parent.parent


def bookend(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run this checkout's `bookend`, never an installed one, whatever the cwd."""
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    argv = [sys.executable, "-m", "bookend", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, env=env)


def build_image(output: Path, kver: str, *args: str) -> Path:
    result = bookend("build", "--kver", kver, "-o", str(output), *args, check=False)
    assert result.returncode == 0, f"bookend build failed:\n{result.stderr}"
    return output


def content_by_bsdtar(image: Path, tree: Path) -> int:
    """Content bytes as another reader unpacks them: files (each inode once), link targets."""
    subprocess.run(["bsdtar", "-xf", str(image), "-C", str(tree)], check=True)
    total = 0
    inodes = set()
    for directory, dirs, files in os.walk(tree):
        for name in files + dirs:  # os.walk puts a symlink to a directory among the dirs
            path = Path(directory, name)
            st = path.lstat()
            if path.is_symlink():
                total += len(os.fsencode(os.readlink(path)))
            elif path.is_file() and st.st_ino not in inodes:
                inodes.add(st.st_ino)
                total += st.st_size
    return total


def leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """(names from the root, size) of every file in a tree."""
    here = (*path, node["name"])
    if "children" not in node:
        return [(here, node["size"])]
    return [leaf for child in node["children"] for leaf in leaves(child, here)]
