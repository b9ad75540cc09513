"""A LUKS2 root unlocked by a passphrase typed on the guest's keyboard with a German layout.

The keys are pressed on the emulated PS/2 keyboard through QMP (harness/keys.py), not
sent over the serial line: what they type depends on the keymap the initrd loaded. The
passphrase has y and z (swapped on a German keyboard) and "@" (AltGr+Q there), so typed
on a US layout the same presses are another passphrase.

The prompt must read the keyboard's console, so `console=tty1` is on the command line,
last: that makes tty1 /dev/console (systemd 252's password agent asks on every console
the kernel has, /sys/class/tty/console/active; older ones only on /dev/console, as the
emergency shell still does). The serial line still shows the kernel's messages, and
systemd's own log goes there too (`systemd.log_target=kmsg`): the test sees when the
question is asked (systemd starts the console agent only then), whether
systemd-cryptsetup refused the passphrase, and the root's token, which the root writes
to ttyS0 itself.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.images import build_image
from harness.keys import type_text
from harness.qemu import Boot, BootOptions, Disk, Kernel, boot
from harness.qmp import Qmp
from harness.stackdisks import StackDisks, copy_with_passphrase
from harness.token import boot_to_token, new_token, with_token

# y, z and @ (AltGr+Q on a German keyboard), and a shifted Y where US has Z.
PASSPHRASE = "zy@Tastatur-Yz"
ASKED = r"Started .*Dispatch Password Requests to Console"
REFUSED = r"Failed to activate with specified passphrase"
# systemd-cryptsetup got a passphrase and tries it.
READ = r"systemd-cryptsetup\[\d+\]: Set cipher"
# The console agent has been started for the question; give it a moment to open tty1
# and print the prompt before the first key.
AGENT_SETTLE = 5
TYPING_TRIES = 3
READ_LIMIT = 30  # seconds for a typed passphrase to be read


@pytest.fixture(scope="module")
def extra_key_disk(stacks: dict[str, StackDisks], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LUKS stack's root disk, copied, with PASSPHRASE in a keyslot of its own."""
    return copy_with_passphrase(stacks["luks"], PASSPHRASE, tmp_path_factory.mktemp("keymap"))


@pytest.fixture(scope="module")
def german_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("keymap-de") / "initrd.img"
    return build_image(output, kernel.version, "--generic", "--keymap", "de")


def keyboard_boot(
    root_boot: BootOptions, initrd: Path, stack: StackDisks, disk: Path, tmp_path: Path
) -> BootOptions:
    assert stack.luks_uuid and stack.luks_name
    append = (
        f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} rw "
        # tty1 last: /dev/console, where the passphrase is asked. systemd's log, and
        # every line of it (no rate limit), on the kernel's log, which the serial shows.
        "console=tty1 systemd.log_target=kmsg printk.devkmsg=on"
    )
    return replace(root_boot, initrd=initrd, disks=(Disk(disk),), append=append,
                   qmp_socket=tmp_path / "qmp.sock")  # fmt: skip


def type_at_prompt(vm: Boot, qmp_socket: Path) -> None:
    """Wait for the question, then type the passphrase key by key, as a German typist,
    until systemd-cryptsetup has read a passphrase (it says which cipher it sets up).

    The agent on tty1 may not be reading yet when the question is logged: under
    emulation the VGA console draws every kernel line slowly and can be many seconds
    behind (the screendumps show it), and keys typed before the agent has set up the
    terminal are lost, so typing is tried again.
    What tty1 shows after each try is kept with the test's output (PNG)."""
    vm.expect(ASKED, timeout=300)
    type_until_read(vm, qmp_socket)


def type_until_read(vm: Boot, qmp_socket: Path, question: int = 1) -> None:
    for attempt in range(1, TYPING_TRIES + 1):
        time.sleep(AGENT_SETTLE)
        with Qmp(qmp_socket) as qmp:
            type_text(qmp, PASSPHRASE + "\n", keymap="de")
            time.sleep(1)
            screendump(qmp, qmp_socket.parent / f"tty1-{question}-typed-{attempt}.png")
        try:
            vm.expect(READ, timeout=READ_LIMIT)
            return
        except AssertionError:
            if attempt == TYPING_TRIES:
                raise


def screendump(qmp: Qmp, path: Path) -> None:
    qmp.execute("screendump", filename=str(path), format="png")


def test_passphrase_typed_on_a_german_keyboard_opens_the_root(
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    german_initrd: Path,
    extra_key_disk: Path,
    tmp_path: Path,
) -> None:
    options = keyboard_boot(root_boot, german_initrd, stacks["luks"], extra_key_disk, tmp_path)

    def unlock(vm: Boot) -> None:
        # The image's own unit loaded the layout, before the question.
        vm.expect(r"bookend-vconsole-setup: keymap de loaded", timeout=300)
        assert options.qmp_socket is not None
        type_at_prompt(vm, options.qmp_socket)

    booted = boot_to_token(options, on_the_way=unlock)
    assert REFUSED not in booted.text
    size = german_initrd.stat().st_size / 1e6
    print(f"keymap de: image {size:.1f} MB, boot {booted.seconds:.0f} s")


@pytest.fixture(scope="module")
def us_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The German image's twin with the US layout: the same units, another keymap."""
    output = tmp_path_factory.mktemp("keymap-us") / "initrd.img"
    return build_image(output, kernel.version, "--generic", "--keymap", "us")


@pytest.mark.parametrize("image", ["us-keymap", "no-vconsole"])
def test_the_same_keys_without_the_layout_are_refused(
    request: pytest.FixtureRequest,
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    extra_key_disk: Path,
    tmp_path: Path,
    image: str,
) -> None:
    """Without the layout the presses type another passphrase: refused, asked again.
    Both an image loading the US keymap and one without the feature at all."""
    initrd = request.getfixturevalue("us_initrd" if image == "us-keymap" else "generic_initrd")
    options = keyboard_boot(root_boot, initrd, stacks["luks"], extra_key_disk, tmp_path)
    assert options.qmp_socket is not None
    with boot(with_token(options, new_token())) as vm:
        type_at_prompt(vm, options.qmp_socket)
        vm.expect(REFUSED, timeout=90)
        # The question comes again and reads the keyboard again: a second refusal.
        type_until_read(vm, options.qmp_socket, question=2)
        vm.expect(REFUSED, timeout=120)
        assert "BOOKEND-TOKEN" not in vm.text
        assert "keymap de loaded" not in vm.text
        vm.kill()
