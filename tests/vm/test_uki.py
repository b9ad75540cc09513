"""`bookend build --uki`: a UKI made by trixie's ukify boots under UEFI firmware.

Debian 12 has no ukify, so the UKI is built from a cached Debian 13 tree
(harness/ukisysroot.py) with its kernel, stub and ukify. OVMF boots it from an
ESP with no command line from outside: the root and the test's token reach the
kernel only through the UKI's own .cmdline. The root disk is the usual bookworm
one, whose systemd reports the token after switch-root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bookend.inspect.check import check_image
from bookend.resolve import newest_kernel
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.qemu import OVMF, Boot, BootOptions
from harness.rootdisk import RootDisk
from harness.token import boot_to_token, new_token
from harness.ukisysroot import ensure_trixie_sysroot

BOOT_LIMIT = 600


@pytest.fixture(scope="module")
def uki_sysroot() -> Path:
    if not OVMF.is_file():
        pytest.skip(f"no UEFI firmware {OVMF} (apt install ovmf)")
    return ensure_trixie_sysroot()


def pe_sections(image: Path) -> dict[str, bytes]:
    pefile = pytest.importorskip("pefile")
    pe = pefile.PE(str(image), fast_load=True)
    return {s.Name.rstrip(b"\0").decode(): s.get_data().rstrip(b"\0") for s in pe.sections}


def test_uki_from_a_trixie_sysroot_boots_the_root_under_ovmf(
    uki_sysroot: Path, root_disk: RootDisk, tmp_path: Path, console_log: Path
) -> None:
    kver = newest_kernel(uki_sysroot)
    assert kver is not None
    token = new_token()
    cmdline = f"console=ttyS0 panic=-1 root=UUID={root_disk.uuid} rw bookend.token={token}"
    uki = tmp_path / "uki.efi"
    result = bookend("build", "--sysroot", str(uki_sysroot), "--kver", kver, "--uki",
                     "--cmdline", cmdline, "-o", str(uki), *QEMU_VIRTIO_EXT4,
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sections = pe_sections(uki)
    assert sections[".cmdline"].decode() == cmdline
    assert sections[".uname"].decode() == kver
    assert b"VERSION_CODENAME=trixie" in sections[".osrel"]  # the sysroot's, not the host's
    # The exitrd is still a plain image beside the UKI.
    exitrd = tmp_path / f"exitrd.img-{kver}"
    assert check_image(exitrd).kind == "exitrd" and check_image(exitrd).problems == []

    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    shutil.copyfile(uki, esp / "EFI/BOOT/BOOTX64.EFI")
    kernel_version = kver.replace("+", "[+]")

    def through_the_stub(vm: Boot) -> None:
        vm.expect(r"EFI stub: Loaded initrd", timeout=240)
        vm.expect(rf"Linux version {kernel_version}", timeout=60)
        # systemd 257 greets an initrd with "Booting initrd of", 252 with "Welcome to".
        vm.expect(r"(Welcome to|Booting initrd of) .*\(bookend initrd\)", timeout=240)
        vm.expect(r"Reached target .*initrd\.target", timeout=240)
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=180)

    # The token is already in the UKI's own command line, so it is not given again.
    options = BootOptions(esp=esp, disks=(root_disk.image,), timeout=BOOT_LIMIT,
                          log_path=console_log)  # fmt: skip
    boot_to_token(options, on_the_way=through_the_stub, token=token)
