"""The keymap in an image built from this machine loads, from the image's files alone,
into exactly the tables the host's own keymap gives: every included file and the
decompressor kbd pipes them through are in the image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.images import QEMU_VIRTIO_EXT4, build_image

KVER = max(os.listdir("/lib/modules"), default="") if os.path.isdir("/lib/modules") else ""
pytestmark = [
    pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules"),
    pytest.mark.skipif(not shutil.which("loadkeys"), reason="no loadkeys (kbd) on this host"),
]


def binary_keymap(*chroot: str) -> bytes:
    """loadkeys' compiled keymap for de (written out, not loaded: no console needed)."""
    result = subprocess.run([*chroot, "loadkeys", "-b", "de"], capture_output=True, check=False,
                            env={"PATH": "/usr/bin:/usr/sbin:/bin"})  # fmt: skip
    assert result.returncode == 0 and not result.stderr, result.stderr.decode()
    return result.stdout


def test_the_images_german_keymap_compiles_as_the_hosts(tmp_path: Path) -> None:
    image = build_image(tmp_path / "initrd.img", KVER, "--compress", "none", "--no-exitrd",
                        "--keymap", "de", *QEMU_VIRTIO_EXT4)  # fmt: skip
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["bsdtar", "-xpf", str(image), "-C", str(tree)], check=True)
    assert "KEYMAP=de\n" in (tree / "etc/vconsole.conf").read_text()
    assert binary_keymap("chroot", str(tree)) == binary_keymap()
