"""Build images the way a user does: through the `bookend` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# What a QEMU guest with a virtio disk and an ext4 root needs beyond systemd itself;
# finding these from the host's hardware is the kernel-modules issue's work.
QEMU_VIRTIO_EXT4 = ("--add-module", "virtio_blk", "--add-module", "virtio_pci",
                    "--filesystem", "ext4")  # fmt: skip


def bookend(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bookend", *args], capture_output=True, text=True, check=check
    )


def build_image(output: Path, kver: str, *args: str) -> Path:
    result = bookend("build", "--kver", kver, "-o", str(output), *args, check=False)
    assert result.returncode == 0, f"bookend build failed:\n{result.stderr}"
    return output
