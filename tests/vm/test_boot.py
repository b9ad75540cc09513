"""The initrd bookend builds from this machine boots a real root disk in QEMU."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.imagebuild import QEMU_VIRTIO_EXT4, build_image
from tests.vm.qemu import Kernel, boot
from tests.vm.rootdisk import RootDisk

# Under TCG a whole boot takes 20-60 s; these limits leave room for a slow, busy host.
BOOT_LIMIT = 420
MISSING_DEVICE_TIMEOUT = 15


@pytest.fixture(scope="module")
def host_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("image") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4)


def test_initrd_switches_root_and_the_machine_powers_off(
    kernel: Kernel, root_disk: RootDisk, host_initrd: Path, console_log: Path
) -> None:
    token = secrets.token_hex(8)
    append = f"root=UUID={root_disk.uuid} rw bookend.token={token}"
    with boot(kernel.path, host_initrd, [root_disk.image], append, BOOT_LIMIT,
              log_path=console_log) as vm:  # fmt: skip
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(r"Reached target .*initrd\.target", timeout=240)
        vm.expect(r"Starting .*initrd-switch-root\.service", timeout=120)
        # The root's systemd greets us without the initrd's name: the switch happened.
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=120)
        report = vm.expect(
            rf"BOOKEND-TOKEN {token} booted-with-initrd=(\w+) systemd-initrd=(\w+)", timeout=240
        )
        assert report.groups() == ("yes", "yes")
        assert vm.wait_exit(timeout=120) == 0
    # Nothing in the initrd should have failed on the way.
    text = console_log.read_text(errors="replace")
    assert "FAILED" not in text, "a unit failed during boot; see " + str(console_log)


def test_missing_root_device_ends_in_locked_emergency_mode(
    kernel: Kernel, root_disk: RootDisk, host_initrd: Path, console_log: Path
) -> None:
    absent = "00000000-0000-4000-8000-000000000000"
    append = f"root=UUID={absent} rw rootflags=x-systemd.device-timeout={MISSING_DEVICE_TIMEOUT}s"
    with boot(kernel.path, host_initrd, [root_disk.image], append, BOOT_LIMIT,
              log_path=console_log) as vm:  # fmt: skip
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(rf"Timed out waiting for device .*{absent[:8]}", timeout=240)
        vm.expect(r"Dependency failed for .*sysroot\.mount", timeout=60)
        vm.expect(r"Reached target .*emergency\.target", timeout=60)
        # Locked by default: sulogin says why no shell opens, instead of hanging silently.
        vm.expect(r"root account is locked", timeout=60)
        vm.kill()
