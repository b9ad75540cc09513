"""A cached Debian trixie tree that has ukify, for building and booting a UKI.

Debian 12 (the host) has systemd 252, which has no ukify; trixie's systemd-ukify
does. The tree is only built from (`bookend build --sysroot`), never booted as a
root, so it stays a plain directory: debootstrap'ed into a private directory and
renamed into place, cached under a name derived from its package list like the
root disk (harness/rootdisk.py), and built under the same kind of lock.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness.rootdisk import Recipe, bootstrap, cache_dir_default, locked, remove_tree
from harness.timings import timed

UKI_PACKAGES = (
    *("systemd", "systemd-sysv", "udev", "kmod", "linux-image-amd64"),
    *("systemd-ukify", "systemd-boot-efi", "python3-pefile"),
    # ukify depends on python3-zstandard, which depends on virtual packages this one
    # provides, and debootstrap does not resolve virtual packages.
    "python3-cffi-backend",
)


def uki_recipe() -> Recipe:
    return Recipe(
        suite="trixie",
        components=("main",),
        include=UKI_PACKAGES,
        uuid="",
        label="",
        size_mib=0,
        files=(),
        symlinks=(),
        directories=(),
        disabled=(),
    )


def ensure_uki_sysroot(cache_dir: Path | None = None) -> Path:
    """The cached trixie tree, debootstrap'ed first if no finished one exists."""
    recipe = uki_recipe()
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = recipe.key()
    tree = cache_dir / f"sysroot-{recipe.suite}-{key}"
    with timed("UKI tree (Debian 13)") as outcome:
        if not tree.is_dir():
            outcome.how = "waited"
            with locked(cache_dir / f"sysroot-{key}.lock"):
                if not tree.is_dir():
                    outcome.how = "made"
                    _build(recipe, tree, key)
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
    print(ensure_uki_sysroot())
