"""Packages of a cached Debian tree's release that the tree does not hold, unpacked once.

A test that needs a few libraries more in a tree (the TPM's tss2 libraries in the
Debian 13 tree, harness/ukisysroot.py) takes them from the packages of the same
release rather than debootstrapping the tree again (every test built from it would
then wait for a new tree): each package is fetched once from the mirror, in the
version the tree's own apt index names, checked against that index's SHA-256, unpacked
with dpkg-deb -x into the cache, and copied into a test's linked copy of the tree
(harness/treecopy.py), where its files are new ones, never the cache's.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path

from bookend.proc import run
from harness.mirror import debian_mirror
from harness.newersystemd import _records
from harness.rootdisk import building, cache_dir_default, made_once


def package_record(tree: Path, package: str) -> dict[str, str]:
    """package's record in the Packages indexes apt left in the tree."""
    for index in sorted((tree / "var/lib/apt/lists").glob("*_Packages")):
        for record in _records(index.read_text(errors="replace")):
            if record.get("Package") == package:
                return record
    raise AssertionError(f"{tree}: no package {package} in its apt lists")


def unpacked_package(tree: Path, package: str, cache_dir: Path | None = None) -> Path:
    """The root of package (of tree's release) unpacked in the cache."""
    record = package_record(tree, package)
    cache_dir = cache_dir or cache_dir_default()
    name = Path(record["Filename"]).name
    made = cache_dir / "debs" / name.removesuffix(".deb")
    made.parent.mkdir(parents=True, exist_ok=True)

    def make() -> None:
        with building(made, record["SHA256"][:16]) as work:
            url = f"{debian_mirror()}/{record['Filename']}"
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
            actual = hashlib.sha256(data).hexdigest()
            assert actual == record["SHA256"], f"{url}: SHA-256 {actual}, the index says {record}"
            (work / name).write_bytes(data)
            run(["dpkg-deb", "-x", work / name, work / "root"])

    lock = made.parent / f"{made.name}.lock"
    made_once(f"{name} unpacked", made, lock, record["SHA256"][:16], make)
    return made / "root"


def add_packages(tree: Path, copy: Path, packages: tuple[str, ...]) -> None:
    """Put the files of packages (tree's release) into copy, a linked copy of tree.
    Only files the tree lacks: one it has is the cache's inode and stays as it is. The
    copy's loader cache is then made anew (its old link removed first), so the loader,
    and bookend's look-ups, find the new libraries."""
    for package in packages:
        root = unpacked_package(tree, package)
        for source in sorted(root.rglob("*")):
            target = copy / source.relative_to(root)
            if source.is_dir() and not source.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
            elif not target.exists() and not target.is_symlink():
                if source.is_symlink():
                    target.symlink_to(source.readlink())
                else:
                    shutil.copy2(source, target)
    cache = copy / "etc/ld.so.cache"
    cache.unlink(missing_ok=True)
    run(["chroot", copy, "ldconfig"])
