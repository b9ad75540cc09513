"""Debian 13 (trixie, systemd 257) and Debian testing (the archive's newest systemd):
one debootstrap per suite gives both the tree images are built from and the root disk
they boot, with the LUKS and LVM tools a root on LVM on LUKS2 has.

The tree is the sysroot (`bookend build --sysroot TREE --kver KVER`, the suite's own
kernel under TREE/boot); the root disk is a copy of it without the kernel and its
modules (the job disk brings the booted kernel's, as for the other root disks), made
by `mkfs.ext4 -d` with the report and job units of harness/rootdisk.py. Both are
cached together in one directory, named after the recipe, made once like every cached
disk. Testing is asked for by its suite name, "testing": the tree holds whatever the
mirror had when it was made (a new recipe makes a new one).

Its filesystem UUID and label are its own: the stack maker (harness/stackdisks.py
ensure_suite_stacks) boots the bookworm root disk with these disks attached, and two
filesystems with one UUID would leave the maker's root to chance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bookend.proc import run
from harness.mirror import debian_mirror
from harness.qemu import Kernel, installed_kernels
from harness.rootdisk import (
    BASE_DISABLED,
    BASE_PACKAGES,
    E2SCRUB_DISABLED,
    Recipe,
    RootDisk,
    bootstrap,
    building,
    cache_dir_default,
    customize,
    default_recipe,
    made_once,
    make_filesystem,
    root_files,
)

TRIXIE = "trixie"
TESTING = "testing"
NEWER_SUITES = (TRIXIE, TESTING)
NEWER_ROOT_UUID = "b00ce4d0-7e57-4b00-8000-0000000013d0"
NEWER_ROOT_LABEL = "bookend-newer"
NEWER_PACKAGES = (
    *BASE_PACKAGES,
    # The suite's kernel: images boot it, the way a user of this release would.
    "linux-image-amd64",
    # An LVM-on-LUKS2 root: systemd-cryptsetup is its own package since systemd 256.
    *("systemd-cryptsetup", "cryptsetup-bin", "dmsetup", "lvm2"),
)


@dataclass(frozen=True)
class NewerSystem:
    """A suite's tree (the sysroot), its kernel, and its root disk."""

    suite: str
    tree: Path
    kernel: Kernel
    root: RootDisk


def newer_recipe(suite: str) -> Recipe:
    return dataclasses.replace(
        default_recipe(),
        suite=suite,
        components=("main",),
        include=NEWER_PACKAGES,
        uuid=NEWER_ROOT_UUID,
        label=NEWER_ROOT_LABEL,
        files=root_files(NEWER_ROOT_UUID),
        # lvm2's monitoring of snapshots and mirrors: nothing to monitor in a test boot.
        disabled=(*BASE_DISABLED, *E2SCRUB_DISABLED, "sysinit.target.wants/lvm2-monitor.service"),
    )


def ensure_newer_system(suite: str, cache_dir: Path | None = None) -> NewerSystem:
    """The cached tree and root disk of suite, made first if no finished pair exists."""
    recipe = newer_recipe(suite)
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = recipe.key()
    made = cache_dir / f"newer-{suite}-{key}"
    made_once(f"{suite} tree and root disk", made, cache_dir / f"newer-{key}.lock", key,
              lambda: _make(recipe, made, key))  # fmt: skip
    kernels = installed_kernels(made / "tree/boot")
    assert kernels, f"{made}/tree/boot has no kernel (linux-image-amd64 is in the recipe)"
    root = RootDisk(image=made / "root.img", uuid=recipe.uuid, label=recipe.label)
    return NewerSystem(suite, made / "tree", kernels[-1], root)


def _make(recipe: Recipe, made: Path, key: str) -> None:
    started = time.monotonic()
    print(f"bookend tests: debootstrapping {recipe.suite} into {made} (minutes)", flush=True)
    with building(made, key) as work:
        tree = work / "tree"
        bootstrap(recipe, tree)
        for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        disk_tree = work / "disk-tree"
        run(["cp", "-a", tree, disk_tree])
        # The root disk has no kernel of its own: the booted one comes from the tree.
        for directory in ("boot", "usr/lib/modules"):
            shutil.rmtree(disk_tree / directory)
            (disk_tree / directory).mkdir()
        customize(recipe, disk_tree)
        make_filesystem(recipe, disk_tree, work / "root.img")
        shutil.rmtree(disk_tree)
    print(f"bookend tests: {recipe.suite} tree and root disk made in "
          f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or NEWER_SUITES:
        print(ensure_newer_system(name))


STANDALONE_PACKAGE = "systemd-standalone-shutdown"


def standalone_shutdown(system: NewerSystem, cache_dir: Path | None = None) -> Path:
    """systemd-shutdown built without libsystemd-shared (Debian 13+'s package
    systemd-standalone-shutdown, which conflicts with systemd, so the tree cannot hold
    it): the version of the tree's systemd, as its own apt index names it, fetched once
    from the mirror, checked against that index's SHA-256 and unpacked with dpkg-deb -x
    into the cache. Returns the unpacked program.

    A tree made a while ago names a version the mirror may have dropped since (testing
    moves on): the mirror's current indexes of the tree's suite and of unstable are then
    searched for that same version (a pool keeps a file while some suite names it), and
    if neither has it the run stops with a line saying so, since another version's
    program would not be the tree's."""
    version = _installed_version(system.tree)
    record = _package_record(system.tree, STANDALONE_PACKAGE, version)
    cache_dir = cache_dir or cache_dir_default()
    name = Path(record["Filename"]).name
    made = cache_dir / "debs" / name.removesuffix(".deb")
    made.parent.mkdir(parents=True, exist_ok=True)

    def make() -> None:
        with building(made, record["SHA256"][:16]) as work:
            data = _download(record) or _download(_mirror_record(system, version))
            assert data is not None, f"{debian_mirror()}/{record['Filename']}: gone"
            (work / name).write_bytes(data)
            run(["dpkg-deb", "-x", work / name, work / "root"])

    lock = made.parent / f"{made.name}.lock"
    made_once(f"{name} unpacked", made, lock, record["SHA256"][:16], make)
    return made / "root/usr/lib/systemd/systemd-shutdown"


def _download(record: dict[str, str]) -> bytes | None:
    """The file record names, from the mirror, checked against its SHA-256; None if the
    mirror has it no longer (HTTP 404)."""
    url = f"{debian_mirror()}/{record['Filename']}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data: bytes = response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
    actual = hashlib.sha256(data).hexdigest()
    assert actual == record["SHA256"], f"{url}: SHA-256 {actual}, the index says {record}"
    return data


def _mirror_record(system: NewerSystem, version: str) -> dict[str, str]:
    """STANDALONE_PACKAGE at version in the mirror's current index of the tree's suite
    or of unstable, for the tree's architecture."""
    arch = _tree_arch(system.tree)
    found: list[str] = []
    for suite in dict.fromkeys((system.suite, "unstable")):
        url = f"{debian_mirror()}/dists/{suite}/main/binary-{arch}/Packages.xz"
        with urllib.request.urlopen(url, timeout=300) as response:
            text = lzma.decompress(response.read()).decode(errors="replace")
        for record in _records(text):
            if record.get("Package") == STANDALONE_PACKAGE:
                if record.get("Version") == version:
                    return record
                found.append(f"{suite} {record.get('Version')}")
    raise AssertionError(
        f"{system.tree}: its systemd is {version}, and the mirror no longer has "
        f"{STANDALONE_PACKAGE} {version} (it has {', '.join(found) or 'none'}): "
        "remake the tree (a new recipe) to test the mirror's current systemd"
    )


def _tree_arch(tree: Path) -> str:
    """The architecture of the tree's apt index (its list files end binary-ARCH_Packages)."""
    for index in sorted((tree / "var/lib/apt/lists").glob("*_binary-*_Packages")):
        return index.name.removesuffix("_Packages").rpartition("_binary-")[2]
    raise AssertionError(f"{tree}: no binary-ARCH_Packages in its apt lists")


def _installed_version(tree: Path) -> str:
    """The version of the tree's systemd package, from dpkg's status file."""
    status = (tree / "var/lib/dpkg/status").read_text()
    record = next(r for r in _records(status) if r.get("Package") == "systemd")
    return record["Version"]


def _package_record(tree: Path, package: str, version: str) -> dict[str, str]:
    """package at version in the Packages indexes apt left in the tree."""
    for index in sorted((tree / "var/lib/apt/lists").glob("*_Packages")):
        for record in _records(index.read_text(errors="replace")):
            if record.get("Package") == package and record.get("Version") == version:
                return record
    raise AssertionError(f"{tree}: no {package} {version} in its apt lists")


def _records(text: str) -> list[dict[str, str]]:
    """Debian control records: "Key: value" lines (continuations skipped), blank-separated."""
    records: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        record = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                record[key] = value.strip()
        if record:
            records.append(record)
    return records
