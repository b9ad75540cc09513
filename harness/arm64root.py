"""An arm64 Debian 12 tree and root disk, made on this x86-64 host without running any
arm64 program.

debootstrap's first stage (`--foreign --arch=arm64`) unpacks the required packages and
only downloads the rest; those are unpacked here with the host's dpkg-deb and tar. No
maintainer script runs, so what the boot needs from them is done on the host instead:
passwd and group from base-passwd's masters, systemd's own users by the host's
`systemd-sysusers --root`, a machine ID, and the module index by the host's
`depmod -b` (kmod reads any architecture's modules; the disk gets its index, the tree
is left without one, as debootstrap leaves it). Nothing is enabled by a
postinst, so the boot starts only what systemd ships wired in, and the test's units.

The tree is the sysroot `bookend build --sysroot` reads; the disk is the same tree as
ext4 (`mkfs.ext4 -d`). Both are cached together under a name derived from the recipe.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bookend.errors import BookendError
from bookend.proc import run
from harness.qemu import Kernel, installed_kernels
from harness.rootdisk import (
    REPORT_SCRIPT,
    ROOT_LABEL,
    Recipe,
    RootDisk,
    bootstrap,
    building,
    cache_dir_default,
    customize,
    made_once,
    make_filesystem,
    root_files,
    root_symlinks,
)

ARCH = "arm64"
ARM64_UUID = "b00ce4d0-7e57-4b00-8000-0000a64c0de0"
# Only what the boot and the exitrd job need: systemd, the kernel. No Python: the job
# copies an exitrd installed on the host (`bookend install-exitrd --root`), which the
# running root loads with its shell loader.
ARM64_PACKAGES = (
    *("systemd-sysv", "udev", "kmod", "e2fsprogs", "util-linux", "linux-image-arm64"),
    # Without it /etc/sysctl.d/99-sysctl.conf dangles, which fails a build today.
    "procps",
)
MACHINE_ID = "b00ce4d07e574b0080000000a64c0de0\n"
# Bump when a step below changes in a way the recipe does not show.
REVISION = 2


@dataclass(frozen=True)
class Arm64Root:
    tree: Path  # the sysroot for bookend
    disk: RootDisk
    kernel: Kernel  # the tree's /boot/vmlinuz-*


def arm64_recipe() -> Recipe:
    # PL011 is the arm64 virt machine's serial port: the report writes there.
    report = REPORT_SCRIPT.replace("ttyS0", "ttyAMA0")
    files = tuple(
        (path, report if path.endswith("bookend-test-report") else content, mode)
        for path, content, mode in root_files(ARM64_UUID)
    )
    return Recipe(
        suite="bookworm",
        components=("main",),
        include=ARM64_PACKAGES,
        uuid=ARM64_UUID,
        label=ROOT_LABEL,
        size_mib=2048,
        files=(*files, ("etc/machine-id", MACHINE_ID, 0o444)),
        symlinks=root_symlinks(),
        directories=("job",),
        disabled=(),
    )


def arm64_key(recipe: Recipe) -> str:
    return hashlib.sha256(f"{recipe.key()} {ARCH} {REVISION}".encode()).hexdigest()[:16]


def ensure_arm64_root(cache_dir: Path | None = None) -> Arm64Root:
    """The cached arm64 tree and disk, made first if no finished one exists."""
    recipe = arm64_recipe()
    cache_dir = cache_dir or cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = arm64_key(recipe)
    result = cache_dir / f"arm64-{key}"
    made_once("arm64 tree and root disk", result, cache_dir / f"arm64-{key}.lock", key,
              lambda: _build(recipe, result, key))  # fmt: skip
    kernels = installed_kernels(result / "tree/boot")
    if not kernels:
        raise BookendError(f"{result}/tree/boot: no vmlinuz-*")
    return Arm64Root(
        tree=result / "tree",
        disk=RootDisk(image=result / "root.img", uuid=recipe.uuid, label=recipe.label),
        kernel=kernels[-1],
    )


def _build(recipe: Recipe, result: Path, key: str) -> None:
    started = time.monotonic()
    print(f"bookend tests: making the arm64 tree and disk {result}", flush=True)
    with building(result, key) as work:
        tree = work / "tree"
        bootstrap(recipe, tree, foreign_arch=ARCH)
        unpack_downloaded(tree)
        add_users(tree)
        customize(recipe, tree)
        # The disk gets the module index its postinst would have made; the tree is left
        # without it, as the first stage leaves it, for bookend to cope with.
        made = []
        for kernel in installed_kernels(tree / "boot"):
            moddir = tree / "lib/modules" / kernel.version
            before = set(moddir.iterdir())
            run(["depmod", "-b", tree, kernel.version])
            made += sorted(set(moddir.iterdir()) - before)
        make_filesystem(recipe, tree, work / "root.img")
        for path in made:
            path.unlink()
    print(f"bookend tests: arm64 tree and disk made in {time.monotonic() - started:.0f} s",
          flush=True)  # fmt: skip


def unpack_downloaded(tree: Path) -> None:
    """Unpack every package the first stage downloaded, as its second stage would
    (without the maintainer scripts), and drop what only the second stage reads."""
    archives = tree / "var/cache/apt/archives"
    for deb in sorted(archives.glob("*.deb")):
        # tar, not `dpkg-deb -x`: the tree's /bin, /lib and /sbin are links into /usr
        # (merged /usr) and must stay links when a package ships files under them.
        contents = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
        unpacked = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", tree],
                                  stdin=contents.stdout, check=False)  # fmt: skip
        if contents.wait() != 0 or unpacked.returncode != 0:
            raise BookendError(f"dpkg-deb --fsys-tarfile {deb}: failed")
        deb.unlink()
    shutil.rmtree(tree / "debootstrap")
    # In a container the first stage makes /proc a link to the host's /proc (its second
    # stage would mount one there); systemd's switch-root moves /proc onto the root's,
    # which must be a directory.
    proc = tree / "proc"
    if proc.is_symlink():
        proc.unlink()
        proc.mkdir(mode=0o555)


def add_users(tree: Path) -> None:
    """passwd, group and their shadows as base-passwd's postinst makes them, then the
    users systemd's packages declare, by the host's systemd-sysusers."""
    masters = tree / "usr/share/base-passwd"
    for name in ("passwd", "group"):
        target = tree / "etc" / name
        if not target.exists():
            shutil.copyfile(masters / f"{name}.master", target)
    users = [line.split(":")[0] for line in (tree / "etc/passwd").read_text().splitlines()]
    groups = [line.split(":")[0] for line in (tree / "etc/group").read_text().splitlines()]
    shadow = "".join(f"{user}:*:19000:0:99999:7:::\n" for user in users)
    gshadow = "".join(f"{group}:*::\n" for group in groups)
    for name, text in (("shadow", shadow), ("gshadow", gshadow)):
        path = tree / "etc" / name
        path.write_text(text)
        path.chmod(0o640)
    run(["systemd-sysusers", "--root", tree])


if __name__ == "__main__":
    print(ensure_arm64_root())
