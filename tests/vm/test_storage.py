"""Root on LUKS2, LVM on LUKS2, MD RAID1 and btrfs RAID1: systemd in a bookend initrd
unlocks and assembles them, the real root starts and powers the machine off.

The disks are made once in a maker guest (tests/vm/stackdisks.py). Images are generic,
so nothing but the kernel command line tells the initrd what the storage is.
Run with `-rP` to see each boot's image size and time.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from tests.imagebuild import build_image
from tests.vm.qemu import Disk, Kernel, boot
from tests.vm.rootdisk import RootDisk
from tests.vm.stackdisks import StackDisks, ensure_stack_disks

BOOT_LIMIT = 600
PROMPT = r"Please enter passphrase for disk"
TRIES = 3  # systemd-cryptsetup's default tries=


@pytest.fixture(scope="module")
def stacks(kernel: Kernel, root_disk: RootDisk) -> dict[str, StackDisks]:
    return ensure_stack_disks(kernel, root_disk)


@pytest.fixture(scope="module")
def generic_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("generic") / "initrd.img", kernel.version,
                       "--generic")  # fmt: skip


def luks_args(stack: StackDisks) -> str:
    """Unlock under the crypttab name the real root uses, so it finds the volume open."""
    assert stack.luks_uuid and stack.luks_name
    return f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name}"


def boot_stack(
    kernel: Kernel,
    initrd: Path,
    disks: list[Path],
    append: str,
    console_log: Path,
    passphrases: tuple[str, ...] = (),
) -> float:
    """Boot, type each passphrase at its prompt, wait for the token; the boot's seconds."""
    token = secrets.token_hex(8)
    append = f"{append} rw bookend.token={token}"
    with boot(kernel.path, initrd, [Disk(d) for d in disks], append, BOOT_LIMIT,
              log_path=console_log) as vm:  # fmt: skip
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        for passphrase in passphrases:
            vm.expect(PROMPT, timeout=300)
            vm.send(passphrase + "\n")
        report = vm.expect(
            rf"BOOKEND-TOKEN {token} booted-with-initrd=(\w+) systemd-initrd=(\w+)",
            timeout=BOOT_LIMIT,
        )
        assert report.groups() == ("yes", "yes")
        assert vm.wait_exit(timeout=120) == 0
        seconds = vm.elapsed
    text = console_log.read_text(errors="replace")
    assert "FAILED" not in text, "a unit failed during boot; see " + str(console_log)
    return seconds


def report(name: str, initrd: Path, seconds: float) -> None:
    print(f"{name}: image {initrd.stat().st_size / 1e6:.1f} MB, boot {seconds:.0f} s")


def test_luks2_root_with_passphrase_at_the_console(
    kernel: Kernel, stacks: dict[str, StackDisks], generic_initrd: Path, console_log: Path
) -> None:
    stack = stacks["luks"]
    assert stack.passphrase
    seconds = boot_stack(kernel, generic_initrd, list(stack.disks), luks_args(stack),
                         console_log, (stack.passphrase,))  # fmt: skip
    report("luks passphrase", generic_initrd, seconds)


def test_luks2_root_with_an_embedded_keyfile(
    kernel: Kernel, stacks: dict[str, StackDisks], console_log: Path, tmp_path: Path
) -> None:
    stack = stacks["luks"]
    assert stack.keyfile is not None
    initrd = build_image(tmp_path / "initrd.img", kernel.version, "--generic",
                         "--add-keyfile", str(stack.keyfile))  # fmt: skip
    assert initrd.stat().st_mode & 0o777 == 0o600
    append = f"{luks_args(stack)} rd.luks.key={stack.luks_uuid}={stack.keyfile}"
    seconds = boot_stack(kernel, initrd, list(stack.disks), append, console_log)
    assert PROMPT not in console_log.read_text(errors="replace")
    report("luks keyfile", initrd, seconds)


def test_ext4_on_lvm_on_luks2(
    kernel: Kernel, stacks: dict[str, StackDisks], generic_initrd: Path, console_log: Path
) -> None:
    stack = stacks["lvm-on-luks"]
    assert stack.passphrase
    seconds = boot_stack(kernel, generic_initrd, list(stack.disks), luks_args(stack),
                         console_log, (stack.passphrase,))  # fmt: skip
    report("lvm on luks", generic_initrd, seconds)


@pytest.mark.parametrize("members", [2, 1], ids=["both-disks", "degraded"])
def test_md_raid1_root(
    kernel: Kernel,
    stacks: dict[str, StackDisks],
    generic_initrd: Path,
    console_log: Path,
    members: int,
) -> None:
    stack = stacks["md-raid1"]
    disks = list(stack.disks[:members])
    seconds = boot_stack(kernel, generic_initrd, disks, stack.cmdline, console_log)
    if members == 1:
        # The array waited for its missing half, then mdadm's last resort started it.
        text = console_log.read_text(errors="replace")
        assert re.search(r"Finished mdadm-last-resort", text), "not started by the timer"
        assert re.search(r"md/raid1:md\d+: active with 1 out of 2 mirrors", text)
    report(f"md raid1 {members} disk(s)", generic_initrd, seconds)


def test_btrfs_raid1_root_in_a_subvolume(
    kernel: Kernel, stacks: dict[str, StackDisks], generic_initrd: Path, console_log: Path
) -> None:
    stack = stacks["btrfs-raid1"]
    seconds = boot_stack(kernel, generic_initrd, list(stack.disks), stack.cmdline, console_log)
    report("btrfs raid1 subvolume", generic_initrd, seconds)


def test_wrong_passphrase_three_times_ends_in_emergency_mode(
    kernel: Kernel, stacks: dict[str, StackDisks], generic_initrd: Path, console_log: Path
) -> None:
    stack = stacks["luks"]
    append = f"{luks_args(stack)} rw"
    disks = [Disk(d) for d in stack.disks]
    with boot(kernel.path, generic_initrd, disks, append, BOOT_LIMIT,
              log_path=console_log) as vm:  # fmt: skip
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
