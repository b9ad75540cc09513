"""Images built from this machine with the token features (tpm2, fido2, pkcs11) hold the
token plugin at the path libcryptsetup was built with, the libraries systemd dlopens for
the token and the drivers it needs; the image's own loader resolves every library the
plugin and those libraries need (run under chroot). Each image's size is printed beside
that of an image with luks alone: what the feature adds (run with -rP to see it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bookend.features import fido2, pkcs11, tpm2
from bookend.features.tokens import TokenKind, TokenSearch
from bookend.sysroot import Sysroot
from harness.images import QEMU_VIRTIO_EXT4, build_image

KVER = max(os.listdir("/lib/modules"), default="") if os.path.isdir("/lib/modules") else ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")
LOADER = "/lib64/ld-linux-x86-64.so.2"
HOST = TokenSearch(Sysroot(Path("/")))
KINDS = {"tpm2": tpm2.KIND, "fido2": fido2.KIND, "pkcs11": pkcs11.KIND}


def host_has(kind: TokenKind) -> bool:
    return HOST.plugin(kind) is not None and all(HOST.library(s) for s in kind.libraries)


@pytest.fixture(scope="module")
def luks_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("luks") / "initrd.img"
    return build_image(output, KVER, *QEMU_VIRTIO_EXT4, "--add-feature", "luks")


def unpacked(image: Path, tree: Path) -> Path:
    tree.mkdir()
    subprocess.run(["bsdtar", "-xpf", str(image), "-C", str(tree)], check=True)
    return tree


def loader_resolves(tree: Path, path: str) -> str:
    """What the image's loader lists for path: every library found, or the failure."""
    listed = subprocess.run(["chroot", str(tree), LOADER, "--list", path],
                            capture_output=True, text=True)  # fmt: skip
    assert listed.returncode == 0, f"{path}: {listed.stdout}{listed.stderr}"
    assert "not found" not in listed.stdout, f"{path}: {listed.stdout}"
    return listed.stdout


@pytest.mark.parametrize("feature", sorted(KINDS))
def test_token_feature_image_from_this_machine(
    feature: str, luks_image: Path, tmp_path: Path
) -> None:
    kind = KINDS[feature]
    if not host_has(kind):
        pytest.skip(f"this machine has no {kind.plugin_file} or its libraries (scripts/setup)")
    image = build_image(tmp_path / "initrd.img", KVER, *QEMU_VIRTIO_EXT4, "--add-feature", feature)
    tree = unpacked(image, tmp_path / "tree")
    plugin = HOST.plugin(kind)
    assert plugin is not None and (tree / plugin.lstrip("/")).is_file()
    loader_resolves(tree, plugin)
    for soname in kind.libraries:
        library = HOST.library(soname)
        assert library is not None and (tree / library.lstrip("/")).exists(), soname
        loader_resolves(tree, library)
    modules = tree / "usr/lib/modules" / KVER / "kernel/drivers"
    if feature == "tpm2":
        assert any((modules / "char/tpm").rglob("*.ko*")), "no TPM drivers"
    if feature == "fido2":
        assert any((modules / "hid/usbhid").glob("usbhid.ko*"))
        assert any((modules / "hid").glob("hid-generic.ko*"))
        assert any((modules / "usb/host").glob("xhci-pci.ko*"))
        assert (tree / "usr/lib/udev/rules.d/60-fido-id.rules").is_file()
    if feature == "pkcs11":
        assert any((tree / "usr/share/p11-kit/modules").glob("*.module"))
    size, luks_size = image.stat().st_size / 1e6, luks_image.stat().st_size / 1e6
    print(f"{feature}: image {size:.2f} MB, {size - luks_size:+.2f} MB over luks alone "
          f"({luks_size:.2f} MB)")  # fmt: skip
