"""The Debian releases a VM test can boot as its guest, so one test function runs on both.

A guest is a kernel, a root disk, and the tree its images are built from:
- Debian 12 (bookworm, systemd 252): the host's own kernel and files, and the cached
  bookworm root disk, as most VM tests boot;
- Debian 13 (trixie, systemd 257): trixie's kernel, and images built from the cached
  trixie tree (harness/ukisysroot.py) with `--sysroot`, booting the cached trixie root
  disk (harness/rootdisk.py trixie_recipe).

Tests take a guest by its name, which is also the test's parameter id; the run builds
the Debian 13 disks early and runs those tests last (harness/suite.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bookend.features.storage_daemons import systemd_version
from bookend.sysroot import Sysroot
from harness.images import build_image
from harness.qemu import Kernel, installed_kernels
from harness.rootdisk import RootDisk, ensure_root_disk, trixie_recipe
from harness.suite import DEBIAN12, DEBIAN13
from harness.ukisysroot import ensure_trixie_sysroot

__all__ = ["DEBIAN12", "DEBIAN13", "Guest", "debian12_guest", "debian13_guest"]


@dataclass(frozen=True)
class Guest:
    name: str  # DEBIAN12 or DEBIAN13
    kernel: Kernel
    root: RootDisk
    # The tree images are built from; None: the host's own (bookend's default, /).
    sysroot: Path | None
    systemd: int  # the major version of the sysroot's systemd

    def build_image(self, output: Path, *args: str) -> Path:
        """`bookend build` for this guest's kernel, from its tree (an exitrd beside it)."""
        tree = ("--sysroot", str(self.sysroot)) if self.sysroot is not None else ()
        return build_image(output, self.kernel.version, *tree, *args)


def debian12_guest(kernel: Kernel, root: RootDisk) -> Guest:
    """The host's kernel and systemd (the tests' own `kernel` and `root_disk` fixtures)."""
    return Guest(DEBIAN12, kernel, root, None, _systemd(Path("/")))


def debian13_guest() -> Guest:
    """trixie's newest kernel from the cached tree, and the cached trixie root disk."""
    tree = ensure_trixie_sysroot()
    kernels = installed_kernels(tree / "boot")
    assert kernels, f"{tree}/boot has no kernel (linux-image-amd64 is in the recipe)"
    root = ensure_root_disk(recipe=trixie_recipe())
    return Guest(DEBIAN13, kernels[-1], root, tree, _systemd(tree))


def _systemd(tree: Path) -> int:
    version = systemd_version(Sysroot(tree))
    assert version is not None, f"{tree}: no libsystemd-shared-N.so, so no systemd version"
    return version
