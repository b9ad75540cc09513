"""A cached Debian trixie tree (systemd 257) that images are built from.

Debian 12 (the host) has systemd 252. Tests that need a newer systemd build from
this tree with `bookend build --sysroot TREE --kver KVER`, with trixie's own kernel
(under TREE/boot): the UKI test (trixie's ukify and stub) and the Debian 13 iSCSI
root (open-iscsi 2.1 and a systemd with SurviveFinalKillSignal=). One tree serves
both, so a run debootstraps trixie for images once. It is never booted as a root,
so it stays a plain directory: debootstrap'ed into a private directory and renamed
into place, cached under a name derived from its package list like the root disk
(harness/rootdisk.py), and built under the same kind of lock.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness.rootdisk import Recipe, bootstrap, cache_dir_default, made_once, remove_tree

TRIXIE_PACKAGES = (
    *("systemd", "systemd-sysv", "udev", "kmod", "linux-image-amd64"),
    *("systemd-ukify", "systemd-boot-efi", "python3-pefile"),
    # ukify depends on python3-zstandard, which depends on virtual packages this one
    # provides, and debootstrap does not resolve virtual packages.
    "python3-cffi-backend",
    # The iSCSI root: iscsid, iscsiadm and iscsi-iname (features iscsi and network;
    # systemd-networkd is part of trixie's systemd).
    "open-iscsi",
)


def trixie_recipe() -> Recipe:
    return Recipe(
        suite="trixie",
        components=("main",),
        include=TRIXIE_PACKAGES,
        uuid="",
        label="",
        size_mib=0,
        files=(),
        symlinks=(),
        directories=(),
        disabled=(),
    )


def ensure_trixie_sysroot(cache_dir: Path | None = None) -> Path:
    """The cached trixie tree, debootstrap'ed first if no finished one exists."""
    recipe = trixie_recipe()
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = recipe.key()
    tree = cache_dir / f"sysroot-{recipe.suite}-{key}"
    made_once("Debian 13 tree (UKI, iSCSI)", tree, cache_dir / f"sysroot-{key}.lock", key,
              lambda: _build(recipe, tree, key))  # fmt: skip
    return tree


def _build(recipe: Recipe, tree: Path, key: str) -> None:
    started = time.monotonic()
    print(f"bookend tests: debootstrapping {tree} (a few minutes)", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=tree.parent))
    try:
        bootstrap(recipe, work / "root")
        # Downloaded packages only take space.
        for deb in (work / "root/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        os.replace(work / "root", tree)
    finally:
        remove_tree(work)
    print(f"bookend tests: {tree} built in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    print(ensure_trixie_sysroot())
