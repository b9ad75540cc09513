"""The initrd bookend builds from this machine, given a root device that never comes,
ends in locked emergency mode. (Its boots of the real root disk, and the exitrd's
shutdowns of it, are proven in test_exitrd_verbs.py.)"""

from __future__ import annotations

from dataclasses import replace

from harness.qemu import BootOptions, boot

MISSING_DEVICE_TIMEOUT = 5


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
