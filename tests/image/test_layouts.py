"""LUKS+LVM images built from Fedora- and Arch-shaped sysroots (tests/layouts.py): the
build finds lvm2's own udev rule names, compressed modules, the libraries in /usr/lib64
or /usr/lib and systemd's private library there, with no Debian path, and `bookend
check` passes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.images import bookend
from tests.layouts import LAYOUTS, Layout, layout_tree
from tests.packagedbs import write_pacman_db, write_rpmdb

# What each layout's image must hold where that layout keeps it.
EXPECTED = {
    "fedora": ("usr/lib64/libcryptsetup.so.12", "usr/lib64/systemd/libsystemd-shared-"),
    "arch": ("usr/lib/libcryptsetup.so.12", "usr/lib/systemd/libsystemd-shared-"),
}
LVM2_RULES = ("10-dm.rules", "11-dm-lvm.rules", "13-dm-disk.rules", "69-dm-lvm.rules")
DEBIAN_RULES = ("55-dm.rules", "56-lvm.rules", "60-persistent-storage-dm.rules", "69-lvm.rules")


def package_database(root: Path, layout: Layout) -> None:
    """The layout's own package database, owning lvm2's rules and libcryptsetup."""
    owned = {
        "lvm2": [f"/usr/lib/udev/rules.d/{rules}" for rules in LVM2_RULES],
        "cryptsetup-libs": [f"{layout.libdir}/libcryptsetup.so.12"],
    }
    if layout.name == "fedora":
        write_rpmdb(root, owned)
    else:
        write_pacman_db(root, owned)


def names(image: Path) -> list[str]:
    listing = subprocess.run(["bsdtar", "-tf", str(image)], check=True, capture_output=True,
                             text=True).stdout  # fmt: skip
    return [name.removeprefix("./") for name in listing.splitlines()]


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Layout, Path]:
    """The layout, and its directory: sysroot/, initrd.img, exitrd.img."""
    layout = LAYOUTS[request.param]
    work = tmp_path_factory.mktemp(layout.name)
    root = layout_tree(layout, work / "sysroot", packages=package_database)
    (work / "conf").mkdir()  # no configuration of this host's
    result = bookend(
        "build", "--sysroot", str(root), "--config-root", str(work / "conf"), "--generic",
        "--add-feature", "luks", "--add-feature", "lvm", "--no-microcode",
        "-o", str(work / "initrd.img"), "--exitrd-output", str(work / "exitrd.img"),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"bookend build failed on {layout.name}:\n{result.stderr}"
    return layout, work


def test_the_tree_is_not_debian_shaped(built: tuple[Layout, Path]) -> None:
    root = built[1] / "sysroot"
    rules = {p.name for p in (root / "usr/lib/udev/rules.d").iterdir()}
    assert set(LVM2_RULES) <= rules and not rules & set(DEBIAN_RULES)
    assert not (root / "usr/lib/x86_64-linux-gnu").exists()
    assert not (root / "usr/lib/dracut").exists()


def test_luks_lvm_image_has_the_layouts_files_and_passes_check(
    built: tuple[Layout, Path],
) -> None:
    layout, work = built
    for image in ("initrd.img", "exitrd.img"):
        result = bookend("check", str(work / image), check=False)
        assert (result.returncode, result.stdout.strip()) == (0, "OK"), result.stdout
    initrd = names(work / "initrd.img")
    for rules in LVM2_RULES:
        assert f"usr/lib/udev/rules.d/{rules}" in initrd
    for prefix in EXPECTED[layout.name]:
        assert any(name.startswith(prefix) for name in initrd), prefix
    assert not [name for name in initrd if "x86_64-linux-gnu" in name]
    # Modules as the distribution's kernel packages ship them: xz (Fedora), zstd (Arch).
    assert any(name.endswith(f"/md/dm-crypt{layout.module_suffix}") for name in initrd)
    # systemd-shutdown's libmount, found by the library search, not by a Debian path.
    libmount = layout.libdir.lstrip("/") + "/libmount.so.1"
    assert libmount in names(work / "exitrd.img")


def test_size_attributes_the_images_files_to_the_layouts_packages(
    built: tuple[Layout, Path],
) -> None:
    layout, work = built
    result = bookend("size", "--json", str(work / "initrd.img"), "--sysroot",
                     str(work / "sysroot"), check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)["views"]["package"]
    sizes = {group["name"]: group["size"] for group in view["children"]}
    assert sizes.get("lvm2", 0) > 0 and sizes.get("cryptsetup-libs", 0) > 0, sizes
    database = "rpm" if layout.name == "fedora" else "pacman"
    assert json.loads(result.stdout)["notes"]["package"].startswith(
        f"the package owning each file, from {database} "
    )
