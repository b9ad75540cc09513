"""The other generators, run on this machine's own files: dracut from its unpacked packages.

dracut conflicts with initramfs-tools as a Debian package, and this machine keeps
initramfs-tools (the tests use its mkinitramfs). So dracut is not installed: its
packages are fetched with `apt-get download` and unpacked (`dpkg-deb -x`) into a cache
directory, and run from there with `dracutbasedir`. The image tests and the benchmark
run it the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.rootdisk import locked
from harness.timings import timed

DRACUT_PACKAGES = ("dracut-core", "dracut")


def unpacked_dracut(root: Path) -> tuple[list[str], dict[str, str]]:
    """How to run dracut unpacked at root (unpack_debs): its argv start and environment.

    dracut finds its modules and dracut-install through dracutbasedir, and its own
    configuration through --conf/--confdir, so none of it is read from the host's /usr.
    """
    argv = [str(root / "usr/bin/dracut"), "--conf", str(root / "etc/dracut.conf"),
            "--confdir", str(root / "etc/dracut.conf.d")]  # fmt: skip
    return argv, {"dracutbasedir": str(root / "usr/lib/dracut")}


def ensure_dracut(cache: Path) -> tuple[Path, list[str]]:
    """dracut's packages unpacked under cache/dracut (fetched first if need be).

    Returns the tree and "package version" for each package.
    """
    target = cache / "dracut"
    cache.mkdir(parents=True, exist_ok=True)
    with timed("dracut (unpacked)") as outcome:
        if not target.exists():
            outcome.how = "made"
        # Test processes running side by side must not unpack into one directory.
        with locked(cache / "dracut.lock"):
            versions = unpack_debs(DRACUT_PACKAGES, cache, target)
    return target, versions


def unpack_debs(packages: tuple[str, ...], cache: Path, target: Path) -> list[str]:
    """apt-get download packages into cache/debs and unpack them into target, once.

    Returns "package version" for each.
    """
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = [next(iter(sorted(debs.glob(f"{name}_*.deb"))), None) for name in packages]
    missing = [name for name, deb in zip(packages, found, strict=True) if deb is None]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True,
                       capture_output=True)  # fmt: skip
        found = [next(iter(sorted(debs.glob(f"{name}_*.deb")))) for name in packages]
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for deb in found:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        partial.rename(target)
    # "cryptsetup_2%3a2.6.1-4_amd64.deb" -> "cryptsetup 2:2.6.1-4"
    return [
        " ".join(deb.name.replace("%3a", ":").split("_")[:2]) for deb in found if deb is not None
    ]
