"""The initrd bookend builds from this machine boots a real root disk in QEMU."""

from __future__ import annotations

from dataclasses import replace

from harness.qemu import Boot, BootOptions, boot
from harness.token import boot_to_token

MISSING_DEVICE_TIMEOUT = 15


def test_initrd_switches_root_and_the_machine_powers_off(root_boot: BootOptions) -> None:
    def through_the_initrd(vm: Boot) -> None:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(r"Reached target .*initrd\.target", timeout=240)
        vm.expect(r"Starting .*initrd-switch-root\.service", timeout=120)
        # The root's systemd greets us without the initrd's name: the switch happened.
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=120)

    booted = boot_to_token(root_boot, on_the_way=through_the_initrd)
    # Nothing in the initrd should have failed on the way.
    assert not booted.failed_units, f"units failed; see {root_boot.log_path}"


def test_missing_root_device_ends_in_locked_emergency_mode(root_boot: BootOptions) -> None:
    absent = "00000000-0000-4000-8000-000000000000"
    append = f"root=UUID={absent} rw rootflags=x-systemd.device-timeout={MISSING_DEVICE_TIMEOUT}s"
    with boot(replace(root_boot, append=append)) as vm:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(rf"Timed out waiting for device .*{absent[:8]}", timeout=240)
        vm.expect(r"Dependency failed for .*sysroot\.mount", timeout=60)
        vm.expect(r"Reached target .*emergency\.target", timeout=60)
        # Locked by default: sulogin says why no shell opens, instead of hanging silently.
        vm.expect(r"root account is locked", timeout=60)
