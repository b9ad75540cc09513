"""Root on LUKS2 and on a degraded MD RAID1: systemd in a bookend initrd unlocks (by a
passphrase at the console, or a key file in the image) or assembles them, the real root
starts and powers the machine off; three wrong passphrases end in emergency mode.

ext4 on LVM on LUKS2, btrfs RAID1 in a subvolume, and MD RAID1 arrays assembled from
both members (LUKS2 on MD RAID1, LVM on MD RAID1) boot the same way, through the same
generic image, to their token with no unit failed, in test_exitrd_stacks.py, whose
boots also power off through the exitrd. The degraded boot here puts ext4 straight on
an MD array.

The disks are made once in a maker guest (harness/stackdisks.py). Images are generic,
so nothing but the kernel command line tells the initrd what the storage is.
Run with `-rP` to see each boot's image size and time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from harness.images import build_image
from harness.qemu import Boot, BootOptions, Disk, Kernel, boot
from harness.stackdisks import StackDisks
from harness.token import Booted, boot_to_token

PROMPT = r"Please enter passphrase for disk"
TRIES = 3  # systemd-cryptsetup's default tries=


def luks_args(stack: StackDisks) -> str:
    """Unlock under the crypttab name the real root uses, so it finds the volume open."""
    assert stack.luks_uuid and stack.luks_name
    return f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name}"


def stack_boot(
    root_boot: BootOptions, initrd: Path, disks: tuple[Path, ...], append: str
) -> BootOptions:
    """A boot of the stack's disks (snapshots: the cached ones stay as made)."""
    return replace(root_boot, initrd=initrd, disks=tuple(Disk(d) for d in disks),
                   append=f"{append} rw")  # fmt: skip


def boot_stack(options: BootOptions, passphrases: tuple[str, ...] = ()) -> Booted:
    """Boot, type each passphrase at its prompt, and prove the boot by its token."""

    def type_passphrases(vm: Boot) -> None:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        for passphrase in passphrases:
            vm.expect(PROMPT, timeout=300)
            vm.send(passphrase + "\n")

    booted = boot_to_token(options, on_the_way=type_passphrases)
    assert not booted.failed_units, f"units failed; see {options.log_path}"
    return booted


def report(name: str, initrd: Path, booted: Booted) -> None:
    print(f"{name}: image {initrd.stat().st_size / 1e6:.1f} MB, boot {booted.seconds:.0f} s")


def test_luks2_root_with_passphrase_at_the_console(
    root_boot: BootOptions, stacks: dict[str, StackDisks], generic_initrd: Path
) -> None:
    stack = stacks["luks"]
    assert stack.passphrase
    options = stack_boot(root_boot, generic_initrd, stack.disks, luks_args(stack))
    report("luks passphrase", generic_initrd, boot_stack(options, (stack.passphrase,)))


def test_luks2_root_with_an_embedded_keyfile(
    kernel: Kernel, root_boot: BootOptions, stacks: dict[str, StackDisks], tmp_path: Path
) -> None:
    stack = stacks["luks"]
    assert stack.keyfile is not None
    initrd = build_image(tmp_path / "initrd.img", kernel.version, "--generic",
                         "--add-keyfile", str(stack.keyfile))  # fmt: skip
    assert initrd.stat().st_mode & 0o777 == 0o600
    append = f"{luks_args(stack)} rd.luks.key={stack.luks_uuid}={stack.keyfile}"
    booted = boot_stack(stack_boot(root_boot, initrd, stack.disks, append))
    assert PROMPT not in booted.text
    report("luks keyfile", initrd, booted)


def test_md_raid1_root_degraded(
    root_boot: BootOptions, stacks: dict[str, StackDisks], generic_initrd: Path
) -> None:
    stack = stacks["md-raid1"]
    options = stack_boot(root_boot, generic_initrd, stack.disks[:1], stack.cmdline)
    booted = boot_stack(options)
    # The array waited for its missing half, then mdadm's last resort started it.
    text = booted.text
    assert re.search(r"Finished mdadm-last-resort", text), "not started by the timer"
    assert re.search(r"md/raid1:md\d+: active with 1 out of 2 mirrors", text)
    report("md raid1 1 disk (degraded)", generic_initrd, booted)


def test_wrong_passphrase_three_times_ends_in_emergency_mode(
    root_boot: BootOptions, stacks: dict[str, StackDisks], generic_initrd: Path
) -> None:
    stack = stacks["luks"]
    with boot(stack_boot(root_boot, generic_initrd, stack.disks, luks_args(stack))) as vm:
        for attempt in range(TRIES):
            vm.expect(PROMPT, timeout=300)
            vm.send(f"not-the-passphrase-{attempt}\n")
        # Emergency mode at once, not after the root device's timeout, and the console
        # shows systemd-cryptsetup saying why it stopped asking.
        vm.expect(r"Reached target .*[Ee]mergency", timeout=120)
        vm.expect(r"Too many attempts", timeout=60)
        vm.expect(r"root account is locked", timeout=60)
        assert "Timed out waiting for device" not in vm.text
        vm.kill()
